"""Your own images for fine-tuning: the `folder` and `coco_json` layouts, read into FCFI training records.

`--config.data.builder=folder|coco_json --config.data.manual_dir=DIR` selects them (TFDS builders
`FolderInstances` / `CocoJsonInstances` in `fcfi_jax.data.tfds_builders`, which call this module).

folder layout (DIR = manual_dir):
    DIR/images/<stem>.<ext>      the images: .jpg .jpeg .png .bmp .tif .tiff .webp (anything cv2 decodes),
                                 colour or grayscale; names starting with '.' are skipped
    DIR/masks/<stem>.png         EITHER an instance-id map of the same height and width: 0 background,
                                 1..N one id per object, 255 ignore (8-bit maps only); grayscale 8/16-bit,
                                 a palette PNG (the palette index is the id, so coloured "visible" id maps
                                 work), or an RGB PNG (each distinct non-black colour is one object)
    DIR/masks/<stem>/<name>.png  OR one binary mask per object (any non-zero pixel is the object; objects
                                 may overlap), objects in file-name order
    DIR/val.txt                  optional: the stems held out for evaluation, one per line
Every image needs exactly one of the two mask forms; an image with an all-zero id map (or an empty
masks/<stem>/ folder) is a background-only image.

coco_json layout:
    DIR/annotations.json         COCO instances JSON (or the only *.json file in DIR): "images" (id,
                                 file_name, width, height), "annotations" (image_id, segmentation as
                                 polygons, uncompressed RLE or compressed RLE, iscrowd); "categories" unused
    DIR/images/<file_name>       the images (or DIR/<file_name>)
    DIR/val.txt                  optional: held-out file_names (or their stems), one per line
Crowd annotations (iscrowd=1) become ignore regions (no loss, no clicks), as COCO intends; annotations
with an empty segmentation are skipped. Decoding polygons and RLE needs pycocotools.

Held-out split (evaluation during training): the stems listed in DIR/val.txt if present; otherwise
round(val_fraction * n) images (at least 1, at most n - 1) of the n images, the ones with the smallest
zlib.crc32(stem) (ties by stem). The rule depends only on the names, so an image keeps its split when
others are added (except at the boundary) and the split is the same on every machine. Held-out images are
never trained on.

Records are what `fcfi_jax.data.pipeline.record_to_sample` reads (see `tfds_builders` module doc): the
source image bytes (JPEG and PNG as they are, other formats re-encoded as PNG), uint8 PNG layers
(objects packed greedily into layers where they do not overlap, at most 255 values per layer) and the
objects JSON, all roots, without the SBD area fields (the SBD "buggy mask" filter is not applied to your
annotations). Every problem found is a one-line ValueError / FileNotFoundError naming the file and the fix.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import cv2
import numpy as np

__all__ = ["FOLDER_LAYOUT", "COCO_LAYOUT", "list_folder", "list_coco", "heldout_split", "folder_record",
           "coco_record", "source_fingerprint", "heldout_eval_dataset", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_ID = 255          # 8-bit id maps: the VOC "void" convention
FOLDER_LAYOUT = ("DIR/images/<stem>.jpg|png|... with DIR/masks/<stem>.png (instance-id map) or "
                 "DIR/masks/<stem>/<k>.png (one binary mask per object); see docs/training.md")
COCO_LAYOUT = ("DIR/annotations.json (COCO instances: polygons or RLE) with the images in DIR/images/<file_name> "
               "or DIR/<file_name>; see docs/training.md")


# ------------------------------------------------------------------------------------------------ reading

def read_image_bytes(path: Path, what: str):
    """(bytes to store, (H, W)) of an image file; ValueError naming the file when cv2 cannot decode it."""
    raw = path.read_bytes()
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
    if image is None:
        raise ValueError(f"{what}: cannot read image {path} (not an image file cv2 can decode): "
                         f"replace it or remove it")
    if raw[:3] == b"\xff\xd8\xff" or raw[:8] == b"\x89PNG\r\n\x1a\n":
        return raw, image.shape[:2]          # stored unchanged: the training decode is the official cv2 read
    ok, buf = cv2.imencode(".png", image)    # other formats: lossless PNG, which every TFDS decoder reads
    return buf.tobytes(), image.shape[:2]


def read_id_map(path: Path, what: str) -> tuple[np.ndarray, bool]:
    """(int64 ids (H, W), whether 255 means ignore) of an instance-id PNG; see the module doc for the modes."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB"), np.int64)
                if np.all(rgb[:, :, 0] == rgb[:, :, 1]) and np.all(rgb[:, :, 1] == rgb[:, :, 2]):
                    return rgb[:, :, 0], True
                key = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
                colours, inverse = np.unique(key, return_inverse=True)   # ascending: black (0) first
                ids = inverse.reshape(key.shape) + (0 if colours[0] == 0 else 1)
                return ids, False
            if mode == "LA":
                im = im.getchannel("L")
            elif mode == "1":
                return np.asarray(im, np.int64), False
            elif mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(f"PNG mode {mode}")
            ids = np.asarray(im, np.int64)
            return ids, mode in ("L", "P", "LA")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"{what}: cannot read mask {path} ({err}): save it as a grayscale, palette or RGB "
                         f"PNG") from None


