"""Demo page in a real browser (system chromium driven by Playwright): clicks at known image pixels land on
exactly those pixels at several display scales and devicePixelRatios, and the downloaded mask and the
drawn overlay equal the Predictor's mask for the same clicks. The image fits the window at load and on resize;
after zooming (wheel at the pointer, +/- buttons and keys) and panning (middle drag, Space + drag, Pan mode)
clicks still land on the right pixels and their markers are drawn there. Errors show in the page. The folder tool
(`python -m fcfi_jax.annotate`) is driven through its page across a server restart.

Skipped only when no chromium binary is installed (`apt-get install chromium`; never `playwright install`).
Screenshots go to the test's tmp dir (docs/demo.png is made by tools/screenshot_demo.py).
"""
import base64
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from fcfi_jax.data.readers import read_image
from fcfi_jax.demo import DemoApp, serve_in_thread

IMAGE = "GrabCut/data_GT/24077.jpg"   # 321x481
CLICKS = [(202, 292, True), (99, 312, True), (50, 100, False)]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium():
    for path in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                 shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and os.path.isfile(path):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    if path is None:
        pytest.skip("no chromium binary found (apt-get install -y chromium, or set CHROMIUM=/path)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def demo(fixtures_dir, data_dir):
    """(server, reference masks after each click) on hrnet18s_clicky, zoom-in and flip off (fast on a CPU)."""
    import fcfi_jax
    from fcfi_jax.inference.predictor import Predictor
    from fcfi_jax.inference.runner import CanvasRunner

    runner = CanvasRunner(fcfi_jax.load_model(fixtures_dir / "hrnet18s_clicky.pth"))
    ref = Predictor(runner, zoom_in=None, with_flip=False)
    ref.set_image(read_image(data_dir / IMAGE))
    masks = [ref.add_click(*c)[0] for c in CLICKS]
    assert all(m.any() for m in masks)
    server = serve_in_thread(DemoApp(runner, zoom_in=None, with_flip=False), port=0)
    server.make_predictor = lambda: Predictor(runner, zoom_in=None, with_flip=False)   # for the objects test
    yield server, masks
    server.shutdown()
    server.server_close()


def _idle(page, n_clicks=None, timeout=120_000):
    cond = "s => s.session && !s.busy" + ("" if n_clicks is None else f" && s.clicks.length === {n_clicks}")
    page.wait_for_function(f"({cond})(window.fcfiDemo)", timeout=timeout)


def _click_pixel(page, y, x, button="left"):
    """Click the centre of image pixel (y, x), page coordinates computed from the image's bounding box."""
    box = page.evaluate("""() => { const i = document.getElementById('image'), r = i.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height, w: i.naturalWidth, h: i.naturalHeight}; }""")
    page.mouse.click(box["left"] + (x + 0.5) * box["width"] / box["w"],
                     box["top"] + (y + 0.5) * box["height"] / box["h"], button=button)
    return box


def _canvas_mask(page):
    """The mask canvas's pixels (alpha > 0) at its intrinsic size, i.e. in image pixels."""
    rows = page.evaluate("""() => { const c = document.getElementById('mask');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, out = [];
        for (let y = 0; y < c.height; y++) { let s = '';
            for (let x = 0; x < c.width; x++) s += d[4 * (y * c.width + x) + 3] > 0 ? '1' : '0';
            out.push(s); }
        return out; }""")
    return np.array([[ch == "1" for ch in r] for r in rows])


def _rects(page):
    """Bounding boxes of the image and of the view's inside (#drop's padding box), the view state, the fit scale."""
    return page.evaluate("""() => { const i = document.getElementById('image').getBoundingClientRect();
        const d = document.getElementById('drop'), r = d.getBoundingClientRect();
        return {img: [i.left, i.top, i.right, i.bottom],
                view: [r.left + d.clientLeft, r.top + d.clientTop, r.left + d.clientLeft + d.clientWidth,
                       r.top + d.clientTop + d.clientHeight],
                s: window.fcfiDemo.view.s, tx: window.fcfiDemo.view.tx, ty: window.fcfiDemo.view.ty,
                fit: Math.min(d.clientWidth / window.fcfiDemo.width, d.clientHeight / window.fcfiDemo.height)}; }""")


def _assert_fitted(page):
    """The whole image is inside the view and touches both sides of it along one axis."""
    r = _rects(page)
    (il, it, ir, ib), (vl, vt, vr, vb) = r["img"], r["view"]
    assert il >= vl - 0.5 and it >= vt - 0.5 and ir <= vr + 0.5 and ib <= vb + 0.5, r
    assert (abs(il - vl) < 1 and abs(ir - vr) < 1) or (abs(it - vt) < 1 and abs(ib - vb) < 1), r
    assert abs(r["s"] - r["fit"]) < 1e-9, r
    return r


def _pixel_point(page, y, x):
    """Client coordinates of the centre of image pixel (y, x), from the image's bounding box."""
    box = page.evaluate("""() => { const i = document.getElementById('image'), r = i.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height, w: i.naturalWidth, h: i.naturalHeight}; }""")
    return (box["left"] + (x + 0.5) * box["width"] / box["w"], box["top"] + (y + 0.5) * box["height"] / box["h"])


def _assert_in_view(page, px, py):
    vl, vt, vr, vb = _rects(page)["view"]
    assert vl < px < vr and vt < py < vb, ((px, py), (vl, vt, vr, vb))


def _marker_rgba(page, px, py):
    """The click-marker canvas's pixel under client point (px, py)."""
    return page.evaluate("""([px, py]) => { const c = document.getElementById('clicks'), d = document.getElementById('drop');
        const r = d.getBoundingClientRect();
        const x = Math.floor((px - r.left - d.clientLeft) * c.width / d.clientWidth);
        const y = Math.floor((py - r.top - d.clientTop) * c.height / d.clientHeight);
        return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data); }""", [px, py])


# (viewport, devicePixelRatio, extra CSS): downscaled by the fit, upscaled by a CSS transform on a smaller view at
# DPR 2, and page zoom 1.25 (like Ctrl +) at DPR 1.5.
CASES = {
    "fit-0.77x-dpr1": ({"width": 400, "height": 700}, 1, ""),
    "transform-1.6x-dpr2": ({"width": 1000, "height": 800}, 2,
                            "#drop { flex: none; width: 500px; height: 340px; transform: scale(1.6); "
                            "transform-origin: 0 0; }"),
    "zoom-1.25-dpr1.5": ({"width": 900, "height": 700}, 1.5, "body { zoom: 1.25; }"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_clicks_land_on_image_pixels_and_mask_matches(browser, demo, data_dir, tmp_path, case):
    server, ref_masks = demo
    viewport, dpr, css = CASES[case]
    context = browser.new_context(viewport=viewport, device_scale_factor=dpr, accept_downloads=True)
    page = context.new_page()
    try:
        page.goto(server.url)
        page.wait_for_function("window.fcfiDemo && window.fcfiDemo.config")
        if css:
            page.add_style_tag(content=css)
        page.set_input_files("#file", str(data_dir / IMAGE))
        _idle(page, 0)
        scales = []
        for k, (y, x, positive) in enumerate(CLICKS):
            if case.startswith("transform") and not positive:   # touch path: the negative-mode toggle
                page.click("#mode")
                box = _click_pixel(page, y, x)
            else:
                box = _click_pixel(page, y, x, "left" if positive else "right")
            scales.append(box["width"] / box["w"])
            _idle(page, k + 1)
            assert page.evaluate("window.fcfiDemo.clicks") == [list(c) for c in CLICKS[:k + 1]]
            assert np.array_equal(_canvas_mask(page), ref_masks[k]), f"overlay differs after click {k + 1}"
        assert abs(scales[0] - 1) > 0.2   # the image really was displayed scaled
        assert "round trip" in page.text_content("#latency")
        assert page.evaluate("devicePixelRatio") == dpr
        page.screenshot(path=str(tmp_path / f"demo_{case}.png"))

        with page.expect_download() as d:
            page.click("#download")
        mask = cv2.imread(d.value.path(), cv2.IMREAD_GRAYSCALE) > 127
        assert np.array_equal(mask, ref_masks[-1])

        page.click("#undo")
        _idle(page, 2)
        assert np.array_equal(_canvas_mask(page), ref_masks[1])
        page.click("#reset")
        _idle(page, 0)
        assert not _canvas_mask(page).any() and page.is_disabled("#undo")
    finally:
        context.close()


def test_page_shows_errors(browser, demo, data_dir):
    server, _ = demo
    context = browser.new_context(viewport={"width": 800, "height": 600})
    page = context.new_page()
    try:
        page.goto(server.url)
        page.wait_for_function("window.fcfiDemo && window.fcfiDemo.config")
        assert page.is_hidden("#project") and page.is_visible("#open")   # no folder: no Prev / Next
        page.mouse.click(400, 400)   # the empty drop area, before any image
        assert "Open an image first" in page.text_content("#status")
        page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"hello"}])
        page.wait_for_function("document.getElementById('status').className === 'error'")
        assert "Cannot open notes.png: not a PNG, JPEG or BMP image" in page.text_content("#status")
        # the page still works after the error; this time the image is dropped on the page
        page.evaluate("""b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer(); dt.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
            document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true})); }""",
                      base64.b64encode((data_dir / IMAGE).read_bytes()).decode())
        _idle(page, 0)
        assert page.get_attribute("#status", "class") == "" and "dropped.jpg: 481×321" in page.text_content("#status")
    finally:
        context.close()


