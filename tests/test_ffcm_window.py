"""FFCM at inference encodes a window around the box, not the whole map: the window must hold every box the
official arithmetic can produce, and the result must equal the whole-map encoding (up to float rounding)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fcfi_jax.models.fcfi_modules import FocusedCorrectionModule, ffcm_box, ffcm_half_size, ffcm_window
from fcfi_jax.models.layers import resize_ac


@pytest.mark.parametrize("e", [0.3, 0.2, 0.45])
def test_window_holds_every_box(e):
    """Every click position of every input size 8..1400: the box fits in `ffcm_window` (halo 0) and holds
    the click. Feature maps are the stride-4 ones of the models: ceil(ceil(n / 2) / 2)."""
    sizes = np.arange(8, 1401)
    fb = np.repeat(sizes, sizes).astype(np.float32)                 # every (size, click) pair
    py = np.concatenate([np.arange(n) for n in sizes]).astype(np.float32)
    ft = np.ceil(np.ceil(fb / 2) / 2).astype(np.float32)
    half = np.array([ffcm_half_size(e, int(n), int(n))[0] for n in fb], np.float32)
    yf, _, box = jax.jit(ffcm_box)(py, py, half, half, fb, fb, ft, ft)
    yf, box = np.asarray(yf), np.asarray(box)
    length = box[:, 2] - box[:, 0]
    bound = np.array([ffcm_window(e, int(n), 0) for n in ft])
    worst = int(np.argmax(length - bound))
    assert (length <= bound).all(), f"input {fb[worst]:.0f} click {py[worst]:.0f}: box {length[worst]} > {bound[worst]}"
    assert ((box[:, 0] <= yf) & (yf < box[:, 2])).all()


def _ffcm(seed=0):
    m = FocusedCorrectionModule(8, 8, aux_ch=7, expan_ratio=0.3, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for layer in m.info_encoder:  # BatchNorm shifts make the zero padding beyond the valid region matter
        layer.bn.bias.set_value(jnp.asarray(rng.normal(size=8).astype(np.float32)))
        layer.bn.running_mean.set_value(jnp.asarray(rng.normal(size=8).astype(np.float32)))
    m.eval()
    return m


def _run(m, windowed, images, enc, feats, fb, pts, geom):
    m.windowed = windowed
    out, _ = m(images, enc, feats, fb, pts, soft_box=False, geom=geom)
    return np.asarray(out)


@pytest.mark.parametrize("canvas", [False, True])
def test_windowed_equals_whole_map(canvas):
    """Clicks at the corners, the edges and inside, on an exact-size input and inside a larger canvas."""
    m = _ffcm()
    rng = np.random.default_rng(1)
    true_h, true_w = 150, 230
    H, W = (176, 256) if canvas else (true_h, true_w)
    ft_h, ft_w = -(-(-(-H // 2)) // 2), -(-(-(-W // 2)) // 2)
    t_h, t_w = -(-(-(-true_h // 2)) // 2), -(-(-(-true_w // 2)) // 2)

    def valid(a, h, w):
        a = np.array(a)
        a[:, h:], a[:, :, w:] = 0, 0
        return jnp.asarray(a)
    images = valid(rng.normal(size=(2, H, W, 3)).astype(np.float32), true_h, true_w)
    enc = valid((rng.random((2, H, W, 3)) > 0.5).astype(np.float32), true_h, true_w)
    fb = valid(rng.random((2, H, W, 1)).astype(np.float32), true_h, true_w)
    feats = valid(rng.normal(size=(2, ft_h, ft_w, 8)).astype(np.float32), t_h, t_w)
    geom = None
    if canvas:
        half = ffcm_half_size(0.3, true_h, true_w)
        geom = dict(fb_hw=jnp.asarray([true_h, true_w], jnp.int32), ft_hw=jnp.asarray([t_h, t_w], jnp.int32),
                    half=jnp.asarray(half, jnp.int32))
    assert m.window((ft_h, ft_w)) is not None
    clicks = [(0, 0), (true_h - 1, true_w - 1), (0, true_w - 1), (true_h // 2, true_w // 2), (3, 100), (140, 7)]
    for (y0, x0), (y1, x1) in zip(clicks, clicks[::-1]):
        pts = jnp.asarray([[[y0, x0, 1]], [[y1, x1, 0]]], jnp.int32)
        whole = _run(m, False, images, enc, feats, fb, pts, geom)
        win = _run(m, True, images, enc, feats, fb, pts, geom)
        np.testing.assert_allclose(win, whole, rtol=0, atol=2e-6, err_msg=f"clicks {(y0, x0)}, {(y1, x1)}")
        hw = None if geom is None else (geom["fb_hw"], geom["ft_hw"])
        before = np.asarray(resize_ac(fb, (ft_h, ft_w), *(hw or (None, None))))
        assert np.abs(whole - before).max() > 0.01  # the box was corrected