def read_binary_mask(path: Path, what: str) -> np.ndarray:
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ValueError(f"{what}: cannot read mask {path} (not an image file cv2 can decode): save it as a PNG")
    return (data.reshape(data.shape[0], data.shape[1], -1) != 0).any(axis=2)


def _check_size(mask_hw, image_hw, mask_path, image_path, what):
    if tuple(mask_hw) != tuple(image_hw):
        raise ValueError(f"{what}: mask {mask_path} is {mask_hw[0]}x{mask_hw[1]} (HxW) but image {image_path} is "
                         f"{image_hw[0]}x{image_hw[1]}: save the mask at the image's size")


def pack_layers(masks: list, ignore: np.ndarray | None, shape) -> tuple[list, list, list]:
    """Greedy packing of boolean object masks into uint8 layers: an object goes into the first layer where it
    overlaps nothing (values 1..255 per layer). Returns (layers, [(layer, value)] per object, ignore entries)."""
    layers, counts, mapping = [], [], []
    for m in list(masks) + ([ignore] if ignore is not None and ignore.any() else []):
        for i, layer in enumerate(layers):
            if counts[i] < 255 and not layer[m].any():
                break
        else:
            layers.append(np.zeros(shape, np.uint8))
            counts.append(0)
            i = len(layers) - 1
        counts[i] += 1
        layers[i][m] = counts[i]
        mapping.append((i, counts[i]))
    if not layers:
        layers.append(np.zeros(shape, np.uint8))
    ign = mapping[len(masks):]
    return layers, mapping[:len(masks)], [list(x) for x in ign]


def _record(name: str, image_bytes: bytes, masks: list, ids: list, ignore, shape) -> dict:
    layers, mapping, ign = pack_layers(masks, ignore, shape)
    objects = [{"id": int(k), "layer": int(layer), "value": int(value), "parent": None, "children": [],
                "stuff": False} for k, (layer, value) in zip(ids, mapping)]
    pngs = []
    for layer in layers:
        ok, buf = cv2.imencode(".png", layer[:, :, None])
        pngs.append(buf.tobytes())
    return {"image": image_bytes, "layers": pngs, "objects": json.dumps({"objects": objects, "ignore": ign}),
            "name": name}


# ----------------------------------------------------------------------------------------------- split rule

