"""Click-to-segment web demo: `python -m fcfi_jax.demo --checkpoint CKPT` (stdlib server + static page).

From Python (notebooks, tests):

    from fcfi_jax.demo import DemoApp, serve_in_thread
    server = serve_in_thread(DemoApp(CanvasRunner(model)), port=7860); print(server.url)
"""
from fcfi_jax.demo.server import DemoApp, DemoError, DemoServer, main, serve_in_thread

__all__ = ["DemoApp", "DemoError", "DemoServer", "main", "serve_in_thread"]

