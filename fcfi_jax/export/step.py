"""The whole click step (zoom-in and flip included) as one exported function: image, click and state in, new
state and probabilities out.

`step_function(model, spec)` wraps `fcfi_jax.inference.click_step.click_step` with every shape fixed by
`StepSpec`, the weights and the step's lookup tables closed over (they become constants of the artifact) and
the session state passed as flat named arrays, so that a caller needs neither fcfi_jax nor a pytree type:

    state = initial state (see `initial_state` / the sidecar)
    for each click: probs, mask, *state = step(image, hw, click, *state)

The image lives in the top-left h x w corner of a fixed image canvas; the network input (the zoomed crop, or
the whole image on the first click) lives on a net canvas that holds both the image canvas and the zoom
target. Everything `Predictor` does around the network (zoom-in box and its keep rule, align-corners
resizes, flip and its average, sigmoid, inverse resize, threshold) is inside the artifact.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcfi_jax import ops
from fcfi_jax.inference.click_step import ClickState
from fcfi_jax.inference.defaults import POINTS_BUCKET, points_rows

# ClickState's fields, in its order: the names of the state inputs (prefixed state_) and outputs (new_state_).
STATE_FIELDS = ClickState._fields
STEP_INPUTS = ("image", "hw", "click") + tuple(f"state_{k}" for k in STATE_FIELDS)
STEP_OUTPUTS = ("probs", "mask") + tuple(f"new_state_{k}" for k in STATE_FIELDS)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Fixed shapes and settings of an exported click step.

    height, width: the image canvas (largest image served); zoom_in: (target, expansion) or None;
    flip: the horizontal-flip test-time augmentation; max_clicks: clicks per session (state slots).
    """

    height: int
    width: int
    zoom_in: tuple | None = (720, 3.0)
    flip: bool = True
    max_clicks: int = POINTS_BUCKET
    prob_thresh: float = 0.49
    dtype: str = "float32"

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise ValueError(f"size must be positive, got {self.height}x{self.width}")
        if self.max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {self.max_clicks}")
        if self.dtype != "float32":
            raise ValueError(f"only float32 export is supported, got {self.dtype}")

    @property
    def net_canvas(self):
        """Holds the image canvas (first click, unzoomed) and the zoomed input (longer side = target)."""
        t = self.zoom_in[0] if self.zoom_in else 0
        return max(self.height, t), max(self.width, t)

    def config(self):
        from fcfi_jax.inference.click_step import StepConfig

        return StepConfig(image_canvas=(self.height, self.width), net_canvas=self.net_canvas,
                          zoom_in=tuple(self.zoom_in) if self.zoom_in else None, with_flip=self.flip,
                          prob_thresh=self.prob_thresh, max_clicks=self.max_clicks,
                          points_n=points_rows(self.max_clicks))

    def state_structs(self):
        """jax.ShapeDtypeStruct of each state input, in `STATE_FIELDS` order (those of `click_step.init_state`)."""
        from fcfi_jax.inference.click_step import init_state

        return list(jax.eval_shape(lambda: init_state(self.config())))

    def input_structs(self):
        s = jax.ShapeDtypeStruct
        return [s((self.height, self.width, 3), jnp.float32), s((2,), jnp.int32), s((3,), jnp.int32),
                *self.state_structs()]

    @property
    def input_names(self):
        return list(STEP_INPUTS)

    @property
    def output_names(self):
        return list(STEP_OUTPUTS)


def initial_state(spec: StepSpec) -> dict:
    """The state of a fresh session as numpy arrays by input name (`click_step.init_state`)."""
    from fcfi_jax.inference.click_step import init_state

    return {f"state_{k}": np.asarray(v) for k, v in init_state(spec.config())._asdict().items()}


