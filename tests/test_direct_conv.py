"""The direct CPU convolution kernel (fcfi_jax/ops/direct_conv.cc: 3x3 with padding == dilation and 1x1, stride 1
or 2, direct or Winograd F(2x2, 3x3)) against XLA's convolution, and how the layers reach it (`fcfi_jax.ops`)."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fcfi_jax import ops
from fcfi_jax.ops import direct_conv

TARGET = direct_conv._TARGET


@pytest.fixture(scope="module")
def kernel():
    if not direct_conv.available():
        if shutil.which("g++") and jax.default_backend() == "cpu":
            pytest.fail("g++ is installed but the direct conv kernel did not build (see the warning above)")
        pytest.skip("no C++ compiler or not on CPU: the direct kernel is not used here")


def _xla(x, w, stride, dilation=1):
    p = dilation * (w.shape[0] // 2)
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((p, p), (p, p)), rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


# Float32 sums of up to 9 * Cin products in another order (and, for Winograd, through the tile transforms, which
# only add, subtract and halve): the error relative to the sum of |products| measured at most 2.9e-7 (direct)
# and 5.1e-7 (Winograd) over SHAPES; the bound leaves ~4x.
REL = 2e-6

# (B, H, W, Cin, Cout, k, stride, dilation): HRNet's branch, transition and stem shapes (smaller), every
# output-vector chunking (1-16 vectors of 16, tails of 1-15 channels), rows shorter / not a multiple of the
# pixel block; ResNet-101's dilated layers (2, 4) and the ASPP's (12-36, most taps on the padding) on small maps,
# large Cin (split into blocks whose partial sums wait in the output), 1x1 layers.
SHAPES = [(2, 33, 44, 18, 18, 3, 1, 1), (1, 17, 22, 36, 36, 3, 1, 1), (2, 9, 11, 72, 72, 3, 1, 1),
          (1, 5, 6, 144, 144, 3, 1, 1), (1, 12, 20, 64, 64, 3, 1, 1), (2, 33, 44, 18, 36, 3, 2, 1),
          (1, 40, 56, 3, 64, 3, 2, 1), (1, 16, 16, 256, 18, 3, 1, 1), (1, 7, 5, 5, 17, 3, 1, 1), (1, 7, 5, 5, 17, 3, 2, 1),
          (3, 9, 10, 20, 40, 3, 2, 1), (1, 1, 1, 8, 16, 3, 1, 1), (1, 2, 3, 8, 31, 3, 2, 1), (1, 6, 9, 4, 80, 3, 1, 1),
          (1, 4, 4, 2, 256, 3, 1, 1),
          (2, 15, 20, 64, 64, 3, 1, 2), (1, 13, 17, 96, 128, 3, 1, 4), (1, 12, 16, 40, 33, 3, 1, 3),
          (1, 15, 20, 520, 64, 3, 1, 12), (1, 15, 20, 130, 48, 3, 1, 6), (1, 9, 14, 70, 32, 3, 1, 36),
          (1, 11, 13, 48, 64, 3, 2, 2), (2, 9, 9, 24, 16, 3, 2, 3),
          (2, 9, 11, 64, 256, 1, 1, 1), (1, 10, 13, 1100, 64, 1, 1, 1), (1, 9, 11, 96, 80, 1, 2, 1), (1, 3, 5, 7, 17, 1, 1, 1)]


def _ids(s):
    return "x".join(map(str, s[:5])) + f"_k{s[5]}s{s[6]}d{s[7]}"


def _methods(k, stride):
    return ("auto", "direct", "winograd") if (k, stride) == (3, 1) else ("auto",)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_matches_xla(kernel, shape):
    b, h, w, ci, co, k, s, d = shape
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.standard_normal((b, h, w, ci)), jnp.float32)
    kk = jnp.asarray(rng.standard_normal((k, k, ci, co)), jnp.float32)
    want = np.asarray(jax.jit(_xla, static_argnums=(2, 3))(x, kk, s, d))
    scale = np.asarray(jax.jit(_xla, static_argnums=(2, 3))(jnp.abs(x), jnp.abs(kk), s, d))  # sum of |products|
    for method in _methods(k, s):
        got = np.asarray(jax.jit(lambda x, kk: direct_conv.conv(x, kk, s, None, d, method=method))(x, kk))
        assert got.shape == want.shape
        err = np.abs(got - want)
        assert np.all(err <= REL * scale + 1e-6), (method, float((err / (scale + 1e-30)).max()))
    if k == 3:  # conv3x3 is conv of a 3x3 kernel
        np.testing.assert_array_equal(np.asarray(direct_conv.conv3x3(x, kk, s, d, d)), np.asarray(
            direct_conv.conv(x, kk, s, d, d)))


@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (3, 2, 1), (3, 1, 2), (3, 1, 12), (3, 2, 2), (1, 1, 1),
                                               (1, 2, 1)])
def test_epilogue(kernel, k, stride, dilation):
    """relu(conv * scale + shift + residual), zero outside each image's valid region (per-image (B, 2) and
    shared (2,) sizes), against the same computed with XLA; stride-1 3x3 by both methods."""
    rng = np.random.default_rng(7 * k + stride + dilation)
    b, h, w, ci, co = 2, 13, 18, 72, 80
    x = jnp.asarray(rng.standard_normal((b, h, w, ci)), jnp.float32)
    kk = jnp.asarray(rng.standard_normal((k, k, ci, co)), jnp.float32)
    scale, shift = (jnp.asarray(rng.standard_normal(co), jnp.float32) for _ in range(2))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    res = jnp.asarray(rng.standard_normal((b, ho, wo, co)), jnp.float32)
    bound = REL * np.asarray(_xla(jnp.abs(x), jnp.abs(kk), stride, dilation)) * np.abs(np.asarray(scale)) + 1e-5
    for valid in ([[ho, wo], [ho - 3, wo - 5]], [ho - 1, wo], [[0, 0], [1, wo]]):
        v = np.broadcast_to(np.asarray(valid), (b, 2))
        keep = (np.arange(ho)[None, :, None] < v[:, :1, None]) & (np.arange(wo)[None, None, :] < v[:, 1:, None])
        for residual, relu in ((None, False), (res, True)):
            want = _xla(x, kk, stride, dilation) * scale + shift + (0 if residual is None else residual)
            want = np.where(keep[..., None], np.maximum(want, 0) if relu else want, 0)
            for method in _methods(k, stride):
                got = jax.jit(lambda x, kk, s, t, r, vh: direct_conv.conv(
                    x, kk, stride, None, dilation, scale=s, shift=t, residual=r, relu=relu, valid_hw=vh,
                    method=method))(x, kk, scale, shift, residual, jnp.asarray(valid, jnp.int32))
                got = np.asarray(got)
                assert np.all(np.abs(got - want) <= bound), (method, float(np.abs(got - want).max()))
                assert np.all(got[~keep] == 0)


def test_supports():
    """What `Kernels.conv` serves: dense float32 3x3 with padding == dilation and 1x1 without padding, stride 1
    or 2, >= 16 output channels (1x1: >= 64 in and out)."""
    dc = direct_conv.DirectConv()
    x = jnp.zeros((1, 8, 8, 64), jnp.float32)
    w3, w1 = jnp.zeros((3, 3, 64, 32)), jnp.zeros((1, 1, 64, 64))
    yes = [(x, w3, 1, 1, 1, 1), (x, w3, 2, 1, 1, 1), (x, w3, 1, 2, 2, 1), (x, w3, 1, 36, 36, 1), (x, w3, 2, 4, 4, 1),
           (x, w1, 1, 0, 1, 1), (x, w1, 2, 0, 1, 1)]
    no = [(x, w3, 1, 0, 1, 1), (x, w3, 1, 1, 2, 1), (x, w3, 3, 1, 1, 1), (x, jnp.zeros((3, 3, 64, 8)), 1, 1, 1, 1),
          (x, jnp.zeros((3, 3, 1, 64)), 1, 1, 1, 64), (x.astype(jnp.bfloat16), w3, 1, 1, 1, 1),
          (x, jnp.zeros((5, 5, 64, 32)), 1, 2, 1, 1), (x, jnp.zeros((1, 1, 64, 32)), 1, 0, 1, 1),
          (x[..., :32], jnp.zeros((1, 1, 32, 64)), 1, 0, 1, 1), (x, w1, 1, 1, 1, 1), (x[0], w3, 1, 1, 1, 1)]
    assert all(dc.supports(*a) for a in yes)
    assert not any(dc.supports(*a) for a in no), [a[1:] for a in no if dc.supports(*a)]


def test_argument_errors(kernel):
    x = jnp.zeros((1, 8, 8, 16))
    with pytest.raises(ValueError, match="padding must be dilation"):
        direct_conv.conv(x, jnp.zeros((3, 3, 16, 16)), 1, 1, 2)
    with pytest.raises(ValueError, match="method"):
        direct_conv.conv(x, jnp.zeros((3, 3, 16, 16)), 2, method="winograd")
    with pytest.raises(ValueError, match="not 3x3"):
        direct_conv.conv3x3(x, jnp.zeros((1, 1, 16, 16)))


def test_vmap_folds_the_mapped_axis_into_the_kernel_batch(kernel):
    """The batching rule (the lockstep evaluator vmaps the click step over samples): a vmapped call, nested or
    with per-sample valid sizes and residuals, is ONE kernel call equal to calling each sample alone;
    per-sample weights fall back to one call per sample."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 2, 10, 12, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 16)) * 0.1, jnp.float32)
    res = jnp.asarray(rng.standard_normal((3, 2, 10, 12, 16)), jnp.float32)
    valid = jnp.asarray([[[9, 10], [10, 12]], [[10, 12], [10, 12]], [[3, 5], [10, 12]]], jnp.int32)
    f = lambda x, r, v: direct_conv.conv(x, w, 1, residual=r, relu=True, valid_hw=v, shift=jnp.ones(16))
    vf = jax.jit(jax.vmap(f))
    want = np.stack([np.asarray(f(x[i], res[i], valid[i])) for i in range(3)])
    np.testing.assert_array_equal(np.asarray(vf(x, res, valid)), want)
    assert vf.lower(x, res, valid).as_text().count(f"@{TARGET}(") == 1
    g = lambda x, v: direct_conv.conv(x[None], w, 2, valid_hw=v)[0]
    nested = jax.vmap(jax.vmap(g))(x, valid)
    np.testing.assert_array_equal(np.asarray(nested), np.stack([np.stack([np.asarray(g(x[i, j], valid[i, j]))
                                                                          for j in range(2)]) for i in range(3)]))
    per_weight = jax.vmap(lambda w: direct_conv.conv(x[0], w, 1))(jnp.stack([w, 2 * w]))
    np.testing.assert_array_equal(np.asarray(per_weight[1]), np.asarray(direct_conv.conv(x[0], 2 * w, 1)))


