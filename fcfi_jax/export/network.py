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

The forward is traced with `ops.portable_kernels()`: without the direct 3x3 CPU kernel (a custom call into a
library compiled for this machine, which no other runtime could execute), and with the FFCM window and the
ResNet max pool in forms that ONNX holds (`fcfi_jax/ops/portable.py`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcfi_jax import ops
from fcfi_jax.inference.defaults import POINTS_BUCKET
from fcfi_jax.models.fcfi_modules import ffcm_half_size

INPUTS = ("image", "points", "new_points", "gate", "valid_hw")
OUTPUTS = ("instances", "updated_feedback1", "updated_feedback2")


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """Fixed shapes of an exported network call.

    height, width: the canvas (largest input served) or, with exact=True, the only input size.
    batch: 1, or 2 for the flip test-time augmentation in one call (image and its mirror).
    max_clicks: N, the points tensor holds N positive then N negative rows (default: the predictor's bucket,
    `defaults.POINTS_BUCKET`).
    """

    height: int
    width: int
    batch: int = 1
    max_clicks: int = POINTS_BUCKET
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


def network_function(model, spec: ExportSpec):
    """f(*inputs) -> (instances, updated_feedback1, updated_feedback2), each (B, H, W, 1) float32 (see module doc).

    The weights are closed over, so they become constants of whatever traces f.
    """
    graphdef, state = nnx.split(model)
    table = half_size_table(model, max(spec.height, spec.width))
    canvas_hw = np.asarray([spec.height, spec.width], np.int32)

    def call(image, points, new_points, gate, canvas):
        m = ops.use_kernels(nnx.merge(graphdef, state), ops.portable_kernels())
        out = m(image, points, new_points, gate, canvas=canvas)
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
