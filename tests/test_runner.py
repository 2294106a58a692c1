"""Canvas execution: one compiled forward serves every input size up to the canvas, exactly."""
import numpy as np
import pytest

from fcfi_jax.inference.runner import CanvasRunner, canvas_size
from fcfi_jax.models.is_model import build_model

SMALL_HRNET = dict(family="hrnet", width=6, ocr_width=8, mid_ch=8, with_aux_output=True, use_leaky_relu=True,
                   expansion_ratio=0.3, use_disks=True, norm_radius=5, with_prev_mask=True)
SMALL_DEEPLAB = dict(family="deeplab", backbone="resnet50", deeplab_ch=32, mid_ch=8, aspp_dropout=0.2,
                     expansion_ratio=0.3, use_leaky_relu=True, use_disks=True, norm_radius=5, with_prev_mask=True)


def _randomize_bn(model, seed=0):
    """Non-trivial BatchNorm statistics so that a leak outside the valid region would show."""
    import jax.numpy as jnp
    from flax import nnx

    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
        shape = var.get_value().shape
        if path[-1] == "running_mean":
            var.set_value(jnp.asarray(rng.normal(0, 0.2, shape), jnp.float32))
        else:
            var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] == "bias":
            var.set_value(jnp.asarray(rng.normal(0, 0.1, var.get_value().shape), jnp.float32))


def _inputs(h, w, rng, n=2):
    x = np.concatenate([rng.random((2, h, w, 3)), rng.random((2, h, w, 1))], -1).astype(np.float32)
    pts = np.full((2, 2 * n, 3), -1, np.float32)
    pts[:, 0] = [h * 0.5, w * 0.4, 0]
    pts[:, n] = [h * 0.2, w * 0.7, 1]
    new = np.array([[[int(h * 0.2), int(w * 0.7), 0]]] * 2, np.int32)
    return x, pts, new


def _assert_same_outputs(exact, runner, h, w, rng, rtol, what):
    """runner's outputs for a random h x w input equal the exact-size forward's, relative to the output scale
    (random small models reach |logits| ~ 1e8)."""
    args = _inputs(h, w, rng)
    want = exact(*args, 1.0)
    assert all(want[k].shape == (2, h, w, 1) for k in CanvasRunner.OUTPUTS)
    _assert_close(runner(*args, 1.0), want, rtol, f"at {h}x{w}: {what} differs from the exact forward")


def _assert_close(got, want, rtol, what):
    """Every output of `got` has `want`'s shape and equals it up to rtol of the output scale."""
    for k in CanvasRunner.OUTPUTS:
        assert got[k].shape == want[k].shape
        err = float(np.abs(got[k] - want[k]).max()) / max(1.0, float(np.abs(want[k]).max()))
        assert err < rtol, f"{k} {what} by {err} (relative)"


@pytest.mark.parametrize("cfg", [SMALL_HRNET, SMALL_DEEPLAB], ids=["hrnet", "deeplab"])
def test_canvas_equals_exact_and_compiles_once(cfg):
    model = build_model(cfg, seed=1)
    _randomize_bn(model)
    exact, canvas = CanvasRunner(model, step=None), CanvasRunner(model, step=128)
    rng = np.random.default_rng(0)
    sizes = [(101, 127), (128, 97), (77, 128), (120, 119)]  # all inside one 128x128 canvas
    for h, w in sizes:
        assert canvas_size(h, w, 128) == (128, 128)
        # 2.5e-5: the CPU kernel picks Winograd or direct tiles by layer shape, so a canvas and its exact-size run
        # may round differently (measured 1.05e-5 on the DeepLab model, 2026-12-06)
        _assert_same_outputs(exact, canvas, h, w, rng, 2.5e-5, "canvas run")
    assert canvas.xla_compilations == 1
    assert exact.xla_compilations == len(sizes)


