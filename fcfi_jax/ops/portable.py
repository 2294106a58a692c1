"""Forms of the FFCM window and the ResNet stem's max pool that every export format can hold (`tools/export.py`).

Under vmap a dynamic (update) slice becomes a batched gather/scatter; ONNX has no such scatter (jax2onnx:
"scatter pattern not supported in plugins") while a per-example DynamicUpdateSlice maps onto ONNX Slice and
ScatterND. The results are the same elements, copied; only the traced program differs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fcfi_jax.models import layers


def crop(x, sy, sx, win):
    """`fcfi_modules.crop` with the batch unrolled (B <= 2 here): one plain dynamic slice per example."""
    zero = jnp.zeros((), sy.dtype)  # a literal 0 would be int64 under jax_enable_x64 (float64 runs)
    return jnp.stack([jax.lax.dynamic_slice(x[b], (sy[b], sx[b], zero), (win[0], win[1], x.shape[-1]))
                      for b in range(x.shape[0])])


def paste(x, patch, sy, sx):
    """`fcfi_modules.paste` with the batch unrolled: one plain dynamic update slice per example."""
    zero = jnp.zeros((), sy.dtype)
    return jnp.stack([jax.lax.dynamic_update_slice(x[b], patch[b], (sy[b], sx[b], zero)) for b in range(x.shape[0])])


def max_pool_3x3_s2(x, hw=None):
    """`resnet.max_pool_3x3_s2` as the max of nine strided slices of the -inf padded input (the same values).

    jax2onnx lowers the NHWC reduce_window to an ONNX MaxPool that onnxruntime rejects ("Unsupported pooling
    size"); slices, Pad and Max are plain ONNX operations."""
    if hw is not None:
        x = jnp.where(layers.valid_mask(x.shape[1:3], hw, jnp.bool_), x, -jnp.inf)
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    oh, ow = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
    y = None
    for dy in range(3):
        for dx in range(3):
            s = p[:, dy:dy + 2 * oh - 1:2, dx:dx + 2 * ow - 1:2]
            y = s if y is None else jnp.maximum(y, s)
    return layers.apply_mask(y, layers.down2(hw))
