"""On-device click simulation for iterative training (the official trainers' get_next_points).

Everything is jnp with static shapes so that it runs inside the jitted train step (no host round trip):

    points, new_points = next_points(key, probs, gt, points, click_index)

Deviation from the official code, on purpose: the official trainer uses cv2's approximate 5x5 chamfer
distance transform (docs/official_quirks.md #41); here the distance transform is the exact Euclidean one (the evaluation clicker's
metric). Both pick a uniformly random pixel among those deeper than half the largest error depth, so only the
boundary of that candidate set can differ (by under 2% of the depth); the sampling is random anyway.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

PROB_THRESH = 0.49


def distance_transform(mask: jax.Array) -> jax.Array:
    """Exact Euclidean distance of every True pixel to the nearest False pixel; (B, H, W) bool -> float32.

    The image is treated as surrounded by False pixels (the official code pads a one-pixel zero border), so a
    pixel is never farther than its distance to the image edge + 1. Two separable passes: the distance to the
    nearest False pixel in the same column (cumulative max/min of indices), then the row pass
    d2(x) = min_k g2(x + k) + k^2, looping over offsets k only while k^2 can still improve some pixel.
    """
    _, h, w = mask.shape
    y = jnp.arange(h, dtype=jnp.int32)[None, :, None]
    above = jax.lax.cummax(jnp.where(mask, -1, y), axis=1)                 # last False row at or above, -1 = border
    below = jax.lax.cummin(jnp.where(mask, h, y), axis=1, reverse=True)   # next False row at or below, h = border
    g = jnp.minimum(y - above, below - y).astype(jnp.float32)              # (B, H, W), 0 on False pixels
    g2 = g * g
    x = jnp.arange(w, dtype=jnp.float32)
    border = jnp.minimum(jnp.square(x + 1), jnp.square(w - x))              # virtual False columns -1 and w
    d2 = jnp.minimum(g2, border)
    big = jnp.float32(3.0e38)

    def shifted(a, k, direction):
        # a[..., x - direction * k] where it exists, else +inf
        r = jnp.roll(a, direction * k, axis=2)
        valid = (x - direction * k >= 0) & (x - direction * k < w)
        return jnp.where(valid, r, big)

    def cond(carry):
        k, d2 = carry
        return (k < w) & (jnp.float32(k) ** 2 < jnp.max(d2))

    def body(carry):
        k, d2 = carry
        kk = jnp.float32(k) ** 2
        d2 = jnp.minimum(d2, jnp.minimum(shifted(g2, k, 1), shifted(g2, k, -1)) + kk)
        return k + 1, d2

    _, d2 = jax.lax.while_loop(cond, body, (jnp.int32(1), d2))
    return jnp.sqrt(d2)


def next_points(key: jax.Array, probs: jax.Array, gt: jax.Array, points: jax.Array, click_index: jax.Array):
    """Add one simulated click per sample at the largest error region (official get_next_points).

    probs (B, H, W, 1) predicted probabilities, gt (B, H, W, 1) target (> 0.5 = object; -1 ignore counts as
    background), points (B, 2N, 3) float32, click_index: int in 1..N (traced is fine).
    Returns (points, new_points): the click (y, x, click_index) is written into row N - click_index (positive)
    or 2N - click_index (negative), overwriting that row (docs/official_quirks.md #21); new_points int32 (B, 1, 3) = (y, x,
    is_positive). A sample without any error pixel keeps its points and gets the image centre
    (H//2 - 1, W//2 - 1) with the predicted probability there truncated to an integer label (docs/official_quirks.md #20).
    """
    b, h, w, _ = probs.shape
    n = points.shape[1] // 2
    pred = probs[..., 0]
    obj = gt[..., 0] > 0.5
    fn = obj & (pred < PROB_THRESH)
    fp = ~obj & (pred > PROB_THRESH)
    dt = distance_transform(jnp.concatenate([fn, fp], axis=0))             # one pass for both error maps
    dt_fn, dt_fp = dt[:b], dt[b:]
    m_fn = jnp.max(dt_fn, axis=(1, 2))
    m_fp = jnp.max(dt_fp, axis=(1, 2))
    positive = m_fn > m_fp                                                  # ties -> negative
    depth = jnp.where(positive[:, None, None], dt_fn, dt_fp)
    cand = depth > (jnp.maximum(m_fn, m_fp) / 2)[:, None, None]
    has = jnp.any(cand, axis=(1, 2))
    score = jnp.where(cand, jax.random.uniform(key, cand.shape), -1.0)     # uniform pick among candidates
    flat = jnp.argmax(score.reshape(b, -1), axis=1)
    cy, cx = flat // w, flat % w

    k = jnp.asarray(click_index, jnp.int32)
    row = jnp.where(positive, n - k, 2 * n - k)                              # (B,)
    click = jnp.stack([cy, cx, jnp.broadcast_to(k, cy.shape)], axis=-1).astype(points.dtype)
    write = (jnp.arange(2 * n)[None, :] == row[:, None]) & has[:, None]     # (B, 2N)
    points = jnp.where(write[..., None], click[:, None, :], points)

    centre_label = jnp.floor(pred[:, h // 2 - 1, w // 2 - 1]).astype(jnp.int32)
    new = jnp.where(has[:, None],
                    jnp.stack([cy, cx, positive.astype(jnp.int32)], axis=-1),
                    jnp.stack([jnp.full_like(cy, h // 2 - 1), jnp.full_like(cx, w // 2 - 1), centre_label], axis=-1))
    return points, new.astype(jnp.int32)[:, None, :]


def first_new_points(points: jax.Array) -> jax.Array:
    """The trainers' first new point: the first positive row's (y, x) with label 1 -> int32 (B, 1, 3).

    Background-only samples have (-1, -1) there (docs/official_quirks.md #20)."""
    yx = points[:, 0, :2].astype(jnp.int32)
    return jnp.concatenate([yx, jnp.ones_like(yx[:, :1])], axis=-1)[:, None, :]