def heldout_split(names: list, root: Path, val_fraction: float, what: str, aliases=None) -> set:
    """Names held out for evaluation (module doc). `aliases` maps extra spellings (a file's stem) to names."""
    listed = root / "val.txt"
    if listed.is_file():
        lookup = {n: n for n in names}
        lookup.update(aliases or {})
        wanted = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        unknown = [w for w in wanted if w not in lookup]
        if unknown:
            raise ValueError(f"{what}: {listed} names {unknown[0]!r}, which is not an image of {root}: fix or "
                             f"remove that line")
        held = {lookup[w] for w in wanted}
        if len(held) >= len(names):
            raise ValueError(f"{what}: {listed} holds out every image: leave some for training")
        return held
    if not 0 <= val_fraction < 1:
        raise ValueError(f"{what}: data.val_fraction={val_fraction} must be in [0, 1)")
    if val_fraction == 0:
        return set()
    if len(names) < 2:
        raise ValueError(f"{what}: {len(names)} image in {root}: need at least 2 (one held out for evaluation), "
                         f"or set --config.data.val_fraction=0 and evaluation off (--config.eval.at_end=False)")
    n_val = min(max(1, int(round(val_fraction * len(names)))), len(names) - 1)   # >= 1 held out, >= 1 trained
    order = sorted(names, key=lambda n: (zlib.crc32(Path(n).stem.encode()), n))
    return set(order[:n_val])


# -------------------------------------------------------------------------------------------------- folder

