"""Export the predictor's network call for deployment: ONNX, StableHLO (jax.export) and TF SavedModel.

    from fcfi_jax.export import ExportSpec, export_model
    report = export_model(model, ExportSpec(1024, 1024, batch=2), "onnx", "h18s.onnx")

`tools/export.py` is the command line. The artifact holds the network call that `Predictor` makes (inputs: the
image with the previous-mask channel, the points, the newest click, the gate and, on a canvas, the true input
size; outputs: the logits and both feedbacks); the host-side steps around it (clicks to tensors, zoom-in, flip,
sigmoid, threshold) are written out in numpy in `examples/onnx_predict.py` and listed in the JSON sidecar
(`describe`) written next to the artifact.

`export_step(model, StepSpec(...), fmt, path)` exports the whole click step instead (`fcfi_jax.export.step`:
zoom-in, flip, sigmoid and threshold inside; image, click and session state in, probabilities and new state out).

Every export verifies itself: the written file is loaded back the way a deployment loads it and run on a
synthetic input (random image and previous mask, a positive and a negative click, gate 1, a true size smaller
than the canvas); its outputs must match the JAX model within the tolerance or nothing is left on disk.
"""
from __future__ import annotations

import datetime
import os
import shutil
import tempfile

import numpy as np

from fcfi_jax.export.network import INPUTS, OUTPUTS, ExportSpec, network_function

FORMATS = ("onnx", "stablehlo", "savedmodel")
# Max abs difference allowed between the artifact and JAX on the synthetic input (probabilities, logits relative
# to 1 + |logit|, both feedbacks). A faithful conversion differs only by float32 rounding: ~1e-6 with trained
# weights, but the random-weight fixtures on the random-pixel verification image amplify it with the canvas:
# 1.2e-3 at 512x640 and 1.5e-2 (logits, relative) at the default 1024x1024 canvas, onnxruntime vs XLA, HRNet18s.
# That is noise, not a conversion error: against a float64 run of the same function the XLA float32 result is
# itself 6.5e-3 off there and onnxruntime's 8.8e-3. The bound is twice the largest measured; a wrong conversion
# (a misplaced tensor, a wrong layout) is off by O(1).
DEFAULT_TOLERANCE = 3e-2

__all__ = ["DEFAULT_TOLERANCE", "FORMATS", "INPUTS", "OUTPUTS", "ExportError", "ExportSpec", "describe", "export_step",
           "export_model", "network_function", "synthetic_inputs"]


class ExportError(RuntimeError):
    """The artifact could not be written or does not reproduce the model (nothing was left on disk)."""


