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

state = {session, height, width, clicks: [[y, x, positive], ...], area, mask_png: base64 0/255 PNG};
latency_ms = {model: network calls, predict: whole add_click incl. zoom-in/flip, server: request handling}.
(y, x) are image pixels (row, column), truncated to integers like the official Click.

One `Predictor` per session (own clicks, history and zoom-in state), all sharing one `CanvasRunner`
(one compiled network) behind a lock. At most `max_sessions` live; the least recently used is evicted.

Bounded memory. Like the official demo (app.py resizes every upload so that its longest side is at most 600),
an image whose longest side exceeds `max_net_side` (default 800) is downscaled (cv2 INTER_AREA) before the
predictor sees it; clicks are scaled to it and the probabilities are scaled back (cv2 INTER_LINEAR, then the
0.49 threshold) to the uploaded size. The network input is therefore at most max(max_net_side, zoom-in target)
on its longest side, whatever the upload (--max-side only bounds the upload and its decoded pixels), and each
session keeps at most `max_undo` undo steps (3 float32 maps of at most max_net_side^2 pixels each). Measured peak
resident memory of a whole demo process (model, XLA, one session) on a CPU, two clicks on a 4096x4096 upload, flip
on, 720 zoom-in: 1.5 GB with max_net_side 800, 1.7 GB with 1024 (unbounded, the first click alone asked XLA for a
12.9 GB buffer). Each further session adds at most its upload (3 bytes a pixel, 50 MB at 4096^2) plus
(27 + 12 * max_undo) bytes per network pixel (~170 MB at 800^2 with 20 undo steps).

