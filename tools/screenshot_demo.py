"""Regenerate docs/demo.png: the web demo in headless Chromium after a few clicks on an image.

    python tools/screenshot_demo.py --checkpoint hrnet18s_clicky.pth --image GrabCut/data_GT/106024.jpg \
        --no-zoom-in --no-flip

makes docs/demo.png as it is: the test fixture hrnet18s_clicky.pth (a briefly trained model, whose rough masks
follow the three default clicks best without zoom-in and flip) on the GrabCut penguin.

Starts `python -m fcfi_jax.demo` on a free port, opens its page in the system chromium through Playwright (as
tests/test_demo_browser.py does: no browser is ever downloaded), uploads the image, clicks image pixels, waits for
each mask and saves the window as a 256-colour PNG (FASTOCTREE keeps the small saturated click markers; the file
stays near 100 KB). Arguments it does not know go to the demo server (--no-zoom-in, --no-flip, ...). Needs the
[test] extra (playwright) and chromium (`apt-get install chromium`, or CHROMIUM=/path).
"""
import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

REPO = pathlib.Path(__file__).resolve().parents[1]
# The same switches as the browser test: no sandbox (root in containers), nothing that talks to the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IDLE = "s => s.session && !s.busy"   # the page's state (window.fcfiDemo): image uploaded, no request in flight


def _chromium(path):
    for p in (path, os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
              shutil.which("chromium"), shutil.which("chromium-browser")):
        if p and os.path.isfile(p):
            return p
    raise SystemExit("screenshot_demo: error: no chromium binary (apt-get install chromium, or --chromium PATH)")


def _start_demo(checkpoint, demo_args):
    """The demo server as a subprocess and its URL (named on its first line once it listens)."""
    proc = subprocess.Popen([sys.executable, "-m", "fcfi_jax.demo", "--checkpoint", str(checkpoint), "--port", "0",
                             *demo_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    url = next((w for w in line.split() if w.startswith("http://")), None)
    if url is None:
        proc.kill()
        raise SystemExit(f"screenshot_demo: error: the demo did not start: {line}{proc.stdout.read()[-2000:]}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()   # drained: a full pipe would stall the server
    return proc, url


def _click_pixel(page, y, x, button):
    """Click the centre of image pixel (y, x): page coordinates from the displayed image's bounding box, so the
    click lands right whatever scale the page fits the image to."""
    box = page.evaluate("""() => { const i = document.getElementById('image'), r = i.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height, w: i.naturalWidth, h: i.naturalHeight}; }""")
    page.mouse.click(box["left"] + (x + 0.5) * box["width"] / box["w"],
                     box["top"] + (y + 0.5) * box["height"] / box["h"], button=button)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="official .pth or converted directory")
    p.add_argument("--image", required=True)
    p.add_argument("--clicks", default="210,230,+;162,231,+;246,237,+",
                   help="'y,x,+;y,x,-' in image pixels (default: three clicks on GrabCut 106024.jpg)")
    p.add_argument("--output", default=str(REPO / "docs" / "demo.png"))
    p.add_argument("--viewport", default="1100x700", help="window size WIDTHxHEIGHT in CSS pixels")
    p.add_argument("--colors", type=int, default=256, help="palette size of the PNG, 2..256 (0: full colour)")
    p.add_argument("--chromium", help="chromium binary (default: $CHROMIUM, then the usual paths)")
    args, demo_args = p.parse_known_args(argv)

    from PIL import Image
    from playwright.sync_api import sync_playwright

    from fcfi_jax.predict import parse_clicks

    clicks = parse_clicks(args.clicks)
    width, height = (int(v) for v in args.viewport.lower().split("x"))
    proc, url = _start_demo(args.checkpoint, demo_args)
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
            browser = pw.chromium.launch(executable_path=_chromium(args.chromium), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            page.goto(url)
            page.wait_for_function("window.fcfiDemo && window.fcfiDemo.config")
            page.set_input_files("#file", args.image)
            page.wait_for_function(f"({IDLE})(window.fcfiDemo)", timeout=120_000)
            for k, (y, x, positive) in enumerate(clicks, start=1):
                _click_pixel(page, y, x, "left" if positive else "right")
                # the first click compiles the model (about 30 s on a CPU)
                page.wait_for_function(f"(s => ({IDLE})(s) && s.clicks.length === {k})(window.fcfiDemo)",
                                       timeout=300_000)
            area = page.evaluate("window.fcfiDemo.area")
            raw = pathlib.Path(tmp) / "raw.png"
            page.screenshot(path=str(raw))
            browser.close()
            with Image.open(raw) as im:
                im = im.convert("RGB")
                if args.colors:
                    im = im.quantize(args.colors, method=Image.Quantize.FASTOCTREE)
                im.save(args.output, optimize=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    size = os.path.getsize(args.output)
    print(f"wrote {args.output}: {width}x{height}, {len(clicks)} clicks, mask {area} px, {size // 1024} KB")
    if not area:
        raise SystemExit("screenshot_demo: error: the mask is empty; choose other --clicks")


if __name__ == "__main__":
    main()
