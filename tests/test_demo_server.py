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
        upload = path.split("?")[0] == "api/image"
        req.add_header("Content-Type", "application/octet-stream" if upload else "application/json")
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


# ------------------------------------------------------------------------------------------ objects and COCO

OBJECT_1 = [(202, 292, True), (99, 312, True)]   # hrnet18s_clicky: 3044 px
OBJECT_2 = [(50, 100, True)]                     # 1512 px, one of them also in object 1


def _coco_masks(coco_bytes, tmp_path):
    """pycocotools' view of an exported file: (COCO, [(label, area, mask)] in annotation order)."""
    from pycocotools.coco import COCO

    path = tmp_path / "export.json"
    path.write_bytes(coco_bytes)
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds())
    return coco, [(coco.loadCats(a["category_id"])[0]["name"], a["area"], coco.annToMask(a).astype(bool)) for a in anns]


def test_objects_finish_export_import_match_predictor(demo, data_dir, tmp_path):
    """Two objects annotated through the API: the exported COCO (read by pycocotools), instance PNG and per-object
    PNGs hold the Predictor's masks, the second without the pixel it shares with the first (no-overlap rule);
    rename / delete / undo, and importing the export into a fresh session gives the same objects back."""
    import io
    import zipfile

    from PIL import Image

    server, app, make_predictor = demo
    image = read_image(data_dir / IMAGE)
    ref = make_predictor()
    ref.set_image(image)
    m1 = [ref.add_click(*c)[0] for c in OBJECT_1][-1]
    ref.reset()
    m2 = [ref.add_click(*c)[0] for c in OBJECT_2][-1]
    assert (m1 & m2).any() and (m2 & ~m1).any()   # the rule has something to remove
    want = [("bird", m1), ("grass", m2 & ~m1)]

    status, info = call(server, "api/image?name=photos%2F24077.jpg", (data_dir / IMAGE).read_bytes())
    assert status == 200 and info["name"] == "24077.jpg"
    sid = info["session"]
    for clicks, label in ((OBJECT_1, "bird"), (OBJECT_2, "  grass ")):
        for y, x, pos in clicks:
            status, s = call(server, "api/click", {"session": sid, "y": y, "x": x, "positive": pos})
            assert status == 200, s
        status, s = call(server, "api/finish", {"session": sid, "label": label})
        assert status == 200 and s["clicks"] == [] and s["area"] == 0, s
    assert [(o["label"], o["area"]) for o in s["objects"]] == [(n, int(m.sum())) for n, m in want]
    assert np.array_equal(png_mask_ids(s["objects_png"]), (1 * want[0][1] + 2 * want[1][1]))

    status, exported = call(server, f"api/export/coco.json?session={sid}", raw=True)
    assert status == 200
    coco, anns = _coco_masks(exported, tmp_path)
    assert coco.loadImgs(coco.getImgIds())[0]["file_name"] == "24077.jpg"
    assert [(n, a) for n, a, _ in anns] == [(n, int(m.sum())) for n, m in want]
    for (_, _, got), (_, m) in zip(anns, want):
        assert np.array_equal(got, m)

    status, png = call(server, f"api/export/instances.png?session={sid}", raw=True)
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "P" and len(set(im.getpalette()[3:9])) > 1   # visible colours, not grey 1, 2
        ids = np.array(im)
    assert np.array_equal(ids, 1 * want[0][1] + 2 * want[1][1])
    status, zipped = call(server, f"api/export/objects.zip?session={sid}", raw=True)
    with zipfile.ZipFile(io.BytesIO(zipped)) as z:
        assert z.namelist() == ["001_bird.png", "002_grass.png"]
        for name, (_, m) in zip(z.namelist(), want):
            assert np.array_equal(png_mask(z.read(name)), m)

    # rename, delete, then undo both; undo with no clicks walks back object operations
    ids_ = [o["id"] for o in s["objects"]]
    status, s = call(server, "api/object/update", {"session": sid, "id": ids_[0], "label": "penguin"})
    assert status == 200 and [o["label"] for o in s["objects"]] == ["penguin", "grass"]
    status, s = call(server, "api/object/delete", {"session": sid, "id": ids_[1]})
    assert status == 200 and [o["label"] for o in s["objects"]] == ["penguin"]
    # the objects' id map (kept between clicks, encoded again when the objects change) follows every change
    assert np.array_equal(png_mask_ids(s["objects_png"]), 1 * want[0][1])
    s = call(server, "api/undo", {"session": sid})[1]
    assert [o["label"] for o in s["objects"]] == ["penguin", "grass"]
    assert np.array_equal(png_mask_ids(s["objects_png"]), 1 * want[0][1] + 2 * want[1][1])
    s = call(server, "api/undo", {"session": sid})[1]
    assert [o["label"] for o in s["objects"]] == ["bird", "grass"]
    # undoing "finish" brings the object back as the one being annotated, with the same clicks and mask
    s = call(server, "api/undo", {"session": sid})[1]
    assert [o["label"] for o in s["objects"]] == ["bird"] and s["clicks"] == [list(c) for c in OBJECT_2]
    assert np.array_equal(png_mask_ids(s["objects_png"]), 1 * want[0][1])
    assert np.array_equal(png_mask(base64.b64decode(s["mask_png"])), want[1][1])
    assert call(server, "api/finish", {"session": sid, "label": "grass"})[0] == 200

    # import the export into a fresh session of the same image: the same objects, the same file again
    sid2 = call(server, "api/image?name=24077.jpg", (data_dir / IMAGE).read_bytes())[1]["session"]
    status, s = call(server, f"api/import?session={sid2}", json.loads(exported))
    assert status == 200 and [(o["label"], o["area"]) for o in s["objects"]] == [(n, int(m.sum())) for n, m in want]
    again = json.loads(call(server, f"api/export/coco.json?session={sid2}", raw=True)[1])
    assert again["annotations"] == json.loads(exported)["annotations"]

    # overlap allowed: the second object keeps the shared pixel
    status, s = call(server, "api/options", {"session": sid2, "allow_overlap": True})
    assert status == 200 and s["allow_overlap"] is True
    s = call(server, "api/click", {"session": sid2, "y": 50, "x": 100, "positive": True})[1]
    assert s["area"] == int(m2.sum())