@pytest.mark.parametrize("cfg", [SMALL_HRNET, SMALL_DEEPLAB], ids=["hrnet", "deeplab"])
def test_portrait_runs_transposed_on_the_landscape_canvas(cfg):
    """A portrait input and its landscape twin share one compilation (64x96); the transposed run (transposed
    kernels) equals the exact portrait forward up to float summation order. New weights assigned to
    `runner.state` (as the in-training evaluation does) reach the transposed run too."""
    from flax import nnx

    model = build_model(cfg, seed=2)
    _randomize_bn(model, seed=1)
    exact, canvas = CanvasRunner(model, step=None), CanvasRunner(model, step=32)
    rng = np.random.default_rng(1)
    for h, w in [(93, 61), (61, 90)]:
        # The transposed kernels sum in another order: float noise, measured up to 1.6e-5 (the plain canvas
        # run is bit-equal here); a wrong transposition (e.g. of the input only) gives errors of ~0.5.
        _assert_same_outputs(exact, canvas, h, w, rng, 1e-4, "transposed canvas run")
    assert canvas.canvases == {(2, 64, 96, (2, 4, 3), (2, 1, 3))}
    assert canvas.xla_compilations == 1
    new = build_model(cfg, seed=5)
    _randomize_bn(new, seed=4)
    canvas.state = nnx.state(new)  # same shapes: nothing recompiles
    args = _inputs(93, 61, rng)
    got, want = canvas(*args, 1.0), CanvasRunner(new, step=32)(*args, 1.0)
    assert canvas.xla_compilations == 1
    # The first weights' transposed kernels gave errors of ~0.8 here.
    _assert_close(got, want, 1e-6, "of the portrait run after new weights differs from a fresh runner's")
    other = SMALL_DEEPLAB if cfg is SMALL_HRNET else SMALL_HRNET
    with pytest.raises(ValueError, match="structure"):
        canvas.state = nnx.state(build_model(other, seed=0))


def test_smaller_size_rents_a_compiled_canvas_until_its_waste_pays_a_compilation():
    """A size without its own canvas runs on the smallest larger compiled one, with the same result as on its
    own canvas, until the pixels it wasted there exceed compile_cost_mpx; then its own canvas is compiled."""
    model = build_model(SMALL_HRNET, seed=3)
    _randomize_bn(model, seed=2)
    waste = 2 * (96 * 128 - 64 * 96) / 1e6  # per call of a 2 x 61 x 90 input on the 96x128 canvas
    canvas = CanvasRunner(model, step=32, compile_cost_mpx=1.5 * waste)
    rng = np.random.default_rng(2)
    big, small = (2, 96, 128, (2, 4, 3), (2, 1, 3)), (2, 64, 96, (2, 4, 3), (2, 1, 3))
    canvas(*_inputs(93, 125, rng), 1.0)
    assert canvas.canvases == {big}
    args = _inputs(61, 90, rng)
    on_big = canvas(*args, 1.0)
    assert canvas.canvases == {big} and canvas.reused_calls == 1 and canvas.xla_compilations == 1
    on_own = canvas(*args, 1.0)  # 2 x waste > 1.5 x waste: compiles its own canvas
    assert canvas.canvases == {big, small} and canvas.reused_calls == 1 and canvas.xla_compilations == 2
    assert all(on_big[k].shape == (2, 61, 90, 1) for k in CanvasRunner.OUTPUTS)
    # (own canvas == exact forward: test_canvas_equals_exact_and_compiles_once)
    _assert_close(on_big, on_own, 1e-5, "on the 96x128 canvas differs from the 64x96 one")
    # The choice alone (nothing runs): a size with nothing larger compiled, and compile_cost_mpx=0, compile.
    assert canvas._canvas_for(2, 120, 150, (2, 4, 3), (2, 1, 3))[1:3] == (128, 160)
    never = CanvasRunner(model, step=32, compile_cost_mpx=0)
    never.canvases = {big}
    assert never._canvas_for(2, 61, 90, (2, 4, 3), (2, 1, 3)) == small


def test_host_level_masks_serve_the_down2_chain_only():
    """`canvas_level_masks` are the valid regions of the canvas levels (ceil halving, as the strided convs), and
    a `Canvas(hw, masks)` returns them from `valid_mask` for itself, its down2, ... and nothing else."""
    import jax.numpy as jnp

    from fcfi_jax.models.layers import Canvas, canvas_level_masks, down2, valid_mask

    masks = canvas_level_masks((128, 96), (101, 95), levels=4)
    assert [m.shape for m in masks] == [(128, 96, 1), (64, 48, 1), (32, 24, 1), (16, 12, 1)]
    for m, (h, w) in zip(masks, [(101, 95), (51, 48), (26, 24), (13, 12)]):
        assert m.dtype == np.bool_ and m.sum() == h * w and m[h - 1, w - 1, 0] and not m[h:].any() and not m[:, w:].any()
    hw = jnp.asarray([101, 95], jnp.int32)
    canvas = Canvas(hw, masks)
    level = canvas
    for m in masks:
        assert valid_mask(m.shape[:2], level, jnp.bool_) is m
        np.testing.assert_array_equal(valid_mask(m.shape[:2], level, jnp.float32), m.astype(np.float32))
        assert down2(level) is down2(level)  # memoized
        level = down2(level)
    other = Canvas(jnp.asarray([101, 95], jnp.int32))  # same values, no masks given: built, not looked up
    built = valid_mask((128, 96), other, jnp.bool_)
    assert built is not masks[0]
    np.testing.assert_array_equal(built, masks[0])
    assert valid_mask((128, 96), hw, jnp.bool_) is not masks[0]  # a plain array: built every time
