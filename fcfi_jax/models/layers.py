"""Building blocks shared by both FCFI families (NHWC, PyTorch-compatible numerics).

Parameter names mirror PyTorch (`weight`, `bias`, `running_mean`, `running_var`) so that an
official state_dict key maps onto the NNX path of the same name (see `fcfi_jax/convert`).

Canvas execution: every layer takes an optional `hw`, the true (height, width) of its input as
an int32 array of shape (2,) (a traced value, so one compilation serves many sizes). When `hw`
is given, the input lives in the top-left corner of a larger zero canvas; each layer keeps
everything outside the valid region at exactly zero, which makes convolutions see the same
zero padding as on the true-size image. `hw=None` means the tensor has exactly its true size.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcfi_jax.models import direct_conv

# ----------------------------------------------------------------------------------------
# Canvas helpers


_canvas_cache = threading.local()


@contextlib.contextmanager
def canvas_cache(hw=None, level_masks=()):
    """Within one forward, derive each level's valid size and build its (H, W, 1) mask once.

    A canvas forward masks ~650 times on 7 levels and resizes 39 times; building the masks and resize taps
    every time cost ~1.5 s of the ~3.7 s it took to trace and lower the zoom-in click program. Entries are
    keyed by the identity of the `hw` arrays and hold them, so an id cannot be reused while the cache lives
    (one forward call).

    `level_masks` (from `canvas_level_masks`, computed on the host and passed into the compiled program)
    serve the masks of `hw`, `down2(hw)`, `down2(down2(hw))`, ...: XLA:CPU would otherwise inline a mask's
    iota/compare into each of the ~700 fusions that use it, which made the click program's HLO 49k lines
    instead of 29.6k and its compilation 1-2.5 s longer. A mask asked for with another `hw` array is built as
    usual.
    """
    prev = getattr(_canvas_cache, "entries", None)
    _canvas_cache.entries = {}
    try:
        level_hw = hw
        for m in level_masks:
            _canvas_cache.entries[_key(_mask_key(m.shape[:2], jnp.bool_), (level_hw,))] = (m, (level_hw,))
            level_hw = down2(level_hw)
        yield
    finally:
        _canvas_cache.entries = prev


def canvas_level_masks(canvas_hw: tuple[int, int], true_hw: tuple[int, int], levels: int = 6):
    """Host-side (numpy) bool masks (H_k, W_k, 1) of the valid region for levels k = 0..levels-1 of a canvas
    (sizes halved k times, rounded up, as by stride-2 convolutions and `down2`); see `canvas_cache`."""
    (ch, cw), (h, w), out = canvas_hw, true_hw, []
    for _ in range(levels):
        out.append(((np.arange(ch)[:, None] < h) & (np.arange(cw)[None, :] < w))[..., None])
        ch, cw, h, w = -(-ch // 2), -(-cw // 2), -(-h // 2), -(-w // 2)
    return tuple(out)


def _key(key, arrays: tuple):
    return (key, *map(id, arrays))


def _mask_key(shape_hw, dtype):
    return ("mask", tuple(shape_hw), jnp.dtype(dtype).name)


def _cached(key, arrays: tuple, make):
    """make(), computed once per (key, identities of `arrays`) inside `canvas_cache()`."""
    entries = getattr(_canvas_cache, "entries", None)
    if entries is None:
        return make()
    k = _key(key, arrays)
    if k not in entries:
        entries[k] = (make(), arrays)
    return entries[k][0]


def accum_dtype(dtype):
    """The dtype of reductions and resize coefficients for `dtype` inputs: float32 for float32 and bfloat16,
    float64 in the float64 mode (PyTorch's CPU kernels compute them in the input's "opmath" type, which is
    double for double tensors)."""
    return jnp.promote_types(dtype, jnp.float32)


def down2(hw):
    """Valid size after a stride-2 conv (3x3 pad 1 or 1x1): ceil(n / 2)."""
    return None if hw is None else _cached("down2", (hw,), lambda: (hw + 1) // 2)


def valid_mask(shape_hw: tuple[int, int], hw, dtype=jnp.float32):
    """(H, W, 1) mask, 1 inside the valid region [0, h) x [0, w); (B, H, W, 1) for a per-example hw (B, 2)."""
    def make():
        if jnp.dtype(dtype) != jnp.bool_:
            return valid_mask(shape_hw, hw, jnp.bool_).astype(dtype)
        rows = jnp.arange(shape_hw[0])[:, None] < hw[..., 0, None, None]
        cols = jnp.arange(shape_hw[1])[None, :] < hw[..., 1, None, None]
        return (rows & cols)[..., None]
    return _cached(_mask_key(shape_hw, dtype), (hw,), make)


def apply_mask(x, hw):
    """Zero everything outside the valid region of x (B, H, W, C); identity when hw is None."""
    if hw is None:
        return x
    return jnp.where(valid_mask(x.shape[1:3], hw, jnp.bool_), x, jnp.zeros((), x.dtype))


# ----------------------------------------------------------------------------------------
# Resizes with PyTorch semantics (jax.image.resize matches none of them)


def _ac_taps(out_size: int, in_size: int, out_valid=None, in_valid=None, dtype=jnp.float32):
    """Bilinear align_corners=True along one axis as two taps: (i0, i1) int32 and weights (w0, w1), each (out_size,).

    PyTorch: src = dst * opmath((in - 1) / (out - 1)) (0 if out == 1), i0 = floor(src),
    i1 = min(i0 + 1, in - 1), weights (1 - frac, frac), computed in `dtype` (float32, or float64 in the
    float64 mode). With `*_valid` (traced ints) the true sizes drive the grid, and outputs beyond
    `out_valid` get zero weights.
    """
    n_in = in_size if in_valid is None else in_valid
    n_out = out_size if out_valid is None else out_valid
    n_in_f = jnp.asarray(n_in, dtype)
    n_out_f = jnp.asarray(n_out, dtype)
    scale = jnp.where(n_out_f > 1, (n_in_f - 1) / jnp.maximum(n_out_f - 1, 1), 0.0)
    src = jnp.arange(out_size, dtype=dtype) * scale
    return _taps(src, n_in, out_size, out_valid)


def _hp_taps(out_size: int, in_size: int, out_valid=None, in_valid=None, dtype=jnp.float32):
    """Bilinear align_corners=False taps (half-pixel, src clamped at 0, no antialias), as `_ac_taps`.

    PyTorch: scale = opmath(in / out), src = max(scale * (dst + 0.5) - 0.5, 0), i1 = min(i0 + 1, in - 1).
    """
    n_in = jnp.asarray(in_size if in_valid is None else in_valid, jnp.int32)
    n_out = jnp.asarray(out_size if out_valid is None else out_valid, jnp.int32)
    scale = n_in.astype(dtype) / n_out.astype(dtype)
    src = jnp.maximum(scale * (jnp.arange(out_size, dtype=dtype) + 0.5) - 0.5, 0.0)
    return _taps(src, n_in, out_size, out_valid)


def _taps(src, n_in, out_size, out_valid):
    n_in = jnp.asarray(n_in, jnp.int32)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
    frac = src - i0.astype(src.dtype)
    i1 = jnp.where(i0 < n_in - 1, i0 + 1, i0)
    w0, w1 = 1.0 - frac, frac
    if out_valid is not None:
        inside = jnp.arange(out_size, dtype=jnp.int32) < out_valid
        w0, w1 = jnp.where(inside, w0, 0.0), jnp.where(inside, w1, 0.0)
    return i0, i1, w0, w1


def _taps_matrix(taps, in_size: int):
    """The (out, in) interpolation matrix of two-tap weights (i1 == i0 on the last row: weights add)."""
    i0, i1, w0, w1 = taps
    cols = jnp.arange(in_size, dtype=jnp.int32)[None, :]
    return ((cols == i0[:, None]) * w0[:, None] + (cols == i1[:, None]) * w1[:, None]).astype(w0.dtype)


def _ac_matrix(out_size: int, in_size: int, out_valid=None, in_valid=None, dtype=jnp.float32):
    """(out_size, in_size) bilinear align_corners=True interpolation matrix (see `_ac_taps`)."""
    return _taps_matrix(_ac_taps(out_size, in_size, out_valid, in_valid, dtype), in_size)


def _hp_matrix(out_size: int, in_size: int, out_valid=None, in_valid=None, dtype=jnp.float32):
    """(out, in) bilinear align_corners=False interpolation matrix (see `_hp_taps`)."""
    return _taps_matrix(_hp_taps(out_size, in_size, out_valid, in_valid, dtype), in_size)


def resize_impl() -> str:
    """'gather' (two-tap lerp: XLA:CPU runs it 5-15x faster than the matmul, measured) on CPU, 'matmul'
    (interpolation matrices: MXU / tensor cores) elsewhere; FCFI_JAX_RESIZE=gather|matmul overrides.
    Both compute w0 * x[i0] + w1 * x[i1] in the input dtype (they differ by float rounding only)."""
    impl = os.environ.get("FCFI_JAX_RESIZE", "")
    if impl in ("gather", "matmul"):
        return impl
    return "gather" if jax.default_backend() == "cpu" else "matmul"


def _lerp_axis(x, axis: int, taps):
    i0, i1, w0, w1 = taps
    shape = [1] * x.ndim
    shape[axis] = -1
    a = jnp.take(x, i0, axis=axis, mode="clip")
    b = jnp.take(x, i1, axis=axis, mode="clip")
    return a * w0.astype(x.dtype).reshape(shape) + b * w1.astype(x.dtype).reshape(shape)


def _apply_separable(x, ty, tx, impl=None):
    """x (B, H, W, C), row taps ty (out H'), column taps tx (out W') -> (B, H', W', C)."""
    if (impl or resize_impl()) == "gather":
        return _lerp_axis(_lerp_axis(x, 1, ty), 2, tx)
    my, mx = _taps_matrix(ty, x.shape[1]), _taps_matrix(tx, x.shape[2])
    prec = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    y = jnp.einsum("oh,bhwc->bowc", my.astype(x.dtype), x, precision=prec)
    return jnp.einsum("pw,bowc->bopc", mx.astype(x.dtype), y, precision=prec)


def resize_ac(x, size: Sequence[int], in_hw=None, out_hw=None, impl=None):
    """Bilinear resize with align_corners=True (PyTorch semantics) of x (B, H, W, C)."""
    out_h, out_w = size
    in_h, in_w = x.shape[1:3]
    if in_hw is None and (out_h, out_w) == (in_h, in_w):
        return x
    dt = accum_dtype(x.dtype)
    ty, tx = _cached(("ac_taps", out_h, out_w, in_h, in_w, dt.name), (out_hw, in_hw), lambda: (
        _ac_taps(out_h, in_h, None if out_hw is None else out_hw[0], None if in_hw is None else in_hw[0], dt),
        _ac_taps(out_w, in_w, None if out_hw is None else out_hw[1], None if in_hw is None else in_hw[1], dt)))
    return _apply_separable(x, ty, tx, impl)


def resize_hp(x, size: Sequence[int], in_hw=None, out_hw=None, impl=None):
    """Bilinear resize with align_corners=False (PyTorch default) of x (B, H, W, C)."""
    in_h, in_w = x.shape[1:3]
    dt = accum_dtype(x.dtype)
    ty = _hp_taps(size[0], in_h, None if out_hw is None else out_hw[0], None if in_hw is None else in_hw[0], dt)
    tx = _hp_taps(size[1], in_w, None if out_hw is None else out_hw[1], None if in_hw is None else in_hw[1], dt)
    return _apply_separable(x, ty, tx, impl)


def resize_nearest(x, size: Sequence[int]):
    """PyTorch legacy 'nearest': src = floor(dst * float32(in / out)) (float32 for every input dtype, as
    PyTorch's nearest_idx)."""
    in_h, in_w = x.shape[1:3]
    ry = jnp.minimum(jnp.floor(jnp.arange(size[0], dtype=jnp.float32) * jnp.float32(in_h / size[0])), in_h - 1)
    rx = jnp.minimum(jnp.floor(jnp.arange(size[1], dtype=jnp.float32) * jnp.float32(in_w / size[1])), in_w - 1)
    return x[:, ry.astype(jnp.int32)][:, :, rx.astype(jnp.int32)]


# ----------------------------------------------------------------------------------------
# Modules


def _xavier_gluon(key, shape, fan_in, fan_out):
    """Official init (XavierGluon gaussian, magnitude 2, 'avg'): N(0, sqrt(2 / ((fan_in + fan_out) / 2))).

    Drawn with NumPy from the NNX key: jax.random would compile once per weight shape (~100 shapes).
    """
    std = math.sqrt(2.0 / ((fan_in + fan_out) / 2.0))
    if isinstance(key, jax.core.Tracer):  # under nnx.eval_shape / jit: shapes only
        return std * jax.random.normal(key, shape, jnp.float32)
    seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).tolist()
    return jnp.asarray(std * np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _depthwise(x, w, padding: int, dilation: int):
    """Depthwise (channel multiplier 1, stride 1) conv of x (B, H, W, C) with w (kh, kw, 1, C) as a sum of
    kh * kw shifted, per-channel scaled copies: one elementwise fusion. XLA:CPU runs the grouped
    convolution it replaces at ~0.3 GFLOP/s (60-80 ms for a 120x160x64 3x3 layer, vs ~1 ms)."""
    kh, kw = w.shape[:2]
    h, wd = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho, wo = h + 2 * padding - dilation * (kh - 1), wd + 2 * padding - dilation * (kw - 1)
    y = None
    for i in range(kh):
        for j in range(kw):
            t = xp[:, i * dilation:i * dilation + ho, j * dilation:j * dilation + wo] * w[i, j, 0]
            y = t if y is None else y + t
    return y


class Conv2d(nnx.Module):
    """torch.nn.Conv2d in NHWC. `weight` is stored HWIO: (kh, kw, in // groups, out)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = True, *, rngs: nnx.Rngs):
        k = kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        fan_in, fan_out = in_ch // groups * k * k, out_ch * k * k
        self.weight = nnx.Param(_xavier_gluon(rngs.params(), (k, k, in_ch // groups, out_ch), fan_in, fan_out))
        self.bias = nnx.Param(jnp.zeros((out_ch,))) if bias else None

    def __call__(self, x, hw=None):
        """x (B, H, W, C), or a list of arrays whose channel concatenation is the input (a 1x1 conv then sums
        one matmul per part and never materialises the concatenation; parts may be (B, 1, 1, c) vectors,
        broadcast over the map)."""
        if isinstance(x, (list, tuple)):
            if self.weight.shape[0] == self.weight.shape[1] == 1 and self.groups == 1 and self.stride == 1:
                return self._pointwise(list(x), hw)
            size = max((t.shape[:3] for t in x), key=lambda s: s[1] * s[2])
            x = jnp.concatenate([jnp.broadcast_to(t, size + t.shape[-1:]) for t in x], axis=-1)
        w = self.weight[...].astype(x.dtype)
        p = self.padding
        if self.groups > 1 and self.groups == x.shape[-1] == w.shape[-1] and self.stride == 1:
            y = _depthwise(x, w, p, self.dilation)
            if self.bias is not None:
                y = y + self.bias[...].astype(x.dtype)
            return apply_mask(y, hw)
        if w.shape[0] == w.shape[1] == 1 and self.groups == 1 and p == 0 and self.stride == 1 and w.shape[2] <= 4:
            return self._pointwise([x], hw)
        hw_out = down2(hw) if self.stride > 1 else hw
        if self.direct(x):  # CPU inference: bias and mask in the kernel's epilogue
            return direct_conv.conv3x3(x, w, self.stride, shift=None if self.bias is None else self.bias[...],
                                       valid_hw=hw_out)
        prec = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
        y = jax.lax.conv_general_dilated(
            x, w, window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
            rhs_dilation=(self.dilation, self.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups, precision=prec)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return apply_mask(y, hw_out)

    def direct(self, x) -> bool:
        """Whether this conv of x runs as the direct CPU kernel (`direct_conv`: 3x3, inference scope)."""
        return (not isinstance(x, (list, tuple))
                and direct_conv.applies(x, self.weight[...], self.stride, self.padding, self.dilation, self.groups))

    def _pointwise(self, parts, hw):
        """1x1 conv of the channel concatenation of `parts`: per part a matmul, or, for <= 4 channels (the
        click maps at full resolution), broadcast multiply-adds that fuse with what follows (XLA:CPU spends
        ~10 ms on a K = 3 matmul over a 480x640 map)."""
        dt = parts[0].dtype
        w = self.weight[...].astype(dt)[0, 0]
        prec = jax.lax.Precision.HIGHEST if dt == jnp.float32 else None
        y, off = None, 0
        for t in parts:
            c = t.shape[-1]
            if c <= 4:
                contrib = sum(t[..., k:k + 1] * w[off + k] for k in range(c))
            else:
                contrib = jnp.dot(t, w[off:off + c], precision=prec)
            y = contrib if y is None else y + contrib
            off += c
        if off != w.shape[0]:
            raise ValueError(f"1x1 conv expects {w.shape[0]} input channels, got {off}")
        if self.bias is not None:
            y = y + self.bias[...].astype(dt)
        size = max((t.shape[:3] for t in parts), key=lambda s: s[1] * s[2])
        return apply_mask(jnp.broadcast_to(y, size + y.shape[-1:]), hw)


class BatchNorm2d(nnx.Module):
    """torch.nn.BatchNorm2d (eps 1e-5, momentum 0.1) over the channel axis of NHWC inputs.

    Train mode normalises with the biased batch variance and updates `running_var` with the
    unbiased one, as PyTorch does. Under `jax.jit` with the batch sharded over a mesh, the
    statistics are those of the global batch.
    """

    def __init__(self, ch: int, eps: float = 1e-5, momentum: float = 0.1):
        self.weight = nnx.Param(jnp.ones((ch,)))
        self.bias = nnx.Param(jnp.zeros((ch,)))
        self.running_mean = nnx.BatchStat(jnp.zeros((ch,)))
        self.running_var = nnx.BatchStat(jnp.ones((ch,)))
        self.eps, self.momentum = eps, momentum
        self.use_running_average = True

    def __call__(self, x, hw=None):
        dt = x.dtype
        if self.use_running_average:
            mean, var = self.running_mean[...], self.running_var[...]
        else:
            if hw is not None:
                raise ValueError("BatchNorm batch statistics are not defined on a padded canvas; train on exact shapes.")
            # Batch statistics to about double precision (PyTorch's CPU kernel accumulates in double):
            # a second pass corrects the float32 mean, and the variance is taken around it.
            xf = x.astype(accum_dtype(dt))
            mean = jnp.mean(xf, axis=(0, 1, 2))
            mean = mean + jnp.mean(xf - mean, axis=(0, 1, 2))
            d = xf - mean
            var = jnp.mean(jnp.square(d), axis=(0, 1, 2)) - jnp.square(jnp.mean(d, axis=(0, 1, 2)))
            n = x.shape[0] * x.shape[1] * x.shape[2]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            # set_value, not `[...] =`: NNX's indexed assignment inspects the tracer's sharding, which costs
            # ~0.1 s per BatchNorm while tracing (half the train step's trace time).
            self.running_mean.set_value((1 - m) * self.running_mean[...] + m * jax.lax.stop_gradient(mean))
            self.running_var.set_value((1 - m) * self.running_var[...] + m * jax.lax.stop_gradient(unbiased))
        scale, shift = self.affine(mean, var)
        y = x * scale.astype(dt) + shift.astype(dt)
        return apply_mask(y, hw)

    def affine(self, mean=None, var=None):
        """(scale, shift) of y = x * scale + shift; the running statistics by default."""
        mean = self.running_mean[...] if mean is None else mean
        var = self.running_var[...] if var is None else var
        scale = self.weight[...] * jax.lax.rsqrt(var + self.eps)
        return scale, self.bias[...] - mean * scale


def relu(x):
    return jax.nn.relu(x)


def conv_bn(conv: Conv2d, bn: BatchNorm2d, x, hw=None, *, act: bool = False, residual=None):
    """relu?(bn(conv(x)) [+ residual]), zero outside the valid region.

    With the direct CPU kernel (`direct_conv`, inference) this is one call with the BatchNorm's running
    statistics (and the conv's bias) folded into the kernel's epilogue: no separate pass over the output.
    """
    hw_out = down2(hw) if conv.stride > 1 else hw
    if bn.use_running_average and conv.direct(x):
        scale, shift = bn.affine()
        if conv.bias is not None:
            shift = shift + conv.bias[...] * scale
        return direct_conv.conv3x3(x, conv.weight[...], conv.stride, scale=scale, shift=shift, residual=residual,
                                   relu=act, valid_hw=hw_out)
    y = bn(conv(x, hw), hw_out)
    if residual is not None:
        y = y + residual
    return relu(y) if act else y


def leaky_relu(x, slope=0.2):
    return jnp.where(x >= 0, x, slope * x)


class ConvBNReLU(nnx.Module):
    """Official ConvBNReLU: Conv2d WITH bias -> BN -> ReLU (keys .conv, .bn)."""

    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, padding=1, *, rngs):
        self.conv = Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=True, rngs=rngs)
        self.bn = BatchNorm2d(out_ch)

    def __call__(self, x, hw=None):
        return conv_bn(self.conv, self.bn, x, hw, act=True)


class XConvBNReLU(nnx.Module):
    """Official XConvBNReLU: depthwise 3x3 (bias) -> 1x1 (bias) -> BN -> ReLU."""

    def __init__(self, in_ch, out_ch, *, rngs):
        self.conv3x3 = Conv2d(in_ch, out_ch, 3, 1, 1, groups=in_ch, bias=True, rngs=rngs)
        self.conv1x1 = Conv2d(out_ch, out_ch, 1, 1, 0, bias=True, rngs=rngs)
        self.bn = BatchNorm2d(out_ch)

    def __call__(self, x, hw=None):
        return relu(self.bn(self.conv1x1(self.conv3x3(x, hw), hw), hw))


class ConvBN(nnx.Module):
    """Sequential(conv (no bias), BN[, ReLU]) as used by HRNet transitions/fuse layers and ResNet downsample.

    Children live in `seq` (an `nnx.List`); the converter drops `seq` from paths, so the keys
    read `<name>.0.weight` and `<name>.1.running_mean` as in PyTorch.
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, act=False, dilation=1, *, rngs):
        self.seq = nnx.List([Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=False, rngs=rngs),
                                BatchNorm2d(out_ch)])
        self.act = act

    def __call__(self, x, hw=None):
        conv, bn = self.seq
        return conv_bn(conv, bn, x, hw, act=self.act)


class Holder(nnx.Module):
    """A named container with no computation, for official wrappers whose only role is a key prefix
    (e.g. `skip_project.skip_project`, `aspp.concurent.4.gap`)."""

    def __init__(self, **children):
        for name, child in children.items():
            setattr(self, name, child)