def step_function(model, spec: StepSpec):
    """f(image, hw, click, *state) -> (probs, mask, *new_state): `click_step` of `model` for `spec` (module doc)."""
    from fcfi_jax.inference.click_step import ClickState, click_step, make_tables, model_net

    cfg = spec.config()
    graphdef, params = nnx.split(model)
    tables = make_tables(cfg, model.feature_extractor.correction_module.expan_ratio)
    net = model_net(graphdef, ops.portable_kernels())  # no machine-specific custom call

    def f(image, hw, click, *state):
        hw = jnp.clip(hw.astype(jnp.int32), 1, jnp.asarray([spec.height, spec.width], jnp.int32))
        # The step reads the image as given: zero the canvas outside the true size (a caller who reuses a
        # canvas without clearing it still gets the exact-size result).
        inside = (jnp.arange(spec.height)[:, None] < hw[0]) & (jnp.arange(spec.width)[None, :] < hw[1])
        image = jnp.where(inside[..., None], image, 0.0)
        new, probs, mask = click_step(net, cfg, params, tables, image, hw, ClickState(*state), click)
        return _distinct((probs, mask, *new), (image, hw, click, *state))

    return f


def _distinct(outputs, inputs=()):
    """The outputs with every repeated value, and every input passed through, replaced by a copy (x + 0, the
    same numbers).

    The step returns some values twice (the probabilities are also the new state's, the zoom-in map is uf2) and
    some state unchanged (first_gate); an ONNX graph output is a named value, so one value cannot be two outputs
    or an input and an output (jax2onnx: "Conflicting custom names for one value")."""
    seen, out = {id(x) for x in inputs}, []
    for x in outputs:
        if id(x) in seen:
            x = x + jnp.zeros((), x.dtype)
        seen.add(id(x))
        out.append(x)
    return tuple(out)


def reference_step(model, spec: StepSpec):
    """fcfi_jax's own step for `spec` as the lockstep evaluator runs it, on XLA's convolutions (vmapped FFCM
    window, the model's division, no export substitutions): g(image, hw, click, state: ClickState) ->
    (state, probs, mask), jitted."""
    from fcfi_jax.inference.click_step import click_step, make_tables, model_net

    cfg = spec.config()
    graphdef, params = nnx.split(model)
    tables = make_tables(cfg, model.feature_extractor.correction_module.expan_ratio)
    net = model_net(graphdef, ops.for_backend(direct_conv=False))
    step = jax.jit(lambda p, t, i, hw, s, c: click_step(net, cfg, p, t, i, hw, s, c))
    return lambda image, hw, click, state: step(params, tables, image, hw, state, click)


