"""Replay clicks on an image without a GUI, exactly as an interactive session would.

    python -m fcfi_jax.predict --checkpoint hrnet18s.pth --image banana1.bmp \
        --clicks "341,380,+;142,283,-" --output mask.png --save-probs probs.npy

Clicks are `y,x,+` (positive) or `y,x,-` (negative), in image pixels (row, column), separated by
`;`. Each prediction feeds the next (previous probabilities as prev mask, gate 0 then 1).
Zoom-in defaults to the official demo setting (target 720, expansion 3.0) and flip TTA is on.

Bounded memory: an image whose longest side exceeds --max-net-side (default 1024) is downscaled (cv2
INTER_AREA) for the network, like the official demo's resize to 600 (app.py); clicks are scaled to it and the
probabilities scaled back (INTER_LINEAR) before the 0.49 threshold. The network input is then at most
max(--max-net-side, zoom-in target) on its longest side, whatever the image size (images up to 1024 px, e.g.
all of GrabCut, Berkeley and DAVIS, are untouched). Images over MAX_IMAGE_PIXELS are refused from their header.

Every argument and output path is checked before anything is computed (suffix, folder, writable), and each
file is written to a temporary sibling and renamed into place, so a failed write never leaves a partial file
and "wrote" is printed only for files that exist. Errors are one `predict: error: ...` line, exit code 2.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import pathlib
import sys
import tempfile
import warnings

import cv2
import numpy as np

from fcfi_jax.inference.defaults import INTERACTIVE_CANVAS_STEP

DEFAULT_NET_SIDE = 1024
OFFICIAL_DEMO_ZOOM_IN = (720, 3.0)   # the official demo's zoom-in (target size, expansion ratio)
OFFICIAL_DEMO_ZOOM_IN_ARG = "{},{}".format(*OFFICIAL_DEMO_ZOOM_IN)   # as --zoom-in spells it: 720,3.0
MAX_IMAGE_PIXELS = 1 << 28          # 268 Mpx (16384^2): 0.8 GB as uint8 RGB, the image's own size
IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")   # lossless: a mask must stay 0/255


def parse_clicks(text: str):
    """'y,x,+;y,x,-' -> [(y, x, True), (y, x, False)], with a clear error for anything else."""
    clicks = []
    for i, item in enumerate(t for t in text.replace(" ", "").split(";") if t):
        parts = item.split(",")
        if len(parts) != 3 or parts[2] not in ("+", "-", "1", "0", "pos", "neg"):
            raise ValueError(f"click {i + 1} {item!r}: expected 'y,x,+' or 'y,x,-'")
        try:
            y, x = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"click {i + 1} {item!r}: y and x must be numbers") from None
        clicks.append((y, x, parts[2] in ("+", "1", "pos")))
    if not clicks:
        raise ValueError("no clicks given: --clicks 'y,x,+;y,x,-'")
    return clicks


def overlay(image, mask, clicks, color=(255, 64, 64), alpha=0.5):
    """RGB image with the mask blended in and the clicks drawn (green positive, red negative)."""
    out = image.copy()   # uint8: a float32 copy of a large image would cost 4x its size
    out[mask] = ((1 - alpha) * image[mask].astype(np.float32) + alpha * np.asarray(color, np.float32)).astype(np.uint8)
    r = max(3, round(0.008 * max(image.shape[:2])))
    for y, x, pos in clicks:
        cv2.circle(out, (int(x), int(y)), r, (0, 200, 0) if pos else (220, 0, 0), -1, lineType=cv2.LINE_AA)
        cv2.circle(out, (int(x), int(y)), r, (255, 255, 255), 1, lineType=cv2.LINE_AA)
    return out


def add_predictor_args(parser, *, zoom_in: str | None = OFFICIAL_DEMO_ZOOM_IN_ARG,
                       canvas_step: int = INTERACTIVE_CANVAS_STEP, dtype: bool = True):
    """The predictor options of every CLI that runs a predictor (predict, evaluate, the demo, annotate), checked
    by `check_predictor_args`. zoom_in None: no default zoom-in (evaluate's per-dataset one); dtype: add --dtype."""
    parser.add_argument("--no-zoom-in", action="store_true")
    parser.add_argument("--zoom-in", default=zoom_in, metavar="TARGET,EXPANSION",
                        help="override the per-dataset zoom-in" if zoom_in is None
                        else "zoom-in target size and expansion ratio (default %(default)s)")
    parser.add_argument("--no-flip", action="store_true", help="disable flip TTA (on in the official test scripts)")
    parser.add_argument("--canvas-step", type=int, default=canvas_step,
                        help="canvas bucket size in pixels (at most one compilation per canvas; a rare size runs on "
                             "a larger compiled canvas); 0 = exact shapes (default %(default)s)")
    if dtype:
        parser.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                            help="float64: parameters, image, network and probabilities in float64 (slower; for "
                                 "checking against the official code run in float64)")


