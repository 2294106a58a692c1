"""The device clicker gives the host clicker's clicks (isegm/inference/clicker.py rule) on random masks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcfi_jax.evaluation.clicker import Clicker, error_distance
from fcfi_jax.evaluation.device_clicker import clicker_inputs, error_distance_sq, next_click


def test_distance_transform_equals_cv2_precise():
    rng = np.random.default_rng(0)
    edt = jax.jit(error_distance_sq)
    for h, w in [(1, 1), (1, 9), (13, 1), (23, 37), (40, 17)]:       # a batch of densities per shape
        masks = np.stack([rng.random((h, w)) < p for p in (0.0, 0.2, 0.5, 0.8, 0.95, 1.0)])
        d = np.sqrt(np.asarray(edt(masks)).astype(np.float32))
        for m, dm in zip(masks, d):
            np.testing.assert_array_equal(dm, error_distance(m), err_msg=f"{h}x{w}")


def blobs(rng, hw, n):
    """A few random ellipses: masks with large distances, as real objects have."""
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    m = np.zeros(hw, bool)
    for _ in range(n):
        cy, cx = rng.uniform(0, hw[0]), rng.uniform(0, hw[1])
        ry, rx = rng.uniform(2, hw[0] / 2), rng.uniform(2, hw[1] / 2)
        m ^= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    return m


@pytest.mark.parametrize("seed", [0, 1])
def test_click_sequences_match_host_clicker_on_a_canvas(seed):
    """10 clicks per sample against Clicker, on a canvas larger than the image, with ignore pixels, clicked
    pixels excluded, ties, and predictions that keep changing; a batch of samples through vmap."""
    rng = np.random.default_rng(seed)
    canvas = (64, 80)
    step = jax.jit(jax.vmap(next_click))
    sizes = [(64, 80), (37, 51), (50, 20), (5, 7)]
    gts, preds_seq, clickers = [], [], []
    for h, w in sizes:
        gt = blobs(rng, (h, w), 2).astype(np.int32)
        gt[rng.random((h, w)) < 0.05] = -1          # ignore label
        gts.append(gt)
        clickers.append(Clicker(gt))
        preds_seq.append([blobs(rng, (h, w), 3) if k % 3 else rng.random((h, w)) < 0.5 for k in range(10)])
    pad = lambda a, v: np.pad(a, ((0, canvas[0] - a.shape[0]), (0, canvas[1] - a.shape[1])), constant_values=v)
    gt_c = jnp.asarray(np.stack([pad(g, 0) for g in gts]))
    hw = jnp.asarray(np.array(sizes, np.int32))
    obj, keep = clicker_inputs(gt_c, hw)
    not_clicked = jnp.ones((len(sizes),) + canvas, bool)
    for k in range(10):
        pred = jnp.asarray(np.stack([pad(p[k], False) for p in preds_seq]))
        clicks, not_clicked = step(obj, keep, pred, not_clicked)
        for b, c in enumerate(np.asarray(clicks)):
            ref = clickers[b].make_next_click(preds_seq[b][k])
            assert (int(c[0]), int(c[1]), bool(c[2])) == (ref.y, ref.x, ref.is_positive), (seed, b, k)


def test_perfect_prediction_and_tie():
    gt = np.zeros((9, 9), np.int32)
    gt[1:4, 1:4] = 1
    pred = np.zeros((9, 9), bool)
    pred[5:8, 5:8] = True                    # equal max distances: negative click
    obj, keep = clicker_inputs(jnp.asarray(gt))
    c, _ = next_click(obj, keep, jnp.asarray(pred), jnp.ones((9, 9), bool))
    assert tuple(np.asarray(c)) == (6, 6, 0)
    c, nc = next_click(obj, keep, obj, jnp.ones((9, 9), bool))
    assert tuple(np.asarray(c)) == (0, 0, 0) and not bool(nc[0, 0])
