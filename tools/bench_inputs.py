"""What tools/benchmark.py and tools/time_official.py share: the benchmark input, the official checkout check, and
where the fixtures are. Imports nothing from either tool (each imports this)."""
from __future__ import annotations

import os

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(REPO, "..", "shared", "fixtures")
DATA_ROOT = os.path.join(REPO, "..", "shared", "data")
OFFICIAL_REPO = "github.com/veizgyauzgyauz/FCFI"
# Official model classes per benchmark model name (the checkout's module that holds each).
OFFICIAL_MODULES = {"hrnet18s": "isegm/model/is_hrnet_model.py", "r101": "isegm/model/is_deeplab_model.py"}


def real_input(data_root, h, w, batch):
    """A GrabCut photo resized to h x w with a click at the object's centre (random pixels without data):
    x (B, h, w, 4) float32 (RGB in [0, 1], zero previous mask), points (B, 48, 3), new points (B, 1, 3) int32."""
    import cv2
    import numpy as np

    try:
        from fcfi_jax.data.readers import get_dataset

        s = get_dataset("GrabCut", os.path.join(data_root, "GrabCut"))[0]
        img = cv2.resize(s.image, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        gt = cv2.resize((s.gt == 1).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        ys, xs = np.nonzero(gt)
        cy, cx = int(ys.mean()), int(xs.mean())
    except (OSError, ValueError, IndexError):
        img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
        cy, cx = h // 2, w // 2
    x = np.concatenate([img, np.zeros((h, w, 1), np.float32)], -1)[None].repeat(batch, 0)
    pts = np.full((batch, 48, 3), -1, np.float32)
    pts[:, 0] = (cy, cx, 0)
    new = np.asarray([[[cy, cx, 1]]] * batch, np.int32)
    return x, pts, new


def checkout_error(path: str, models=("hrnet18s",)) -> str | None:
    """Why `path` is not a checkout of the official code holding `models`, or None."""
    for name in models:
        rel = OFFICIAL_MODULES[name]
        if not os.path.isfile(os.path.join(path, rel)):
            return (f"--official {path}: not a checkout of the official FCFI code (no {rel} there); clone "
                    f"{OFFICIAL_REPO} and pass its root folder")
    return None