def check_predictor_args(args):
    """The zoom-in the options of `add_predictor_args` ask for: (target, expansion), or None (--no-zoom-in, or no
    --zoom-in where it has no default). ValueError with the fix for a value no run can use."""
    if not 0 <= args.canvas_step <= 4096:
        raise ValueError(f"--canvas-step must be 0 (exact shapes) or a canvas step in pixels up to 4096, "
                         f"got {args.canvas_step}")
    if args.no_zoom_in or args.zoom_in is None:
        return None
    return parse_zoom_in(args.zoom_in)


def parse_zoom_in(text: str) -> tuple[int, float]:
    """--zoom-in TARGET,EXPANSION -> (target, expansion); ValueError with the fix for a value no run can use."""
    try:
        t, e = text.split(",")
        t, e = int(t), float(e)
    except ValueError:
        raise ValueError(f"--zoom-in expects TARGET,EXPANSION (e.g. {OFFICIAL_DEMO_ZOOM_IN_ARG}), got {text!r}") from None
    if not (32 <= t <= 4096 and math.isfinite(e) and 0 < e <= 100):
        raise ValueError(f"--zoom-in TARGET must be in [32, 4096] and EXPANSION a number in (0, 100] "
                         f"(official: {OFFICIAL_DEMO_ZOOM_IN_ARG}), got {text!r}")
    return t, e


