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

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# ----------------------------------------------------------------------------------------
# Canvas helpers


def down2(hw):
    """Valid size after a stride-2 conv (3x3 pad 1 or 1x1): ceil(n / 2)."""
    return None if hw is None else (hw + 1) // 2


def valid_mask(shape_hw: tuple[int, int], hw, dtype=jnp.float32):
    """(H, W, 1) mask, 1 inside the valid region [0, h) x [0, w)."""
    rows = jnp.arange(shape_hw[0])[:, None] < hw[0]
    cols = jnp.arange(shape_hw[1])[None, :] < hw[1]
    return (rows & cols)[..., None].astype(dtype)


def apply_mask(x, hw):
    """Zero everything outside the valid region of x (B, H, W, C); identity when hw is None."""
    if hw is None:
        return x
    return jnp.where(valid_mask(x.shape[1:3], hw, jnp.bool_), x, jnp.zeros((), x.dtype))


# ----------------------------------------------------------------------------------------
# Resizes with PyTorch semantics (jax.image.resize matches none of them)


def _ac_matrix(out_size: int, in_size: int, out_valid=None, in_valid=None):
    """(out_size, in_size) bilinear align_corners=True interpolation matrix.

    PyTorch: src = dst * float32((in - 1) / (out - 1)) (0 if out == 1), i0 = floor(src),
    i1 = min(i0 + 1, in - 1), weights (1 - frac, frac). With `*_valid` (traced ints) the true
    sizes drive the grid, and rows/cols beyond them are zero.
    """
    n_in = in_size if in_valid is None else in_valid
    n_out = out_size if out_valid is None else out_valid
    n_in_f = jnp.asarray(n_in, jnp.float32)
    n_out_f = jnp.asarray(n_out, jnp.float32)
    scale = jnp.where(n_out_f > 1, (n_in_f - 1) / jnp.maximum(n_out_f - 1, 1), 0.0)
    dst = jnp.arange(out_size, dtype=jnp.float32)
    src = dst * scale
    i0 = jnp.floor(src).astype(jnp.int32)
    i0 = jnp.minimum(i0, jnp.asarray(n_in, jnp.int32) - 1)
    frac = src - i0.astype(jnp.float32)
    i1 = jnp.where(i0 < jnp.asarray(n_in, jnp.int32) - 1, i0 + 1, i0)
    cols = jnp.arange(in_size)[None, :]
    m = (cols == i0[:, None]) * (1.0 - frac)[:, None] + (cols == i1[:, None]) * frac[:, None]
    if out_valid is not None:
        m = m * (jnp.arange(out_size)[:, None] < out_valid)
    return m.astype(jnp.float32)


def _hp_matrix(out_size: int, in_size: int, out_valid=None, in_valid=None):
    """(out, in) bilinear align_corners=False matrix (half-pixel, src clamped at 0, no antialias).

    PyTorch: scale = float32(in / out), src = max(scale * (dst + 0.5) - 0.5, 0), i1 = min(i0 + 1, in - 1).
    """
    n_in = jnp.asarray(in_size if in_valid is None else in_valid, jnp.int32)
    n_out = jnp.asarray(out_size if out_valid is None else out_valid, jnp.int32)
    scale = n_in.astype(jnp.float32) / n_out.astype(jnp.float32)
    src = jnp.maximum(scale * (jnp.arange(out_size, dtype=jnp.float32) + 0.5) - 0.5, 0.0)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
    frac = src - i0.astype(jnp.float32)
    i1 = jnp.where(i0 < n_in - 1, i0 + 1, i0)
    cols = jnp.arange(in_size)[None, :]
    m = (cols == i0[:, None]) * (1.0 - frac)[:, None] + (cols == i1[:, None]) * frac[:, None]
    if out_valid is not None:
        m = m * (jnp.arange(out_size)[:, None] < out_valid)
    return m.astype(jnp.float32)


