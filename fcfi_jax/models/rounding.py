"""Correctly rounded float32 division of integers, identical on every backend.

The official code divides pixel coordinates by image sizes in float32 (FFCM's box, docs/official_quirks.md #7)
or in float64 stored to float32 (zoomed click coordinates, #29), and then floors, ceils or truncates. PyTorch's
division is IEEE (correctly rounded); XLA's is not everywhere: XLA:CPU divides a vector by a broadcast divisor
through its reciprocal (476 / 640 * 160 came out as 119.00001, so a box edge moved from 119 to 120 when the model
was vmapped), and TPUs divide through a refined reciprocal. A one-ulp difference before a floor moves a box or a
click by a pixel, so these quotients are computed here with integer arithmetic only: the same bits on every
device, with or without float64.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["div_f32"]

_CHUNK = 7  # quotient bits per long-division step: the remainder (< q < 2^24) shifted by 7 stays below 2^31


def div_f32(p, q):
    """float32 nearest to p / q (round half to even, as IEEE division), for integer-valued arrays
    |p| < 2^31 and 1 <= q < 2^24 with |p| / q < 2^24 (float32 holding integers, or int32; broadcast).

    Equal to `np.float32(p) / np.float32(q)` where both are exact in float32, and to the float64 quotient
    stored to float32 (never a double-rounding case for such p, q)."""
    p, q = jnp.broadcast_arrays(jnp.asarray(p).astype(jnp.int32), jnp.asarray(q).astype(jnp.int32))
    pp = jnp.maximum(jnp.abs(p), 1)
    # Exponent j of the quotient, 2^j <= p/q < 2^(j+1): leading bits, then compare the normalised values.
    lp = 31 - lax.clz(pp)
    lq = 31 - lax.clz(q)
    j = lp - lq - ((pp << (30 - lp)) < (q << (30 - lq))).astype(jnp.int32)
    s = 23 - j  # the 24-bit significand is floor(p 2^s / q); 0 <= s <= 47
    # Long division: whole part, then s more quotient bits, _CHUNK at a time (per element; unrolled so GPUs run
    # one fused kernel without a device loop).
    n = pp // q
    r = pp - n * q
    for i in range(-(-47 // _CHUNK)):
        k = jnp.clip(s - _CHUNK * i, 0, _CHUNK)
        r = r << k
        d = r // q
        r = r - d * q
        n = (n << k) + d
    # Round half to even on the remainder; n may become 2^24 (exact in float32).
    n = n + ((2 * r > q) | ((2 * r == q) & ((n & 1) == 1))).astype(jnp.int32)
    scale = lax.bitcast_convert_type((127 - s) << 23, jnp.float32)  # 2^-s, a normal float32
    quotient = n.astype(jnp.float32) * scale
    return jnp.where(p > 0, quotient, jnp.where(p < 0, -quotient, jnp.float32(0)))