def _module_hlo(module, x, kernels, hw=None):
    graphdef, state = nnx.split(module)

    def f(state, x):
        return ops.use_kernels(nnx.merge(graphdef, state), kernels)(x, hw)

    return jax.jit(f).lower(state, x).as_text()


def test_the_layers_reach_it_through_the_cpu_kernels(kernel):
    """`ops.use_kernels(m, ops.cpu_kernels())` (the predictor's choice on CPU) puts the kernel into the lowered
    forward of the convolutions it supports, dilated ones included; REFERENCE, the trainer's kernels, bfloat16
    and narrow layers keep XLA's convolution."""
    from fcfi_jax.models.layers import Conv2d, ConvBN

    rngs = nnx.Rngs(0)
    x = jnp.ones((1, 12, 12, 64))
    served = [Conv2d(64, 64, 3, 1, 1, rngs=rngs), Conv2d(64, 32, 3, 1, 2, 2, rngs=rngs),
              Conv2d(64, 32, 3, 2, 4, 4, rngs=rngs), ConvBN(64, 64, 3, 1, 12, act=True, dilation=12, rngs=rngs),
              Conv2d(64, 64, 1, rngs=rngs)]
    for m in served:
        assert TARGET in _module_hlo(m, x, ops.cpu_kernels()), m
        assert TARGET in _module_hlo(m, x, ops.for_backend("cpu")), m
        assert TARGET not in _module_hlo(m, x, ops.REFERENCE), m
        assert TARGET not in _module_hlo(m, x, ops.cpu_kernels(direct_conv=False)), m  # the trainer on CPU
        assert TARGET not in _module_hlo(m, x.astype(jnp.bfloat16), ops.cpu_kernels()), m
    for m in (Conv2d(64, 8, 3, 1, 1, rngs=rngs), Conv2d(64, 64, 3, 1, 1, groups=64, rngs=rngs),
              Conv2d(64, 16, 1, rngs=rngs)):
        assert TARGET not in _module_hlo(m, x, ops.cpu_kernels()), m


