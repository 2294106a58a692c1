"""Demo page in a real browser (system chromium driven by Playwright): clicks at known image pixels land on
exactly those pixels at several display scales and devicePixelRatios, and the downloaded mask and the
drawn overlay equal the Predictor's mask for the same clicks. Errors show in the page.

Skipped only when no chromium binary is installed (`apt-get install chromium`; never `playwright install`).
Screenshots go to the test's tmp dir; set FCFI_DEMO_SCREENSHOT=path.png to keep the last one (docs/demo.png).
"""
import base64
import os
import shutil

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


# (viewport, devicePixelRatio, extra CSS): downscaled by layout, upscaled by a CSS transform at DPR 2,
# and page zoom 1.25 (like Ctrl +) at DPR 1.5.
CASES = {
    "fit-0.77x-dpr1": ({"width": 400, "height": 700}, 1, ""),
    "transform-1.6x-dpr2": ({"width": 1000, "height": 800}, 2, "#stage { transform: scale(1.6); transform-origin: 0 0; }"),
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
    """The picture in README (docs/demo.png): three positive clicks on the GrabCut penguin."""
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
        if os.environ.get("FCFI_DEMO_SCREENSHOT"):   # README picture: 256-colour palette PNG (~60 KB)
            from PIL import Image

            with Image.open(tmp_path / "demo.png") as im:
                im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(
                    os.environ["FCFI_DEMO_SCREENSHOT"], optimize=True)
    finally:
        context.close()
