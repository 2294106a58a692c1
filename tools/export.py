"""Export the predictor's network call (or the whole click step) as an ONNX, StableHLO or TF SavedModel artifact.

    python tools/export.py --checkpoint hrnet18s.pth --format onnx --output h18s.onnx
    python tools/export.py --checkpoint hrnet18s.pth --format stablehlo --output h18s.jaxexport --canvas 768,768 --flip
    python tools/export.py --checkpoint hrnet18s.pth --format savedmodel --output h18s_savedmodel
    python tools/export.py --checkpoint hrnet18s.pth --what step --format stablehlo --output step.jaxexport \
        --canvas 512,640 --flip                       # the whole click step: zoom-in (720,3.0), flip, sigmoid, mask

The artifact takes the image with its previous-mask channel, the clicks, the newest click, the gate and (on a
canvas) the true input size, and returns the logits and both feedbacks; `OUTPUT.json` documents every input
and output and the steps a caller must do around it (`examples/onnx_predict.py` does them in numpy).

Shapes: --canvas H,W (default 1024,1024) serves every input up to H x W (the input is pasted into the top-left
corner and its true size passed in `valid_hw`); --size H,W takes exactly that size. --flip exports batch 2 (the
input and its mirror in one call). The export is verified on a synthetic input against the JAX model before
it is moved into place; if it does not reproduce the model nothing is written and the exit code is 1.
With --what step the artifact is one interactive click: image canvas, true size, the new click and the
session state in; probabilities, mask and the new state out (zoom-in per --zoom-in / --no-zoom-in, flip with
--flip); see docs/export.md. --canvas is then the image canvas (the network canvas is made to hold the zoom
target too) and --max-clicks the clicks per session.
Bad arguments (unknown format, canvas smaller than --image, missing checkpoint) give one `export: error:`
line and exit code 2.
"""
import argparse
import os
import sys
import time

DEFAULT_CANVAS = (1024, 1024)
WHATS = ("network", "step")
FORMATS = ("onnx", "stablehlo", "savedmodel")  # also fcfi_jax.export.FORMATS; kept here to fail before importing jax


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        print(f"export: error: {message}", file=sys.stderr)
        sys.exit(2)


def _pair(text, name):
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{name} expects H,W (two integers), got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {h},{w}")
    return h, w