def test_screenshot_after_clicks(browser, demo, data_dir, tmp_path):
    """The scene of docs/demo.png (made by tools/screenshot_demo.py): three positive clicks on the GrabCut penguin."""
    server, _ = demo
    image, clicks = "GrabCut/data_GT/106024.jpg", [(210, 230, True), (162, 231, True), (246, 237, True)]
    context = browser.new_context(viewport={"width": 760, "height": 500}, device_scale_factor=1)
    page = context.new_page()
    try:
        page.goto(server.url)
        page.wait_for_function("window.fcfiDemo && window.fcfiDemo.config")
        page.set_input_files("#file", str(data_dir / image))
        _idle(page, 0)
        for k, (y, x, positive) in enumerate(clicks):
            _click_pixel(page, y, x, "left" if positive else "right")
            _idle(page, k + 1)
        assert page.evaluate("window.fcfiDemo.area") > 5000
        page.screenshot(path=str(tmp_path / "demo.png"))
        assert cv2.imread(str(tmp_path / "demo.png")) is not None
    finally:
        context.close()


def test_image_fits_the_window_and_refits_on_resize(browser, demo, data_dir):
    """A 481x321 image in a 1200-px-wide window is scaled up to fill the view, not shown at native size; it is
    scaled down in a small window, and the page itself never scrolls."""
    server, _ = demo
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    try:
        page.goto(server.url)
        page.wait_for_function("window.fcfiDemo && window.fcfiDemo.config")
        page.set_input_files("#file", str(data_dir / IMAGE))
        _idle(page, 0)
        r = _assert_fitted(page)
        assert r["s"] > 1.5 and page.text_content("#zoom-level") == f"{round(r['s'] * 100)}%"
        no_scroll = "document.documentElement.scrollHeight <= innerHeight && document.documentElement.scrollWidth <= innerWidth"
        assert page.evaluate(no_scroll)
        page.set_viewport_size({"width": 420, "height": 500})
        page.wait_for_function("window.fcfiDemo.view.s < 1")
        _assert_fitted(page)
        assert page.evaluate(no_scroll)
    finally:
        context.close()


