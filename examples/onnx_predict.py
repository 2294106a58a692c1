"""Replay clicks on an image with an exported FCFI ONNX model: numpy, OpenCV and onnxruntime only.

    python tools/export.py --checkpoint hrnet18s.pth --format onnx --output h18s.onnx
    python examples/onnx_predict.py --model h18s.onnx --image banana1.bmp \
        --clicks "341,380,+;142,283,-" --output mask.png --save-probs probs.npy

Same arguments and outputs as `python -m fcfi_jax.predict` (which this file reproduces without fcfi_jax or
jax), and the reference for anyone integrating the model elsewhere: everything the caller of the network
must do is here, in plain numpy.

Clicks are `y,x,+` (positive) or `y,x,-` (negative) in image pixels (row, column), separated by `;`.
Each prediction feeds the next: the first click runs with an all-zero previous mask and gate 0, every later
click with the previous probabilities and gate 1. Zoom-in (default target 720, expansion 3.0) and the
horizontal-flip test-time augmentation are on unless --no-zoom-in / --no-flip.

The network (see the `.json` sidecar that tools/export.py writes next to the model):
    image      float32 (B, H, W, 4) NHWC: RGB / 255 and the previous probabilities, pasted into the top-left
               corner of a zero canvas of the exported size
    points     float32 (B, 2N, 3): (y, x, click index) rows, N positive rows then N negative rows,
               (-1, -1, -1) padding
    new_points int32 (B, 1, 3): (int(y), int(x), is_positive) of the newest click
    gate       float32 scalar: 0 on the first click, 1 after
    valid_hw   int32 (2,): the true (h, w) of the input inside the canvas (absent in fixed-size exports)
    -> instances (logits), updated_feedback1, updated_feedback2: float32 (B, H, W, 1); read [:, :h, :w].
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np
import onnxruntime as ort

PROB_THRESH = 0.49  # mask = probs > 0.49, as the official predictor


# ----------------------------------------------------------------------------------------------
# Command line (the same syntax as fcfi_jax.predict)

def parse_clicks(text):
    """'y,x,+;y,x,-' -> [(y, x, True), (y, x, False)]; ValueError with a clear message otherwise."""
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


# ----------------------------------------------------------------------------------------------
# Bilinear resize with align_corners=True, in the float32 arithmetic of PyTorch's CPU kernel
# (the official predictor resizes with it; a different rounding moves the 0.49 threshold's pixels).

def _taps(n_out, n_in):
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0.0)
    src = np.arange(n_out, dtype=np.float32) * scale
    i0 = np.minimum(src.astype(np.int64), n_in - 1)  # src >= 0, so truncation is floor
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, i1, np.float32(1) - w1, w1


def _lerp(a, axis, taps):
    i0, i1, w0, w1 = taps
    shape = [1] * a.ndim
    shape[axis] = -1
    return np.take(a, i0, axis=axis) * w0.reshape(shape) + np.take(a, i1, axis=axis) * w1.reshape(shape)


def resize_ac(x, size):
    """Resize axes 0, 1 of an (H, W) or (H, W, C) float32 array to size = (h, w): columns first, then rows."""
    x = np.asarray(x, np.float32)
    if x.shape[:2] == tuple(size):
        return x
    return _lerp(_lerp(x, 1, _taps(size[1], x.shape[1])), 0, _taps(size[0], x.shape[0]))


# ----------------------------------------------------------------------------------------------
# Zoom-in: crop the network input around the object (the official ZoomIn, quirks included)

class ZoomIn:
    """From the second click on, the input is the box of the last stored map (> 0.5) plus every click,
    scaled about its centre by `expansion` (at least 200 px a side), clipped to the image, and resized so
    that its longer side is `target`. The box is kept while every click is inside it (its max side
    exclusive) and the new box overlaps it enough (product of the row and column IoUs >= 0.5). When the stored
    map is empty the full image is used but the old box is NOT forgotten: `inverse` then squeezes the full
    output into it (an official quirk, reproduced so the masks match). Every `inverse` call stores its result,
    so with probs, feedback1, feedback2 inverted in that order the next box comes from feedback2."""

    def __init__(self, target, expansion, skip_clicks=1, min_size=200, iou_thresh=0.5, prob_thresh=0.5):
        self.target, self.expansion, self.skip_clicks = target, expansion, skip_clicks
        self.min_size, self.iou_thresh, self.prob_thresh = min_size, iou_thresh, prob_thresh
        self.roi = None       # (rmin, rmax, cmin, cmax), inclusive
        self.stored = None    # the last map passed through `inverse`

    def _object_roi(self, mask, clicks):
        mask = mask.copy()
        for y, x, _ in clicks:
            mask[int(y), int(x)] = True
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        rmin, rmax, cmin, cmax = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        rc, cc = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
        h = max(self.expansion * (rmax - rmin + 1), self.min_size)
        w = max(self.expansion * (cmax - cmin + 1), self.min_size)
        # Python's round (half to even) on Python floats, as the official code
        rmin, rmax = round(float(rc - 0.5 * h)), round(float(rc + 0.5 * h))
        cmin, cmax = round(float(cc - 0.5 * w)), round(float(cc + 0.5 * w))
        return max(0, rmin), min(mask.shape[0] - 1, rmax), max(0, cmin), min(mask.shape[1] - 1, cmax)

    @staticmethod
    def _iou_1d(a, b):
        inter = max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)
        return inter / max(1e-6, max(a[1], b[1]) - min(a[0], b[0]) + 1)

    def transform(self, x, clicks):
        """x (H, W, 4) and clicks in image pixels -> network input and clicks in its pixels."""
        if len(clicks) <= self.skip_clicks:
            return x, clicks
        if self.stored is None or not (self.stored > self.prob_thresh).any():
            return x, clicks  # the stale-box quirk: self.roi is kept
        roi = self._object_roi(self.stored > self.prob_thresh, clicks)
        old = self.roi
        inside = old is not None and all(old[0] <= y < old[1] and old[2] <= xx < old[3] for y, xx, _ in clicks)
        if (not inside or self._iou_1d(roi[:2], old[:2]) * self._iou_1d(roi[2:], old[2:]) < self.iou_thresh):
            self.roi = roi
        rmin, rmax, cmin, cmax = self.roi
        h, w = rmax - rmin + 1, cmax - cmin + 1
        s = self.target / max(h, w)
        nh, nw = int(round(h * s)), int(round(w * s))
        out = resize_ac(x[rmin:rmax + 1, cmin:cmax + 1], (nh, nw))
        # product first, in Python floats, as the official code
        return out, [(nh * (y - rmin) / h, nw * (xx - cmin) / w, p) for y, xx, p in clicks]

    def inverse(self, m):
        """Network-input-sized map -> image-sized map (zeros outside the box); stored for the next box."""
        if self.roi is not None:
            rmin, rmax, cmin, cmax = self.roi
            part = resize_ac(m, (rmax - rmin + 1, cmax - cmin + 1))
            if self.stored is not None:
                m = np.zeros(self.stored.shape, np.float32)
                m[rmin:rmax + 1, cmin:cmax + 1] = part
            else:
                m = part
        self.stored = np.asarray(m, np.float32)
        return self.stored


# ----------------------------------------------------------------------------------------------
# The network

class Network:
    """The exported network on its canvas: pads inputs, fills the click tensors, crops outputs back.

    run(feed: dict of numpy arrays) -> [instances, updated_feedback1, updated_feedback2]; shapes: the input
    shapes by name (the same for every export format, see the sidecar), so another runtime plugs in here.
    """

    def __init__(self, run, shapes):
        self.run = run
        self.batch, self.height, self.width = shapes["image"][:3]
        self.max_clicks = shapes["points"][1] // 2      # N positive rows, then N negative rows
        self.canvas = "valid_hw" in shapes              # False: the model takes exactly height x width

    @classmethod
    def from_onnx(cls, path, threads=0):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # no per-initializer notes while onnxruntime prunes the graph
        if threads:
            opts.intra_op_num_threads = threads
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        names = ["instances", "updated_feedback1", "updated_feedback2"]
        return cls(lambda feed: session.run(names, feed), {i.name: i.shape for i in session.get_inputs()})

    def check_size(self, h, w, what="input"):
        fits = (h <= self.height and w <= self.width) if self.canvas else (h, w) == (self.height, self.width)
        if not fits:
            need = "at most" if self.canvas else "exactly"
            raise ValueError(f"the {what} is {h}x{w} but this model takes {need} {self.height}x{self.width}: "
                             f"export one with tools/export.py --canvas H,W")

    def points(self, clicks):
        """(2N, 3) rows (y, x, index): positives then negatives, -1 padded (coordinates as given, floats)."""
        pos = [(y, x, i) for i, (y, x, p) in enumerate(clicks) if p]
        neg = [(y, x, i) for i, (y, x, p) in enumerate(clicks) if not p]
        if max(len(pos), len(neg)) > self.max_clicks:
            raise ValueError(f"this model takes at most {self.max_clicks} positive and {self.max_clicks} negative "
                             f"clicks: export one with tools/export.py --max-clicks")
        n = self.max_clicks
        out = np.full((2 * n, 3), -1.0)
        if pos:
            out[:len(pos)] = pos
        if neg:
            out[n:n + len(neg)] = neg
        return out.astype(np.float32)  # computed in float64, rounded once

    def __call__(self, inputs, gate):
        """inputs: list of (x (h, w, 4), clicks), all of one size -> three lists of (h, w) maps."""
        h, w = inputs[0][0].shape[:2]
        self.check_size(h, w, "network input")
        results = [[], [], []]
        for start in range(0, len(inputs), self.batch):
            chunk = inputs[start:start + self.batch]
            # A flip-exported (batch 2) model asked for one example runs it twice: a canvas has one batch size.
            chunk = chunk + [chunk[-1]] * (self.batch - len(chunk))
            image = np.zeros((self.batch, self.height, self.width, 4), np.float32)
            for b, (x, _) in enumerate(chunk):
                image[b, :h, :w] = x
            feed = {"image": image,
                    "points": np.stack([self.points(c) for _, c in chunk]),
                    # int() truncates toward zero like torch .long(): a flipped x in (-1, 0) becomes 0
                    "new_points": np.array([[(int(c[-1][0]), int(c[-1][1]), int(c[-1][2]))] for _, c in chunk],
                                           np.int32),
                    "gate": np.asarray(gate, np.float32)}
            if self.canvas:
                feed["valid_hw"] = np.array([h, w], np.int32)
            outs = self.run(feed)
            for k, o in enumerate(outs):
                results[k] += [o[b, :h, :w, 0] for b in range(len(inputs[start:start + self.batch]))]
        return results


def sigmoid(x):
    with np.errstate(over="ignore"):
        return (np.float32(1) / (np.float32(1) + np.exp(-np.asarray(x, np.float32)))).astype(np.float32)


class Session:
    """One image, clicks added one at a time (the official evaluation's session)."""

    def __init__(self, net, image, zoom_in=(720, 3.0), flip=True):
        self.net, self.flip = net, flip
        self.zoom = ZoomIn(*zoom_in) if zoom_in else None
        self.image = image.astype(np.float32) / np.float32(255)   # torchvision ToTensor
        self.clicks = []
        self.probs = np.zeros(image.shape[:2], np.float32)

    def add_click(self, y, x, positive):
        click = (int(y), int(x), bool(positive))  # coordinates truncated, as the official Click
        clicks = self.clicks + [click]
        prev, gate = (self.probs, 1.0) if self.clicks else (np.zeros_like(self.probs), 0.0)
        x_in = np.concatenate([self.image, prev[..., None]], axis=-1)
        if self.zoom is not None:
            x_in, clicks = self.zoom.transform(x_in, clicks)
        inputs = [(x_in, clicks)]
        if self.flip:  # the mirrored input and clicks (y, w - 1 - x), averaged back after the network
            w = x_in.shape[1]
            inputs.append((x_in[:, ::-1], [(cy, w - cx - 1, p) for cy, cx, p in clicks]))
        maps = self.net(inputs, gate)
        merged = [0.5 * (m[0] + m[1][:, ::-1]) if self.flip else m[0] for m in maps]
        # Official order: flip average, sigmoid of the logits, then the zoom-in inverse of all three maps.
        probs, fb1, fb2 = sigmoid(merged[0]), merged[1], merged[2]
        if self.zoom is not None:
            probs, fb1, fb2 = self.zoom.inverse(probs), self.zoom.inverse(fb1), self.zoom.inverse(fb2)
        self.clicks.append(click)
        self.probs = probs
        return probs > PROB_THRESH, probs

    @property
    def mask(self):
        return self.probs > PROB_THRESH


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="ONNX file written by tools/export.py --format onnx")
    p.add_argument("--image", required=True)
    p.add_argument("--clicks", required=True, help="'y,x,+;y,x,-;...'")
    p.add_argument("--output", required=True, help="final mask PNG (0/255)")
    p.add_argument("--save-probs", help="probabilities after the last click, (H, W) float32 .npy")
    p.add_argument("--save-overlay", help="image with mask and clicks drawn, PNG")
    p.add_argument("--per-click-dir", help="write the mask after every click here")
    p.add_argument("--no-zoom-in", action="store_true")
    p.add_argument("--zoom-in", default="720,3.0", metavar="TARGET,EXPANSION")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = all cores)")
    args = p.parse_args(argv)

    def fail(msg):
        print(f"onnx_predict: error: {msg}", file=sys.stderr)
        return 2

    try:
        clicks = parse_clicks(args.clicks)
        zoom = None
        if not args.no_zoom_in:
            try:
                t, e = args.zoom_in.split(",")
                zoom = (int(t), float(e))
            except ValueError:
                raise ValueError(f"--zoom-in expects TARGET,EXPANSION (e.g. 720,3.0), got {args.zoom_in!r}") from None
    except ValueError as e:
        return fail(e)
    for path, what in ((args.model, "model"), (args.image, "image")):
        if not os.path.isfile(path):
            return fail(f"{what} not found: {path}")
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if bgr is None:
        return fail(f"cannot read image {args.image}: not a valid image file")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    for y, x, _ in clicks:
        if not (0 <= y < h and 0 <= x < w):
            return fail(f"click ({y:g}, {x:g}) is outside the {h}x{w} image (y must be in [0, {h}), x in [0, {w}))")
    try:
        net = Network.from_onnx(args.model, args.threads)
        net.check_size(h, w, "image")  # the first click always runs on the whole image
    except ValueError as e:
        return fail(e)
    except Exception as e:  # onnxruntime raises its own types for a file that is not a model
        return fail(f"cannot load model {args.model}: {str(e).splitlines()[0]}")

    session = Session(net, image, zoom, flip=not args.no_flip)
    if args.per_click_dir:
        os.makedirs(args.per_click_dir, exist_ok=True)
    for i, (y, x, pos) in enumerate(clicks):
        try:
            mask, _ = session.add_click(y, x, pos)
        except ValueError as e:  # a zoomed input or click count the model was not exported for
            return fail(e)
        print(f"click {i + 1}: ({y:g}, {x:g}) {'+' if pos else '-'}  mask area {int(mask.sum())} px")
        if args.per_click_dir:
            cv2.imwrite(os.path.join(args.per_click_dir, f"mask_{i + 1:02d}.png"), mask.astype(np.uint8) * 255)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    if not cv2.imwrite(args.output, session.mask.astype(np.uint8) * 255):
        return fail(f"cannot write {args.output}")
    if args.save_probs:
        np.save(args.save_probs, session.probs.astype(np.float32))
    if args.save_overlay:
        cv2.imwrite(args.save_overlay, cv2.cvtColor(overlay(image, session.mask, clicks), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
