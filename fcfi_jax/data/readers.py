"""Evaluation-dataset readers: the one place that knows each benchmark's on-disk layout.

Every reader returns a lazy sequence of `Sample`s (file list built at construction, pixels read on
`__getitem__`), in the order of the official FCFI loaders (isegm/data/datasets/*):

- GrabCut: `data_GT/<stem>.*` images, `boundary_GT/<stem>.*` masks; one sample per image.
- Berkeley: `images-f-BRS/test/` + `masks-f-BRS/test/` (FCFI), else `images/` + `masks/` (RITM/f-BRS copy);
  one sample per image.
- DAVIS, COCO_MVal: `img/<stem>.*` images, `gt/<stem>.*` masks; one sample per image.
- SBD (split val; SBD_Train = split train): `img/<name>.jpg`, `inst/<name>.mat`, `<split>.txt`;
  one sample per (image, instance id).
- PascalVOC (split val): `JPEGImages/<name>.jpg`, `SegmentationObjectLabel/<name>.png` (or the standard
  `SegmentationObject/`), `ImageSets/Segmentation/<split>.txt`; one sample per (image, instance id).

Ground truth is an int32 (H, W) map: 1 object, 0 background, -1 ignore. Images are uint8 RGB, read with
cv2 (BGR -> RGB) like the official code. Nothing is ever written into a dataset folder (the official SBD
and PascalVOC loaders cache their instance lists there; here the list is rebuilt in memory).

Official mask rules reproduced bit for bit, quirks included (docs/official_quirks.md #35-#39):
- GrabCut/Berkeley: channel 0 (blue) of the colour cv2 read; 128 -> ignore, > 128 -> object, and a raw
  value of exactly 1 is ALSO object (the official code maps 128 -> -1 and > 128 -> 1 in place, then takes
  `mask == 1`); every other value (2..127) is background.
- DAVIS/COCO_MVal: colour cv2 read, max over the 3 channels > 0 -> object; no ignore label. cv2 expands
  palette PNGs to their palette COLOURS, so an index is object iff its colour is not black: object ids
  1..k are merged, and the DAVIS void index 255 (colour (224, 224, 192) in the standard palette) becomes
  OBJECT, not ignore, exactly as in the official evaluation.
- SBD: `loadmat(...)['GTinst'][0][0][0]` (first field of the GTinst struct) is the instance map; ids are
  the non-zero values present, ascending; the sample keeps pixels == id as object, no ignore.
- PascalVOC: ids from the label PNG (colour read -> BGR2GRAY, as the official list builder), excluding 0
  and 255; the sample reads the PNG as grayscale, id -> 1, 255 -> -1. The official `PascalVocDataset`
  crashes when constructed with default arguments (docs/official_quirks.md #37); this reader is what it was meant to do.
  The standard VOC `SegmentationObject/` folder holds palette PNGs, whose indices cv2 cannot read; it is
  used only when `SegmentationObjectLabel/` is absent, and then needs Pillow to read the indices.
- Sample names: file stem (official `image_name[:-4]`, identical for 3-letter extensions); SBD/VOC names are
  `f"{image}#{id:3d}"` (official `'#%3d'`, space padded).
- Pairing: images are every `*.*` file of the image folder (sorted by name, hidden files skipped), masks are
  matched by stem. Unlike the official loader (KeyError at read time, masks without image silently
  ignored), a missing or ambiguous partner is reported at construction, naming the file.
- Berkeley in the RITM copy has 100 image files for 96 distinct pictures: `189011a/b.jpg` and `239007a/b.jpg`
  are byte copies of `189011.jpg`/`239007.jpg`, each with its own mask, so one sample per image file gives
  the 100 instances with no special case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

__all__ = ["Sample", "EvalDataset", "DATASETS", "get_dataset",
           "read_image", "grabcut_mask", "davis_mask"]


@dataclass(frozen=True)
class Sample:
    """One evaluation object: `image` uint8 (H, W, 3) RGB, `gt` int32 (H, W) with 1 / 0 / -1 (ignore)."""
    name: str
    image: np.ndarray
    gt: np.ndarray

    @property
    def image_name(self) -> str:   # official DSample attribute name
        return self.name

    @property
    def gt_mask(self) -> np.ndarray:   # official DSample attribute name
        return self.gt


class EvalDataset(Sequence):
    """Lazy sequence of Samples: `entries[i] = (name, args)`, pixels loaded by `loader(*args)` on access."""

    def __init__(self, name: str, root: Path, entries: list, loader: Callable[..., tuple]):
        self.name, self.root = name, Path(root)
        self._entries, self._loader = list(entries), loader

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        name, args = self._entries[index]
        image, gt = self._loader(*args)
        if image.shape[:2] != gt.shape:
            raise ValueError(f"{self.name}: image and mask sizes differ for sample {name!r}: "
                             f"image {image.shape[:2]} vs mask {gt.shape} (files: {args})")
        return Sample(name, image, gt)

    @property
    def names(self) -> list[str]:
        """Sample names in order, without reading any pixel."""
        return [name for name, _ in self._entries]

    def __repr__(self) -> str:
        return f"EvalDataset({self.name!r}, root={str(self.root)!r}, {len(self)} samples)"


# ----------------------------------------------------------------------------------------------- file reading

def read_image(path) -> np.ndarray:
    """uint8 RGB (H, W, 3) via cv2 (BGR -> RGB), as the official loaders; clear error if unreadable."""
    bgr = _imread(path, cv2.IMREAD_COLOR, "image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _imread(path, flags, what):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    data = cv2.imread(str(path), flags)
    if data is None:
        raise ValueError(f"cannot read {what} {path}: not a valid image file")
    return data


def grabcut_mask(raw_channel0: np.ndarray) -> np.ndarray:
    """Official GrabCut/Berkeley rule on channel 0: 128 -> -1, > 128 or == 1 -> 1, else 0 (see module doc)."""
    raw = raw_channel0.astype(np.int32)
    gt = ((raw > 128) | (raw == 1)).astype(np.int32)
    gt[raw == 128] = -1
    return gt


def davis_mask(raw_bgr: np.ndarray) -> np.ndarray:
    """Official DAVIS/COCO_MVal rule: max over the colour channels > 0 -> 1, else 0."""
    return (raw_bgr.max(axis=2) > 0).astype(np.int32)


def _load_grabcut(image_path, mask_path):
    return read_image(image_path), grabcut_mask(_imread(mask_path, cv2.IMREAD_COLOR, "mask")[:, :, 0])


def _load_davis(image_path, mask_path):
    return read_image(image_path), davis_mask(_imread(mask_path, cv2.IMREAD_COLOR, "mask"))


def _load_sbd(image_path, inst_path, instance_id):
    inst = _read_sbd_instances(inst_path)
    return read_image(image_path), (inst == instance_id).astype(np.int32)


def _load_voc(image_path, label_path, instance_id, palette):
    label = _read_voc_label(label_path, palette, for_listing=False)
    gt = (label == instance_id).astype(np.int32)
    gt[label == _VOC_IGNORE] = -1
    return read_image(image_path), gt


def _read_sbd_instances(path) -> np.ndarray:
    """Instance map of an SBD `inst/*.mat`: first field of the 1x1 GTinst struct (official indexing)."""
    from scipy.io import loadmat
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instance file not found: {path}")
    try:
        return np.asarray(loadmat(str(path))["GTinst"][0][0][0]).astype(np.int32)
    except Exception as err:   # corrupt .mat, missing GTinst, wrong struct layout
        raise ValueError(f"cannot read instance file {path}: expected a .mat with a GTinst struct whose "
                         f"first field is the instance map ({type(err).__name__}: {err})") from err


_VOC_IGNORE = 255


def _read_voc_label(path, palette: bool, for_listing: bool) -> np.ndarray:
    """VOC instance labels as int32. Grayscale label PNGs: exactly the official reads (colour + BGR2GRAY for
    the id list, IMREAD_GRAYSCALE for samples; both give the stored value). Palette PNGs: indices via Pillow."""
    if palette:
        try:
            from PIL import Image
        except ImportError as err:
            raise ImportError(f"reading palette indices from {path} needs Pillow (cv2 expands palettes to "
                              f"colours); or provide SegmentationObjectLabel/ grayscale id PNGs") from err
        try:
            with Image.open(path) as im:
                if im.mode not in ("P", "L"):
                    raise ValueError(f"mode {im.mode}, expected a palette (P) or grayscale (L) PNG")
                return np.asarray(im, dtype=np.int32)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read mask {path}: not a valid image file ({err})") from err
    if for_listing:
        bgr = _imread(path, cv2.IMREAD_COLOR, "mask")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.int32)
    return _imread(path, cv2.IMREAD_GRAYSCALE, "mask").astype(np.int32)


def _present_ids(label: np.ndarray, ignore=None) -> list[int]:
    """Official get_labels_with_sizes: non-zero (and non-ignore) values present, ascending."""
    ids = np.unique(label)
    return [int(i) for i in ids if i != 0 and i != ignore]


# ------------------------------------------------------------------------------------------------- layouts

def _require_dir(dataset, path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: folder not found: {path}\n  expected layout: {layout}")
    return path


def _require_file(dataset, path: Path, layout: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: file not found: {path}\n  expected layout: {layout}")
    return path


def _files(folder: Path) -> list[Path]:
    """Official `glob('*.*')` (names with a dot), files only, hidden files skipped, sorted by name."""
    return sorted((p for p in folder.glob("*.*") if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _paired_entries(dataset, images_dir: Path, masks_dir: Path) -> list:
    """One entry per image file, paired with the mask of the same stem; unpaired files are errors."""
    masks: dict[str, Path] = {}
    for m in _files(masks_dir):
        if m.stem in masks:
            raise ValueError(f"{dataset}: two mask files for stem {m.stem!r}: {masks[m.stem]} and {m}")
        masks[m.stem] = m
    images = _files(images_dir)
    stems = set()
    entries = []
    for img in images:
        if img.stem in stems:
            raise ValueError(f"{dataset}: two image files for stem {img.stem!r} in {images_dir} ({img.name})")
        stems.add(img.stem)
        if img.stem not in masks:
            raise ValueError(f"{dataset}: image without mask: {img} (no file {masks_dir}/{img.stem}.*)")
        entries.append((img.stem, (img, masks[img.stem])))
    for stem, m in masks.items():
        if stem not in stems:
            raise ValueError(f"{dataset}: mask without image: {m} (no file {images_dir}/{stem}.*)")
    if not entries:
        raise ValueError(f"{dataset}: no image files in {images_dir}")
    return entries


def _folder_pair(dataset, root: Path, layouts, loader) -> EvalDataset:
    """Image/mask folder datasets; `layouts` = [(images_subdir, masks_subdir)], the first present is used."""
    for img_sub, mask_sub in layouts:
        if (root / img_sub).is_dir() and (root / mask_sub).is_dir():
            return EvalDataset(dataset, root, _paired_entries(dataset, root / img_sub, root / mask_sub), loader)
    expected = " or ".join(f"<root>/{i}/<stem>.<ext> + <root>/{m}/<stem>.<ext>" for i, m in layouts)
    partial = next((pair for pair in layouts if (root / pair[0]).is_dir()), layouts[0])
    missing = next(root / sub for sub in partial if not (root / sub).is_dir())
    _require_dir(dataset, missing, expected)
    raise AssertionError("unreachable")


def _read_list(dataset, path: Path, layout: str) -> list[str]:
    _require_file(dataset, path, layout)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def grabcut(root) -> EvalDataset:
    return _folder_pair("GrabCut", Path(root), [("data_GT", "boundary_GT")], _load_grabcut)


def berkeley(root) -> EvalDataset:
    return _folder_pair("Berkeley", Path(root),
                        [("images-f-BRS/test", "masks-f-BRS/test"), ("images", "masks")], _load_grabcut)


def davis(root, dataset="DAVIS") -> EvalDataset:
    return _folder_pair(dataset, Path(root), [("img", "gt")], _load_davis)


def coco_mval(root) -> EvalDataset:
    return davis(root, dataset="COCO_MVal")


def sbd(root, split="val", dataset="SBD") -> EvalDataset:
    """SBD evaluation set: one sample per (image, instance id) of every image in `<split>.txt`.

    Listing reads every `.mat` of the split (the official code caches this list in the dataset folder;
    here it is kept in memory)."""
    root = Path(root)
    layout = (f"<root> = benchmark_RELEASE/dataset with img/<name>.jpg, inst/<name>.mat (GTinst struct) "
              f"and {split}.txt")
    img_dir = _require_dir(dataset, root / "img", layout)
    inst_dir = _require_dir(dataset, root / "inst", layout)
    entries = []
    for name in _read_list(dataset, root / f"{split}.txt", layout):
        img, inst = img_dir / f"{name}.jpg", inst_dir / f"{name}.mat"
        if not inst.is_file():
            raise ValueError(f"{dataset}: image without instance file: {name} (no file {inst})")
        if not img.is_file():
            raise ValueError(f"{dataset}: instance file without image: {inst} (no file {img})")
        for k in _present_ids(_read_sbd_instances(inst)):
            entries.append((f"{name}#{k:3d}", (img, inst, k)))
    return EvalDataset(dataset, root, entries, _load_sbd)


def sbd_train(root) -> EvalDataset:
    return sbd(root, split="train", dataset="SBD_Train")


def pascal_voc(root, split="val") -> EvalDataset:
    """PascalVOC: one sample per (image, instance id), ids excluding 0 and the 255 ignore label."""
    root = Path(root)
    dataset = "PascalVOC"
    layout = (f"<root> with JPEGImages/<name>.jpg, SegmentationObjectLabel/<name>.png (grayscale ids; or the "
              f"standard palette SegmentationObject/<name>.png) and ImageSets/Segmentation/{split}.txt")
    img_dir = _require_dir(dataset, root / "JPEGImages", layout)
    palette = not (root / "SegmentationObjectLabel").is_dir()
    label_dir = _require_dir(dataset, root / ("SegmentationObject" if palette else "SegmentationObjectLabel"),
                             layout)
    entries = []
    for name in _read_list(dataset, root / "ImageSets" / "Segmentation" / f"{split}.txt", layout):
        img, label = img_dir / f"{name}.jpg", label_dir / f"{name}.png"
        if not label.is_file():
            raise ValueError(f"{dataset}: image without mask: {name} (no file {label})")
        if not img.is_file():
            raise ValueError(f"{dataset}: mask without image: {label} (no file {img})")
        for k in _present_ids(_read_voc_label(label, palette, for_listing=True), ignore=_VOC_IGNORE):
            entries.append((f"{name}#{k:3d}", (img, label, k, palette)))
    return EvalDataset(dataset, root, entries, _load_voc)


DATASETS: dict[str, Callable[..., EvalDataset]] = {
    "GrabCut": grabcut,
    "Berkeley": berkeley,
    "DAVIS": davis,
    "COCO_MVal": coco_mval,
    "SBD": sbd,
    "SBD_Train": sbd_train,
    "PascalVOC": pascal_voc,
}


def get_dataset(name: str, root, **kwargs) -> EvalDataset:
    """Evaluation dataset `name` (case-insensitive key of DATASETS) stored under `root`.

    kwargs: `split` for SBD / PascalVOC (default 'val')."""
    by_lower = {k.lower(): k for k in DATASETS}
    key = by_lower.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{key}: dataset root not found: {root}")
    return DATASETS[key](root, **kwargs)
