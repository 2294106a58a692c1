"""On-device click simulation (training/clicks.py) against scipy's exact EDT and the official rules."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy.ndimage import distance_transform_edt

from fcfi_jax.training.clicks import distance_transform, first_new_points, next_points


def _edt(mask):  # the official code pads a one-pixel zero border
    return distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def test_distance_transform_matches_scipy():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 37, 53)) > 0.1
    masks[1] = False
    masks[1, 3:30, 5:50] = True
    masks[2] = True          # no zero inside: distance to the image border
    masks[3] = False         # empty
    got = np.asarray(jax.jit(distance_transform)(jnp.asarray(masks)))
    ref = np.stack([_edt(m) for m in masks])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def _case():
    h, w, n = 40, 60, 24
    gt = np.zeros((3, h, w, 1), np.float32)
    probs = np.zeros((3, h, w, 1), np.float32)
    gt[0, 5:35, 5:25] = 1                    # sample 0: object missed -> positive click in it
    gt[1, 5:35, 5:25] = 1
    probs[1, 5:35, 5:25] = 0.9
    probs[1, 10:30, 35:55] = 0.8             # sample 1: false positive blob -> negative click in it
    gt[2, 10:20, 10:20] = 1                  # sample 2: perfect -> no click, centre fallback
    probs[2, 10:20, 10:20] = 1.0
    points = np.full((3, 2 * n, 3), -1, np.float32)
    points[:, 0] = (15, 15, 0)
    return jnp.asarray(probs), jnp.asarray(gt), jnp.asarray(points), (h, w, n)


def test_next_points_rules():
    probs, gt, points, (h, w, n) = _case()
    new_pts, new = jax.jit(next_points, static_argnums=())(jax.random.key(0), probs, gt, points, 2)
    new_pts, new = np.asarray(new_pts), np.asarray(new)
    # sample 0: positive click deep inside the missed object, written to row N - 2 with index 2
    y, x, pos = new[0, 0]
    assert pos == 1 and 5 <= y < 35 and 5 <= x < 25
    assert _edt(np.asarray(gt[0, ..., 0]) > 0.5)[y, x] > 10 / 2
    np.testing.assert_array_equal(new_pts[0, n - 2], [y, x, 2])
    # sample 1: negative click inside the false-positive blob, row 2N - 2
    y, x, pos = new[1, 0]
    assert pos == 0 and 10 <= y < 30 and 35 <= x < 55
    np.testing.assert_array_equal(new_pts[1, 2 * n - 2], [y, x, 2])
    # sample 2: nothing to correct -> points unchanged, new point at the centre with the truncated probability
    np.testing.assert_array_equal(new_pts[2], np.asarray(points[2]))
    np.testing.assert_array_equal(new[2, 0], [h // 2 - 1, w // 2 - 1, 0])
    # every other row untouched
    changed = np.any(new_pts != np.asarray(points), axis=-1)
    assert changed.sum() == 2 and changed[0, n - 2] and changed[1, 2 * n - 2]


def test_next_points_is_uniform_over_deep_pixels():
    """The pick is uniform among pixels deeper than half the maximum depth (official rule)."""
    probs, gt, points, _ = _case()
    fn = jax.jit(lambda k: next_points(k, probs, gt, points, 1)[1][0, 0])
    picks = np.asarray(jax.vmap(fn)(jax.random.split(jax.random.key(1), 400)))
    depth = _edt(np.asarray(gt[0, ..., 0]) > 0.5)
    cand = depth > depth.max() / 2
    assert all(cand[y, x] for y, x, _ in picks)
    assert len({(y, x) for y, x, _ in picks}) > 0.5 * min(400, cand.sum())  # spread, not a fixed pixel


def test_first_new_points():
    pts = np.full((2, 48, 3), -1, np.float32)
    pts[0, 0] = (12.0, 7.0, 0)
    np.testing.assert_array_equal(np.asarray(first_new_points(jnp.asarray(pts)))[:, 0], [[12, 7, 1], [-1, -1, 1]])
