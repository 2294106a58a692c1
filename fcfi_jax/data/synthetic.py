"""Small synthetic interactive-segmentation data in the SBD layout (img/*.jpg, inst/*.mat, train.txt, val.txt).

What the `:local` training config trains on when nothing is downloaded, and what the tests build datasets
from. Each image has 1-3 objects on a background, with statistics that make the objects learnable:
- background: smooth, desaturated low-frequency colour field plus strong per-pixel noise (sigma 12);
- objects: ellipses or star-shaped polygons (sharp edges) in saturated colours with a regular texture
  (stripes or checkerboard at a random period/orientation) and weak noise (sigma 4); later objects occlude
  earlier ones and the instance map holds the visible parts (ids 1..n in drawing order);
- every visible object keeps >= `min_area` pixels and area / bbox area >= 0.25, so the official SBD filters
  (min area 80, "buggy mask" ratio 0.08) keep it.

    write_sbd_folder("/tmp/syn", num_train=200, num_val=50, image_size=(96, 128))
    builder = prepare_synthetic_sbd("/tmp/syn", "/tmp/tfds")   # folder (if absent) + sbd_fcfi dataset
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

__all__ = ["make_image", "write_sbd_folder", "prepare_synthetic_sbd"]

_MARKER = "synthetic.json"


def _background(rng, h, w):
    gray = rng.uniform(70, 180)
    grid = gray + rng.uniform(-25, 25, size=(4, 5, 3))
    field = cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return field + rng.normal(0, 12, size=(h, w, 3))


def _colour(rng):
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(150, 255), rng.uniform(140, 255)]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _texture(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(4, 10)
    if rng.random() < 0.5:
        theta = rng.uniform(0, np.pi)
        return 35 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    cells = (np.floor(xx / period) + np.floor(yy / period)) % 2
    return 30 * (2 * cells - 1)


def _shape(rng, h, w):
    size = min(h, w)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    mask = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        axes = (int(rng.uniform(0.12, 0.32) * size), int(rng.uniform(0.12, 0.32) * size))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    else:
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.14, 0.32) * size * rng.uniform(0.6, 1.0, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).round().astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


def make_image(rng: np.random.Generator, height: int = 96, width: int = 128, min_objects: int = 1,
               max_objects: int = 3, min_area: int | None = None, max_tries: int = 100):
    """(image uint8 (H, W, 3) RGB, instance map uint8 (H, W), 0 = background, 1..n objects)."""
    min_area = max(100, int(0.015 * height * width)) if min_area is None else min_area
    for _ in range(max_tries):
        image = _background(rng, height, width)
        instances = np.zeros((height, width), np.uint8)
        n = int(rng.integers(min_objects, max_objects + 1))
        for k in range(1, n + 1):
            mask = _shape(rng, height, width)
            look = _colour(rng) + _texture(rng, height, width)[:, :, None] + rng.normal(0, 4, (height, width, 3))
            image[mask] = look[mask]
            instances[mask] = k
        ok = True
        for k in range(1, n + 1):
            ys, xs = np.nonzero(instances == k)
            if ys.size < min_area or ys.size / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)) < 0.25:
                ok = False
                break
        if ok:
            return np.clip(image, 0, 255).astype(np.uint8), instances
    raise RuntimeError(f"could not place {min_objects}-{max_objects} objects of >= {min_area} px in "
                       f"{height}x{width} images; lower min_area or enlarge the images")


def write_sbd_folder(root, num_train: int = 200, num_val: int = 50, image_size=(96, 128), min_objects: int = 1,
                     max_objects: int = 3, seed: int = 0, jpeg_quality: int = 95) -> Path:
    """Write img/<name>.jpg, inst/<name>.mat (GTinst: Segmentation, Boundaries, Categories), train.txt and
    val.txt under `root` (created); names syn_000000.... Returns root."""
    from scipy.io import savemat
    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "inst").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"syn_{i:06d}" for i in range(num_train + num_val)]
    for name in names:
        image, instances = make_image(rng, int(image_size[0]), int(image_size[1]), min_objects, max_objects)
        cv2.imwrite(str(root / "img" / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        savemat(str(root / "inst" / f"{name}.mat"),
                {"GTinst": {"Segmentation": instances, "Boundaries": np.zeros((1, 1)),
                            "Categories": np.ones((int(instances.max()), 1))}})
    (root / "train.txt").write_text("".join(f"{n}\n" for n in names[:num_train]))
    (root / "val.txt").write_text("".join(f"{n}\n" for n in names[num_train:]))
    return root


def prepare_synthetic_sbd(root, data_dir, **kwargs):
    """Write the synthetic folder at `root` unless it already holds one made with the same kwargs, then build
    (or reuse) the `sbd_fcfi` TFDS dataset from it in `data_dir`; returns the builder."""
    from fcfi_jax.data.tfds_builders import prepare_builder
    root = Path(root)
    params = json.dumps(kwargs, sort_keys=True, default=list)
    marker = root / _MARKER
    fresh = not (marker.is_file() and marker.read_text() == params)
    if fresh:
        if root.is_dir() and any(root.iterdir()) and not marker.is_file():
            raise FileExistsError(f"{root} exists and is not a synthetic dataset folder; choose an empty path")
        write_sbd_folder(root, **kwargs)
        marker.write_text(params)
    return prepare_builder("sbd_fcfi", root, data_dir, rebuild=fresh)