def main(argv=None):
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="official .pth or converted directory")
    p.add_argument("--format", required=True, help="onnx | stablehlo | savedmodel")
    p.add_argument("--what", default="network",
                   help="network (the network call; default) | step (the whole click step, zoom-in included)")
    p.add_argument("--zoom-in", default="720,3.0", metavar="TARGET,EXPANSION",
                   help="--what step: the zoom-in of the step (default 720,3.0, as fcfi_jax.predict)")
    p.add_argument("--no-zoom-in", action="store_true", help="--what step: no zoom-in")
    p.add_argument("--output", required=True, help="artifact path (a directory for savedmodel); OUTPUT.json is the sidecar")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--canvas", help=f"H,W: largest input served (default {DEFAULT_CANVAS[0]},{DEFAULT_CANVAS[1]})")
    shape.add_argument("--size", help="H,W: the only input size served")
    p.add_argument("--flip", action="store_true",
                   help="batch 2: the input and its mirror in one call (--what step: the flip test-time augmentation)")
    p.add_argument("--dtype", default="float32", help="float32 (the only one supported)")
    p.add_argument("--max-clicks", type=int, default=24,
                   help="positive and negative clicks each (--what step: clicks per session; default 24)")
    p.add_argument("--image", action="append", default=[],
                   help="an image the artifact must serve at full size (repeatable): refuse a smaller canvas")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max abs difference to the JAX model on the verification input (default 3e-2)")
    args = p.parse_args(argv)

    def fail(msg, code=2):
        print(f"export: error: {msg}", file=sys.stderr)
        return code

    if args.format not in FORMATS:
        return fail(f"unknown format {args.format!r}: expected one of {', '.join(FORMATS)}")
    if args.what not in WHATS:
        return fail(f"unknown --what {args.what!r}: expected one of {', '.join(WHATS)}")
    step = args.what == "step"
    if step and args.size is not None:
        return fail("--size is for --what network; the click step serves every image up to --canvas H,W")
    zoom = None
    if step and not args.no_zoom_in:
        from fcfi_jax.predict import parse_zoom_in  # no jax import yet

        try:
            zoom = parse_zoom_in(args.zoom_in)
        except ValueError as e:
            return fail(str(e))
    if args.dtype != "float32":
        return fail(f"--dtype {args.dtype} is not supported: only float32 artifacts are exported")
    if args.max_clicks < 1:
        return fail(f"--max-clicks must be >= 1, got {args.max_clicks}")
    try:
        exact = args.size is not None
        hw = _pair(args.size, "--size") if exact else _pair(args.canvas, "--canvas") if args.canvas else DEFAULT_CANVAS
    except ValueError as e:
        return fail(e)
    if not os.path.exists(args.checkpoint):
        return fail(f"checkpoint not found: {args.checkpoint}")
    if os.path.isfile(args.output) and args.format == "savedmodel" or os.path.isdir(args.output) and args.format != "savedmodel":
        return fail(f"--output {args.output} exists and is a {'file' if os.path.isfile(args.output) else 'directory'}; "
                    f"a {args.format} artifact is a {'directory' if args.format == 'savedmodel' else 'file'}")
    import cv2

    for path in args.image:
        if not os.path.isfile(path):
            return fail(f"image not found: {path}")
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            return fail(f"cannot read image {path}")
        ih, iw = img.shape[:2]
        what = "--size" if exact else "canvas"
        if (exact and (ih, iw) != hw) or (not exact and (ih > hw[0] or iw > hw[1])):
            return fail(f"{what} {hw[0]}x{hw[1]} cannot hold the {ih}x{iw} image {path} "
                        f"(the first click runs on the whole image): use --canvas {max(ih, hw[0])},{max(iw, hw[1])}")

    t0 = time.time()
    import fcfi_jax
    from fcfi_jax.convert.mapping import ConversionError
    from fcfi_jax.convert.torch_pickle import CheckpointError
    from fcfi_jax.export import DEFAULT_TOLERANCE, ExportError, ExportSpec, export_model, export_step
    from fcfi_jax.export.step import StepSpec

    try:
        model = fcfi_jax.load_model(args.checkpoint)
    except (CheckpointError, ConversionError, FileNotFoundError, ValueError) as e:
        return fail(f"cannot load {args.checkpoint}: {e}")
    tol = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    if step:
        spec = StepSpec(hw[0], hw[1], zoom_in=zoom, flip=args.flip, max_clicks=args.max_clicks)
        print(f"{model.cfg.family} model loaded in {time.time() - t0:.1f} s; exporting the {args.format} click step "
              f"for images up to {hw[0]}x{hw[1]} (network canvas {spec.net_canvas[0]}x{spec.net_canvas[1]}), "
              f"zoom-in {'%d,%g' % zoom if zoom else 'off'}, flip {'on' if args.flip else 'off'}")
    else:
        spec = ExportSpec(hw[0], hw[1], batch=2 if args.flip else 1, max_clicks=args.max_clicks, exact=exact)
        print(f"{model.cfg.family} model loaded in {time.time() - t0:.1f} s; exporting {args.format} for "
              f"{'exactly' if exact else 'inputs up to'} {hw[0]}x{hw[1]}, batch {spec.batch}")
    try:
        sidecar = (export_step if step else export_model)(model, spec, args.format, args.output, tolerance=tol,
                                                          checkpoint=args.checkpoint)
    except ExportError as e:
        return fail(e, 1)
    except ImportError as e:
        return fail(f"the {args.format} export needs a package that is not installed ({e}); "
                    f"pip install -e '.[export]'", 1)
    err = sidecar["verification"]["max_abs_error"]
    print("verified: max abs error " + ", ".join(f"{k} {v:.2g}" for k, v in err.items()) + f" (tolerance {tol:g})")
    print(f"wrote {args.output} ({sidecar['artifact_bytes'] / 2**20:.1f} MiB) and {args.output}.json "
          f"in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
