"""Replay clicks on an image without a GUI, exactly as an interactive session would.

    python -m fcfi_jax.predict --checkpoint hrnet18s.pth --image banana1.bmp \
        --clicks "341,380,+;142,283,-" --output mask.png --save-probs probs.npy

Clicks are `y,x,+` (positive) or `y,x,-` (negative), in image pixels (row, column), separated by
`;`. Each prediction feeds the next (previous probabilities as prev mask, gate 0 then 1).
Zoom-in defaults to the official demo setting (target 720, expansion 3.0) and flip TTA is on.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

import cv2
import numpy as np


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
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    out = out.astype(np.uint8)
    r = max(3, round(0.008 * max(image.shape[:2])))
    for y, x, pos in clicks:
        cv2.circle(out, (int(x), int(y)), r, (0, 200, 0) if pos else (220, 0, 0), -1, lineType=cv2.LINE_AA)
        cv2.circle(out, (int(x), int(y)), r, (255, 255, 255), 1, lineType=cv2.LINE_AA)
    return out


def add_predictor_args(parser):
    """Predictor options shared by the click-replay CLI and the demo server (`fcfi_jax.demo`)."""
    parser.add_argument("--no-zoom-in", action="store_true")
    parser.add_argument("--zoom-in", default="720,3.0", metavar="TARGET,EXPANSION")
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--canvas-step", type=int, default=128, help="0 = exact shapes")


def parse_zoom_in(args):
    """None with --no-zoom-in, else (target, expansion) from --zoom-in; ValueError with a clear message."""
    if args.no_zoom_in:
        return None
    try:
        t, e = args.zoom_in.split(",")
        return int(t), float(e)
    except ValueError:
        raise ValueError(f"--zoom-in expects TARGET,EXPANSION (e.g. 720,3.0), got {args.zoom_in!r}") from None


def _write_rgb(path, rgb):
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="official .pth or converted directory")
    p.add_argument("--image", required=True)
    p.add_argument("--clicks", required=True, help="'y,x,+;y,x,-;...'")
    p.add_argument("--output", required=True, help="final mask PNG (0/255)")
    p.add_argument("--save-probs", help="probabilities after the last click, (H, W) float32 .npy")
    p.add_argument("--save-overlay", help="image with mask and clicks drawn, PNG")
    p.add_argument("--per-click-dir", help="write the mask after every click here")
    add_predictor_args(p)
    args = p.parse_args(argv)

    def fail(msg):
        print(f"predict: error: {msg}", file=sys.stderr)
        return 2

    try:
        clicks = parse_clicks(args.clicks)
        zoom = parse_zoom_in(args)
    except ValueError as e:
        return fail(e)
    if not os.path.isfile(args.image):
        return fail(f"image not found: {args.image}")
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
        model = fcfi_jax.load_model(args.checkpoint)
    except (CheckpointError, ConversionError, FileNotFoundError) as e:
        return fail(e)
    predictor = Predictor(CanvasRunner(model, step=args.canvas_step or None), zoom_in=zoom,
                          with_flip=not args.no_flip)
    predictor.set_image(image)
    if args.per_click_dir:
        os.makedirs(args.per_click_dir, exist_ok=True)
    for i, (y, x, pos) in enumerate(clicks):
        mask, probs = predictor.add_click(y, x, pos)
        print(f"click {i + 1}: ({y:g}, {x:g}) {'+' if pos else '-'}  mask area {int(mask.sum())} px")
        if args.per_click_dir:
            cv2.imwrite(os.path.join(args.per_click_dir, f"mask_{i + 1:02d}.png"), mask.astype(np.uint8) * 255)
    pathlib.Path(args.output).absolute().parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.output, predictor.mask.astype(np.uint8) * 255)
    if args.save_probs:
        np.save(args.save_probs, predictor.probs.astype(np.float32))
    if args.save_overlay:
        _write_rgb(args.save_overlay, overlay(image, predictor.mask, clicks))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
