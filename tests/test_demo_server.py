"""Demo server (`fcfi_jax.demo`): the JSON API gives the Predictor's masks, bad input gives clear 4xx errors
while the server keeps answering, and the CLI refuses a missing/bad checkpoint with one line and exit code 2.

One model and one compiled runner for the module; zoom-in and flip off so a click takes ~1 s on a CPU.
"""
import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from fcfi_jax.data.readers import read_image
from fcfi_jax.demo import DemoApp, serve_in_thread

IMAGE = "GrabCut/data_GT/24077.jpg"   # 321x481; hrnet18s_clicky gives non-empty masks for these clicks
CLICKS = [(202, 292, True), (99, 312, True), (50, 100, False)]
MAX_UPLOAD = 1 << 20


@pytest.fixture(scope="module")
def demo(fixtures_dir, data_dir):
    """(server, app, reference Predictor factory) on hrnet18s_clicky, shared by the module."""
    import fcfi_jax
    from fcfi_jax.inference.predictor import Predictor
    from fcfi_jax.inference.runner import CanvasRunner

    runner = CanvasRunner(fcfi_jax.load_model(fixtures_dir / "hrnet18s_clicky.pth"))
    app = DemoApp(runner, zoom_in=None, with_flip=False, max_upload_bytes=MAX_UPLOAD, max_side=1000, max_sessions=3)
    server = serve_in_thread(app, port=0)
    yield server, app, lambda: Predictor(runner, zoom_in=None, with_flip=False)
    server.shutdown()
    server.server_close()


