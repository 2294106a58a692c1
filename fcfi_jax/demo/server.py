"""Local click-to-segment web demo: a stdlib `http.server` plus one static vanilla-JS page.

    python -m fcfi_jax.demo --checkpoint hrnet18s.pth [--port 7860] [--host 127.0.0.1]

Why no web framework: nothing to install beyond the package, it works offline, it runs inside Colab
behind `google.colab.output.serve_kernel_port_as_iframe`, and the whole UI is one small page.

JSON API (relative URLs, so the page also works behind a path-prefixing proxy). Every error is
`{"error": "<one clear sentence>"}` with a 4xx status (5xx only for a bug); the server keeps running.

    GET  /api/config                         limits and predictor settings
    POST /api/image   body: PNG/JPEG/BMP bytes  -> {session, height, width}
    GET  /api/image.png?session=S            the decoded RGB image the model sees (the page shows it)
    POST /api/click   {session, y, x, positive} -> state (+ latency_ms)
    POST /api/undo    {session}                  -> state
    POST /api/reset   {session}                  -> state
    GET  /api/mask.png?session=S             current mask, 0/255 single-channel PNG
    GET  /api/state?session=S                state
  objects (several per image; see fcfi_jax/demo/objects.py):
    POST /api/finish  {session, label}       store the object being annotated, start a new one -> state
    POST /api/object/update {session, id, label}   rename -> state
    POST /api/object/delete {session, id}    -> state
    POST /api/options {session, allow_overlap?, auto_negatives?} -> state
    POST /api/import?session=S  body: a COCO JSON file (up to the upload limit) -> state (objects replaced)
    GET  /api/export/coco.json | instances.png | objects.zip ?session=S   COCO (RLE), palette id PNG, 0/255 PNGs
  image folder (python -m fcfi_jax.annotate):
    GET  /api/project                        {images: [{name, objects, done}], done, total, start, output}
    POST /api/project/open {index}           -> {session, height, width, name, index}
    POST /api/project/done {session, done}   -> state

state = {session, height, width, name, clicks: [[y, x, positive], ...], click_auto: [bool, ...], area,
mask_png: base64 0/255 PNG, undo_steps, objects: [{id, label, area, bbox}], objects_png: base64 id map
(1 + position, later objects on top) or null, object_undo_steps, allow_overlap, auto_negatives, save_error,
project?: {index, image_done, done, total}};
latency_ms = {model: network calls, predict: whole add_click incl. zoom-in/flip, server: request handling}.
(y, x) are image pixels (row, column), truncated to integers like the official Click.

Rules. No overlap (unless allow_overlap): the object being annotated loses the pixels of finished objects, as
shown and as stored; finished objects never change. Automatic negatives (when on): after each click of the
user, every finished object the predicted mask covers by at least 1% of its area gets one negative click at the
covered pixel farthest from the covered region's border, at most once per finished object for the object being
annotated. /api/undo removes the user's last click with the automatic clicks it caused; without clicks it
undoes the last finish (the object is annotated again, its clicks replayed), rename, delete or import.

One `Predictor` per session (own clicks, history and zoom-in state), all sharing one `CanvasRunner`
(one compiled network) behind a lock. At most `max_sessions` live; the least recently used is evicted.

Bounded memory. Like the official demo (app.py resizes every upload so that its longest side is at most 600),
an image whose longest side exceeds `max_net_side` (default 800) is downscaled (cv2 INTER_AREA) before the
predictor sees it; clicks are scaled to it and the probabilities are scaled back (cv2 INTER_LINEAR, then the
0.49 threshold) to the uploaded size. The network input is therefore at most max(max_net_side, zoom-in target)
on its longest side, whatever the upload (--max-side only bounds the upload and its decoded pixels), and each
session keeps at most `max_undo` undo steps (`Predictor(max_undo=)`: 3 float32 maps of the network image's canvas each,
its sides rounded up to multiples of 128). Measured peak
resident memory of a whole demo process (model, XLA, one session) on a CPU, two clicks on a 4096x4096 upload, flip
on, 720 zoom-in: 1.5 GB with max_net_side 800, 1.7 GB with 1024 (unbounded, the first click alone asked XLA for a
12.9 GB buffer). Each further session adds at most its upload (3 bytes a pixel, 50 MB at 4096^2) plus
(27 + 12 * max_undo) bytes per pixel of the network image's canvas (~220 MB at 896^2 with 20 undo steps), plus its finished
objects, each cropped to its bounding box at 1 bit per pixel: at most max_objects * H * W / 8 bytes (100
objects at 4096^2: 210 MB), and the object undo steps share those records.

Other origins. The server answers only requests addressed to itself: the Host header must name this server
(localhost, 127.0.0.1, [::1], the bound address, any IP literal when bound to all interfaces, or a name given
with `allowed_hosts` / --allow-host, e.g. a reverse proxy) on its port, which defeats DNS rebinding; an Origin
header, when sent, must be the same origin (or an allowed host) and `Sec-Fetch-Site`, when sent, same-origin.
POST bodies must carry the content types the page sends (application/json, or application/octet-stream /
image/* for uploads): those need a CORS preflight, which this server never grants, so a page on another site
cannot post to it. Malformed requests (bad Content-Length, deep or huge JSON, huge numbers) get a 4xx JSON error.
The object, export, import and folder endpoints go through the same checks; a JSON body is at most 64 KB,
except an imported COCO file (the upload limit).
"""
from __future__ import annotations