Other origins. The server answers only requests addressed to itself: the Host header must name this server
(localhost, 127.0.0.1, [::1], the bound address, any IP literal when bound to all interfaces, or a name given
with `allowed_hosts` / --allow-host, e.g. a reverse proxy) on its port, which defeats DNS rebinding; an Origin
header, when sent, must be the same origin (or an allowed host) and `Sec-Fetch-Site`, when sent, same-origin.
POST bodies must carry the content types the page sends (application/json, or application/octet-stream /
image/* for uploads): those need a CORS preflight, which this server never grants, so a page on another site
cannot post to it. Malformed requests (bad Content-Length, deep or huge JSON, huge numbers) get a 4xx JSON error.
"""
from __future__ import annotations

import base64
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

from fcfi_jax.inference.predictor import Predictor
from fcfi_jax.predict import fit_side

STATIC_DIR = pathlib.Path(__file__).resolve().with_name("static")
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "BMP": "BMP"}   # PIL format name -> shown name
_DRAIN_LIMIT = 1 << 30   # an over-limit body up to this size is read and dropped so the client sees the 413
DEFAULT_NET_SIDE = 800   # official app.py uses 600; 800 keeps the first (un-zoomed) click closer to the upload
DEFAULT_MAX_UNDO = 20
_JSON_MAX_DEPTH = 32     # the page sends a flat object
_JSON_CTYPES = ("application/json",)
_UPLOAD_CTYPES = ("application/octet-stream", "image/png", "image/jpeg", "image/bmp")


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
    """One user's image and predictor; `lock` serialises its requests.

    `image` is the upload (what the page shows and clicks refer to); the predictor works on `net_image`, the
    upload downscaled to the server's `max_net_side` (the same array when it fits). `clicks` are the clicks in
    upload pixels, parallel to `predictor.clicks`."""

    def __init__(self, sid: str, image: np.ndarray, net_image: np.ndarray, predictor: Predictor):
        self.id, self.image, self.net_image, self.predictor = sid, image, net_image, predictor
        self.clicks: list[tuple[int, int, bool]] = []
        self.lock = threading.Lock()

    @property
    def scaled(self) -> bool:
        return self.net_image.shape[:2] != self.image.shape[:2]

    def mask(self) -> np.ndarray:
        """(H, W) bool mask at the upload's size."""
        if not self.scaled:
            return self.predictor.mask
        h, w = self.image.shape[:2]
        probs = cv2.resize(self.predictor.probs, (w, h), interpolation=cv2.INTER_LINEAR)
        return probs > self.predictor.prob_thresh


class DemoApp:
    """The demo's state and actions, independent of HTTP (the handler only parses and formats).

    runner: a `CanvasRunner` (or any predictor network callable) shared by all sessions;
    zoom_in / with_flip: as `Predictor`; limits: upload bytes, largest image side, live sessions.
    """

    def __init__(self, runner, *, zoom_in=(720, 3.0), with_flip=True, max_upload_bytes=20 << 20,
                 max_side=4096, max_sessions=8, max_net_side=DEFAULT_NET_SIDE, max_undo=DEFAULT_MAX_UNDO,
                 allowed_hosts=()):
        self.runner = runner
        self.zoom_in, self.with_flip = (tuple(zoom_in) if zoom_in else None), bool(with_flip)
        self.max_upload_bytes, self.max_side, self.max_sessions = int(max_upload_bytes), int(max_side), int(max_sessions)
        self.max_net_side, self.max_undo = int(max_net_side), int(max_undo)
        if min(self.max_upload_bytes, self.max_side, self.max_sessions, self.max_net_side) < 1 or self.max_undo < 0:
            raise ValueError("DemoApp limits must be positive (max_undo >= 0)")
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
                "max_net_side": self.max_net_side, "max_undo": self.max_undo}

    # ---- sessions ------------------------------------------------------------------------

    def open_image(self, data: bytes) -> dict:
        """Decode an upload and start a session on it (evicting the least recently used if full)."""
        if len(data) > self.max_upload_bytes:
            raise DemoError(413, _too_large(len(data), self.max_upload_bytes))
        image = decode_image(data, self.max_side)
        h, w = fit_side(*image.shape[:2], self.max_net_side)
        net_image = image if (h, w) == image.shape[:2] else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        predictor = Predictor(self.runner, zoom_in=self.zoom_in, with_flip=self.with_flip)
        predictor.set_image(net_image)
        session = Session(secrets.token_hex(8), image, net_image, predictor)
        with self._sessions_lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return {"session": session.id, "height": image.shape[0], "width": image.shape[1]}

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

    # ---- actions ---------------------------------------------------------------------------

    def click(self, sid, y, x, positive) -> dict:
        """Add a click and predict; the response carries the new mask and the latencies."""
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
        click = (int(y), int(x), positive)   # upload pixels, truncated like the official Click
        nh, nw = s.net_image.shape[:2]
        ny, nx = (min(y * nh / h, nh - 1), min(x * nw / w, nw - 1)) if s.scaled else (y, x)
        with s.lock, self._model_lock:
            t_model = getattr(self.runner, "model_seconds", 0.0)
            t0 = time.perf_counter()
            s.predictor.add_click(ny, nx, positive)
            s.clicks.append(click)
            self._cap_history(s)
            predict = time.perf_counter() - t0
            model = getattr(self.runner, "model_seconds", 0.0) - t_model
            state = self._state(s)
        state["latency_ms"] = {"model": round(1e3 * model, 1), "predict": round(1e3 * predict, 1)}
        return state

    def undo(self, sid) -> dict:
        """Remove the last click; a no-op once the `max_undo` kept steps are used up (the page is told)."""
        s = self.session(sid)
        with s.lock:
            s.predictor.undo()
            del s.clicks[len(s.predictor.clicks):]
            return self._state(s)

    def reset(self, sid) -> dict:
        s = self.session(sid)
        with s.lock:
            s.predictor.reset()
            s.clicks.clear()
            return self._state(s)

    def mask_png(self, sid) -> bytes:
        s = self.session(sid)
        with s.lock:
            return encode_png(s.mask().astype(np.uint8) * 255)

    def _cap_history(self, s: Session):
        """Keep at most `max_undo` undo steps: each holds the previous probabilities and both feedback maps
        (12 bytes per network-image pixel), which otherwise grow without bound with every click.
        Predictor has no public limit yet, so its history list is trimmed from the oldest end."""
        history = s.predictor._history
        if len(history) > self.max_undo:
            del history[:len(history) - self.max_undo]

    def image_png(self, sid) -> bytes:
        return encode_png(self.session(sid).image, fast=True)

    def _state(self, s: Session) -> dict:
        mask = s.mask()
        return {"session": s.id, "height": mask.shape[0], "width": mask.shape[1],
                "clicks": [list(c) for c in s.clicks], "area": int(mask.sum()),
                "undo_steps": len(s.predictor._history),
                "mask_png": base64.b64encode(encode_png(mask.astype(np.uint8) * 255)).decode("ascii")}


def _json_depth(body: bytes) -> int:
    """Deepest [ / { nesting of a JSON text, found without parsing it (strings skipped)."""
    depth = deepest = 0
    in_str = escaped = False
    for c in body:
        if in_str:
            if escaped:
                escaped = False
            elif c == 0x5C:      # backslash
                escaped = True
            elif c == 0x22:      # quote
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x5D, 0x7D):
            depth -= 1
    return deepest


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
            elif url.path == "/api/image":
                self._check_content_type(_UPLOAD_CTYPES)
                return self._json(200, app.open_image(self._body(app.max_upload_bytes)))
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

    def _json_body(self) -> dict:
        self._check_content_type(_JSON_CTYPES)
        body = self._body(1 << 16)
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


def main(argv=None) -> int:
    """CLI: check the arguments, bind the port, load the model, serve until Ctrl+C.

    Every startup problem (no/missing/bad checkpoint, port in use) is one `fcfi_jax.demo: error: ...`
    line on stderr and exit code 2, like argparse and `fcfi_jax.predict`.
    """
    import argparse
    import os

    from fcfi_jax.predict import add_predictor_args, check_predictor_args, parse_zoom_in

    p = argparse.ArgumentParser(prog="fcfi_jax.demo", description="Click-to-segment web demo (local browser).")
    p.add_argument("--checkpoint", help="official .pth or converted directory (required)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    add_predictor_args(p)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload")
    p.add_argument("--max-side", type=int, default=4096, help="largest accepted image side in pixels")
    p.add_argument("--max-sessions", type=int, default=8, help="live sessions kept (least recently used evicted)")
    p.add_argument("--max-net-side", type=int, default=DEFAULT_NET_SIDE,
                   help="longest image side the network sees; larger uploads are downscaled for it and the mask "
                        "scaled back (bounds memory: see the module docstring)")
    p.add_argument("--max-undo", type=int, default=DEFAULT_MAX_UNDO, help="undo steps kept per session")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to NAME (a reverse proxy or LAN name; '.example.org' "
                        "allows its subdomains); repeatable")
    p.add_argument("--cache-dir", default=None, help="persistent XLA compilation cache (default ~/.cache/fcfi_jax)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)

    def fail(msg):
        print(f"{p.prog}: error: {msg}", file=sys.stderr)
        return 2

    if not args.checkpoint:
        return fail("--checkpoint is required: an official FCFI .pth or a directory written by tools/convert.py")
    if not os.path.exists(args.checkpoint):
        return fail(f"checkpoint not found: {args.checkpoint}")
    try:
        zoom = parse_zoom_in(args)
    except ValueError as e:
        return fail(e)
    try:
        check_predictor_args(args)
    except ValueError as e:
        return fail(e)
    for name in ("max_upload_mb", "max_side", "max_sessions", "max_net_side"):
        if not getattr(args, name) > 0:   # `not >` also refuses NaN
            return fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_upload_mb > 1024:
        return fail(f"--max-upload-mb must be at most 1024, got {args.max_upload_mb}")
    if args.max_undo < 0:
        return fail(f"--max-undo must be 0 or more, got {args.max_undo}")
    if not 0 <= args.port <= 65535:
        return fail(f"--port must be in 0..65535 (0 picks a free port), got {args.port}")

    import fcfi_jax
    from fcfi_jax.convert.mapping import ConversionError
    from fcfi_jax.convert.torch_pickle import CheckpointError
    from fcfi_jax.inference.runner import CanvasRunner, enable_compilation_cache

    try:
        model = fcfi_jax.load_model(args.checkpoint)
    except (CheckpointError, ConversionError, FileNotFoundError) as e:
        return fail(e)
    enable_compilation_cache(args.cache_dir)
    app = DemoApp(CanvasRunner(model, step=args.canvas_step or None), zoom_in=zoom, with_flip=not args.no_flip,
                  max_upload_bytes=int(args.max_upload_mb * 2**20), max_side=args.max_side,
                  max_sessions=args.max_sessions, max_net_side=args.max_net_side, max_undo=args.max_undo,
                  allowed_hosts=args.allow_host)
    try:
        server = DemoServer(app, args.host, args.port, verbose=args.verbose)
    except (OSError, OverflowError) as e:
        return fail(f"cannot listen on {args.host}:{args.port}: {getattr(e, 'strerror', None) or e} "
                    "(try another --port or --host)")
    print(f"FCFI demo on {server.url}  (first click compiles the model: ~30 s on a CPU; Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
