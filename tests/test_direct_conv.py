"""The direct 3x3 CPU kernel (fcfi_jax/models/direct_conv.cc) against XLA's convolution, and its dispatch."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fcfi_jax.models import direct_conv
from fcfi_jax.models.layers import Conv2d


@pytest.fixture(scope="module")
def kernel():
    if not direct_conv.available():
        if shutil.which("g++") and jax.default_backend() == "cpu":
            pytest.fail("g++ is installed but the direct conv kernel did not build (see the warning above)")
        pytest.skip("no C++ compiler or not on CPU: the direct kernel is not used here")


def _xla(x, w, stride):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


# (B, H, W, Cin, Cout, stride): HRNet's branch, transition and stem shapes (smaller), every output-vector
# chunking (1-16 vectors of 16, tails of 1-15 channels), rows shorter / not a multiple of the 8-pixel block.
SHAPES = [(2, 33, 44, 18, 18, 1), (1, 17, 22, 36, 36, 1), (2, 9, 11, 72, 72, 1), (1, 5, 6, 144, 144, 1),
          (1, 12, 20, 64, 64, 1), (2, 33, 44, 18, 36, 2), (1, 40, 56, 3, 64, 2), (1, 16, 16, 256, 18, 1),
          (1, 7, 5, 5, 17, 1), (1, 7, 5, 5, 17, 2), (3, 9, 10, 20, 40, 2), (1, 1, 1, 8, 16, 1), (1, 2, 3, 8, 31, 2),
          (1, 6, 9, 4, 80, 1), (1, 4, 4, 2, 256, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_xla(kernel, shape):
    b, h, w, ci, co, s = shape
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.standard_normal((b, h, w, ci)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, ci, co)), jnp.float32)
    want = np.asarray(jax.jit(_xla, static_argnums=2)(x, k, s))
    got = np.asarray(jax.jit(direct_conv.conv3x3, static_argnums=2)(x, k, s))
    assert got.shape == want.shape
    # float32 sums of 9 * Cin products in another order: ~1e-6 relative to the sum of |products|.
    bound = 2e-6 * np.asarray(jax.jit(_xla, static_argnums=2)(jnp.abs(x), jnp.abs(k), s)) + 1e-6
    assert np.all(np.abs(got - want) <= bound), float(np.abs(got - want).max())


@pytest.mark.parametrize("stride", [1, 2])
def test_epilogue(kernel, stride):
    """relu(conv * scale + shift + residual), zero outside each image's valid region (per-image (B, 2) and
    shared (2,) sizes), against the same computed with XLA."""
    rng = np.random.default_rng(stride)
    b, h, w, ci, co = 2, 13, 18, 20, 24
    x = jnp.asarray(rng.standard_normal((b, h, w, ci)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, ci, co)), jnp.float32)
    scale, shift = (jnp.asarray(rng.standard_normal(co), jnp.float32) for _ in range(2))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    res = jnp.asarray(rng.standard_normal((b, ho, wo, co)), jnp.float32)
    for valid in ([[ho, wo], [ho - 3, wo - 5]], [ho - 1, wo]):
        v = np.broadcast_to(np.asarray(valid), (b, 2))
        keep = (np.arange(ho)[None, :, None] < v[:, :1, None]) & (np.arange(wo)[None, None, :] < v[:, 1:, None])
        for residual, relu in ((None, False), (res, True)):
            want = _xla(x, k, stride) * scale + shift + (0 if residual is None else residual)
            want = np.where(keep[..., None], np.maximum(want, 0) if relu else want, 0)
            got = jax.jit(lambda x, k, s, t, r, vh: direct_conv.conv3x3(
                x, k, stride, scale=s, shift=t, residual=r, relu=relu, valid_hw=vh))(
                x, k, scale, shift, residual, jnp.asarray(valid, jnp.int32))
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


def test_conv2d_uses_it_only_in_the_inference_scope(kernel):
    conv = Conv2d(18, 18, 3, 1, 1, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 8, 8, 18))
    f = lambda: jax.jit(lambda x: conv(x)).lower(x).as_text()
    assert "fcfi_direct_conv3x3" not in f()  # training and plain forwards: XLA's convolution
    with direct_conv.inference_scope():
        assert "fcfi_direct_conv3x3" in f()
        narrow = Conv2d(18, 8, 3, 1, 1, rngs=nnx.Rngs(0))  # < 16 output channels: most vector lanes idle
        assert "fcfi_direct_conv3x3" not in jax.jit(lambda x: narrow(x)).lower(x).as_text()
        assert "fcfi_direct_conv3x3" not in jax.jit(lambda x: conv(x.astype(jnp.bfloat16))).lower(x).as_text()
    with direct_conv.inference_scope(False):
        assert "fcfi_direct_conv3x3" not in f()


def test_build_failure_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("FCFI_JAX_CACHE", str(tmp_path))
    direct_conv.available.cache_clear()
    try:
        if jax.default_backend() == "cpu":
            with caplog.at_level("WARNING"):
                assert not direct_conv.available()
            assert "direct CPU convolutions unavailable" in caplog.text and "no-such-compiler" in caplog.text
            if shutil.which("g++"):  # a compiler that fails: its first error line is in the warning
                monkeypatch.setenv("CXX", f"g++ -include {tmp_path}/missing.h")
                direct_conv.available.cache_clear()
                caplog.clear()
                with caplog.at_level("WARNING"):
                    assert not direct_conv.available()
                assert "exited with" in caplog.text and "missing.h" in caplog.text
        monkeypatch.setenv("CXX", "g++")
        monkeypatch.setenv("FCFI_JAX_DIRECT_CONV", "0")
        direct_conv.available.cache_clear()
        assert not direct_conv.available()
    finally:
        direct_conv.available.cache_clear()


def test_fused_blocks_match_the_layer_by_layer_forward_on_a_canvas(kernel):
    """BasicBlock (residual), ConvBN (stride 2) and ConvBNReLU (bias) with random BatchNorm statistics, on a
    zero canvas larger than the true size: the folded-BN kernel equals XLA layer by layer, zeros included."""
    from fcfi_jax.models.layers import ConvBN, ConvBNReLU
    from fcfi_jax.models.resnet import BasicBlockV1b

    rngs = nnx.Rngs(0)
    blocks = [BasicBlockV1b(18, 18, rngs=rngs), ConvBN(18, 36, 3, 2, 1, act=True, rngs=rngs),
              ConvBN(18, 18, 3, 2, 1, act=False, rngs=rngs), ConvBNReLU(18, 32, rngs=rngs)]
    rng = np.random.default_rng(0)
    for block in blocks:
        for _, bn in nnx.iter_graph(block):
            if hasattr(bn, "running_var"):
                c = bn.running_var[...].shape[0]
                bn.running_mean.set_value(jnp.asarray(rng.standard_normal(c), jnp.float32))
                bn.running_var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32))
                bn.bias.set_value(jnp.asarray(rng.standard_normal(c), jnp.float32))
    hw = jnp.asarray([21, 27], jnp.int32)
    x = np.zeros((2, 32, 32, 18), np.float32)
    x[:, :21, :27] = rng.standard_normal((2, 21, 27, 18))
    for block in blocks:
        want = np.asarray(jax.jit(lambda x, hw: block(x, hw))(x, hw))
        with direct_conv.inference_scope():  # a new function: jit would reuse the trace made outside the scope
            fused = jax.jit(lambda x, hw: block(x, hw)).lower(x, hw)
        assert "fcfi_direct_conv3x3" in fused.as_text()
        got = np.asarray(fused.compile()(x, hw))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        vh, vw = (21, 27) if got.shape[1] == 32 else (11, 14)  # stride 2: ceil(n / 2)
        assert np.abs(want).max() > 0.1 and np.all(got[:, vh:] == 0) and np.all(got[:, :, vw:] == 0)


def test_hlo_flops_counts_the_kernel_calls(kernel):
    """tools/benchmark.py adds these FLOPs to XLA's count (which counts custom calls as 0)."""
    x, k1, k2 = jnp.ones((2, 9, 10, 18)), jnp.ones((3, 3, 18, 20)), jnp.ones((3, 3, 20, 32))
    f = lambda x, k1, k2: direct_conv.conv3x3(direct_conv.conv3x3(x, k1, 2), k2) + 1
    text = jax.jit(f).lower(x, k1, k2).compile().as_text()
    assert direct_conv.hlo_flops(text) == 2 * 9 * (2 * 5 * 5 * 20 * 18 + 2 * 5 * 5 * 32 * 20)