def fit_side(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(h', w') with the longest side at most `max_side`, aspect kept, or (h, w) when it already fits."""
    if max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def check_output_file(path, flag: str, suffixes, protect=()):
    """Check an output file path before computing: known suffix, not a folder, not an input, its folder
    exists (created if missing) and is writable (probed with a temporary file, e.g. /proc is not)."""
    p = pathlib.Path(path).absolute()
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name ending in {suffixes[0]}")
    if p.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: unknown extension {p.suffix or '(none)'!r}; use {' or '.join(suffixes)}")
    for other in protect:
        if other and os.path.exists(other) and p.exists() and os.path.samefile(p, other):
            raise ValueError(f"{flag} {path} is an input of this run; it would be overwritten")
    check_output_dir(p.parent, flag)
    return p


def check_output_dir(d, flag: str):
    d = pathlib.Path(d).absolute()
    if d.exists() and not d.is_dir():
        raise ValueError(f"{flag}: {d} is a file, not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".fcfi-write-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{flag}: cannot write into {d} ({e.strerror or e})") from None
    return d


def write_atomic(path, data: bytes):
    """Write bytes to a temporary sibling, then rename over `path`: a failure leaves no partial file."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def encode_image(path, array) -> bytes:
    ok, buf = cv2.imencode(pathlib.Path(path).suffix.lower(), array)
    if not ok:
        raise OSError(f"cannot encode {path}")
    return buf.tobytes()


def image_size(path):
    """(h, w) from the image header (Pillow), without decoding pixels; None if Pillow cannot tell."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
        return h, w
    except Image.DecompressionBombError:
        return math.inf, math.inf
    except Exception:   # unidentified or unusual format: cv2 decides below
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="official .pth or converted directory")
    p.add_argument("--image", required=True)
    p.add_argument("--clicks", required=True, help="'y,x,+;y,x,-;...'")
    p.add_argument("--output", required=True, help="final mask PNG (0/255)")
    p.add_argument("--save-probs", help="probabilities after the last click, (H, W) .npy in --dtype (float32 by default)")
    p.add_argument("--save-overlay", help="image with mask and clicks drawn, PNG")
    p.add_argument("--per-click-dir", help="write the mask after every click here")
    p.add_argument("--max-net-side", type=int, default=DEFAULT_NET_SIDE,
                   help="longest image side the network sees; larger images are downscaled for it and the "
                        "results scaled back (bounds memory)")
    add_predictor_args(p)
    args = p.parse_args(argv)

    def fail(msg):
        print(f"predict: error: {msg}", file=sys.stderr)
        return 2

    # ---- everything that can be checked before computing ----------------------------------------------
    try:
        clicks = parse_clicks(args.clicks)
        zoom = check_predictor_args(args)
        if not 32 <= args.max_net_side <= 8192:
            raise ValueError(f"--max-net-side must be in [32, 8192], got {args.max_net_side}")
        protect = (args.image, args.checkpoint)
        outputs = [check_output_file(args.output, "--output", IMAGE_SUFFIXES, protect)]
        if args.save_probs:
            outputs.append(check_output_file(args.save_probs, "--save-probs", (".npy",), protect))
        if args.save_overlay:
            outputs.append(check_output_file(args.save_overlay, "--save-overlay", IMAGE_SUFFIXES, protect))
        if len(set(outputs)) != len(outputs):
            raise ValueError("--output, --save-probs and --save-overlay must be different files")
        if args.per_click_dir:
            check_output_dir(args.per_click_dir, "--per-click-dir")
    except ValueError as e:
        return fail(e)
    if not os.path.isfile(args.image):
        return fail(f"image not found: {args.image}")
    size = image_size(args.image)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        return fail(f"image {args.image} is {size[1]}x{size[0]} pixels, more than the {MAX_IMAGE_PIXELS >> 20} "
                    "Mpx predict reads; downscale it first")
    from fcfi_jax.data.readers import read_image

    try:
        image = read_image(args.image)
    except (OSError, ValueError) as e:
        return fail(e)
    h, w = image.shape[:2]
    for y, x, _ in clicks:
        if not (0 <= y < h and 0 <= x < w):
            return fail(f"click ({y:g}, {x:g}) is outside the {h}x{w} image (y must be in [0, {h}), x in [0, {w}))")

    import fcfi_jax
    from fcfi_jax.convert.mapping import ConversionError
    from fcfi_jax.convert.torch_pickle import CheckpointError
    from fcfi_jax.inference.predictor import Predictor
    from fcfi_jax.inference.runner import CanvasRunner, enable_compilation_cache

    enable_compilation_cache()
    try:
        model = fcfi_jax.load_model(args.checkpoint, dtype=args.dtype)
    except (CheckpointError, ConversionError, FileNotFoundError) as e:
        return fail(e)
    # ---- compute ------------------------------------------------------------------------------------
    nh, nw = fit_side(h, w, args.max_net_side)
    scaled = (nh, nw) != (h, w)
    net_image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA) if scaled else image
    if scaled:
        print(f"image {w}x{h} is larger than --max-net-side {args.max_net_side}: the network sees it at {nw}x{nh}")
    predictor = Predictor(CanvasRunner(model, step=args.canvas_step or None, dtype=args.dtype), zoom_in=zoom,
                          with_flip=not args.no_flip, dtype=args.dtype)
    predictor.set_image(net_image)

    def full_probs():
        p = predictor.probs
        return cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) if scaled else p

    try:
        for i, (y, x, pos) in enumerate(clicks):
            if scaled:
                y, x = min(y * nh / h, nh - 1), min(x * nw / w, nw - 1)
            predictor.add_click(y, x, pos)
            mask = full_probs() > predictor.prob_thresh
            print(f"click {i + 1}: ({clicks[i][0]:g}, {clicks[i][1]:g}) {'+' if pos else '-'}  mask area {int(mask.sum())} px")
            if args.per_click_dir:
                step_path = os.path.join(args.per_click_dir, f"mask_{i + 1:02d}.png")
                write_atomic(step_path, encode_image(step_path, mask.astype(np.uint8) * 255))
        probs = full_probs()
        mask = probs > predictor.prob_thresh
        write_atomic(args.output, encode_image(args.output, mask.astype(np.uint8) * 255))
        print(f"wrote {args.output}")
        if args.save_probs:
            buf = io.BytesIO()
            np.save(buf, probs.astype(predictor.dtype))
            write_atomic(args.save_probs, buf.getvalue())
            print(f"wrote {args.save_probs}")
        if args.save_overlay:
            rgb = overlay(image, mask, clicks)
            write_atomic(args.save_overlay, encode_image(args.save_overlay, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
            print(f"wrote {args.save_overlay}")
    except OSError as e:
        return fail(f"cannot write: {e.strerror or e}" + (f" ({e.filename})" if getattr(e, "filename", None) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