def png_mask_ids(b64):
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)


def test_object_endpoints_keep_the_origin_and_content_type_checks(demo, data_dir):
    """The new endpoints answer only the page's own requests, and refuse bad ids, labels and bodies in one line."""
    server, app, _ = demo
    sid = call(server, "api/image", (data_dir / IMAGE).read_bytes())[1]["session"]
    port = server.server_address[1]
    for path in ("api/finish", "api/object/delete", "api/options", f"api/import?session={sid}"):
        for headers, want in (({"Content-Type": "text/plain"}, 415), ({"Origin": "http://evil.example"}, 403),
                              ({"Host": f"evil.example:{port}"}, 403)):
            req = urllib.request.Request(server.url + path, data=json.dumps({"session": sid}).encode(), method="POST")
            req.add_header("Content-Type", "application/json")
            for k, v in headers.items():
                req.add_header(k, v)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=30)
            assert e.value.code == want, (path, headers)
    cases = [
        ("api/finish", {"session": sid}, 400, "nothing to finish"),
        ("api/finish", {"session": sid, "label": ""}, 400, "label is empty"),
        ("api/object/delete", {"session": sid, "id": 7}, 404, "no object 7"),
        ("api/object/update", {"session": sid, "id": True, "label": "x"}, 404, "no object True"),
        ("api/options", {"session": sid, "allow_overlap": "yes"}, 400, "must be true or false"),
        (f"api/import?session={sid}", {"images": {}}, 400, "'images' must be a list"),
        (f"api/import?session={sid}", [1, 2], 400, "must be a JSON object"),
        ("api/project/open", {"index": 0}, 404, "no image folder"),
        ("api/project/done", {"session": sid, "done": True}, 400, "only images of an annotated folder"),
        ("api/export/coco.json?session=nope", None, 404, "unknown session"),
        ("api/export/other.txt?session=" + sid, None, 404, "no such endpoint"),
    ]
    for path, body, want_status, needle in cases:
        status, out = call(server, path, body)
        assert status == want_status and needle in out["error"] and "\n" not in out["error"], (path, status, out)
    assert call(server, f"api/state?session={sid}")[1]["objects"] == []


def test_json_depth_skips_strings():
    """The nesting check of request bodies (run before json.loads) ignores brackets inside strings."""
    from fcfi_jax.demo.server import _json_depth

    cases = {b"": 0, b'{"a": [1, {"b": "[[[["}]}': 3, b'["a\\"[[", [[]]]': 3, b'["a\\\\", [[]]]': 3,
             b'[{"open string [[[': 2, b"]]][[": 0, b'{"x": "\\\n[["}': 1}
    assert {body: _json_depth(body) for body in cases} == cases