def _apply_separable(x, my, mx):
    """x (B, H, W, C), my (H', H), mx (W', W) -> (B, H', W', C) as two matmuls."""
    prec = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    y = jnp.einsum("oh,bhwc->bowc", my.astype(x.dtype), x, precision=prec)
    return jnp.einsum("pw,bowc->bopc", mx.astype(x.dtype), y, precision=prec)


def resize_ac(x, size: Sequence[int], in_hw=None, out_hw=None):
    """Bilinear resize with align_corners=True (PyTorch semantics) of x (B, H, W, C)."""
    out_h, out_w = size
    in_h, in_w = x.shape[1:3]
    if in_hw is None and (out_h, out_w) == (in_h, in_w):
        return x
    my = _ac_matrix(out_h, in_h, None if out_hw is None else out_hw[0], None if in_hw is None else in_hw[0])
    mx = _ac_matrix(out_w, in_w, None if out_hw is None else out_hw[1], None if in_hw is None else in_hw[1])
    return _apply_separable(x, my, mx)


def resize_hp(x, size: Sequence[int], in_hw=None, out_hw=None):
    """Bilinear resize with align_corners=False (PyTorch default) of x (B, H, W, C)."""
    in_h, in_w = x.shape[1:3]
    my = _hp_matrix(size[0], in_h, None if out_hw is None else out_hw[0], None if in_hw is None else in_hw[0])
    mx = _hp_matrix(size[1], in_w, None if out_hw is None else out_hw[1], None if in_hw is None else in_hw[1])
    return _apply_separable(x, my, mx)


def resize_nearest(x, size: Sequence[int]):
    """PyTorch legacy 'nearest': src = floor(dst * in / out)."""
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
    """torch.nn.Conv2d in NHWC. `weight` is stored HWIO: (kh, kw, in // groups, out)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = True, *, rngs: nnx.Rngs):
        k = kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        fan_in, fan_out = in_ch // groups * k * k, out_ch * k * k
        self.weight = nnx.Param(_xavier_gluon(rngs.params(), (k, k, in_ch // groups, out_ch), fan_in, fan_out))
        self.bias = nnx.Param(jnp.zeros((out_ch,))) if bias else None

    def __call__(self, x, hw=None):
        w = self.weight[...].astype(x.dtype)
        p = self.padding
        prec = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
        y = jax.lax.conv_general_dilated(
            x, w, window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
            rhs_dilation=(self.dilation, self.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups, precision=prec)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return apply_mask(y, down2(hw) if self.stride > 1 else hw)


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
            xf = x.astype(jnp.float32)
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
        scale = self.weight[...] * jax.lax.rsqrt(var + self.eps)
        shift = self.bias[...] - mean * scale
        y = x * scale.astype(dt) + shift.astype(dt)
        return apply_mask(y, hw)


def relu(x):
    return jax.nn.relu(x)


def leaky_relu(x, slope=0.2):
    return jnp.where(x >= 0, x, slope * x)


class ConvBNReLU(nnx.Module):
    """Official ConvBNReLU: Conv2d WITH bias -> BN -> ReLU (keys .conv, .bn)."""

    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, padding=1, *, rngs):
        self.conv = Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=True, rngs=rngs)
        self.bn = BatchNorm2d(out_ch)

    def __call__(self, x, hw=None):
        hw_out = down2(hw) if self.conv.stride > 1 else hw
        return relu(self.bn(self.conv(x, hw), hw_out))


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
        hw_out = down2(hw) if conv.stride > 1 else hw
        y = bn(conv(x, hw), hw_out)
        return relu(y) if self.act else y


class Holder(nnx.Module):
    """A named container with no computation, for official wrappers whose only role is a key prefix
    (e.g. `skip_project.skip_project`, `aspp.concurent.4.gap`)."""

    def __init__(self, **children):
        for name, child in children.items():
            setattr(self, name, child)
