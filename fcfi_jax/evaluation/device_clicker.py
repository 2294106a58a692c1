"""The official evaluation clicker (isegm/inference/clicker.py) as a jittable function on a padded canvas.

Same rule as `fcfi_jax.evaluation.clicker.Clicker._get_next_click`, without host work, so that a whole
20-click evaluation can stay on the device:

  fn = gt & ~pred & ~ignore,  fp = ~gt & pred & ~ignore
  D  = exact Euclidean distance to the nearest non-error pixel, the image border counting as outside (the
       official 1-px zero padding before cv2.distanceTransform(DIST_L2, DIST_MASK_PRECISE)), times the
       not-clicked map
  positive iff max D_fn > max D_fp (ties give a negative click); the click is the first pixel in row-major
  order holding the maximum.

The inputs live in the top-left (H, W) corner of a (Hc, Wc) canvas; everything outside is neither object nor
prediction, so it is a zero of both distance transforms exactly where the official padding border is (row H,
column W), and the canvas edge plays the border's role elsewhere. Row-major order on the canvas restricted to
the valid corner is row-major order on the image, so the first maximum is the same pixel.

The distance transform is the exact separable one: a column pass (distance to the nearest zero above or below,
from cumulative max/min of zero indices) and a row pass d2[i, j] = min_k g[i, k]^2 + (j - k)^2 in int32. The
squared distances are exact integers and D = sqrt(float32(d2)), the value cv2's precise transform returns.
The row pass loops over column offsets only up to the largest distance in the map (see `error_distance_sq`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["error_distance_sq", "next_click", "clicker_inputs"]


def error_distance_sq(mask: jax.Array) -> jax.Array:
    """int32 exact squared L2 distance of every True pixel of `mask` (..., H, W) to the nearest False pixel
    or to the 1-px border around the array; 0 on False pixels."""
    mask = jnp.asarray(mask, bool)
    h, w = mask.shape[-2:]
    big = h + w + 2   # larger than any distance to the border
    rows = jnp.arange(h, dtype=jnp.int32)[:, None]
    zero = ~mask
    # column pass: distance to the nearest zero in the same column (the border rows -1 and h are zeros)
    above = jax.lax.cummax(jnp.where(zero, rows, -1), axis=mask.ndim - 2)
    below = jax.lax.cummin(jnp.where(zero, rows, h), axis=mask.ndim - 2, reverse=True)
    g = jnp.minimum(rows - above, below - rows)
    # the border columns -1 and w are zeros too: d2 <= (j + 1)^2 and (w - j)^2
    cols = jnp.arange(w, dtype=jnp.int32)
    d2 = jnp.minimum(g * g, jnp.minimum(cols + 1, w - cols) ** 2)
    # row pass: d2[i, j] = min over k of g2[i, k] + (j - k)^2, as a loop over the offset o = |j - k| that stops
    # once o^2 reaches the largest distance found so far (no larger offset can lower any pixel): a few hundred
    # elementwise passes instead of the H * W * W dense minimum (which XLA:CPU ran at ~6 s per click).
    g2 = g * g
    pad = jnp.full(g2.shape[:-1] + (w,), big * big, jnp.int32)
    padded = jnp.concatenate([pad, g2, pad], axis=-1)                  # (..., H, 3W)
    axis = mask.ndim - 1

    def cond(c):
        o, d = c
        return (o < w) & (o * o < jnp.max(d))

    def body(c):
        o, d = c
        right = jax.lax.dynamic_slice_in_dim(padded, w + o, w, axis)
        left = jax.lax.dynamic_slice_in_dim(padded, w - o, w, axis)
        return o + 1, jnp.minimum(d, jnp.minimum(left, right) + o * o)

    return jax.lax.while_loop(cond, body, (jnp.int32(1), d2))[1]


def clicker_inputs(gt, valid_hw=None, ignore_label: int = -1):
    """(gt_mask, not_ignore) bool canvases from an integer gt canvas (1 object, ignore_label ignored);
    pixels outside the valid (h, w) corner are neither."""
    gt = jnp.asarray(gt)
    obj, keep = gt == 1, gt != ignore_label
    if valid_hw is not None:
        h, w = gt.shape[-2:]
        inside = ((jnp.arange(h)[:, None] < valid_hw[..., 0, None, None])
                  & (jnp.arange(w)[None, :] < valid_hw[..., 1, None, None]))
        obj, keep = obj & inside, keep & inside
    return obj, keep


def next_click(gt_mask, not_ignore, pred, not_clicked):
    """The official next click for one sample on its canvas.

    gt_mask, not_ignore, pred, not_clicked: bool (Hc, Wc) (outside the valid corner: gt_mask, pred False).
    Returns (click int32 (3,) = (y, x, is_positive), not_clicked with the click's pixel cleared).
    vmap it for a batch.
    """
    fn = gt_mask & ~pred & not_ignore
    fp = ~gt_mask & pred & not_ignore
    d2 = error_distance_sq(jnp.stack([fn, fp]))
    dist = jnp.sqrt(d2.astype(jnp.float32)) * not_clicked          # cv2's float32 values, clicked pixels 0
    best = dist.reshape(2, -1).max(axis=1)
    positive = best[0] > best[1]
    chosen = jnp.where(positive, dist[0], dist[1])
    flat = jnp.argmax(chosen.reshape(-1) == jnp.where(positive, best[0], best[1]))   # first in raster order
    w = pred.shape[-1]
    y, x = (flat // w).astype(jnp.int32), (flat % w).astype(jnp.int32)
    not_clicked = not_clicked.at[y, x].set(False)
    return jnp.stack([y, x, positive.astype(jnp.int32)]), not_clicked