def call(server, path, body=None, *, raw=False):
    """(status, parsed JSON or bytes) for GET (body None), POST JSON (dict) or POST bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method="GET" if body is None else "POST")
    if body is not None:   # the content types the page sends (others are refused: see test_hostile_inputs)
        req.add_header("Content-Type", "application/octet-stream" if path == "api/image" else "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    return status, (payload if raw and status == 200 else json.loads(payload))


def png_mask(data: bytes) -> np.ndarray:
    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert m.ndim == 2 and set(np.unique(m)) <= {0, 255}
    return m > 127


def test_clicks_undo_reset_match_predictor(demo, data_dir):
    server, app, make_predictor = demo
    image = read_image(data_dir / IMAGE)
    status, info = call(server, "api/image", (data_dir / IMAGE).read_bytes())
    assert status == 200 and (info["height"], info["width"]) == image.shape[:2]
    sid = info["session"]
    status, shown = call(server, f"api/image.png?session={sid}", raw=True)
    assert status == 200 and np.array_equal(cv2.cvtColor(cv2.imdecode(np.frombuffer(shown, np.uint8), 1),
                                                         cv2.COLOR_BGR2RGB), image)

    ref = make_predictor()
    ref.set_image(image)
    for k, (y, x, pos) in enumerate(CLICKS):
        status, s = call(server, "api/click", {"session": sid, "y": y, "x": x, "positive": pos})
        assert status == 200, s
        mask, _ = ref.add_click(y, x, pos)
        assert mask.any() and np.array_equal(png_mask(base64.b64decode(s["mask_png"])), mask)
        assert s["clicks"] == [list(c) for c in CLICKS[:k + 1]] and s["area"] == int(mask.sum())
        lat = s["latency_ms"]
        assert 0 < lat["model"] <= lat["predict"] <= lat["server"]

    status, s = call(server, "api/undo", {"session": sid})
    ref.undo()
    assert status == 200 and len(s["clicks"]) == 2 and "latency_ms" not in s
    status, downloaded = call(server, f"api/mask.png?session={sid}", raw=True)
    assert status == 200 and np.array_equal(png_mask(downloaded), ref.mask)
    assert np.array_equal(png_mask(base64.b64decode(s["mask_png"])), ref.mask)

    status, s = call(server, "api/reset", {"session": sid})
    assert status == 200 and s["clicks"] == [] and s["area"] == 0
    status, s = call(server, "api/undo", {"session": sid})   # undo with no clicks: harmless no-op
    assert status == 200 and s["clicks"] == []


def test_bad_input_gives_clear_errors_and_server_keeps_running(demo, data_dir):
    server, app, _ = demo
    good = (data_dir / IMAGE).read_bytes()
    _, info = call(server, "api/image", good)
    sid = info["session"]
    wide = cv2.imencode(".png", np.zeros((10, 1200, 3), np.uint8))[1].tobytes()
    truncated = cv2.imencode(".png", read_image(data_dir / IMAGE))[1].tobytes()[:200]
    cases = [
        ("api/image", b"this is a text file, not an image", 415, "not a PNG, JPEG or BMP image"),
        ("api/image", b"", 400, "upload is empty"),
        ("api/image", truncated, 400, "corrupt or truncated"),
        ("api/image", b"\x89PNG" + bytes(MAX_UPLOAD), 413, "the limit is 1.0 MB"),
        ("api/image", wide, 413, "largest side allowed is 1000 px"),
        ("api/click", {"y": 10, "x": 10, "positive": True}, 400, "no image loaded"),
        ("api/click", {"session": "", "y": 10, "x": 10, "positive": True}, 400, "no image loaded"),
        ("api/click", {"session": "deadbeef", "y": 10, "x": 10, "positive": True}, 404, "unknown session"),
        ("api/click", {"session": sid, "y": 321, "x": 10, "positive": True}, 400, "outside the 481x321 image"),
        ("api/click", {"session": sid, "y": 5, "x": -1, "positive": False}, 400, "outside"),
        ("api/click", {"session": sid, "y": "5", "x": 1, "positive": False}, 400, "must be a number"),
        ("api/click", {"session": sid, "y": 5, "x": 1, "positive": 1}, 400, "must be true or false"),
        ("api/click", {"session": sid, "y": 5}, 400, "missing ['x', 'positive']"),
        ("api/click", b"{not json", 400, "not valid JSON"),
        ("api/undo", {"session": "nope"}, 404, "unknown session"),
        ("api/mask.png?session=nope", None, 404, "open the image again"),
        ("api/nothing", None, 404, "no such endpoint"),
        ("static/../server.py", None, 404, "no such file"),
    ]
    for path, body, want_status, needle in cases:
        status, out = call(server, path, body)
        assert status == want_status and needle in out["error"], (path, status, out)
        assert "\n" not in out["error"] and "Traceback" not in out["error"]
        assert call(server, "api/config")[0] == 200   # still answering
    status, s = call(server, "api/reset", {"session": sid})   # the session survived the bad requests
    assert status == 200 and s["clicks"] == []


def test_page_and_static_files(demo):
    server, _, _ = demo
    status, html = call(server, "", raw=True)
    assert status == 200 and b'src="static/app.js"' in html and b'href="static/style.css"' in html
    for name in ("app.js", "style.css"):
        assert call(server, f"static/{name}", raw=True)[0] == 200
    status, cfg = call(server, "api/config")
    assert cfg["max_upload_bytes"] == MAX_UPLOAD and cfg["zoom_in"] is None and cfg["with_flip"] is False


def test_sessions_are_capped_least_recently_used_first(demo, data_dir):
    server, app, _ = demo
    good = (data_dir / IMAGE).read_bytes()
    first = call(server, "api/image", good)[1]["session"]
    for _ in range(app.max_sessions):
        call(server, "api/image", good)
    status, out = call(server, "api/reset", {"session": first})
    assert status == 404 and "keeps the 3 most recent" in out["error"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fcfi_jax.demo", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args,needle", [
    ((), "--checkpoint is required"),
    (("--checkpoint", "missing.pth"), "checkpoint not found: missing.pth"),
    (("--checkpoint", "{bad}"), "is not a PyTorch checkpoint"),
    (("--checkpoint", "{dir}"), "is not a converted fcfi_jax checkpoint"),
    (("--checkpoint", "{bad}", "--zoom-in", "big"), "--zoom-in expects TARGET,EXPANSION"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, args, needle):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    r = _cli(*(a.format(bad=bad, dir=tmp_path) for a in args))
    err = r.stderr.strip()
    assert r.returncode == 2 and needle in err and len(err.splitlines()) == 1, r.stderr
    assert err.startswith("fcfi_jax.demo: error: ") and r.stdout == ""