def list_folder(root: Path, what: str = "folder") -> list:
    """[(stem, image path, mask path (file or folder))] of a folder dataset, sorted by stem; checks pairing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: manual_dir {root} is not a folder: expected {FOLDER_LAYOUT}")
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        missing = images_dir if not images_dir.is_dir() else masks_dir
        raise FileNotFoundError(f"{what}: no folder {missing}: expected {FOLDER_LAYOUT}")
    images = {}
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"{what}: {p} is not an image file ({', '.join(IMAGE_EXTENSIONS)}): move it out of "
                             f"{images_dir}")
        if p.stem in images:
            raise ValueError(f"{what}: two images with the stem {p.stem!r} in {images_dir} ({images[p.stem].name}, "
                             f"{p.name}): rename one")
        images[p.stem] = p
    if not images:
        raise ValueError(f"{what}: no images in {images_dir}: expected {FOLDER_LAYOUT}")
    masks = {}
    for p in sorted(masks_dir.iterdir()):
        if p.name.startswith("."):
            continue
        stem = p.name if p.is_dir() else p.stem
        if p.is_file() and p.suffix.lower() != ".png":
            raise ValueError(f"{what}: mask {p} is not a .png: save masks as PNG (lossless; JPEG changes the ids)")
        if stem in masks:
            raise ValueError(f"{what}: image {stem!r} has both {masks[stem]} and {p}: keep either the id map "
                             f"or the per-object folder")
        masks[stem] = p
    for stem, p in masks.items():
        if stem not in images:
            raise ValueError(f"{what}: mask {p} has no image {images_dir}/{stem}.*: add the image or remove the mask")
    entries = []
    for stem, img in images.items():
        if stem not in masks:
            raise ValueError(f"{what}: image {img} has no mask: add {masks_dir}/{stem}.png (instance ids) or "
                             f"{masks_dir}/{stem}/<k>.png (one binary mask per object)")
        entries.append((stem, img, masks[stem]))
    return entries


def folder_record(stem: str, image_path: Path, mask_path: Path, what: str = "folder") -> dict:
    image_bytes, hw = read_image_bytes(image_path, what)
    if mask_path.is_dir():
        files = sorted(p for p in mask_path.iterdir() if p.is_file() and not p.name.startswith("."))
        bad = [p for p in files if p.suffix.lower() != ".png"]
        if bad:
            raise ValueError(f"{what}: mask {bad[0]} is not a .png: save masks as PNG")
        masks = []
        for p in files:
            m = read_binary_mask(p, what)
            _check_size(m.shape, hw, p, image_path, what)
            if m.any():
                masks.append(m)
        return _record(stem, image_bytes, masks, list(range(1, len(masks) + 1)), None, hw)
    ids, has_ignore = read_id_map(mask_path, what)
    _check_size(ids.shape, hw, mask_path, image_path, what)
    ignore = (ids == IGNORE_ID) if has_ignore else None
    values = [int(v) for v in np.unique(ids) if v != 0 and not (has_ignore and v == IGNORE_ID)]
    return _record(stem, image_bytes, [ids == v for v in values], values, ignore, hw)


# ---------------------------------------------------------------------------------------------------- COCO

def coco_json_path(root: Path, what: str = "coco_json") -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: manual_dir {root} is not a folder: expected {COCO_LAYOUT}")
    path = root / "annotations.json"
    if path.is_file():
        return path
    found = sorted(p for p in root.glob("*.json") if p.is_file() and not p.name.startswith("."))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"{what}: no annotations.json in {root}: expected {COCO_LAYOUT}")
    raise ValueError(f"{what}: {len(found)} .json files in {root} ({', '.join(p.name for p in found[:4])}) and no "
                     f"annotations.json: name the COCO file annotations.json")


def list_coco(root: Path, what: str = "coco_json") -> list:
    """[(file_name, image path, image entry, [annotations])] in image-id order; checks the references."""
    root = Path(root)
    path = coco_json_path(root, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: {path} is not valid JSON ({str(err)[:100]}): re-export it") from None
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations", []), list)):
        raise ValueError(f"{what}: {path} has no 'images' list (a COCO instances file has 'images' and "
                         f"'annotations'): export COCO instances JSON")
    images, names = {}, set()
    for entry in data["images"]:
        try:
            image_id, file_name = entry["id"], str(entry["file_name"])
        except (TypeError, KeyError):
            raise ValueError(f"{what}: {path}: an 'images' entry lacks 'id' or 'file_name' ({str(entry)[:80]}): "
                             f"fix the file") from None
        if image_id in images or file_name in names:
            raise ValueError(f"{what}: {path}: image id {image_id} / file {file_name!r} listed twice: fix the file")
        images[image_id] = entry
        names.add(file_name)
    if not images:
        raise ValueError(f"{what}: {path} lists no images: expected {COCO_LAYOUT}")
    anns = {k: [] for k in images}
    for ann in data.get("annotations", []):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in anns:
            raise ValueError(f"{what}: {path}: annotation {ann.get('id') if isinstance(ann, dict) else ann!r} "
                             f"refers to image_id {image_id!r}, which 'images' does not list: fix the file")
        anns[image_id].append(ann)
    entries = []
    for image_id in sorted(images, key=lambda k: (str(type(k)), k)):
        entry = images[image_id]
        file_name = str(entry["file_name"])
        candidates = [root / "images" / file_name, root / file_name]
        img = next((p for p in candidates if p.is_file()), None)
        if img is None:
            raise FileNotFoundError(f"{what}: image {file_name!r} (id {image_id}) of {path.name} not found in "
                                    f"{root / 'images'} or {root}: copy it there or remove it from the JSON")
        entries.append((file_name, img, entry, anns[image_id]))
    return entries


def _coco_mask(segmentation, h: int, w: int, where: str, what: str) -> np.ndarray:
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise ImportError(f"{what}: decoding COCO polygons / RLE needs pycocotools: pip install pycocotools") \
            from None
    try:
        if isinstance(segmentation, list):               # polygons [[x0, y0, x1, y1, ...], ...]
            polys = [list(map(float, p)) for p in segmentation if len(p) >= 6]
            if not polys:
                return np.zeros((h, w), bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(segmentation, dict):
            size = [int(x) for x in segmentation["size"]]
            if size != [h, w]:
                raise _SizeError(f"{what}: {where}: RLE size {size[0]}x{size[1]} (HxW) differs from the image's "
                                 f"{h}x{w}: export the masks at the image size")
            counts = segmentation["counts"]
            if isinstance(counts, list):                 # uncompressed RLE
                rle = mask_utils.frPyObjects(segmentation, h, w)
            else:                                        # compressed RLE (string)
                rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise TypeError(f"segmentation is {type(segmentation).__name__}")
        return mask_utils.decode(rle).astype(bool)
    except _SizeError:
        raise
    except Exception as err:   # pycocotools raises TypeError / ValueError / its own errors on malformed input
        raise ValueError(f"{what}: {where}: cannot decode the segmentation ({type(err).__name__}: "
                         f"{str(err)[:80]}): polygons [[x, y, ...]] or RLE {{'size', 'counts'}} expected") from None


class _SizeError(ValueError):
    pass


def coco_record(file_name: str, image_path: Path, entry: dict, anns: list, json_name: str,
                what: str = "coco_json") -> dict:
    image_bytes, (h, w) = read_image_bytes(image_path, what)
    if "height" in entry and "width" in entry and (int(entry["height"]), int(entry["width"])) != (h, w):
        raise ValueError(f"{what}: {json_name} gives image {file_name!r} as {entry['height']}x{entry['width']} "
                         f"(HxW) but {image_path} is {h}x{w}: fix the JSON or the image")
    masks, ids, ignore = [], [], np.zeros((h, w), bool)
    given = [a["id"] for a in anns if isinstance(a.get("id"), int)]
    for k, ann in enumerate(anns):
        seg = ann.get("segmentation")
        if not seg:
            continue
        where = f"{json_name} annotation {ann.get('id', k)} of {file_name!r}"
        m = _coco_mask(seg, h, w, where, what)
        if ann.get("iscrowd"):
            ignore |= m
        elif m.any():
            masks.append(m)
            # Objects are keyed by id downstream: a missing or repeated id gets a fresh one, never a shared one.
            i = ann.get("id")
            ids.append(i if isinstance(i, int) and i > 0 and i not in ids else max([*ids, *given], default=0) + 1)
    return _record(file_name, image_bytes, masks, ids, ignore if ignore.any() else None, (h, w))


# ------------------------------------------------------------------------------------------ fingerprint

def source_fingerprint(root: Path, extra) -> str:
    """Hash of every file's relative path, size and mtime under root (and `extra`, e.g. the split settings):
    a prepared dataset is rebuilt when the folder changes."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- evaluation

