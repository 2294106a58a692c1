"""The network call of the predictor as a pure function of arrays, with the weights baked in, for export.

`network_function(model, spec)` returns `f(image, points, new_points, gate[, valid_hw]) -> (instances,
updated_feedback1, updated_feedback2)`: the call `Predictor` makes through `CanvasRunner`, with every shape
fixed by `ExportSpec` so that ONNX, StableHLO and SavedModel can hold it.

On a canvas (the default) the caller pastes an h x w input into the top-left corner of the canvas and passes
(h, w) as `valid_hw`; one artifact then serves every size up to the canvas, as the runner's compiled programs
do. What the runner computes on the host from (h, w) is computed in the graph here, so the caller passes two
integers and nothing else: the FFCM box half sizes come from a table made on the host with the model's own
Python float64 rule (an in-graph float32 `e * h / 2 + 0.5` could round the other way at a .5 boundary), and
the valid-region masks of the resolution levels are built by the model from `valid_hw`.

The forward is traced outside `direct_conv.inference_scope()`: the direct 3x3 kernel is a custom call into a
library compiled for this machine, which no other runtime could execute.
"""
from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcfi_jax.models import direct_conv, fcfi_modules, layers, resnet
from fcfi_jax.models.fcfi_modules import ffcm_half_size

INPUTS = ("image", "points", "new_points", "gate", "valid_hw")
OUTPUTS = ("instances", "updated_feedback1", "updated_feedback2")


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """Fixed shapes of an exported network call.

    height, width: the canvas (largest input served) or, with exact=True, the only input size.
    batch: 1, or 2 for the flip test-time augmentation in one call (image and its mirror).
    max_clicks: N, the points tensor holds N positive then N negative rows (the predictor's bucket of 24).
    """

    height: int
    width: int
    batch: int = 1
    max_clicks: int = 24
    exact: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise ValueError(f"size must be positive, got {self.height}x{self.width}")
        if self.batch not in (1, 2):
            raise ValueError(f"batch must be 1 or 2 (flip), got {self.batch}")
        if self.max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {self.max_clicks}")
        if self.dtype != "float32":
            raise ValueError(f"only float32 export is supported, got {self.dtype}")

    def input_structs(self):
        """jax.ShapeDtypeStruct of each input, in call order."""
        s = jax.ShapeDtypeStruct
        b = self.batch
        structs = [s((b, self.height, self.width, 4), jnp.float32), s((b, 2 * self.max_clicks, 3), jnp.float32),
                   s((b, 1, 3), jnp.int32), s((), jnp.float32)]
        if not self.exact:
            structs.append(s((2,), jnp.int32))
        return structs

    @property
    def input_names(self):
        return list(INPUTS[:4] if self.exact else INPUTS)

    @property
    def output_names(self):
        return list(OUTPUTS)


def half_size_table(model, n: int) -> np.ndarray:
    """int32 (n + 1, 2): row k = the FFCM half box (rows, cols) of an input k pixels high / wide."""
    e = model.feature_extractor.correction_module.expan_ratio
    return np.asarray([ffcm_half_size(e, k, k) for k in range(n + 1)], np.int32)


def _crop_unrolled(x, sy, sx, win):
    """`fcfi_modules._crop` with the batch unrolled (B <= 2 here): one plain dynamic slice per example."""
    zero = jnp.zeros((), sy.dtype)  # a literal 0 would be int64 under jax_enable_x64 (float64 runs)
    return jnp.stack([jax.lax.dynamic_slice(x[b], (sy[b], sx[b], zero), (win[0], win[1], x.shape[-1]))
                      for b in range(x.shape[0])])


def _paste_unrolled(x, patch, sy, sx):
    """`fcfi_modules._paste` with the batch unrolled: one plain dynamic update slice per example."""
    zero = jnp.zeros((), sy.dtype)
    return jnp.stack([jax.lax.dynamic_update_slice(x[b], patch[b], (sy[b], sx[b], zero)) for b in range(x.shape[0])])


def _max_pool_unrolled(x, hw=None):
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


@contextlib.contextmanager
def portable_ops():
    """Trace the FFCM window crop/paste without vmap and the ResNet stem's max pool as slices.

    Under vmap a dynamic (update) slice becomes a batched gather/scatter; ONNX has no such scatter (jax2onnx:
    "scatter pattern not supported in plugins") while a per-example DynamicUpdateSlice maps onto ONNX Slice
    and ScatterND. The results are the same elements, copied; only the traced program differs. For the max
    pool see `_max_pool_unrolled`.
    """
    saved = fcfi_modules._crop, fcfi_modules._paste, resnet.max_pool_3x3_s2
    fcfi_modules._crop, fcfi_modules._paste, resnet.max_pool_3x3_s2 = _crop_unrolled, _paste_unrolled, _max_pool_unrolled
    try:
        yield
    finally:
        fcfi_modules._crop, fcfi_modules._paste, resnet.max_pool_3x3_s2 = saved


def network_function(model, spec: ExportSpec):
    """f(*inputs) -> (instances, updated_feedback1, updated_feedback2), each (B, H, W, 1) float32 (see module doc).

    The weights are closed over, so they become constants of whatever traces f.
    """
    graphdef, state = nnx.split(model)
    table = half_size_table(model, max(spec.height, spec.width))
    canvas_hw = np.asarray([spec.height, spec.width], np.int32)

    def call(image, points, new_points, gate, canvas):
        m = nnx.merge(graphdef, state)
        with direct_conv.inference_scope(False), portable_ops():
            out = m(image, points, new_points, gate, is_training=False, canvas=canvas)
        return tuple(out[k].astype(jnp.float32) for k in OUTPUTS)

    if spec.exact:
        def f(image, points, new_points, gate):
            return call(image, points, new_points, gate, None)
    else:
        def f(image, points, new_points, gate, valid_hw):
            # Out-of-range sizes are clipped rather than trusted: an index past the table would read garbage.
            hw = jnp.clip(valid_hw.astype(jnp.int32), 1, jnp.asarray(canvas_hw))
            half = jnp.stack([jnp.asarray(table[:, 0])[hw[0]], jnp.asarray(table[:, 1])[hw[1]]])
            # The model keeps the padding at zero after every layer but reads the input as given: zero it here
            # so that a caller who forgets to clear the canvas still gets the exact-size result.
            rows = jnp.arange(spec.height)[:, None] < hw[0]
            cols = jnp.arange(spec.width)[None, :] < hw[1]
            image = jnp.where((rows & cols)[None, :, :, None], image, 0.0)
            return call(image, points, new_points, gate, jnp.concatenate([hw, half]))
    return f