def synthetic_session(spec: StepSpec, seed: int = 0):
    """(image canvas, hw, clicks) for verification: a random image on a true size smaller than the canvas and
    three clicks (positive, negative, positive) inside it."""
    rng = np.random.default_rng(seed)
    h, w = max(1, spec.height * 7 // 8), max(1, spec.width * 6 // 7)
    image = np.zeros((spec.height, spec.width, 3), np.float32)
    # smooth blobs rather than pixel noise, so that the feedback maps (and with them the zoom-in box) take shape
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    for c in range(3):
        cy, cx = rng.random(2)
        image[:h, :w, c] = 0.5 + 0.5 * np.cos(7 * ((yy - cy) ** 2 + (xx - cx) ** 2) ** 0.5 + c)
    image[:h, :w] += 0.05 * rng.random((h, w, 3), dtype=np.float32)
    image = np.clip(image, 0, 1).astype(np.float32)
    clicks = [(h // 2, w // 2, 1), (h // 5, w // 4, 0), (2 * h // 3, 3 * w // 5, 1)]
    return image, np.array([h, w], np.int32), [np.array(c, np.int32) for c in clicks]


def synthetic_object(spec: StepSpec, hw) -> np.ndarray:
    """(H, W) float32 zoom-in map for verification: 1 on an ellipse around the first synthetic click (a fifth of
    the true size across), 0 elsewhere."""
    h, w = int(hw[0]), int(hw[1])
    yy, xx = np.mgrid[:spec.height, :spec.width]
    inside = ((yy - h // 2) / max(1, h / 10)) ** 2 + ((xx - w // 2) / max(1, w / 10)) ** 2 <= 1
    return (inside & (yy < h) & (xx < w)).astype(np.float32)


def describe(spec: StepSpec, model, fmt: str, artifact: str, verification=None, checkpoint=None) -> dict:
    """The JSON sidecar of a step artifact: inputs, outputs, state and how to drive a session."""
    import datetime
    import os

    from fcfi_jax.export import _versions

    H, W, n = spec.height, spec.width, spec.max_clicks
    state_doc = {
        "probs": "(H, W) float32: probabilities after the last click (zeros before the first)",
        "uf1": "(H, W) float32: corrected feedback (FFCM) of the last click, in image pixels",
        "uf2": "(H, W) float32: fused feedback (CFFM) of the last click, in image pixels",
        "zmap": "(H, W) float32: the zoom-in's stored map (uf2 of the last click); the next box comes from it",
        "has_zmap": "bool scalar: zmap holds a map (false before the first click)",
        "roi": "(4,) int32: zoom-in box (row min, row max, col min, col max), inclusive, in image pixels",
        "has_roi": "bool scalar: roi holds a box",
        "clicks": f"({n}, 3) int32: clicks so far as (y, x, is_positive), unused rows (-1, -1, -1)",
        "n_clicks": "int32 scalar: clicks so far",
        "first_gate": "float32 scalar: gate of the first click (0)",
        "net_hw": "(2,) int32: size of the last network input (zoomed crop or whole image)",
    }
    structs = dict(zip(STEP_INPUTS, spec.input_structs()))
    init = initial_state(spec)

    def entry(name, desc, struct, **extra):
        return {"name": name, "shape": list(struct.shape), "dtype": jnp.dtype(struct.dtype).name,
                "description": desc, **extra}

    inputs = [
        entry("image", f"(H, W, 3) RGB (not BGR) / 255 in [0, 1], the h x w image in the top-left corner of a zero "
                       f"{H} x {W} canvas (the step zeroes anything outside h x w)", structs["image"]),
        entry("hw", f"(2,) int32: the true (h, w) of the image, 1 <= h <= {H}, 1 <= w <= {W} (clipped to that range)",
              structs["hw"]),
        entry("click", "(3,) int32: the new click (y, x, is_positive), y = row, x = column in image pixels, "
                       "inside h x w", structs["click"]),
    ]
    for k in STATE_FIELDS:
        v = init[f"state_{k}"]
        inputs.append(entry(f"state_{k}", state_doc[k], structs[f"state_{k}"],
                            initial=v.tolist() if v.size <= 4 * n else f"{'zeros' if not v.any() else 'full'}"))
    outputs = [
        {"name": "probs", "shape": [H, W], "dtype": "float32",
         "description": "probabilities after this click; read [:h, :w] (zeros outside)"},
        {"name": "mask", "shape": [H, W], "dtype": "bool",
         "description": f"probs > {spec.prob_thresh} inside h x w"},
    ] + [{"name": f"new_state_{k}", "shape": list(s.shape), "dtype": jnp.dtype(s.dtype).name,
          "description": f"the state after this click: pass it back as state_{k} with the next click"}
         for k, s in zip(STATE_FIELDS, spec.state_structs())]
    cfg = model.cfg.to_dict() if hasattr(model.cfg, "to_dict") else {}
    return {
        "what": "click step",
        "format": fmt,
        "artifact": os.path.basename(artifact),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": os.path.basename(checkpoint) if checkpoint else None,
        "architecture": cfg,
        "dtype": spec.dtype,
        "image_canvas_hw": [H, W],
        "max_input_hw": [H, W],
        "net_canvas_hw": list(spec.net_canvas),
        "zoom_in": ({"target": spec.zoom_in[0], "expansion": spec.zoom_in[1], "skip_clicks": 1, "min_crop_size": 200,
                     "recompute_thresh_iou": 0.5, "prob_thresh": 0.5} if spec.zoom_in else None),
        "flip": spec.flip,
        "prob_thresh": spec.prob_thresh,
        "max_clicks": n,
        "inputs": inputs,
        "outputs": outputs,
        "session": [
            "start with the initial state (each state_* input's `initial`: zeros, false, clicks all -1, "
            "n_clicks 0, first_gate 0)",
            "per click: outputs = step(image, hw, click, *state); state = the new_state_* outputs in order",
            f"at most {n} clicks per session (later clicks are not stored); a new image starts a new state",
            "positional order of the inputs and outputs is the order listed here (jax.export and ONNX alike)",
        ],
        "reference": "fcfi_jax.inference.click_step.click_step; the same as fcfi_jax.predict / Predictor with "
                     "these zoom-in and flip settings",
        "verification": verification,
        "versions": _versions(fmt),
    }