import base64
import dataclasses
import io
import ipaddress
import json
import mimetypes
import pathlib
import re
import secrets
import sys
import threading
import time
import traceback
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from fcfi_jax.demo.objects import (
    DEFAULT_LABEL,
    PALETTE,
    AnnObject,
    CocoError,
    check_coco,
    clean_label,
    find_image,
    id_map,
    image_coco,
    objects_from_coco,
    objects_zip,
    palette_png,
    read_labels,
)
from fcfi_jax.predict import OFFICIAL_DEMO_ZOOM_IN, fit_side

STATIC_DIR = pathlib.Path(__file__).resolve().with_name("static")
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "BMP": "BMP"}   # PIL format name -> shown name
_DRAIN_LIMIT = 1 << 30   # an over-limit body up to this size is read and dropped so the client sees the 413
DEFAULT_NET_SIDE = 800   # official app.py uses 600; 800 keeps the first (un-zoomed) click closer to the upload
DEFAULT_MAX_UNDO = 20
DEFAULT_MAX_OBJECTS = 100   # per image; each keeps its bbox crop at 1 bit per pixel
_JSON_MAX_DEPTH = 32     # the page sends a flat object
_JSON_CTYPES = ("application/json",)
_UPLOAD_CTYPES = ("application/octet-stream", "image/png", "image/jpeg", "image/bmp")
_EXPORTS = {"coco.json": ("application/json", ".coco.json"), "instances.png": ("image/png", "_instances.png"),
            "objects.zip": ("application/zip", "_objects.zip")}   # GET /api/export/NAME: type, download name suffix
_OBJECT_POSTS = ("/api/finish", "/api/object/update", "/api/object/delete", "/api/options", "/api/project/open",
                 "/api/project/done")


