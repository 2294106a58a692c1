"""Correctly rounded float32 division of integers, identical on every backend.

The official code divides pixel coordinates by image sizes in float32 (FFCM's box, docs/official_quirks.md #7)
or in float64 stored to float32 (zoomed click coordinates, #29), and then floors, ceils or truncates. PyTorch's
division is IEEE (correctly rounded); XLA's is not everywhere: XLA:CPU divides a vector by a broadcast divisor
through its reciprocal (476 / 640 * 160 came out as 119.00001, so a box edge moved from 119 to 120 when the model
was vmapped), and TPUs divide through a refined reciprocal. A one-ulp difference before a floor moves a box or a
click by a pixel, so these quotients are computed here with integer arithmetic: the same bits on every device,
with or without float64.

Only integer comparisons, products, divisions and table look-ups are used, no bit operations: exported to ONNX
(tools/export.py) an int32 shift becomes BitShift, which onnxruntime accepts for unsigned types only.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["div_f32"]

_CHUNK = 7  # quotient bits per long-division step: the remainder (< q < 2^24) times 2^7 stays below 2^31
_POW2 = np.left_shift(1, np.arange(31)).astype(np.int32)                # 2^0 .. 2^30
_POW2_NEG = np.ldexp(np.float32(1), -np.arange(48)).astype(np.float32)  # 2^0 .. 2^-47, exact in float32


def div_f32(p, q):
    """float32 nearest to p / q (round half to even, as IEEE division), for integer-valued arrays
    |p| < 2^31 and 1 <= q < 2^24 with |p| / q < 2^24 (float32 holding integers, or int32; broadcast).

    Equal to `np.float32(p) / np.float32(q)` where both are exact in float32, and to the float64 quotient
    stored to float32 (never a double-rounding case for such p, q)."""
    p, q = jnp.broadcast_arrays(jnp.asarray(p).astype(jnp.int32), jnp.asarray(q).astype(jnp.int32))
    pow2 = jnp.asarray(_POW2)
    pp = jnp.maximum(jnp.abs(p), 1)

    def log2(v):  # floor(log2 v) for 1 <= v < 2^31: how many of 2^1 .. 2^30 are <= v
        return jnp.sum((v[..., None] >= pow2[1:]).astype(jnp.int32), axis=-1)

    def shl(v, k):  # v * 2^k, 0 <= k <= 30 (the callers keep it below 2^31)
        return v * jnp.take(pow2, k, mode="clip")

    # Exponent j of the quotient, 2^j <= p/q < 2^(j+1): leading bits, then compare the values normalised to 2^30.
    lp, lq = log2(pp), log2(q)
    j = lp - lq - (shl(pp, 30 - lp) < shl(q, 30 - lq)).astype(jnp.int32)
    s = 23 - j  # the 24-bit significand is floor(p 2^s / q); 0 <= s <= 47
    # Long division: whole part, then s more quotient bits, _CHUNK at a time (per element; unrolled so GPUs run
    # one fused kernel without a device loop).
    n = pp // q
    r = pp - n * q
    for i in range(-(-47 // _CHUNK)):
        k = jnp.clip(s - _CHUNK * i, 0, _CHUNK)
        r = shl(r, k)
        d = r // q
        r = r - d * q
        n = shl(n, k) + d
    # Round half to even on the remainder; n may become 2^24 (exact in float32).
    odd = (n - 2 * (n // 2)) == 1
    n = n + ((2 * r > q) | ((2 * r == q) & odd)).astype(jnp.int32)
    quotient = n.astype(jnp.float32) * jnp.take(jnp.asarray(_POW2_NEG), s, mode="clip")
    return jnp.where(p > 0, quotient, jnp.where(p < 0, -quotient, jnp.float32(0)))
