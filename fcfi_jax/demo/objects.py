"""Annotated objects of one image and their COCO form (RLE masks through pycocotools), shared by the demo server
and `fcfi_jax.annotate`.

An `AnnObject` is immutable: a rename makes a new record, so undo snapshots of an object list share the masks.
Each mask is kept cropped to its bounding box at one bit per pixel (np.packbits), which bounds a session's
memory at max_objects * H * W / 8 bytes whatever the objects look like.

pycocotools is imported only when a COCO file is written or read (the `[annotate]` extra); without it those
requests get one message saying how to install it, everything else works.
"""
from __future__ import annotations

import colorsys
import dataclasses
import io
import json
import pathlib
import zipfile

import numpy as np

# Palette of the instance-id PNG and of the page's overlay: 0 is the background (black), 1..255 are well
# separated hues (golden-ratio steps) in three brightness/saturation rings, so neighbouring ids differ.
PALETTE = [(0, 0, 0)] + [tuple(round(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0,
                                                                         (0.85, 0.6, 1.0)[i % 3],
                                                                         (0.95, 0.85, 0.7)[(i // 3) % 3]))
                         for i in range(255)]
MAX_LABEL_CHARS = 64
DEFAULT_LABEL = "object"


class CocoError(ValueError):
    """A COCO file or annotation that cannot be used; the message names the problem and the fix."""


def mask_util():
    """pycocotools.mask, or CocoError saying how to install it."""
    try:
        from pycocotools import mask
    except ImportError:
        raise CocoError("COCO files need pycocotools, which is not installed: pip install 'fcfi_jax[annotate]' "
                        "(or pip install pycocotools), then restart the server") from None
    return mask


def clean_label(text, allowed=None, source="--labels") -> str:
    """A class label as stored: stripped, 1..64 printable characters; one of `allowed` when a list is given."""
    if not isinstance(text, str):
        raise CocoError(f"a label must be text, got {type(text).__name__}")
    label = " ".join(text.split())
    if not label:
        raise CocoError("the label is empty: type a class name")
    if len(label) > MAX_LABEL_CHARS or not label.isprintable():
        raise CocoError(f"the label {label[:MAX_LABEL_CHARS]!r}... is not a short printable name "
                        f"(at most {MAX_LABEL_CHARS} characters)")
    if allowed is not None and label not in allowed:
        shown = ", ".join(allowed[:12]) + (" ..." if len(allowed) > 12 else "")
        raise CocoError(f"unknown label {label!r}: the labels allowed are those of {source} ({shown}); "
                        "pick one of them, or add it to the file and restart")
    return label


def read_labels(path) -> list[str]:
    """A labels file: one class name per line (blank lines ignored); a duplicate or bad name is a CocoError."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CocoError(f"cannot read the labels file {path}: {getattr(e, 'strerror', None) or e}") from None
    labels = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            label = clean_label(line)
        except CocoError as e:
            raise CocoError(f"{path} line {n}: {e}") from None
        if label in labels:
            raise CocoError(f"{path} line {n}: the label {label!r} is listed twice; keep one")
        labels.append(label)
    if not labels:
        raise CocoError(f"the labels file {path} lists no label: write one class name per line")
    return labels


@dataclasses.dataclass(frozen=True)
class AnnObject:
    """One finished object. bbox = (y0, x0, y1, x1), ends exclusive; bits = np.packbits of the bbox crop.
    clicks: (y, x, positive, auto) that made it (empty when imported); extra: fields of an imported COCO
    annotation written back unchanged on export (iscrowd, attributes, ...)."""

    id: int
    label: str
    bbox: tuple
    bits: np.ndarray = dataclasses.field(repr=False, compare=False)
    area: int
    clicks: tuple = ()
    extra: dict = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def from_mask(cls, oid, label, mask: np.ndarray, clicks=(), extra=None) -> AnnObject:
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if ys.size == 0:
            raise ValueError("an object mask must not be empty")
        bbox = (int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1)
        crop = mask[bbox[0]:bbox[2], bbox[1]:bbox[3]]
        return cls(int(oid), label, bbox, np.packbits(crop, axis=None), int(crop.sum()), tuple(clicks), dict(extra or {}))

    def crop(self) -> np.ndarray:
        y0, x0, y1, x1 = self.bbox
        n = (y1 - y0) * (x1 - x0)
        return np.unpackbits(self.bits, count=n).reshape(y1 - y0, x1 - x0).astype(bool)

    def mask(self, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w), bool)
        y0, x0, y1, x1 = self.bbox
        out[y0:y1, x0:x1] = self.crop()
        return out

    def paint(self, target: np.ndarray, value):
        """target[mask] = value, touching only the bounding box."""
        y0, x0, y1, x1 = self.bbox
        target[y0:y1, x0:x1][self.crop()] = value

    def coco_bbox(self) -> list:
        y0, x0, y1, x1 = self.bbox
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]

    def summary(self) -> dict:
        return {"id": self.id, "label": self.label, "area": self.area, "bbox": self.coco_bbox()}


def id_map(objects, h: int, w: int) -> np.ndarray:
    """uint8 (H, W): 1 + the position of the object covering each pixel (the later one where they overlap), 0 none."""
    out = np.zeros((h, w), np.uint8)
    for k, obj in enumerate(objects):
        obj.paint(out, k + 1)
    return out


# ---- COCO ----------------------------------------------------------------------------------------------

def encode_rle(mask: np.ndarray) -> dict:
    rle = mask_util().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def annotation(obj: AnnObject, h: int, w: int, ann_id: int, image_id: int, category_id: int) -> dict:
    """One COCO annotation: compressed RLE of the whole-image mask; area and bbox as pycocotools computes them."""
    mu = mask_util()
    rle = encode_rle(obj.mask(h, w))
    binary = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    extra = {k: v for k, v in obj.extra.items() if k not in _OWN_KEYS}
    return {**extra, "id": int(ann_id), "image_id": int(image_id), "category_id": int(category_id),
            "segmentation": rle, "area": int(mu.area(binary)), "bbox": [float(v) for v in mu.toBbox(binary)],
            "iscrowd": int(extra.get("iscrowd", 0))}


_OWN_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox")


def decode_segmentation(seg, h: int, w: int, where: str) -> np.ndarray:
    """A COCO segmentation (polygons, RLE with string or list counts) -> bool (H, W); CocoError naming `where`."""
    mu = mask_util()
    try:
        if isinstance(seg, list):
            if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
                                  for p in seg):
                raise CocoError("its polygons must be lists of at least 3 x,y pairs")
            rle = mu.merge(mu.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("size"), list) and "counts" in seg:
            if [int(v) for v in seg["size"]] != [h, w]:
                raise CocoError(f"its RLE size {seg['size']} is not the image's [{h}, {w}]")
            counts = seg["counts"]
            if isinstance(counts, list):
                if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts) or sum(counts) != h * w:
                    raise CocoError(f"its uncompressed RLE counts must be non-negative integers summing to {h * w}")
                rle = mu.frPyObjects(seg, h, w)
            elif isinstance(counts, str):
                rle = {"size": [h, w], "counts": counts.encode("ascii")}
            else:
                raise CocoError("its RLE counts must be a string or a list of integers")
        else:
            raise CocoError("its segmentation must be polygons or an RLE {size, counts}")
        mask = mu.decode(rle if isinstance(rle, list) else [rle])   # a list: (H, W, n)
    except CocoError as e:
        raise CocoError(f"{where}: {e}") from None
    except Exception as e:   # pycocotools raises bare TypeError/ValueError/UnicodeError on malformed input
        raise CocoError(f"{where}: its segmentation could not be decoded ({type(e).__name__}: {str(e)[:80]})") from None
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if mask.shape != (h, w):
        raise CocoError(f"{where}: its segmentation decodes to a {mask.shape} mask, not {h}x{w}")
    return mask.astype(bool)


def check_coco(doc, source: str) -> dict:
    """The parts of a COCO document this tool relies on, checked; CocoError naming `source` otherwise."""
    if not isinstance(doc, dict):
        raise CocoError(f"{source} is not a COCO file: its top level must be a JSON object with images, "
                        "annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            raise CocoError(f"{source} is not a COCO file: '{key}' must be a list")
    for img in doc.get("images", []):
        if not (isinstance(img, dict) and isinstance(img.get("file_name"), str) and _is_int(img.get("id"))):
            raise CocoError(f"{source}: every image needs an integer 'id' and a 'file_name' (found {str(img)[:80]})")
    for cat in doc.get("categories", []):
        if not (isinstance(cat, dict) and _is_int(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise CocoError(f"{source}: every category needs an integer 'id' and a 'name' (found {str(cat)[:80]})")
    for ann in doc.get("annotations", []):
        if not (isinstance(ann, dict) and _is_int(ann.get("image_id")) and _is_int(ann.get("category_id"))
                and "segmentation" in ann):
            raise CocoError(f"{source}: every annotation needs 'image_id', 'category_id' and 'segmentation' "
                            f"(found {str(ann)[:80]})")
    return doc


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def objects_from_coco(doc: dict, image: dict, h: int, w: int, source: str, allowed=None, first_id=1) -> list[AnnObject]:
    """The objects of one COCO image entry (its annotations in file order), at (h, w); empty masks are skipped."""
    if _is_int(image.get("height")) and _is_int(image.get("width")) and (image["height"], image["width"]) != (h, w):
        raise CocoError(f"{source} records {image['file_name']} as {image['width']}x{image['height']} but the image is "
                        f"{w}x{h}: it was written for another version of this image")
    names = {c["id"]: c["name"] for c in doc.get("categories", [])}
    objects = []
    for ann in doc.get("annotations", []):
        if ann["image_id"] != image["id"]:
            continue
        where = f"{source}, annotation {ann.get('id', '?')}"
        if ann["category_id"] not in names:
            raise CocoError(f"{where}: category_id {ann['category_id']} is not in its categories")
        label = clean_label(names[ann["category_id"]], allowed)
        mask = decode_segmentation(ann["segmentation"], h, w, where)
        if mask.any():
            extra = {k: v for k, v in ann.items() if k not in _OWN_KEYS or k == "id"}
            objects.append(AnnObject.from_mask(first_id + len(objects), label, mask, extra=extra))
    return objects


def image_lookup(doc: dict):
    """name -> the image entry whose file_name is `name` (the first such), else the only one whose file_name ends
    with /name, else None; one index of the document, for looking up many names."""
    exact, by_base = {}, {}
    for img in doc.get("images", []):
        exact.setdefault(img["file_name"], img)
        by_base.setdefault(pathlib.PurePosixPath(img["file_name"].replace("\\", "/")).name, []).append(img)

    def lookup(name: str) -> dict | None:
        if name in exact:
            return exact[name]
        matches = by_base.get(name, ())
        return matches[0] if len(matches) == 1 else None

    return lookup


def find_image(doc: dict, name: str, source: str) -> dict:
    """The image entry of `image_lookup`; CocoError listing what the document has otherwise."""
    img = image_lookup(doc)(name)
    if img is not None:
        return img
    images = doc.get("images", [])
    listed = ", ".join(img["file_name"] for img in images[:5]) + (" ..." if len(images) > 5 else "")
    raise CocoError(f"{source} has no image named {name!r} (it lists {len(images)}: {listed or 'none'}); "
                    "import the COCO file written for this image")


def categories_for(labels_used, allowed=None) -> list[dict]:
    names = list(allowed) if allowed is not None else list(dict.fromkeys(labels_used))
    return [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(names)]


def image_coco(objects, name: str, h: int, w: int, allowed=None) -> dict:
    """A COCO document holding one image and its objects (annotation ids 1..N in list order)."""
    cats = categories_for([o.label for o in objects], allowed)
    cid = {c["name"]: c["id"] for c in cats}
    return {"info": {"description": "written by fcfi_jax (FCFI interactive segmentation)"},
            "images": [{"id": 1, "file_name": name, "height": h, "width": w}],
            "annotations": [annotation(o, h, w, k + 1, 1, cid[o.label]) for k, o in enumerate(objects)],
            "categories": cats}


def palette_png(ids: np.ndarray) -> bytes:
    """A palette ('P' mode) PNG of an id map: ids stay the pixel values, the palette makes them visible."""
    from PIL import Image

    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids, np.uint8).tobytes())
    im.putpalette([c for rgb in PALETTE for c in rgb])
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def objects_zip(objects, h: int, w: int, encode_png) -> bytes:
    """A zip of one 0/255 PNG per object, named NNN_label.png in list order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:   # PNGs are already compressed
        for k, o in enumerate(objects):
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in o.label)[:40]
            z.writestr(f"{k + 1:03d}_{safe}.png", encode_png(o.mask(h, w).astype(np.uint8) * 255))
    return buf.getvalue()


def atomic_write_json(path, doc):
    """Write JSON beside `path`, flushed, then renamed over it (`predict.write_atomic`): a reader (or a crash)
    sees the old file or the new one, never a half-written one."""
    from fcfi_jax.predict import write_atomic

    write_atomic(path, json.dumps(doc, separators=(",", ":")).encode("utf-8"))