class DemoError(Exception):
    """A client error: HTTP `status` and a one-sentence message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_side: int) -> np.ndarray:
    """PNG/JPEG/BMP bytes -> uint8 RGB (H, W, 3), decoded by cv2 exactly like `readers.read_image`.

    The format and size are read from the header first (Pillow, already installed with matplotlib), so a
    small file that would decode to a huge image is refused before any pixel is allocated.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DemoError(400, "the upload is empty: choose a PNG or JPEG image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        raise DemoError(415, "not a PNG, JPEG or BMP image (the file could not be identified as an image)") from None
    if fmt not in FORMATS:
        raise DemoError(415, f"unsupported image format {fmt}: upload a PNG, JPEG or BMP image")
    if max(w, h) > max_side:
        raise DemoError(413, f"image is {w}x{h} pixels; the largest side allowed is {max_side} px "
                             "(resize it, or start the server with a larger --max-side)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise DemoError(400, f"the {FORMATS[fmt]} file is corrupt or truncated: it could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_png(array: np.ndarray, fast: bool = False) -> bytes:
    """uint8 (H, W) or RGB (H, W, 3) array -> PNG bytes."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1 if fast else 6])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _number_text(v) -> str:
    """A click coordinate for a message; huge integers are not formatted (int -> float would overflow)."""
    if isinstance(v, int) and v.bit_length() > 53:
        return f"an integer of {v.bit_length()} bits"
    return f"{v:g}"


class Session:
    """One user's image, predictor and finished objects; `lock` serialises its requests.

    `image` is the upload (what the page shows and clicks refer to); the predictor works on `net_image`, the
    upload downscaled to the server's `max_net_side` (the same array when it fits). `clicks` are the clicks of
    the object being annotated in upload pixels, parallel to `predictor.clicks`; `auto[i]` is None for a click of
    the user, or the id of the finished object an automatic negative click was placed in. `objects` is the tuple
    of finished objects (immutable records, so undo snapshots share them); `object_undo` holds
    (objects before, clicks to replay) per object operation."""

    def __init__(self, sid: str, image: np.ndarray, net_image: np.ndarray, predictor, name: str = "image.png"):
        self.id, self.image, self.net_image, self.predictor = sid, image, net_image, predictor
        self.name = name
        self.clicks: list[tuple[int, int, bool]] = []
        self.auto: list[int | None] = []
        self.objects: tuple[AnnObject, ...] = ()
        self.next_id = 1
        self.object_undo: list[tuple[tuple, tuple]] = []
        self.allow_overlap = self.auto_negatives = False
        self.project_index: int | None = None
        self.done = False
        self.save_error: str | None = None
        self._taken = ((), None)   # (objects, union of their masks): recomputed when the tuple changes
        self._objects_png = ((), None)   # (objects, their id map as base64 PNG): likewise
        self.lock = threading.Lock()

    @property
    def scaled(self) -> bool:
        return self.net_image.shape[:2] != self.image.shape[:2]

    def mask(self) -> np.ndarray:
        """(H, W) bool mask of the predictor at the upload's size (before the no-overlap rule)."""
        if not self.scaled:
            return self.predictor.mask
        h, w = self.image.shape[:2]
        probs = cv2.resize(self.predictor.probs, (w, h), interpolation=cv2.INTER_LINEAR)
        return probs > self.predictor.prob_thresh

    def taken(self) -> np.ndarray | None:
        """Union of the finished objects' masks, or None without objects."""
        objects, union = self._taken
        if objects is not self.objects:
            union = None
            if self.objects:
                union = np.zeros(self.image.shape[:2], bool)
                for obj in self.objects:
                    obj.paint(union, True)
            self._taken = (self.objects, union)
        return union

    def objects_png(self) -> str | None:
        """The finished objects' id map (`id_map`) as base64 PNG, or None without objects; encoded again only when
        the tuple of objects changes, not on every click."""
        objects, png = self._objects_png
        if objects is not self.objects:
            png = None
            if self.objects:
                h, w = self.image.shape[:2]
                png = base64.b64encode(encode_png(id_map(self.objects, h, w), fast=True)).decode("ascii")
            self._objects_png = (self.objects, png)
        return png

    def current_mask(self) -> np.ndarray:
        """The object being annotated as shown and saved: unless overlap is allowed, pixels of finished objects
        are removed from it (earlier objects win; finished objects never change)."""
        mask = self.mask()
        taken = None if self.allow_overlap else self.taken()
        return mask if taken is None else mask & ~taken


def _interior_point(region: np.ndarray) -> tuple[int, int]:
    """(y, x) of the region's pixel farthest from its border, as the official evaluation's clicker chooses its
    clicks; on ties (a thin strip) the one nearest to the middle of the tied pixels, first in row-major order."""
    dist = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(dist == dist.max())
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[k]), int(xs[k])


def _clean_name(name) -> str:
    """A file name for exports and COCO matching: the last path part of what the page sent, else image.png."""
    name = re.split(r"[\\/]", str(name or ""))[-1].strip()
    return name if name and len(name) <= 200 and name.isprintable() and name not in (".", "..") else "image.png"


AUTO_NEGATIVE_MIN_FRACTION = 0.01   # an automatic negative click needs the mask to cover 1% of a finished object


class DemoApp:
    """The demo's state and actions, independent of HTTP (the handler only parses and formats).

    runner: a `CanvasRunner` (or any predictor network callable) shared by all sessions;
    zoom_in / with_flip: as `Predictor`; limits: upload bytes, largest image side, live sessions, objects per image.
    labels: the allowed class labels (None: any label typed in the page); allow_overlap / auto_negatives: the
    defaults of a new session; project: a `fcfi_jax.annotate.Project` (an image folder saved to a COCO file).
    """

    def __init__(self, runner, *, zoom_in=OFFICIAL_DEMO_ZOOM_IN, with_flip=True, max_upload_bytes=20 << 20,
                 max_side=4096, max_sessions=8, max_net_side=DEFAULT_NET_SIDE, max_undo=DEFAULT_MAX_UNDO,
                 allowed_hosts=(), labels=None, labels_source="--labels", allow_overlap=False,
                 auto_negatives=False, max_objects=DEFAULT_MAX_OBJECTS, project=None):
        self.runner = runner
        self.zoom_in, self.with_flip = (tuple(zoom_in) if zoom_in else None), bool(with_flip)
        self.max_upload_bytes, self.max_side, self.max_sessions = int(max_upload_bytes), int(max_side), int(max_sessions)
        self.max_net_side, self.max_undo, self.max_objects = int(max_net_side), int(max_undo), int(max_objects)
        if min(self.max_upload_bytes, self.max_side, self.max_sessions, self.max_net_side) < 1 or self.max_undo < 0:
            raise ValueError("DemoApp limits must be positive (max_undo >= 0)")
        if not 1 <= self.max_objects <= 255:   # the id map (page overlay, instance PNG) has one byte per pixel
            raise ValueError(f"max_objects must be in 1..255, got {max_objects}")
        self.labels = list(labels) if labels is not None else None
        self.labels_source = labels_source
        self.allow_overlap, self.auto_negatives = bool(allow_overlap), bool(auto_negatives)
        self.project = project
        # extra Host names (a reverse proxy, a LAN name): exact, or a suffix starting with '.'
        hosts = list(allowed_hosts)
        if "google.colab" in sys.modules:   # Colab's port proxy: Google-run DNS, so no rebinding through it
            hosts += [".googleusercontent.com", ".colab.dev"]
        self.allowed_hosts = tuple(h.lower().strip() for h in hosts if h.strip())
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self._model_lock = threading.Lock()

    def config(self) -> dict:
        return {"max_upload_bytes": self.max_upload_bytes, "max_side": self.max_side,
                "max_sessions": self.max_sessions, "zoom_in": self.zoom_in, "with_flip": self.with_flip,
                "max_net_side": self.max_net_side, "max_undo": self.max_undo, "max_objects": self.max_objects,
                "labels": self.labels, "default_label": self.labels[0] if self.labels else DEFAULT_LABEL,
                "allow_overlap": self.allow_overlap, "auto_negatives": self.auto_negatives,
                "palette": [list(c) for c in PALETTE], "project": self.project is not None}

    # ---- sessions ------------------------------------------------------------------------

    def open_image(self, data: bytes, name=None) -> dict:
        """Decode an upload and start a session on it (evicting the least recently used if full)."""
        if self.project is not None:
            raise DemoError(409, f"this server annotates the folder {self.project.images_dir}: choose its images "
                                 "with Previous / Next (an uploaded image would not be saved to the COCO file)")
        session = self._new_session(self._decode(data), _clean_name(name))
        return {"session": session.id, "height": session.image.shape[0], "width": session.image.shape[1],
                "name": session.name}

    def _decode(self, data: bytes) -> np.ndarray:
        if len(data) > self.max_upload_bytes:
            raise DemoError(413, _too_large(len(data), self.max_upload_bytes))
        return decode_image(data, self.max_side)

    def _new_session(self, image: np.ndarray, name: str) -> Session:
        h, w = fit_side(*image.shape[:2], self.max_net_side)
        net_image = image if (h, w) == image.shape[:2] else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        from fcfi_jax.inference.predictor import Predictor  # JAX loads after the CLI has checked its options

        predictor = Predictor(self.runner, zoom_in=self.zoom_in, with_flip=self.with_flip, max_undo=self.max_undo)
        predictor.set_image(net_image)
        session = Session(secrets.token_hex(8), image, net_image, predictor, name)
        session.allow_overlap, session.auto_negatives = self.allow_overlap, self.auto_negatives
        with self._sessions_lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session

    def session(self, sid) -> Session:
        if not sid:
            raise DemoError(400, "no image loaded: open an image first (POST /api/image), then click on it")
        with self._sessions_lock:
            s = self._sessions.get(sid) if isinstance(sid, str) else None
            if s is None:
                raise DemoError(404, f"unknown session {str(sid)[:40]!r}: it expired (the server keeps the "
                                     f"{self.max_sessions} most recent) or the server restarted; open the image again")
            self._sessions.move_to_end(sid)
            return s

    def state(self, sid) -> dict:
        s = self.session(sid)
        with s.lock:
            return self._state(s)

    # ---- clicks ----------------------------------------------------------------------------

    def click(self, sid, y, x, positive) -> dict:
        """Add a click (and the automatic negative clicks it calls for) and predict; the response carries the
        new mask and the latencies."""
        s = self.session(sid)
        for name, v in (("y", y), ("x", x)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DemoError(400, f"click {name} must be a number (image pixel), got {v!r}")
        if not isinstance(positive, bool):
            raise DemoError(400, f"click 'positive' must be true or false, got {positive!r}")
        h, w = s.image.shape[:2]
        if not (0 <= y < h and 0 <= x < w):   # false for NaN too; exact for huge integers
            raise DemoError(400, f"click (y={_number_text(y)}, x={_number_text(x)}) is outside the {w}x{h} image "
                                 f"(y must be in [0, {h}), x in [0, {w}))")
        with s.lock, self._model_lock:
            t_model = getattr(self.runner, "model_seconds", 0.0)
            t0 = time.perf_counter()
            self._add_click(s, y, x, positive, None)
            if s.auto_negatives and s.objects:
                self._auto_negatives(s)
            predict = time.perf_counter() - t0
            model = getattr(self.runner, "model_seconds", 0.0) - t_model
            state = self._state(s)
        state["latency_ms"] = {"model": round(1e3 * model, 1), "predict": round(1e3 * predict, 1)}
        return state

    def _add_click(self, s: Session, y, x, positive: bool, auto):
        """One predictor step; (y, x) in upload pixels, kept truncated like the official Click."""
        h, w = s.image.shape[:2]
        nh, nw = s.net_image.shape[:2]
        ny, nx = (min(y * nh / h, nh - 1), min(x * nw / w, nw - 1)) if s.scaled else (y, x)
        s.predictor.add_click(ny, nx, positive)
        s.clicks.append((int(y), int(x), positive))
        s.auto.append(auto)

    def _auto_negatives(self, s: Session):
        """The automatic-negative rule: every finished object that the predicted mask covers by at least
        AUTO_NEGATIVE_MIN_FRACTION of its area gets one negative click, at the covered pixel farthest from the
        covered region's border; at most one per finished object for the object being annotated (so each costs
        one network call, once), checked in the objects' order after every click of the user."""
        raw = s.mask()
        for obj in s.objects:
            if obj.id in s.auto:
                continue
            y0, x0, y1, x1 = obj.bbox
            covered = raw[y0:y1, x0:x1] & obj.crop()
            n = int(covered.sum())
            if n == 0 or n < AUTO_NEGATIVE_MIN_FRACTION * obj.area:
                continue
            y, x = _interior_point(covered)
            self._add_click(s, y0 + y, x0 + x, False, obj.id)
            raw = s.mask()

    def undo(self, sid) -> dict:
        """Remove the last click of the user (with the automatic clicks it caused); without clicks, undo the last
        object operation (finish, rename, delete, import). A no-op once the kept steps are used up."""
        s = self.session(sid)
        with s.lock:
            if s.clicks:
                while s.predictor.undo_steps:
                    was_auto = s.auto[-1] is not None
                    s.predictor.undo()
                    del s.clicks[len(s.predictor.clicks):], s.auto[len(s.predictor.clicks):]
                    if not was_auto:
                        break
            elif s.object_undo:
                s.objects, replay = s.object_undo.pop()
                if replay:   # undoing "finish": the object is annotated again, from the same clicks
                    with self._model_lock:
                        s.predictor.reset()
                        s.clicks.clear(), s.auto.clear()
                        for y, x, positive, auto in replay:
                            self._add_click(s, y, x, positive, auto)
                self._save(s)
            return self._state(s)

    def reset(self, sid) -> dict:
        s = self.session(sid)
        with s.lock:
            s.predictor.reset()
            s.clicks.clear()
            s.auto.clear()
            return self._state(s)

    def mask_png(self, sid) -> bytes:
        s = self.session(sid)
        with s.lock:
            return encode_png(s.current_mask().astype(np.uint8) * 255)

    def image_png(self, sid) -> bytes:
        return encode_png(self.session(sid).image, fast=True)

    # ---- objects ---------------------------------------------------------------------------

    def label(self, label) -> str:
        """A label from the page (None: the default one), checked against --labels when given."""
        if label is None:
            return self.labels[0] if self.labels else DEFAULT_LABEL
        try:
            return clean_label(label, self.labels, self.labels_source)
        except CocoError as e:
            raise DemoError(400, str(e)) from None

    def finish(self, sid, label=None) -> dict:
        """Store the object being annotated (its mask as shown) under `label` and start a new one."""
        s = self.session(sid)
        label = self.label(label)
        with s.lock:
            if not s.clicks:
                raise DemoError(400, "nothing to finish: click on an object first (Enter or N finishes the object "
                                     "being annotated)")
            mask = s.current_mask()
            if not mask.any():
                raise DemoError(400, "the object's mask is empty (nothing found, or only pixels of finished objects, "
                                     "which it may not overlap): add a positive click, undo, or allow overlap")
            self._check_room(s, 1)
            obj = AnnObject.from_mask(s.next_id, label, mask, clicks=tuple((*c, a) for c, a in zip(s.clicks, s.auto)))
            s.next_id += 1
            self._push_undo(s, replay=obj.clicks)
            s.objects += (obj,)
            s.predictor.reset()
            s.clicks.clear()
            s.auto.clear()
            self._save(s)
            return self._state(s)

    def update_object(self, sid, oid, label) -> dict:
        """Rename (relabel) a finished object."""
        s = self.session(sid)
        label = self.label(label)
        with s.lock:
            k = self._find(s, oid)
            if s.objects[k].label != label:
                self._push_undo(s)
                s.objects = s.objects[:k] + (dataclasses.replace(s.objects[k], label=label),) + s.objects[k + 1:]
                self._save(s)
            return self._state(s)

    def delete_object(self, sid, oid) -> dict:
        s = self.session(sid)
        with s.lock:
            k = self._find(s, oid)
            self._push_undo(s)
            s.objects = s.objects[:k] + s.objects[k + 1:]
            self._save(s)
            return self._state(s)

    def set_options(self, sid, allow_overlap=None, auto_negatives=None) -> dict:
        """Per-session switches: overlap allowed (applies to the object being annotated and later ones) and
        automatic negative clicks (from the next click on)."""
        s = self.session(sid)
        for name, v in (("allow_overlap", allow_overlap), ("auto_negatives", auto_negatives)):
            if v is not None and not isinstance(v, bool):
                raise DemoError(400, f"'{name}' must be true or false, got {str(v)[:40]}")
        with s.lock:
            if allow_overlap is not None:
                s.allow_overlap = allow_overlap
            if auto_negatives is not None:
                s.auto_negatives = auto_negatives
            return self._state(s)

    def import_coco(self, sid, doc) -> dict:
        """Replace the finished objects by those a COCO file holds for this image (matched by file name);
        all or nothing, undoable. Class labels must be allowed by --labels when it is given."""
        s = self.session(sid)
        h, w = s.image.shape[:2]
        with s.lock:
            try:
                check_coco(doc, "the imported file")
                image = find_image(doc, s.name, "the imported file")
                objects = objects_from_coco(doc, image, h, w, "the imported file", self.labels, first_id=s.next_id)
            except CocoError as e:
                raise DemoError(400, str(e)) from None
            self._check_room(s, len(objects) - len(s.objects))
            objects = [dataclasses.replace(o, extra={k: v for k, v in o.extra.items() if k != "id"}) for o in objects]
            self._push_undo(s)
            s.objects = tuple(objects)
            s.next_id += len(objects)
            self._save(s)
            return self._state(s)

    def export(self, sid, what: str) -> bytes:
        """'coco.json' (this image's objects, RLE masks), 'instances.png' (palette id map) or 'objects.zip'."""
        s = self.session(sid)
        h, w = s.image.shape[:2]
        with s.lock:
            objects = s.objects
        try:
            if what == "coco.json":
                return json.dumps(image_coco(objects, s.name, h, w, self.labels)).encode()
            if what == "instances.png":
                return palette_png(id_map(objects, h, w))
            return objects_zip(objects, h, w, encode_png)
        except CocoError as e:
            raise DemoError(400, str(e)) from None

    def _find(self, s: Session, oid) -> int:
        for k, obj in enumerate(s.objects):
            if isinstance(oid, int) and not isinstance(oid, bool) and obj.id == oid:
                return k
        raise DemoError(404, f"no object {str(oid)[:20]} in this image (deleted, or the page is out of date: "
                             "reload it)")

    def _check_room(self, s: Session, more: int):
        if len(s.objects) + more > self.max_objects:
            raise DemoError(400, f"an image may hold at most {self.max_objects} objects (--max-objects); "
                                 "delete some, or restart the server with a larger --max-objects")

    def _push_undo(self, s: Session, replay=()):
        s.object_undo.append((s.objects, tuple(replay)))
        del s.object_undo[:max(0, len(s.object_undo) - self.max_undo)]

    # ---- image folder (fcfi_jax.annotate) ---------------------------------------------------

    def _project(self):
        if self.project is None:
            raise DemoError(404, "this server has no image folder: start it with python -m fcfi_jax.annotate "
                                 "--images DIR --output coco.json")
        return self.project

    def project_info(self) -> dict:
        return self._project().listing()

    def open_project_image(self, index) -> dict:
        """Open image `index` of the folder with the objects the COCO file holds for it."""
        project = self._project()
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(project.files):
            raise DemoError(400, f"image index must be an integer in [0, {len(project.files)}), got {str(index)[:20]}")
        name = project.files[index]
        try:
            image = self._decode(project.read(index, self.max_upload_bytes))
        except OSError as e:
            raise DemoError(400, f"cannot read {name}: {e.strerror or e}; fix or remove the file, or go to the next "
                                 "image") from None
        except DemoError as e:
            raise DemoError(e.status, f"{name}: {e}; replace or remove the file, or go to the next image") from None
        h, w = image.shape[:2]
        try:
            objects, done = project.load(index, h, w, self.labels)
        except CocoError as e:
            raise DemoError(400, str(e)) from None
        if len(objects) > self.max_objects:
            raise DemoError(400, f"{name} has {len(objects)} objects in {project.output}; start the server with "
                                 f"--max-objects {len(objects)} or more")
        s = self._new_session(image, name)
        s.objects, s.next_id, s.project_index, s.done = tuple(objects), len(objects) + 1, index, done
        return {"session": s.id, "height": h, "width": w, "name": name, "index": index}

    def mark_done(self, sid, done) -> dict:
        s = self.session(sid)
        if not isinstance(done, bool):
            raise DemoError(400, f"'done' must be true or false, got {str(done)[:40]}")
        with s.lock:
            if s.project_index is None:
                raise DemoError(400, "only images of an annotated folder (python -m fcfi_jax.annotate) can be "
                                     "marked done")
            s.done = done
            self._save(s)
            return self._state(s)

    def _save(self, s: Session):
        """Write the session's objects to the project's COCO file (image-folder sessions only). A failed write
        leaves the previous file in place and is reported in the state; the next change writes everything."""
        if s.project_index is None:
            return
        try:
            self.project.save(s.project_index, *s.image.shape[:2], s.objects, s.done)
            s.save_error = None
        except (OSError, CocoError) as e:
            s.save_error = (f"could not save {self.project.output}: {getattr(e, 'strerror', None) or e}; the objects "
                            "are kept here and saved with the next change (free disk space or fix permissions)")

    def _state(self, s: Session) -> dict:
        mask = s.current_mask()
        h, w = mask.shape
        state = {"session": s.id, "height": h, "width": w, "name": s.name,
                 "clicks": [list(c) for c in s.clicks], "click_auto": [a is not None for a in s.auto],
                 "area": int(mask.sum()), "undo_steps": s.predictor.undo_steps,
                 "mask_png": base64.b64encode(encode_png(mask.astype(np.uint8) * 255)).decode("ascii"),
                 "objects": [o.summary() for o in s.objects],
                 "objects_png": s.objects_png(),
                 "object_undo_steps": len(s.object_undo),
                 "allow_overlap": s.allow_overlap, "auto_negatives": s.auto_negatives, "save_error": s.save_error}
        if s.project_index is not None:
            state["project"] = {"index": s.project_index, "image_done": s.done, **self.project.progress()}
        return state


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = np.zeros(256, np.int8)
_BRACKET[[0x5B, 0x7B]], _BRACKET[[0x5D, 0x7D]] = 1, -1   # [ { open, ] } close


def _json_depth(body: bytes) -> int:
    """Deepest [ / { nesting of a JSON text, found without parsing it (strings skipped; a string left open runs to
    the end). A regular expression and numpy: an import may be as large as --max-upload-mb."""
    text = _JSON_STRING.sub(b"", body)
    end = text.find(b'"')
    step = _BRACKET[np.frombuffer(text if end < 0 else text[:end], np.uint8)]
    step = step[step != 0]
    return max(int(np.cumsum(step, dtype=np.int64).max()), 0) if step.size else 0


def _too_large(n, limit):
    return (f"upload is {n / 2**20:.1f} MB; the limit is {limit / 2**20:.1f} MB "
            "(use a smaller image, or start the server with a larger --max-upload-mb)")


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to `self.server.app`; turns DemoError into a JSON error response."""

    server_version = "fcfi-jax-demo"

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method):
        t0 = time.perf_counter()
        app: DemoApp = self.server.app
        url = urlsplit(self.path)
        try:
            query = {k: v[0] for k, v in parse_qs(url.query, max_num_fields=16).items()}
            self._check_origin(app)
            if method == "GET":
                if url.path in ("/", "/index.html"):
                    return self._static("index.html")
                if url.path.startswith("/static/"):
                    return self._static(url.path[len("/static/"):])
                if url.path == "/favicon.ico":
                    return self._send(204, b"", "image/x-icon")
                if url.path == "/api/config":
                    return self._json(200, app.config())
                if url.path == "/api/mask.png":
                    return self._send(200, app.mask_png(query.get("session")), "image/png",
                                      {"Content-Disposition": 'attachment; filename="mask.png"'})
                if url.path == "/api/image.png":
                    return self._send(200, app.image_png(query.get("session")), "image/png")
                if url.path == "/api/state":
                    return self._json(200, app.state(query.get("session")))
                if url.path == "/api/project":
                    return self._json(200, app.project_info())
                if url.path.startswith("/api/export/") and url.path[len("/api/export/"):] in _EXPORTS:
                    what = url.path[len("/api/export/"):]
                    body = app.export(query.get("session"), what)
                    stem = re.sub(r"[^A-Za-z0-9._-]", "_", app.session(query.get("session")).name.rsplit(".", 1)[0])
                    ctype, suffix = _EXPORTS[what]
                    return self._send(200, body, ctype, {"Content-Disposition": f'attachment; filename="{stem}{suffix}"'})
            elif url.path == "/api/image":
                self._check_content_type(_UPLOAD_CTYPES)
                return self._json(200, app.open_image(self._body(app.max_upload_bytes), query.get("name")))
            elif url.path == "/api/import":   # the body is the COCO file itself, so it may be as large as an upload
                doc = self._json_body(app.max_upload_bytes)
                return self._json(200, app.import_coco(query.get("session"), doc))
            elif url.path in _OBJECT_POSTS:
                req = self._json_body()
                sid = req.get("session")
                if url.path == "/api/finish":
                    out = app.finish(sid, req.get("label"))
                elif url.path == "/api/object/update":
                    out = app.update_object(sid, req.get("id"), req.get("label"))
                elif url.path == "/api/object/delete":
                    out = app.delete_object(sid, req.get("id"))
                elif url.path == "/api/options":
                    out = app.set_options(sid, req.get("allow_overlap"), req.get("auto_negatives"))
                elif url.path == "/api/project/open":
                    out = app.open_project_image(req.get("index"))
                else:
                    out = app.mark_done(sid, req.get("done"))
                return self._json(200, out)
            elif url.path in ("/api/click", "/api/undo", "/api/reset"):
                req = self._json_body()
                if url.path == "/api/click":
                    missing = [k for k in ("y", "x", "positive") if k not in req]
                    if missing:
                        raise DemoError(400, f"click request needs 'session', 'y', 'x', 'positive'; missing {missing}")
                    out = app.click(req.get("session"), req["y"], req["x"], req["positive"])
                    out["latency_ms"]["server"] = round(1e3 * (time.perf_counter() - t0), 1)
                else:
                    out = (app.undo if url.path == "/api/undo" else app.reset)(req.get("session"))
                return self._json(200, out)
            raise DemoError(404 if method == "GET" or url.path.startswith("/api/") else 405,
                            f"no such endpoint: {method} {url.path}")
        except DemoError as e:
            self._json(e.status, {"error": str(e)})
        except ValueError as e:   # parse_qs over its field limit, and other malformed request parts
            self._json(400, {"error": f"malformed request: {str(e)[:200]}"})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:   # a bug: report it to the page and the terminal, keep serving
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": f"internal error ({type(e).__name__}: {e}); the server is still running"})

    # ---- request/response helpers ------------------------------------------------------------

    def _check_origin(self, app: DemoApp):
        """403 unless the request is addressed to this server and, for a browser, comes from its own page."""
        host = self.headers.get("Host", "")
        if not self._host_ok(app, host):
            raise DemoError(403, f"this demo server answers only requests addressed to itself; Host {host[:80]!r} "
                                 "is not one of its names (start it with --allow-host NAME to add one)")
        origin = self.headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin)
            same = parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
            if not (same or (parts.scheme in ("http", "https") and self._allowed_name(app, parts.hostname))):
                raise DemoError(403, f"requests from other web pages are refused (Origin {origin[:80]!r}); "
                                     "open the demo's own page")
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise DemoError(403, f"requests from other web pages are refused (Sec-Fetch-Site: {site[:20]}); "
                                 "open the demo's own page")

    def _host_ok(self, app: DemoApp, host: str) -> bool:
        try:
            parts = urlsplit("//" + host)
            name, port = parts.hostname, parts.port
        except ValueError:
            return False
        if not name or parts.path or parts.query or parts.username is not None:
            return False
        if self._allowed_name(app, name):   # a proxy or LAN name chosen by the user: any port
            return True
        bound = str(self.server.server_address[0]).lower()
        names = {"localhost", "127.0.0.1", "::1", bound}
        if name not in names:
            try:
                ipaddress.ip_address(name)   # an IP literal cannot be rebound by DNS
            except ValueError:
                return False
            if bound not in ("0.0.0.0", "::", ""):
                return False
        return (port or 80) == self.server.server_address[1]

    @staticmethod
    def _allowed_name(app: DemoApp, name) -> bool:
        name = (name or "").lower()
        return any(name == h or (h.startswith(".") and name.endswith(h)) for h in app.allowed_hosts)

    def _check_content_type(self, allowed):
        """Only the types the page sends: none of them is a CORS 'simple' type, so another site's page
        cannot send them without a preflight (which is never granted)."""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in allowed:
            raise DemoError(415, f"Content-Type {ctype[:60] or '(none)'!r} is not accepted here; send "
                                 f"{' or '.join(allowed)}")

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        # ASCII digits only: str.isdigit() accepts '²', which int() then rejects; 18 digits bound int()
        if length is None or not re.fullmatch(r"[0-9]{1,18}", length.strip()):
            self.close_connection = True   # the body, if any, cannot be skipped without a valid length
            raise DemoError(411 if length is None else 400,
                            "the request needs a Content-Length header with the body size in bytes")
        n = int(length)
        if n > limit:
            if n <= _DRAIN_LIMIT:   # read and drop it, so the client gets the 413 instead of a reset
                while n > 0 and (chunk := self.rfile.read(min(n, 1 << 20))):
                    n -= len(chunk)
            else:
                self.close_connection = True
            raise DemoError(413, _too_large(int(length), limit))
        return self.rfile.read(n)

    def _json_body(self, limit: int = 1 << 16) -> dict:
        self._check_content_type(_JSON_CTYPES)
        body = self._body(limit)
        if _json_depth(body) > _JSON_MAX_DEPTH:
            raise DemoError(400, f"the request body is nested more than {_JSON_MAX_DEPTH} levels deep; "
                                 "send a flat JSON object")
        try:
            req = json.loads(body or b"{}")
        except (UnicodeDecodeError, ValueError, RecursionError) as e:   # ValueError: also ints > 4300 digits
            raise DemoError(400, f"the request body is not valid JSON ({str(e)[:120]})") from None
        if not isinstance(req, dict):
            raise DemoError(400, "the request body must be a JSON object")
        return req

    def _static(self, name: str):
        path = STATIC_DIR / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise DemoError(404, f"no such file: /static/{name}")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._send(200, path.read_bytes(), ctype + ("; charset=utf-8" if ctype.startswith("text/") else ""))

    def _json(self, status: int, obj):
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)


class DemoServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to a `DemoApp`; `url` is the address to open."""

    daemon_threads = True

    def __init__(self, app: DemoApp, host: str = "127.0.0.1", port: int = 7860, verbose: bool = False):
        self.app, self.verbose = app, verbose
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{port}/"


def serve_in_thread(app: DemoApp, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> DemoServer:
    """Start the server in a daemon thread (notebooks, tests); port 0 picks a free port. Stop: `.shutdown()`."""
    server = DemoServer(app, host, port, verbose)
    threading.Thread(target=server.serve_forever, name="fcfi-demo", daemon=True).start()
    return server


def build_parser(prog: str = "fcfi_jax.demo", description: str = "Click-to-segment web demo (local browser)."):
    """The demo's command line (fcfi_jax.annotate adds --images and --output to it)."""
    import argparse

    from fcfi_jax.predict import add_predictor_args

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--checkpoint", help="official .pth or converted directory (required)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    add_predictor_args(p, dtype=False)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload")
    p.add_argument("--max-side", type=int, default=4096, help="largest accepted image side in pixels")
    p.add_argument("--max-sessions", type=int, default=8, help="live sessions kept (least recently used evicted)")
    p.add_argument("--max-net-side", type=int, default=DEFAULT_NET_SIDE,
                   help="longest image side the network sees; larger uploads are downscaled for it and the mask "
                        "scaled back (bounds memory: see the module docstring)")
    p.add_argument("--max-undo", type=int, default=DEFAULT_MAX_UNDO, help="undo steps kept per session")
    p.add_argument("--max-objects", type=int, default=DEFAULT_MAX_OBJECTS, help="objects per image (1..255)")
    p.add_argument("--labels", metavar="FILE", help="class labels, one per line: only these may be used")
    p.add_argument("--allow-overlap", action="store_true",
                   help="let a new object include pixels of finished objects (default: they are removed from it)")
    p.add_argument("--auto-negatives", action="store_true",
                   help="start with automatic negative clicks on finished objects the mask runs into switched on")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to NAME (a reverse proxy or LAN name; '.example.org' "
                        "allows its subdomains); repeatable")
    p.add_argument("--cache-dir", default=None, help="persistent XLA compilation cache (default ~/.cache/fcfi_jax)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def check_args(args) -> str | None:
    """The first problem with the demo's arguments, as one sentence, or None. Reads the --labels file into
    `args.label_list`. Nothing heavy is imported or loaded here."""
    import os

    from fcfi_jax.predict import check_predictor_args

    if not args.checkpoint:
        return "--checkpoint is required: an official FCFI .pth or a directory written by tools/convert.py"
    if not os.path.exists(args.checkpoint):
        return f"checkpoint not found: {args.checkpoint}"
    try:
        args.zoom = check_predictor_args(args)
    except ValueError as e:
        return str(e)
    for name in ("max_upload_mb", "max_side", "max_sessions", "max_net_side"):
        if not getattr(args, name) > 0:   # `not >` also refuses NaN
            return f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
    if args.max_upload_mb > 1024:
        return f"--max-upload-mb must be at most 1024, got {args.max_upload_mb}"
    if args.max_undo < 0:
        return f"--max-undo must be 0 or more, got {args.max_undo}"
    if not 1 <= args.max_objects <= 255:
        return f"--max-objects must be in 1..255 (the instance PNG has one byte per pixel), got {args.max_objects}"
    if not 0 <= args.port <= 65535:
        return f"--port must be in 0..65535 (0 picks a free port), got {args.port}"
    args.label_list = None
    if args.labels:
        try:
            args.label_list = read_labels(args.labels)
        except CocoError as e:
            return str(e)
    return None


def serve(args, fail, project=None, what: str = "FCFI demo") -> int:
    """Load the model, bind the port and serve until Ctrl+C (arguments already checked by `check_args`)."""
    import fcfi_jax
    from fcfi_jax.convert.mapping import ConversionError
    from fcfi_jax.convert.torch_pickle import CheckpointError
    from fcfi_jax.inference.runner import CanvasRunner, enable_compilation_cache

    try:
        model = fcfi_jax.load_model(args.checkpoint)
    except (CheckpointError, ConversionError, FileNotFoundError) as e:
        return fail(e)
    enable_compilation_cache(args.cache_dir)
    app = DemoApp(CanvasRunner(model, step=args.canvas_step or None), zoom_in=args.zoom, with_flip=not args.no_flip,
                  max_upload_bytes=int(args.max_upload_mb * 2**20), max_side=args.max_side,
                  max_sessions=args.max_sessions, max_net_side=args.max_net_side, max_undo=args.max_undo,
                  allowed_hosts=args.allow_host, labels=args.label_list, labels_source=args.labels or "--labels",
                  allow_overlap=args.allow_overlap, auto_negatives=args.auto_negatives, max_objects=args.max_objects,
                  project=project)
    try:
        server = DemoServer(app, args.host, args.port, verbose=args.verbose)
    except (OSError, OverflowError) as e:
        return fail(f"cannot listen on {args.host}:{args.port}: {getattr(e, 'strerror', None) or e} "
                    "(try another --port or --host)")
    print(f"{what} on {server.url}  (first click compiles the model: ~30 s on a CPU; Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv=None) -> int:
    """CLI: check the arguments, bind the port, load the model, serve until Ctrl+C.

    Every startup problem (no/missing/bad checkpoint, bad labels file, port in use) is one
    `fcfi_jax.demo: error: ...` line on stderr and exit code 2, like argparse and `fcfi_jax.predict`.
    """
    p = build_parser()
    args = p.parse_args(argv)

    def fail(msg):
        print(f"{p.prog}: error: {msg}", file=sys.stderr)
        return 2

    problem = check_args(args)
    return fail(problem) if problem else serve(args, fail)