def _random_bn(module, rng):
    for _, bn in nnx.iter_graph(module):
        if hasattr(bn, "running_var"):
            c = bn.running_var[...].shape[0]
            bn.running_mean.set_value(jnp.asarray(rng.standard_normal(c), jnp.float32))
            bn.running_var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32))
            bn.bias.set_value(jnp.asarray(rng.standard_normal(c), jnp.float32))


def test_fused_blocks_match_the_layer_by_layer_forward_on_a_canvas(kernel):
    """ResNet blocks (BasicBlock, dilated Bottlenecks with and without a stride-2 downsample), ConvBN (stride 2,
    dilated), ConvBNReLU (bias) with random BatchNorm statistics, on a zero canvas larger than the true size: the
    CPU kernels equal XLA layer by layer, zeros outside the true size included."""
    from fcfi_jax.models.layers import ConvBN, ConvBNReLU
    from fcfi_jax.models.resnet import BasicBlockV1b, BottleneckV1b, make_layer

    rngs = nnx.Rngs(0)
    blocks = [BasicBlockV1b(64, 64, rngs=rngs), ConvBN(64, 36, 3, 2, 1, act=True, rngs=rngs),
              ConvBN(64, 64, 3, 1, 2, act=True, dilation=2, rngs=rngs), ConvBN(64, 32, 3, 1, 12, dilation=12, rngs=rngs),
              ConvBNReLU(64, 32, rngs=rngs), BottleneckV1b(64, 16, dilation=2, previous_dilation=2, rngs=rngs),
              make_layer(BottleneckV1b, 64, 32, 2, stride=2, rngs=rngs)[0],
              BottleneckV1b(64, 16, 1, 2, None, 4, rngs=rngs)]  # layer4's first block: dilation 2, then 4
    rng = np.random.default_rng(0)
    hw = jnp.asarray([21, 27], jnp.int32)
    x = np.zeros((2, 32, 32, 64), np.float32)
    x[:, :21, :27] = np.maximum(rng.standard_normal((2, 21, 27, 64)), 0)
    for block in blocks:
        _random_bn(block, rng)
        want = np.asarray(jax.jit(lambda x, hw: block(x, hw))(x, hw))
        graphdef, state = nnx.split(block)
        fused = jax.jit(lambda s, x, hw: ops.use_kernels(nnx.merge(graphdef, s), ops.cpu_kernels())(x, hw))
        assert TARGET in fused.lower(state, x, hw).as_text(), type(block).__name__
        got = np.asarray(fused(state, x, hw))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5 * max(1.0, np.abs(want).max()))
        vh, vw = (21, 27) if got.shape[1] == 32 else (11, 14)  # stride 2: ceil(n / 2)
        assert np.abs(want).max() > 0.1 and np.all(got[:, vh:] == 0) and np.all(got[:, :, vw:] == 0)


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
        assert ops.cpu_kernels().conv is None  # the switch is read where the kernels are chosen
    finally:
        direct_conv.available.cache_clear()


