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
        monkeypatch.setenv("CXX", "g++")
        monkeypatch.setenv("FCFI_JAX_DIRECT_CONV", "0")
        direct_conv.available.cache_clear()
        assert not direct_conv.available()
    finally:
        direct_conv.available.cache_clear()