def test_zoomed_and_panned_clicks_land_on_image_pixels(browser, demo, data_dir):
    """Wheel zoom keeps the pixel under the pointer; middle drag, Space + drag and Pan mode move the view by the
    drag without adding a click; clicks in the zoomed, panned view hit the right pixels (same masks as the
    Predictor) and their markers are drawn on them; Fit and the keys 0 / + work."""
    server, ref_masks = demo
    context = browser.new_context(viewport={"width": 900, "height": 650}, device_scale_factor=1.5)
    page = context.new_page()
    view = "window.fcfiDemo.view"
    try:
        page.goto(server.url)
        page.wait_for_function("window.fcfiDemo && window.fcfiDemo.config")
        page.set_input_files("#file", str(data_dir / IMAGE))
        _idle(page, 0)
        fit = _assert_fitted(page)["s"]

        # wheel zoom around the pointer: the pixel under it stays under it
        (y0, x0, _), (y1, x1, _), (y2, x2, _) = CLICKS
        px, py = _pixel_point(page, y0, x0)
        page.mouse.move(px, py)
        for _ in range(2):
            page.mouse.wheel(0, -300)
        page.wait_for_function(f"{view}.s > {fit * 2}")   # deltaY -200 each at DPR 1.5
        qx, qy = _pixel_point(page, y0, x0)
        assert abs(qx - px) < 1 and abs(qy - py) < 1   # same pixel (> 2.5 px wide) under the pointer; events round

        # middle drag, then Space + left drag: the view moves by the drag, no click is sent
        for (dx, dy), button, space in (((-60, -40), "middle", False), ((30, 20), "left", True)):
            before = _rects(page)
            if space:
                page.keyboard.down("Space")
            page.mouse.move(px, py)
            page.mouse.down(button=button)
            page.mouse.move(px + dx, py + dy, steps=4)
            page.mouse.up(button=button)
            if space:
                page.keyboard.up("Space")
            after = _rects(page)
            assert abs(after["tx"] - before["tx"] - dx) < 0.5 and abs(after["ty"] - before["ty"] - dy) < 0.5
            assert page.evaluate("window.fcfiDemo.clicks") == [] and not page.evaluate("window.fcfiDemo.busy")

        # a positive click in the zoomed, panned view
        px, py = _pixel_point(page, y0, x0)
        _assert_in_view(page, px, py)
        page.mouse.click(px, py)
        _idle(page, 1)
        assert page.evaluate("window.fcfiDemo.clicks") == [list(CLICKS[0])]
        assert np.array_equal(_canvas_mask(page), ref_masks[0])
        assert _pixel_point(page, y0, x0) == (px, py)   # the view did not move (status text is one line)
        rgba = _marker_rgba(page, px, py)
        assert rgba[3] == 255 and rgba[1] > 120 and rgba[0] < 60, rgba   # the green marker, on that pixel

        # Fit button, two + clicks (zoom around the view's centre), then Pan mode drags the next pixel to the centre
        page.click("#fit")
        _assert_fitted(page)
        page.click("#zoom-in")
        page.click("#zoom-in")
        assert abs(_rects(page)["s"] - fit * 1.25 ** 2) < 1e-9
        vl, vt, vr, vb = _rects(page)["view"]
        px, py = _pixel_point(page, y1, x1)
        page.click("#pan")
        page.mouse.move(px, py)
        page.mouse.down()
        page.mouse.move((vl + vr) / 2, (vt + vb) / 2, steps=4)
        page.mouse.up()
        page.click("#pan")
        assert page.evaluate("window.fcfiDemo.clicks") == [list(CLICKS[0])]
        px, py = _pixel_point(page, y1, x1)
        assert abs(px - (vl + vr) / 2) < 1 and abs(py - (vt + vb) / 2) < 1
        page.mouse.click(px, py)
        _idle(page, 2)
        assert np.array_equal(_canvas_mask(page), ref_masks[1])

        # keys: 0 fits, + zooms in; then wheel zoom at the negative click's pixel and a right click there
        page.keyboard.press("0")
        _assert_fitted(page)
        page.keyboard.press("+")
        assert abs(_rects(page)["s"] - fit * 1.25) < 1e-9
        px, py = _pixel_point(page, y2, x2)
        page.mouse.move(px, py)
        page.mouse.wheel(0, -400)
        page.wait_for_function(f"{view}.s > {fit * 1.6}")
        px, py = _pixel_point(page, y2, x2)
        _assert_in_view(page, px, py)
        page.mouse.click(px, py, button="right")
        _idle(page, 3)
        assert page.evaluate("window.fcfiDemo.clicks") == [list(c) for c in CLICKS]
        assert np.array_equal(_canvas_mask(page), ref_masks[2])
        rgba = _marker_rgba(page, px, py)
        assert rgba[3] == 255 and rgba[0] > 150 and rgba[1] < 80, rgba   # the red marker
    finally:
        context.close()