def test_hlo_flops_counts_the_kernel_calls_as_xla_counts_convolutions(kernel):
    """tools/benchmark.py adds these FLOPs to XLA's count (which counts custom calls as 0): per call what XLA's
    cost analysis gives the same convolution, i.e. without the taps on the zero padding."""
    x, k1, k2, k3 = jnp.ones((2, 9, 10, 18)), jnp.ones((3, 3, 18, 20)), jnp.ones((3, 3, 20, 32)), jnp.ones((1, 1, 32, 64))
    f = lambda x, k1, k2, k3: direct_conv.conv(direct_conv.conv(direct_conv.conv(x, k1, 2), k2, 1, 3, 3), k3, 2) + 1
    text = jax.jit(f).lower(x, k1, k2, k3).compile().as_text()

    def xla_flops(x, k, s, d):
        cost = jax.jit(_xla, static_argnums=(2, 3)).lower(x, k, s, d).compile().cost_analysis()
        return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]

    want = (xla_flops(x, k1, 2, 1) + xla_flops(jnp.ones((2, 5, 5, 20)), k2, 1, 3)
            + xla_flops(jnp.ones((2, 5, 5, 32)), k3, 2, 1))
    assert direct_conv.hlo_flops(text) == want
    assert direct_conv.hlo_flops(text) < 2 * 2 * 5 * 5 * 20 * 18 * 9 + 2 * 2 * 5 * 5 * 32 * 20 * 9 + 2 * 2 * 3 * 3 * 64 * 32
