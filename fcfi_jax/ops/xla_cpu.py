"""Forms of the reference layers that XLA:CPU runs faster, with the same values up to float rounding.

Each one replaces a plain-JAX form of `fcfi_jax.models.layers` when the caller puts it into `Kernels`
(`fcfi_jax.ops.cpu_kernels`); on GPU and TPU the reference forms (grouped convolution, one 1x1 convolution
of the concatenation, interpolation matrices on the matrix units) are the fast ones.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def depthwise(x, w, padding: int, dilation: int):
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


def pointwise(parts, w):
    """1x1 conv (no bias) of the channel concatenation of `parts` with w (Cin, Cout): per part a matmul,
    or, for <= 4 channels (the click maps at full resolution), broadcast multiply-adds that fuse with what
    follows (XLA:CPU spends ~10 ms on a K = 3 matmul over a 480x640 map). The concatenation is never
    materialised; parts may be (B, 1, 1, c) vectors, broadcast over the map."""
    prec = jax.lax.Precision.HIGHEST if parts[0].dtype == jnp.float32 else None
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
    return y


def lerp(x, ty, tx):
    """Separable two-tap resize of x (B, H, W, C) by row taps ty and column taps tx (each (i0, i1, w0, w1)) as
    gathers: XLA:CPU runs it 5-15x faster than the interpolation matrices (measured)."""
    return _lerp_axis(_lerp_axis(x, 1, ty), 2, tx)


def _lerp_axis(x, axis: int, taps):
    i0, i1, w0, w1 = taps
    shape = [1] * x.ndim
    shape[axis] = -1
    a = jnp.take(x, i0, axis=axis, mode="clip")
    b = jnp.take(x, i1, axis=axis, mode="clip")
    return a * w0.astype(x.dtype).reshape(shape) + b * w1.astype(x.dtype).reshape(shape)