def synthetic_inputs(spec: ExportSpec, seed: int = 0) -> dict:
    """A verification input for `spec`: random RGB and previous mask on a true size smaller than the canvas,
    one positive and one negative click (the newest), gate 1; with batch 2 the second example is the mirror."""
    rng = np.random.default_rng(seed)
    h, w = (spec.height, spec.width) if spec.exact else (max(1, spec.height * 7 // 8), max(1, spec.width * 6 // 7))
    x = np.zeros((spec.batch, spec.height, spec.width, 4), np.float32)
    x[0, :h, :w] = rng.random((h, w, 4), dtype=np.float32)
    clicks = [(0.4 * h, 0.45 * w, True), (0.7 * h, 0.65 * w, False)]
    lists = [clicks]
    if spec.batch == 2:
        x[1, :h, :w] = x[0, :h, ::-1][:, -w:]
        lists.append([(y, w - 1 - c, p) for y, c, p in clicks])
    n = spec.max_clicks
    points = np.full((spec.batch, 2 * n, 3), -1, np.float32)
    for b, cl in enumerate(lists):
        (py, px, _), (ny, nx, _) = cl
        points[b, 0], points[b, n] = (py, px, 0), (ny, nx, 1)
    new_points = np.array([[(int(cl[-1][0]), int(cl[-1][1]), int(cl[-1][2]))] for cl in lists], np.int32)
    feed = {"image": x, "points": points, "new_points": new_points, "gate": np.asarray(1.0, np.float32)}
    if not spec.exact:
        feed["valid_hw"] = np.array([h, w], np.int32)
    return feed


def _compare(got, want, hw):
    """Max abs errors on the valid region: the logits as probabilities (what the mask is made of) and relative
    to 1 + |logit| (random weights saturate the sigmoid, which alone would hide errors), and both feedbacks."""
    h, w = hw
    a, b = ([np.asarray(o, np.float64)[:, :h, :w] for o in outs] for outs in (got, want))
    if not all(np.all(np.isfinite(x)) for x in a):
        return {"instances_sigmoid": float("inf")}
    sig = lambda x: 1 / (1 + np.exp(-x))
    return {"instances_sigmoid": float(np.max(np.abs(sig(a[0]) - sig(b[0])))),
            "instances_relative": float(np.max(np.abs(a[0] - b[0]) / (1 + np.abs(b[0])))),
            "updated_feedback1": float(np.max(np.abs(a[1] - b[1]))),
            "updated_feedback2": float(np.max(np.abs(a[2] - b[2])))}


def _versions(fmt):
    import jax

    v = {"jax": jax.__version__}
    mods = {"onnx": ["jax2onnx", "onnx", "onnx_ir", "onnxruntime"], "savedmodel": ["tensorflow"]}.get(fmt, [])
    for name in mods:
        try:
            from importlib.metadata import version

            v[name] = version(name.replace("_", "-"))
        except Exception:  # a version we cannot read is not a reason to fail the export
            pass
    return v


def describe(spec: ExportSpec, model, fmt: str, artifact: str, verification: dict | None = None,
             checkpoint: str | None = None) -> dict:
    """The JSON sidecar: every input and output, the value conventions, and what the caller must do."""
    b, h, w, n = spec.batch, spec.height, spec.width, spec.max_clicks
    canvas = not spec.exact
    crop = "; read [:, :h, :w] (the true size passed in valid_hw)" if canvas else ""
    inputs = [
        {"name": "image", "shape": [b, h, w, 4], "dtype": "float32", "layout": "NHWC",
         "description": "channels 0-2: RGB (not BGR) divided by 255, in [0, 1]; channel 3: the previous "
                        "probabilities in [0, 1] (all zeros on the first click)"
                        + ("; an h x w input goes in the top-left corner of a zero canvas, h <= %d, w <= %d "
                           "(the graph zeroes anything outside it)" % (h, w) if canvas else ""),
         **({"batch": "example 0: the input; example 1: the same input mirrored left-right (flip test-time "
                      "augmentation)"} if b == 2 else {})},
        {"name": "points", "shape": [b, 2 * n, 3], "dtype": "float32", "layout": "(batch, row, (y, x, index))",
         "description": f"every click so far as (y, x, click index), y = row and x = column in pixels of the "
                        f"network input (after zoom-in and flip), index = 0-based order of the click; rows 0..{n - 1}"
                        f" hold the positive clicks in order, rows {n}..{2 * n - 1} the negative clicks; unused "
                        f"rows are (-1, -1, -1)",
         "max_clicks": {"positive": n, "negative": n}, "padding": -1},
        {"name": "new_points", "shape": [b, 1, 3], "dtype": "int32", "layout": "(batch, 1, (y, x, is_positive))",
         "description": "the newest click: int(y), int(x) truncated toward zero (a mirrored x in (-1, 0) "
                        "becomes 0) and 1 for positive, 0 for negative"},
        {"name": "gate", "shape": [], "dtype": "float32", "layout": "scalar",
         "description": "0.0 on the first click (no feedback to fuse), 1.0 on every later click"},
    ]
    if canvas:
        inputs.append({"name": "valid_hw", "shape": [2], "dtype": "int32", "layout": "(h, w)",
                       "description": f"true height and width of the input inside the canvas, 1 <= h <= {h}, "
                                      f"1 <= w <= {w} (clipped to that range)"})
    outputs = [
        {"name": "instances", "shape": [b, h, w, 1], "dtype": "float32", "layout": "NHWC",
         "description": "segmentation logits; probabilities = sigmoid(logits)" + crop},
        {"name": "updated_feedback1", "shape": [b, h, w, 1], "dtype": "float32", "layout": "NHWC",
         "description": "previous mask corrected around the newest click (FFCM), upsampled" + crop},
        {"name": "updated_feedback2", "shape": [b, h, w, 1], "dtype": "float32", "layout": "NHWC",
         "description": "fused feedback (CFFM), upsampled; with zoom-in it chooses the next crop" + crop},
    ]
    cfg = model.cfg.to_dict() if hasattr(model.cfg, "to_dict") else {}
    return {
        "format": fmt,
        "artifact": os.path.basename(artifact),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": os.path.basename(checkpoint) if checkpoint else None,
        "architecture": cfg,
        "dtype": spec.dtype,
        "shapes": ({"mode": "canvas", "canvas_hw": [h, w], "max_input_hw": [h, w],
                    "note": "one artifact serves every input size up to the canvas; a portrait input must fit "
                            "as it is (it is not transposed)"} if canvas else
                   {"mode": "exact", "input_hw": [h, w], "max_input_hw": [h, w]}),
        "batch": b,
        "flip": b == 2,
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": [
            "image: uint8 RGB / 255 as float32; append the previous probabilities as channel 3",
            "from the second click on, with zoom-in (target 720, expansion 3.0 by default): crop the box of the "
            "last stored feedback2 map (> 0.5) and all clicks, expanded 3x (200 px minimum), resize it with "
            "bilinear align_corners=True so that its longer side is the target, remap clicks y' = h' (y - top) / h",
            "flip: append the mirrored input with clicks (y, w - 1 - x)",
            "points: positives then negatives, -1 padded to max_clicks each; new_points: the newest click, "
            "truncated to int",
            "canvas: paste the h x w input into a zero canvas and pass valid_hw = (h, w)" if canvas else
            f"the network input must be exactly {h} x {w}",
        ],
        "postprocessing": [
            "crop the outputs to [:, :h, :w]" if canvas else "outputs have the input size",
            "flip: average example 0 with example 1 mirrored back, for each output",
            "probabilities = sigmoid(instances average); with zoom-in resize probabilities, feedback1 and "
            "feedback2 back into the crop box (zeros elsewhere), in that order",
            "mask = probabilities > 0.49",
        ],
        "session": "first click: previous mask all zeros and gate 0; every later click: previous mask = the "
                   "previous probabilities and gate 1",
        "reference": "examples/onnx_predict.py implements every step above in numpy",
        "verification": verification,
        "versions": _versions(fmt),
    }


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def export_model(model, spec: ExportSpec, fmt: str, output: str, tolerance: float = DEFAULT_TOLERANCE,
                 checkpoint: str | None = None, log=print) -> dict:
    """Write `output` (a file, or a directory for savedmodel) and `output + '.json'`; returns the sidecar.

    The artifact is written beside `output` under a temporary name, loaded back, run on `synthetic_inputs`
    and compared with the JAX forward; only then is it moved into place. Raises ExportError (nothing written)
    when it does not reproduce the model within `tolerance`.
    """
    import time

    import jax

    from fcfi_jax.export import formats

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    output = os.path.abspath(output)
    directory = os.path.dirname(output)
    os.makedirs(directory, exist_ok=True)
    f = network_function(model, spec)
    feed = synthetic_inputs(spec)

    tmp_dir = tempfile.mkdtemp(prefix=".export-", dir=directory)
    tmp = os.path.join(tmp_dir, os.path.basename(output))
    try:
        t0 = time.perf_counter()
        formats.WRITERS[fmt](f, spec, tmp)
        log(f"wrote {fmt} in {time.perf_counter() - t0:.1f} s; verifying on a synthetic input")
        try:
            got = formats.LOADERS[fmt](tmp)(feed)
        except Exception as e:  # the runtime's own error types (onnxruntime, TensorFlow): report, write nothing
            msg = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise ExportError(f"the {fmt} artifact was written but cannot be run: {msg} (nothing written)") from None
        want = jax.jit(f)(*(feed[k] for k in spec.input_names))
        hw = feed.get("valid_hw", (spec.height, spec.width))
        errors = _compare(got, want, hw)
        worst = max(errors, key=errors.get)
        if not errors[worst] <= tolerance:
            raise ExportError(f"the {fmt} artifact does not reproduce the model: max abs error {errors[worst]:.3g} "
                              f"on {worst} > tolerance {tolerance:g} (nothing written)")
        verification = {"input_hw": [int(v) for v in hw], "batch": spec.batch, "max_abs_error": errors,
                        "tolerance": tolerance, "compared_with": "the JAX forward of the same function",
                        "instances": "compared as sigmoid probabilities and as |difference| / (1 + |logit|)"}
        return _install(tmp, tmp_dir, output, describe(spec, model, fmt, output, verification, checkpoint))
    finally:
        _remove(tmp_dir)


def _install(tmp, tmp_dir, output, sidecar):
    """Move a verified artifact (file or folder) from `tmp` to `output` and write its sidecar `output`.json.
    Only now is an old artifact replaced: a failed export leaves the previous file untouched."""
    import json

    sidecar["artifact_bytes"] = (sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(tmp) for n in ns)
                                 if os.path.isdir(tmp) else os.path.getsize(tmp))
    if os.path.isdir(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    side_tmp = os.path.join(tmp_dir, "sidecar.json")
    with open(side_tmp, "w") as fh:
        json.dump(sidecar, fh, indent=1)
    os.replace(side_tmp, output + ".json")
    return sidecar


def _compare_step(got, want, prob_thresh):
    """Max abs error of each float output of the click step, and whether every integer and bool output is equal
    (both runs get the same state, so the zoom-in box, sizes and clicks must agree exactly). The mask may differ
    only where the probabilities are within their own error of `prob_thresh` (a rounding can cross it)."""
    from fcfi_jax.export.step import STEP_OUTPUTS

    errors, mismatched = {}, []
    for name, a, b in zip(STEP_OUTPUTS, got, want):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            mismatched.append(f"{name} shape {a.shape} != {b.shape}")
        elif np.issubdtype(b.dtype, np.floating):
            errors[name] = float(np.max(np.abs(a.astype(np.float64) - b))) if np.all(np.isfinite(a)) else float("inf")
        elif name != "mask" and not np.array_equal(a, b):
            mismatched.append(name)
    i, j = STEP_OUTPUTS.index("probs"), STEP_OUTPUTS.index("mask")
    if "probs" in errors and np.shape(got[j]) == np.shape(want[j]):
        near = np.abs(np.asarray(want[i], np.float64) - prob_thresh) <= errors["probs"]
        if np.any((np.asarray(got[j]) != np.asarray(want[j])) & ~near):
            mismatched.append("mask")
    return errors, mismatched


def export_step(model, spec, fmt: str, output: str, tolerance: float = DEFAULT_TOLERANCE,
                checkpoint: str | None = None, log=print) -> dict:
    """Write the whole click step (`step.step_function`) as `output` and its sidecar; returns the sidecar.

    Verified like `export_model`: the written file is loaded back and run for three clicks of a synthetic
    session, each click given the same state as the JAX step (with zoom-in, a synthetic object as the zoom map
    of clicks 2 and 3, so that they run zoomed); probabilities and feedback maps must match within `tolerance`,
    the integer state (zoom box, sizes, clicks) exactly, the mask wherever the probabilities are not within their
    error of the threshold, or ExportError and nothing is written.
    """
    import time

    import jax

    from fcfi_jax.export import formats, step

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    output = os.path.abspath(output)
    directory = os.path.dirname(output)
    os.makedirs(directory, exist_ok=True)
    f = step.step_function(model, spec)
    tmp_dir = tempfile.mkdtemp(prefix=".export-", dir=directory)
    tmp = os.path.join(tmp_dir, os.path.basename(output))
    try:
        t0 = time.perf_counter()
        formats.WRITERS[fmt](f, spec, tmp)
        log(f"wrote the {fmt} click step in {time.perf_counter() - t0:.1f} s; verifying on three synthetic clicks")
        names = spec.input_names
        load = formats.LOADERS[fmt]
        try:
            run = (load(tmp, inputs=tuple(names)) if fmt == "stablehlo" else load(tmp, outputs=spec.output_names))
        except Exception as e:  # the runtime's own error types: report, write nothing
            msg = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise ExportError(f"the {fmt} click step was written but cannot be loaded: {msg} (nothing written)") from None
        ref = jax.jit(f)
        image, hw, clicks = step.synthetic_session(spec)
        state = step.initial_state(spec)
        worst, per_click = {}, []
        for k, click in enumerate(clicks):
            feed = {"image": image, "hw": hw, "click": click, **state}
            try:
                got = run(feed)
            except Exception as e:
                msg = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                raise ExportError(f"the {fmt} click step was written but cannot be run: {msg} (nothing written)") from None
            want = [np.asarray(o) for o in ref(*(feed[n] for n in names))]
            errors, mismatched = _compare_step(got, want, spec.prob_thresh)
            if mismatched:
                raise ExportError(f"the {fmt} click step does not reproduce the model: click {k + 1} gives another "
                                  f"{', '.join(mismatched)} (nothing written)")
            bad = max(errors, key=errors.get)
            if not errors[bad] <= tolerance:
                raise ExportError(f"the {fmt} click step does not reproduce the model: max abs error "
                                  f"{errors[bad]:.3g} on {bad} at click {k + 1} > tolerance {tolerance:g} "
                                  f"(nothing written)")
            for name, v in errors.items():
                worst[name] = max(worst.get(name, 0.0), v)
            per_click.append({"click": click.tolist(), "net_hw": want[spec.output_names.index("new_state_net_hw")]
                              .tolist(), "has_roi": bool(want[spec.output_names.index("new_state_has_roi")])})
            # the next click starts from the JAX state, so each click is compared on its own
            state = {f"state_{n[len('new_state_'):]}": v for n, v in zip(spec.output_names, want)
                     if n.startswith("new_state_")}
            if spec.zoom_in:
                # The zoom-in map is replaced by a synthetic object, so that later clicks run the zoomed path
                # (box, crop, resize and inverse) whatever the weights make of the synthetic image.
                state["state_zmap"], state["state_has_zmap"] = step.synthetic_object(spec, hw), np.array(True)
        verification = {"input_hw": hw.tolist(), "clicks": per_click, "max_abs_error": worst, "tolerance": tolerance,
                        "compared_with": "the JAX step of the same function, click by click from the same state; "
                                         "integer and bool state compared for equality"}
        return _install(tmp, tmp_dir, output, step.describe(spec, model, fmt, output, verification, checkpoint))
    finally:
        _remove(tmp_dir)