def test_two_objects_exported_as_coco(browser, demo, data_dir, tmp_path):
    """Annotate two objects with the mouse and the keyboard (typed labels, Enter / N to finish), select and rename
    one in the list, and download the COCO file: pycocotools reads it, and its masks and areas are the Predictor's
    (the second object without the pixel it shares with the first: the no-overlap rule)."""
    from pycocotools.coco import COCO

    server, _ = demo
    objects = [("bird", [(202, 292, True), (99, 312, True)]), ("grass", [(50, 100, True)])]
    ref = server.make_predictor()
    ref.set_image(read_image(data_dir / IMAGE))
    want = []
    for _, clicks in objects:
        ref.reset()
        m = [ref.add_click(*c)[0] for c in clicks][-1]
        want.append(m & ~want[0] if want else m)
    assert want[1].any() and want[1].sum() < ref.mask.sum()
    context = browser.new_context(viewport={"width": 1000, "height": 700}, accept_downloads=True)
    page = context.new_page()
    try:
        page.goto(server.url)
        page.wait_for_function("window.fcfiDemo && window.fcfiDemo.config")
        page.set_input_files("#file", str(data_dir / IMAGE))
        _idle(page, 0)
        for k, (label, clicks) in enumerate(objects):
            page.fill("#label", label)
            for j, (y, x, positive) in enumerate(clicks):
                _click_pixel(page, y, x, "left" if positive else "right")
                _idle(page, j + 1)
            page.keyboard.press("Enter" if k == 0 else "n")
            page.wait_for_function(f"window.fcfiDemo.objects.length === {k + 1} && !window.fcfiDemo.busy")
        assert page.evaluate("window.fcfiDemo.clicks") == [] and not _canvas_mask(page).any()
        assert page.locator("#objects li").count() == 2 and "2. grass" in page.text_content("#objects")
        # the finished objects are drawn in their palette colours on their own canvas
        alpha = np.array(page.evaluate("""() => { const c = document.getElementById('objects-canvas');
            return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")).reshape(
            want[0].shape + (4,))[..., 3]
        assert np.array_equal(alpha > 0, want[0] | want[1])

        # select the second object in the list, rename it, then undo the rename with Ctrl+Z
        page.click("#objects li:nth-child(2)")
        page.fill("#rename", "lawn")
        page.press("#rename", "Enter")
        page.wait_for_function("window.fcfiDemo.objects[1].label === 'lawn' && !window.fcfiDemo.busy")
        page.keyboard.press("Control+z")
        page.wait_for_function("window.fcfiDemo.objects[1].label === 'grass' && !window.fcfiDemo.busy")

        with page.expect_download() as d:
            page.click("#export-coco")
        assert d.value.suggested_filename == "24077.coco.json"
        coco = COCO(d.value.path())
        anns = coco.loadAnns(coco.getAnnIds())
        assert [coco.loadCats(a["category_id"])[0]["name"] for a in anns] == ["bird", "grass"]
        assert [a["area"] for a in anns] == [int(m.sum()) for m in want]
        for a, m in zip(anns, want):
            assert np.array_equal(coco.annToMask(a).astype(bool), m)
        assert "Enter" in page.text_content("#rules") and "No overlap" in page.text_content("#rules")
    finally:
        context.close()


# The folder test's images, copied under new names (Previous / Next go by name): GrabCut pictures of one size (one
# compiled canvas), the first two with a click on their object.
FOLDER = {"a.jpg": ("106024.jpg", (210, 230)), "b.jpg": ("24077.jpg", (202, 292)), "c.jpg": ("124080.jpg", None)}


def _start_annotate(checkpoint, images, output, cache):
    """`python -m fcfi_jax.annotate` on a free port: (process, URL, its first line, its output so far)."""
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "fcfi_jax.annotate", "--checkpoint",
                             str(checkpoint), "--images", str(images), "--output", str(output), "--port", "0",
                             "--no-zoom-in", "--no-flip", "--cache-dir", str(cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # as from a terminal: a test run started in the background (`pytest ... &`) ignores
                            # SIGINT, its children inherit that, and Python then installs no Ctrl+C handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:   # "3 images in DIR, 0 done; ...", then "FCFI annotation on http://... "
        lines.append(line)
        url = next((w for w in line.split() if w.startswith("http://")), None)
        if url:
            threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()   # a full pipe stalls it
            return proc, url, lines[0], lines
    proc.wait(timeout=30)
    pytest.fail(f"fcfi_jax.annotate did not start (exit code {proc.returncode}): {''.join(lines)[-2000:]}")


def _stop(proc, lines):
    proc.send_signal(signal.SIGINT)   # Ctrl+C
    try:
        code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)   # -X faulthandler: every thread's stack goes to the output
        proc.wait(timeout=30)
        time.sleep(1)                      # the reader thread collects the last lines
        pytest.fail("fcfi_jax.annotate did not stop within 90 s of Ctrl+C:\n" + "".join(lines)[-6000:])
    assert code == 0, "".join(lines)[-2000:]


def _project_idle(page, index):
    page.wait_for_function(f"(s => s.project && s.projectIndex === {index} && s.session && !s.busy && "
                           f"s.name === {list(FOLDER)[index]!r})(window.fcfiDemo)", timeout=60_000)


def _shown_image(page):
    """The displayed <img>'s pixels (RGB), read back through a canvas (the page shows the server's PNG)."""
    url = page.evaluate("""() => { const i = document.getElementById('image'), c = document.createElement('canvas');
        c.width = i.naturalWidth; c.height = i.naturalHeight; c.getContext('2d').drawImage(i, 0, 0);
        return c.toDataURL('image/png'); }""")
    png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_annotate_folder_saves_and_continues_after_a_restart(browser, fixtures_dir, data_dir, tmp_path):
    """`python -m fcfi_jax.annotate` driven through its page: one object on the first image (click, Enter), Image
    done, Next (the progress and the image change), one object on the second; the server is stopped with Ctrl+C and
    started again on the same --output: the page continues at the first image not done, with its object, and the
    COCO file (pycocotools) holds both objects on the right images."""
    from pycocotools.coco import COCO

    images, out = tmp_path / "images", tmp_path / "coco.json"
    images.mkdir()
    for name, (src, _) in FOLDER.items():
        shutil.copy(data_dir / "GrabCut/data_GT" / src, images / name)
    names = list(FOLDER)
    args = (fixtures_dir / "hrnet18s_clicky.pth", images, out, tmp_path / "xla")
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    proc, url, first, lines = _start_annotate(*args)
    areas = {}
    try:
        assert "3 images in" in first and "0 done" in first, first
        page.goto(url)
        _project_idle(page, 0)
        assert page.text_content("#progress") == "0/3 done" and page.is_hidden("#open")
        assert page.text_content("#image-name") == "1/3: a.jpg" and page.is_disabled("#prev")
        for k, label in ((0, "penguin"), (1, "bird")):
            assert np.array_equal(_shown_image(page), read_image(images / names[k]))
            page.fill("#label", label)
            _click_pixel(page, *FOLDER[names[k]][1])
            _idle(page, 1)   # the first click compiles the model
            areas[names[k]] = page.evaluate("window.fcfiDemo.area")
            assert areas[names[k]] > 100, areas
            page.keyboard.press("Enter")
            page.wait_for_function("(s => s.objects.length === 1 && s.clicks.length === 0 && !s.busy)(window.fcfiDemo)")
            assert page.get_attribute("#status", "class") == "", page.text_content("#status")   # no save error
            assert len(COCO(str(out)).getAnnIds()) == k + 1   # saved at once
            if k == 0:
                page.click("#done")
                page.wait_for_function("document.getElementById('progress').textContent === '1/3 done' && "
                                       "!window.fcfiDemo.busy")
                assert page.evaluate("window.fcfiDemo.projectIndex") == 0 and page.is_checked("#done")
                page.click("#next")
                _project_idle(page, 1)
                assert page.text_content("#progress") == "1/3 done" and not page.is_checked("#done")
                assert page.text_content("#image-name") == "2/3: b.jpg" and page.locator("#objects li").count() == 0
        _stop(proc, lines)

        proc, url, first, lines = _start_annotate(*args)   # the same command again continues the file
        assert "3 images in" in first and "1 done" in first, first
        page.goto(url)
        _project_idle(page, 1)   # the first image not done
        assert page.text_content("#progress") == "1/3 done" and page.text_content("#image-name") == "2/3: b.jpg"
        assert not page.is_checked("#done") and not page.is_disabled("#prev")
        assert np.array_equal(_shown_image(page), read_image(images / "b.jpg"))
        assert page.evaluate("window.fcfiDemo.objects.map(o => [o.label, o.area])") == [["bird", areas["b.jpg"]]]
        assert page.locator("#objects li").count() == 1 and "1. bird" in page.text_content("#objects")
        assert not _canvas_mask(page).any() and np.count_nonzero(
            np.array(page.evaluate("""() => { const c = document.getElementById('objects-canvas');
                return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"""))[3::4]
        ) == areas["b.jpg"]   # the loaded object is drawn
        _stop(proc, lines)
    finally:
        context.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    coco = COCO(str(out))
    files = {im["id"]: im["file_name"] for im in coco.loadImgs(coco.getImgIds())}
    done = {im["file_name"]: im.get("fcfi_done", False) for im in coco.loadImgs(coco.getImgIds())}
    assert sorted(files.values()) == ["a.jpg", "b.jpg"] and done == {"a.jpg": True, "b.jpg": False}
    anns = coco.loadAnns(coco.getAnnIds())
    got = {files[a["image_id"]]: (coco.loadCats(a["category_id"])[0]["name"], a["area"]) for a in anns}
    assert got == {"a.jpg": ("penguin", areas["a.jpg"]), "b.jpg": ("bird", areas["b.jpg"])}
    for a in anns:
        m = coco.annToMask(a).astype(bool)
        y, x = FOLDER[files[a["image_id"]]][1]
        assert m.shape == (321, 481) and m.sum() == a["area"] and m[y, x]