def heldout_eval_dataset(builder, split: str = "val"):
    """The held-out split of a prepared own-data builder as an evaluation dataset (`readers.EvalDataset`):
    one sample per object, named '<image>#<id>', gt 1 on the object, 0 elsewhere, -1 on ignore regions."""
    import tensorflow_datasets as tfds

    from fcfi_jax.data.readers import EvalDataset
    if split not in builder.info.splits or builder.info.splits[split].num_examples == 0:
        raise ValueError(f"{builder.name}: no held-out split {split!r} to evaluate on: set "
                         f"--config.data.val_fraction > 0 (or a val.txt), or evaluation off "
                         f"(--config.eval.at_start=False --config.eval.at_end=False --config.eval.every_steps=0)")
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    entries = []
    for i in range(len(source)):
        record = source[i]
        meta = json.loads(record["objects"])
        name = record["name"].decode() if isinstance(record["name"], bytes) else str(record["name"])
        for obj in meta["objects"]:
            entries.append((f"{name}#{obj['id']}", (i, obj["layer"], obj["value"])))
    if not entries:
        raise ValueError(f"{builder.name}: the held-out split has no objects to evaluate on: hold out images with "
                         f"objects (val.txt) or turn evaluation off")

    def load(index, layer, value):
        record = source[index]
        image = cv2.imdecode(np.frombuffer(record["image"], np.uint8), cv2.IMREAD_COLOR)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        layers = [np.asarray(x).reshape(x.shape[:2]) for x in record["layers"]]
        gt = (layers[layer] == value).astype(np.int32)
        for ign_layer, ign_value in json.loads(record["objects"]).get("ignore", []):
            gt[layers[ign_layer] == ign_value] = -1
        return image, gt

    return EvalDataset(f"{builder.name}:{split}", Path(str(builder.data_dir)), entries, load)
