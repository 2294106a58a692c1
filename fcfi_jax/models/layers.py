"""Building blocks shared by both FCFI families (NHWC, PyTorch-compatible numerics).

Parameter names mirror PyTorch (`weight`, `bias`, `running_mean`, `running_var`) so that an
official state_dict key maps onto the NNX path of the same name (see `fcfi_jax/convert`).

Canvas execution: every layer takes an optional `hw`, the true (height, width) of its input as
an int32 array of shape (2,) (a traced value, so one compilation serves many sizes). When `hw`
is given, the input lives in the top-left corner of a larger zero canvas; each layer keeps
everything outside the valid region at exactly zero, which makes convolutions see the same
zero padding as on the true-size image. `hw=None` means the tensor has exactly its true size.
The model wraps it in a `Canvas`, which memoizes the masks and resize taps of one forward.

Every layer here is plain JAX. Faster or more portable forms of some (`fcfi_jax.ops`) are chosen by the
caller and reach the layers as their `kernels` attribute (`ops.use_kernels`); none is chosen in here.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcfi_jax.ops import REFERENCE

# ----------------------------------------------------------------------------------------
# Canvas helpers


class Canvas:
    """The valid (rows, cols) of a canvas tensor, int32 (2,) (or (B, 2) per example), and what derives from it,
    built once per forward.

    A canvas forward masks ~650 times on 7 levels and resizes 39 times; building the masks and resize taps
    every time cost ~1.5 s of the ~3.7 s it took to trace and lower the zoom-in click program, so
    `down2`, `valid_mask` and the resizes memoize them here. `level_masks` (from `canvas_level_masks`,
    computed on the host and passed into the compiled program) serve the masks of this level and its
    halvings: XLA:CPU would otherwise inline a mask's iota/compare into each of the ~700 fusions that use it,
    which made the click program's HLO 49k lines instead of 29.6k and its compilation 1-2.5 s longer.

    Everything that takes an `hw` also takes the plain array (nothing memoized then) or None (exact shapes).
    """

    def __init__(self, hw, level_masks=()):
        self.hw = hw
        self._memo = {}
        if level_masks:
            self._memo[_mask_key(level_masks[0].shape[:2], jnp.bool_)] = level_masks[0]
        self._lower_masks = tuple(level_masks[1:])

    def __getitem__(self, index):
        return self.hw[index]

    def memo(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def down2(self):
        return self.memo("down2", lambda: Canvas((self.hw + 1) // 2, self._lower_masks))


def as_array(hw):
    """The plain array (or None) of an `hw` (kernels take arrays)."""
    return hw.hw if isinstance(hw, Canvas) else hw


def canvas_level_masks(canvas_hw: tuple[int, int], true_hw: tuple[int, int], levels: int = 6):
    """Host-side (numpy) bool masks (H_k, W_k, 1) of the valid region for levels k = 0..levels-1 of a canvas
    (sizes halved k times, rounded up, as by stride-2 convolutions and `down2`); see `Canvas`."""
    (ch, cw), (h, w), out = canvas_hw, true_hw, []
    for _ in range(levels):
        out.append(((np.arange(ch)[:, None] < h) & (np.arange(cw)[None, :] < w))[..., None])
        ch, cw, h, w = -(-ch // 2), -(-cw // 2), -(-h // 2), -(-w // 2)
    return tuple(out)


def _mask_key(shape_hw, dtype):
    return ("mask", tuple(shape_hw), jnp.dtype(dtype).name)


def _memo(key, a, b, make):
    """make(), memoized on the first `Canvas` of (a, b) when the other is a `Canvas` or None."""
    holder, other = (a, b) if isinstance(a, Canvas) else (b, a)
    if not isinstance(holder, Canvas) or not (other is None or isinstance(other, Canvas)):
        return make()
    return holder.memo((key, other), make)


def accum_dtype(dtype):
    """The dtype of reductions and resize coefficients for `dtype` inputs: float32 for float32 and bfloat16,
    float64 in the float64 mode (PyTorch's CPU kernels compute them in the input's "opmath" type, which is
    double for double tensors)."""
    return jnp.promote_types(dtype, jnp.float32)


def down2(hw):
    """Valid size after a stride-2 conv (3x3 pad 1 or 1x1): ceil(n / 2)."""
    if hw is None:
        return None
    return hw.down2() if isinstance(hw, Canvas) else (hw + 1) // 2


def valid_mask(shape_hw: tuple[int, int], hw, dtype=jnp.float32):
    """(H, W, 1) mask, 1 inside the valid region [0, h) x [0, w); (B, H, W, 1) for a per-example hw (B, 2)."""
    def make():
        if jnp.dtype(dtype) != jnp.bool_:
            return valid_mask(shape_hw, hw, jnp.bool_).astype(dtype)
        rows = jnp.arange(shape_hw[0])[:, None] < hw[..., 0, None, None]
        cols = jnp.arange(shape_hw[1])[None, :] < hw[..., 1, None, None]
        return (rows & cols)[..., None]
    return hw.memo(_mask_key(shape_hw, dtype), make) if isinstance(hw, Canvas) else make()


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


def _apply_separable(x, ty, tx, lerp=None):
    """x (B, H, W, C), row taps ty (out H'), column taps tx (out W') -> (B, H', W', C): by interpolation
    matrices (the reference: matrix units on GPU/TPU), or by `lerp(x, ty, tx)` (`Kernels.lerp`). Both compute
    w0 * x[i0] + w1 * x[i1] in the input dtype (they differ by float rounding only)."""
    if lerp is not None:
        return lerp(x, ty, tx)
    my, mx = _taps_matrix(ty, x.shape[1]), _taps_matrix(tx, x.shape[2])
    prec = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    y = jnp.einsum("oh,bhwc->bowc", my.astype(x.dtype), x, precision=prec)
    return jnp.einsum("pw,bowc->bopc", mx.astype(x.dtype), y, precision=prec)


def resize_ac(x, size: Sequence[int], in_hw=None, out_hw=None, lerp=None):
    """Bilinear resize with align_corners=True (PyTorch semantics) of x (B, H, W, C); `lerp`: `Kernels.lerp`."""
    out_h, out_w = size
    in_h, in_w = x.shape[1:3]
    if in_hw is None and (out_h, out_w) == (in_h, in_w):
        return x
    dt = accum_dtype(x.dtype)
    ty, tx = _memo(("ac_taps", out_h, out_w, in_h, in_w, dt.name, out_hw is None), out_hw, in_hw, lambda: (
        _ac_taps(out_h, in_h, None if out_hw is None else out_hw[0], None if in_hw is None else in_hw[0], dt),
        _ac_taps(out_w, in_w, None if out_hw is None else out_hw[1], None if in_hw is None else in_hw[1], dt)))
    return _apply_separable(x, ty, tx, lerp)


def resize_hp(x, size: Sequence[int], in_hw=None, out_hw=None, lerp=None):
    """Bilinear resize with align_corners=False (PyTorch default) of x (B, H, W, C); `lerp`: `Kernels.lerp`."""
    in_h, in_w = x.shape[1:3]
    dt = accum_dtype(x.dtype)
    ty = _hp_taps(size[0], in_h, None if out_hw is None else out_hw[0], None if in_hw is None else in_hw[0], dt)
    tx = _hp_taps(size[1], in_w, None if out_hw is None else out_hw[1], None if in_hw is None else in_hw[1], dt)
    return _apply_separable(x, ty, tx, lerp)


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


class Conv2d(nnx.Module):
    """torch.nn.Conv2d in NHWC. `weight` is stored HWIO: (kh, kw, in // groups, out).

    `kernels` (set by `fcfi_jax.ops.use_kernels`) names faster forms of depthwise, 1x1 and 3x3 convolutions;
    the default is `lax.conv_general_dilated` for all of them."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = True, *, rngs: nnx.Rngs):
        k = kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        fan_in, fan_out = in_ch // groups * k * k, out_ch * k * k
        self.weight = nnx.Param(_xavier_gluon(rngs.params(), (k, k, in_ch // groups, out_ch), fan_in, fan_out))
        self.bias = nnx.Param(jnp.zeros((out_ch,))) if bias else None
        self.kernels = REFERENCE

    def __call__(self, x, hw=None):
        """x (B, H, W, C), or a list of arrays whose channel concatenation is the input (parts may be
        (B, 1, 1, c) vectors, broadcast over the map; `Kernels.pointwise` never materialises it)."""
        k, pointwise = self.kernels, self.weight.shape[0] == self.weight.shape[1] == 1 and self.groups == 1
        w = self.weight[...]
        if isinstance(x, (list, tuple)):
            size = max((t.shape[:3] for t in x), key=lambda s: s[1] * s[2])
            if pointwise and self.stride == 1 and k.pointwise is not None:
                return self._finish(jnp.broadcast_to(k.pointwise(list(x), w.astype(x[0].dtype)[0, 0]),
                                                     size + w.shape[-1:]), hw)
            x = jnp.concatenate([jnp.broadcast_to(t, size + t.shape[-1:]) for t in x], axis=-1)
        w = w.astype(x.dtype)
        if (pointwise and self.padding == 0 and self.stride == 1 and w.shape[2] <= 4 and k.pointwise is not None):
            return self._finish(k.pointwise([x], w[0, 0]), hw)
        if (self.groups > 1 and self.groups == x.shape[-1] == w.shape[-1] and self.stride == 1
                and k.depthwise is not None):
            return self._finish(k.depthwise(x, w, self.padding, self.dilation), hw)
        hw_out = down2(hw) if self.stride > 1 else hw
        if self.direct(x):  # the kernel's epilogue adds the bias and masks
            return k.conv(x, w, self.stride, self.padding, self.dilation,
                          shift=None if self.bias is None else self.bias[...], valid_hw=as_array(hw_out))
        p = self.padding
        prec = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
        y = jax.lax.conv_general_dilated(
            x, w, window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
            rhs_dilation=(self.dilation, self.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups, precision=prec)
        return self._finish(y, hw_out)

    def _finish(self, y, hw):
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return apply_mask(y, hw)

    def direct(self, x) -> bool:
        """Whether `Kernels.conv` serves this convolution of x (an array)."""
        k = self.kernels.conv
        return k is not None and k.supports(x, self.weight[...], self.stride, self.padding, self.dilation,
                                            self.groups)


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

    When `Kernels.conv` serves the convolution (eval mode) this is one call with the BatchNorm's running
    statistics (and the conv's bias) folded into the kernel's epilogue: no separate pass over the output.
    """
    hw_out = down2(hw) if conv.stride > 1 else hw
    if bn.use_running_average and not isinstance(x, (list, tuple)) and conv.direct(x):
        scale, shift = bn.affine()
        if conv.bias is not None:
            shift = shift + conv.bias[...] * scale
        return conv.kernels.conv(x, conv.weight[...], conv.stride, conv.padding, conv.dilation, scale=scale,
                                 shift=shift, residual=residual, relu=act, valid_hw=as_array(hw_out))
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
