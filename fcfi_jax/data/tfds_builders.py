"""TFDS builders for FCFI training and evaluation data, built from the official on-disk layouts (no downloads).

Datasets (`prepare_builder(name, manual_dir, data_dir)` builds one and returns the builder):
- `sbd_fcfi` (splits train, val): SBD `benchmark_RELEASE/dataset` (img/<name>.jpg, inst/<name>.mat, train.txt,
  val.txt). One example per image, in list order.
- `cocolvis_fcfi` (train, and val when present): RITM's combined COCO+LVIS annotations
  (<split>/hannotation.pickle, <split>/masks/<id>.pickle) with the COCO 2017 images (<split>2017/<id>.jpg as
  FCFI expects, or <split>/images/<id>.jpg as in RITM). One example per annotated image, sorted by id.
- `folder_instances` / `coco_json_instances` (splits train, val; config names `folder`, `coco_json`): your own
  images with instance masks, or a COCO JSON (`fcfi_jax.data.own_data` documents both layouts and the
  held-out split rule). One example per image, in name (folder) or image-id (COCO) order. Unlike the
  official datasets they are re-scanned on every `prepare_builder` call and rebuilt when a file changed.
- `interactive_eval` (split test; configs GrabCut, Berkeley, DAVIS, SBD, PascalVOC, COCO_MVal): the evaluation
  benchmarks read through `fcfi_jax.data.readers.get_dataset`, one example per evaluated object.

Training example features:
- `image`: the source JPEG bytes, unchanged (decode with cv2.IMREAD_COLOR + BGR->RGB as the official code;
  some COCO images are grayscale JPEGs, which IMREAD_COLOR expands to 3 channels);
- `layers`: sequence of uint8 PNG instance layers (H, W, 1); SBD: one layer = the instance map; COCO+LVIS: the
  PNG layers of the mask pickle, stored as they are;
- `objects`: JSON {"objects": [{"id", "layer", "value", "parent", "children", "stuff", ["area", "bbox_area"]}],
  "ignore": [[layer, value], ...]}: object `id` is the pixels where layers[layer] == value. SBD objects are all
  roots and carry area / bbox area so that the "buggy mask" filter (area / bbox area < 0.08) is applied at
  read time (`fcfi_jax.data.pipeline`, official SBDDataset); COCO+LVIS objects carry the RITM hierarchy and
  `stuff` marks the ids >= num_instance_masks (added with stuff_prob at read time, else erased, as the official CocoLvisDataset);
- `name`: image name.
SBD sample weights: if `sbd_samples_weights.pkl` (the official `assets/` file: (index, name, score) tuples) is
in manual_dir or manual_dir/assets, the builder stores per-image scores in `info.metadata["sample_scores"]`
(aligned with the example order) and the pipeline draws p ∝ (1 - score)^1.25; without it training is uniform
and the builder says so.

Evaluation example features: `image` PNG (H, W, 3) (the reader's decoded pixels, lossless), `mask` PNG
(H, W, 1) uint8 with 0 background / 1 object / 255 ignore, `name`.

Examples are written in generation order (integer keys, shuffling disabled), so example i of a split is the
i-th image of the official list. Nothing is written into manual_dir; derived lists are built in memory.
Pickles are read with a restricted unpickler (`safe_pickle_load`): builtin containers, str/bytes/numbers and
numeric numpy arrays/scalars rebuilt from raw bytes only (RITM's mask pickles hold the `cv2.imencode`
uint8 arrays); any other global is refused before anything is called.

Prefer `file_format="array_record"` (the default of `prepare_builder`): `fcfi_jax.data.pipeline` needs the
random access of `builder.as_data_source(split)`; "tfrecord" gives `builder.as_dataset` instead.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from fcfi_jax.data import own_data, readers  # noqa: E402

__all__ = ["SbdFcfi", "CocolvisFcfi", "FolderInstances", "CocoJsonInstances", "InteractiveEval", "BUILDERS",
           "OWN_DATA_BUILDERS", "prepare_builder", "load_builder",
           "safe_pickle_load", "UnsafePickleError", "SBD_WEIGHTS_FILE"]

_log = logging.getLogger(__name__)
SBD_WEIGHTS_FILE = "sbd_samples_weights.pkl"
IGNORE_VALUE = 255   # evaluation masks: stored value of the -1 (ignore) label


# ------------------------------------------------------------------------------------- restricted unpickling

class UnsafePickleError(pickle.UnpicklingError):
    """The pickle refers to something outside the allow-list, or is malformed."""


class _DtypeSpec:
    """Stand-in for numpy.dtype(spec, align, copy) + its BUILD state; resolved to plain numeric dtypes only."""
    __slots__ = ("spec", "order")

    def __init__(self, spec):
        if not isinstance(spec, str):
            raise UnsafePickleError(f"numpy dtype spec must be a string, got {type(spec).__name__}")
        self.spec, self.order = spec, None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) >= 5 and state[2:5] == (None, None, None)):
            raise UnsafePickleError("only plain numeric numpy dtypes are allowed (no structured dtypes)")
        self.order = state[1]

    def resolve(self) -> np.dtype:
        dt = np.dtype(self.spec)
        if dt.kind not in "biuf" or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
            raise UnsafePickleError(f"numpy dtype {self.spec!r} is not allowed (numeric dtypes only)")
        return dt.newbyteorder(self.order) if self.order in ("<", ">") else dt


def _array_from_bytes(raw, dtype, shape, fortran: bool) -> np.ndarray:
    """A numeric array from raw bytes, after checking every part of the record."""
    if not isinstance(dtype, _DtypeSpec) or not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickleError("numpy arrays must be numeric and stored as raw bytes")
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise UnsafePickleError(f"malformed numpy array shape {shape!r}")
    dt = dtype.resolve()
    if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
        raise UnsafePickleError(f"numpy array of shape {shape} {dt} does not match its {len(raw)} bytes")
    return np.frombuffer(bytes(raw), dt).reshape(shape, order="F" if fortran else "C").copy()


class _ArrayBuilder:
    """Stand-in for numpy.core.multiarray._reconstruct(ndarray, ...) + its BUILD state (raw bytes)."""
    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError("malformed numpy array record")
        _, shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, dtype, shape, bool(fortran))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only numpy array/scalar/dtype and `_codecs.encode` (protocol-2 bytes) to fresh stand-ins."""

    def __init__(self, file):
        super().__init__(file)
        ndarray = object()

        def dtype(spec, align=False, copy=True):
            return _DtypeSpec(spec)

        def reconstruct(cls, shape, typecode):
            if cls is not ndarray:
                raise UnsafePickleError("numpy _reconstruct is only allowed for numpy.ndarray")
            return _ArrayBuilder()

        def scalar(dt, data=None):
            if not isinstance(dt, _DtypeSpec) or not isinstance(data, (bytes, bytearray)):
                raise UnsafePickleError("numpy scalars must be numeric and stored as raw bytes")
            resolved = dt.resolve()
            if len(data) != resolved.itemsize:
                raise UnsafePickleError("malformed numpy scalar")
            return np.frombuffer(bytes(data), resolved)[0]

        def frombuffer(buf, dt, shape, order):      # protocol 5 (in-band buffer)
            if order not in ("C", "F"):
                raise UnsafePickleError("malformed numpy array order")
            return _array_from_bytes(buf, dt, shape, order == "F")

        def encode(text, encoding="latin1"):
            if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                raise UnsafePickleError("_codecs.encode is only allowed for latin1 byte strings")
            return text.encode("latin1")

        self._allowed = {("numpy", "dtype"): dtype, ("numpy", "ndarray"): ndarray, ("_codecs", "encode"): encode}
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self._allowed[(mod, "_reconstruct")] = reconstruct
            self._allowed[(mod, "scalar")] = scalar
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            self._allowed[(mod, "_frombuffer")] = frombuffer

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load {module}.{name}: only builtin containers, bytes, numbers "
                                    f"and numeric numpy arrays are allowed") from None


def _finalize(obj):
    """Replace stand-ins by numpy values, recursively through dicts, lists and tuples."""
    if isinstance(obj, _ArrayBuilder):
        if obj.array is None:
            raise UnsafePickleError("numpy array record without data")
        return obj.array
    if isinstance(obj, _DtypeSpec):
        return obj.resolve()
    if isinstance(obj, dict):
        return {_finalize(k): _finalize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finalize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finalize(v) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_finalize(v) for v in obj)
    if callable(obj) or (type(obj) is object):
        raise UnsafePickleError("pickle returns a bare global instead of data")
    return obj


def safe_pickle_load(path):
    """Unpickle `path` without running pickled code; UnsafePickleError (naming the file) on anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            return _finalize(_RestrictedUnpickler(f).load())
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError) as err:
        raise UnsafePickleError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None


# -------------------------------------------------------------------------------------------------- helpers

def _manual_root(dl_manager, dataset: str, layout: str) -> Path:
    """manual_dir as a Path; FileNotFoundError naming it when missing or empty."""
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError:
        path = getattr(dl_manager, "_manual_dir", None)
        raise FileNotFoundError(f"{dataset}: manual_dir not found or empty: {path}\n  expected layout: {layout}\n"
                                f"  see {dataset} MANUAL_DOWNLOAD_INSTRUCTIONS") from None


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"cannot PNG-encode an array of shape {array.shape} {array.dtype}")
    return buf.tobytes()


def _train_features():
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "layers": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 1), encoding_format="png")),
        "objects": tfds.features.Text(),
        "name": tfds.features.Text(),
    })


def sbd_objects(instances: np.ndarray) -> list:
    """SBD object records of an instance map: ids ascending, each a root with its area and bbox area."""
    objects = []
    for k in np.unique(instances):
        if k == 0:
            continue
        ys, xs = np.nonzero(instances == k)
        bbox_area = int((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        objects.append({"id": int(k), "layer": 0, "value": int(k), "parent": None, "children": [],
                        "stuff": False, "area": int(ys.size), "bbox_area": bbox_area})
    return objects


# -------------------------------------------------------------------------------------------- base builder

class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder generated from local files: TFDS's "Downloading and preparing dataset Unknown size (download:
    Unknown size ...)" and "downloaded and prepared" lines would tell of a download that never happens. The two
    methods are TFDS's private hooks for those lines; should TFDS rename them, its lines come back, nothing else."""

    def _log_download_bytes(self):
        print(f"Preparing TFDS dataset {self.name} from local files into {self.data_dir} (once; reused next time)",
              flush=True)

    def _log_download_done(self):
        pass


# ----------------------------------------------------------------------------------------------------- SBD

_SBD_LAYOUT = ("<manual_dir> = benchmark_RELEASE/dataset with img/<name>.jpg, inst/<name>.mat (GTinst struct), "
               "train.txt, val.txt; optional sbd_samples_weights.pkl (or assets/sbd_samples_weights.pkl)")


class SbdFcfi(_LocalBuilder):
    """SBD instance segmentation for FCFI training (official SBDDataset)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Expected in manual_dir: {_SBD_LAYOUT}.
    Get benchmark.tgz from the SBD page (http://home.bharathh.info/pubs/codes/SBD/download.html), extract it and
    pass benchmark_RELEASE/dataset as manual_dir (it holds img/, inst/, train.txt with 8498 names and val.txt
    with 2857). Optional: the official sample weights assets/sbd_samples_weights.pkl of the FCFI (or RITM)
    repository, copied into manual_dir; without it training draws the images uniformly.
    fcfi_jax.data.synthetic writes a small folder in this layout for tests and smoke runs.
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=_train_features(), metadata=tfds.core.MetadataDict(), disable_shuffling=True,
            description="SBD images with instance maps and per-instance areas (FCFI / RITM training set).",
            homepage="http://home.bharathh.info/pubs/codes/SBD/download.html")

    def _split_generators(self, dl_manager):
        root = _manual_root(dl_manager, self.name, _SBD_LAYOUT)
        readers._require_dir(self.name, root / "img", _SBD_LAYOUT)
        readers._require_dir(self.name, root / "inst", _SBD_LAYOUT)
        names = {s: readers._read_list(self.name, root / f"{s}.txt", _SBD_LAYOUT) for s in ("train", "val")}
        scores, weights_path = self._sample_scores(root, names["train"])
        self.info.metadata["sample_scores"] = {"train": scores} if scores is not None else {}
        self.info.metadata["sample_weights_file"] = str(weights_path) if weights_path else None
        return {s: self._generate_examples(root, n) for s, n in names.items()}

    def _sample_scores(self, root: Path, names: list):
        path = next((p for p in (root / SBD_WEIGHTS_FILE, root / "assets" / SBD_WEIGHTS_FILE) if p.is_file()), None)
        if path is None:
            _log.warning("%s: no %s in %s (or its assets/): training will draw images uniformly",
                         self.name, SBD_WEIGHTS_FILE, root)
            return None, None
        entries = safe_pickle_load(path)
        try:
            by_name = {str(name): float(score) for _, name, score in entries}
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: {path} is not a list of (index, image_name, score) tuples") from None
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"{self.name}: {path} has no score for {len(missing)} train images "
                             f"(first: {missing[0]!r}); remove the file to train uniformly")
        _log.info("%s: sample weights from %s", self.name, path)
        return [by_name[n] for n in names], path

    def _generate_examples(self, root: Path, names: list):
        for i, name in enumerate(names):
            img, inst = root / "img" / f"{name}.jpg", root / "inst" / f"{name}.mat"
            if not inst.is_file():
                raise ValueError(f"{self.name}: image without instance file: {name} (no file {inst})")
            image = readers.read_image(img)
            instances = readers._read_sbd_instances(inst)
            if instances.shape != image.shape[:2]:
                raise ValueError(f"{self.name}: {img} is {image.shape[:2]} but {inst} is {instances.shape}")
            if instances.min() < 0 or instances.max() > 255:
                raise ValueError(f"{self.name}: instance ids of {inst} must lie in 0..255")
            objects = {"objects": sbd_objects(instances), "ignore": []}
            yield i, {"image": img.read_bytes(), "layers": [_png(instances.astype(np.uint8)[:, :, None])],
                      "objects": json.dumps(objects), "name": name}


# -------------------------------------------------------------------------------------------------- COCO+LVIS

_COCO_LAYOUT = ("<manual_dir> with <split>2017/<id>.jpg (or <split>/images/<id>.jpg), <split>/hannotation.pickle "
                "and <split>/masks/<id>.pickle for split train (val optional)")


class CocolvisFcfi(_LocalBuilder):
    """COCO+LVIS in RITM's combined format for FCFI training (official CocoLvisDataset)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Expected in manual_dir: {_COCO_LAYOUT}.
    Images: COCO 2017 train/val images (https://cocodataset.org, train2017.zip / val2017.zip; the LVIS v1
    images are the same files), extracted as train2017/ and val2017/. Annotations: RITM's combined COCO+LVIS
    annotations, cocolvis_annotation.tar.gz from the v1.0 release of SamsungLabs/ritm_interactive_segmentation
    on GitHub, extracted so that train/hannotation.pickle, train/masks/ and val/... sit next to the images.
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=_train_features(), disable_shuffling=True,
            description="COCO+LVIS images with RITM's layered instance masks and hierarchy.",
            homepage="https://github.com/SamsungLabs/ritm_interactive_segmentation")

    def _split_generators(self, dl_manager):
        root = _manual_root(dl_manager, self.name, _COCO_LAYOUT)
        splits = {}
        for split in ("train", "val"):
            ann = root / split / "hannotation.pickle"
            if split != "train" and not (root / split).is_dir():
                _log.warning("%s: no %s/ folder in %s: building the train split only", self.name, split, root)
                continue
            readers._require_file(self.name, ann, _COCO_LAYOUT)
            masks = readers._require_dir(self.name, root / split / "masks", _COCO_LAYOUT)
            images = root / f"{split}2017"
            if not images.is_dir() and (root / split / "images").is_dir():
                images = root / split / "images"
            readers._require_dir(self.name, images, _COCO_LAYOUT)
            splits[split] = self._generate_examples(ann, images, masks)
        return splits

    def _generate_examples(self, ann_path: Path, images: Path, masks: Path):
        annotation = safe_pickle_load(ann_path)
        if not isinstance(annotation, dict):
            raise ValueError(f"{self.name}: {ann_path} must hold a dict image_id -> annotation")
        for i, (image_id, info) in enumerate(sorted(annotation.items())):
            img = images / f"{image_id}.jpg"
            if not img.is_file():
                raise ValueError(f"{self.name}: annotated image missing: {img}")
            mask_path = masks / f"{image_id}.pickle"
            layers, objects = self._read_masks(mask_path, info, ann_path)
            yield i, {"image": img.read_bytes(), "layers": layers,
                      "objects": json.dumps({"objects": objects, "ignore": []}), "name": str(image_id)}

    def _read_masks(self, mask_path: Path, info, ann_path: Path):
        """PNG layer bytes and object records of one image; ValueError naming the file on bad content."""
        content = safe_pickle_load(mask_path)
        try:
            encoded, mapping = content
            layers = [bytes(x) if isinstance(x, (bytes, bytearray)) else np.asarray(x, np.uint8).tobytes()
                      for x in encoded]
            mapping = [(int(layer), int(value)) for layer, value in mapping]
            num_instances = int(info["num_instance_masks"])
            hierarchy = info["hierarchy"]
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"{self.name}: unexpected content in {mask_path} or its entry in {ann_path}: "
                             f"expected (PNG layers, [(layer, value)]) and {{'num_instance_masks', 'hierarchy'}} "
                             f"({type(err).__name__}: {err})") from None
        if any(not (0 <= layer < len(layers) and 1 <= value <= 255) for layer, value in mapping):
            raise ValueError(f"{self.name}: {mask_path}: (layer, value) mapping outside {len(layers)} layers x 1..255")
        if not isinstance(hierarchy, dict) or any(not isinstance(k, int) for k in hierarchy):
            raise ValueError(f"{self.name}: {ann_path}: 'hierarchy' must map integer instance ids to nodes")
        objects = []
        for inst_id in sorted(hierarchy):
            node = hierarchy[inst_id] or {"parent": None, "children": []}
            if not 0 <= int(inst_id) < len(mapping):
                raise ValueError(f"{self.name}: {ann_path}: instance {inst_id} has no mask in {mask_path}")
            layer, value = mapping[int(inst_id)]
            parent = node.get("parent")
            related = ([] if parent is None else [parent]) + list(node.get("children", []))
            if any(r not in hierarchy for r in related):
                raise ValueError(f"{self.name}: {ann_path}: instance {inst_id} of image {mask_path.stem} refers "
                                 f"to an instance outside its hierarchy")
            objects.append({"id": int(inst_id), "layer": layer, "value": value,
                            "parent": None if parent is None else int(parent),
                            "children": [int(c) for c in node.get("children", [])], "stuff": False})
        for inst_id in range(num_instances, len(mapping)):
            layer, value = mapping[inst_id]
            objects.append({"id": inst_id, "layer": layer, "value": value, "parent": None, "children": [],
                            "stuff": True})
        return layers, objects


# ------------------------------------------------------------------------------------------------ own data

class _OwnDataBuilder(_LocalBuilder, skip_registration=True):
    """Common part of the folder and COCO JSON builders: a held-out val split and a source fingerprint."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    LAYOUT = ""
    CONFIG_NAME = ""

    def __init__(self, *, val_fraction: float = 0.1, **kwargs):
        self._val_fraction = float(val_fraction)
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=_train_features(), metadata=tfds.core.MetadataDict(), disable_shuffling=True,
            description=f"Your own instance-segmentation data ({self.CONFIG_NAME} layout: {self.LAYOUT}).")

    @classmethod
    def fingerprint(cls, manual_dir, val_fraction: float, *, layout_checked: bool = False) -> str:
        """Changes when any file under manual_dir or the split setting changes (then the dataset is rebuilt).
        layout_checked: the caller has listed the entries already (one listing less of a large folder)."""
        if not layout_checked:
            cls.entries(Path(manual_dir))     # the layout errors come first, before any hashing
        return own_data.source_fingerprint(manual_dir, [cls.__name__, str(cls.VERSION), float(val_fraction)])

    @classmethod
    def entries(cls, root: Path) -> list:
        raise NotImplementedError

    def _names(self, entries) -> tuple[list, dict]:
        return [e[0] for e in entries], {}

    def _split_generators(self, dl_manager):
        root = Path(getattr(dl_manager, "_manual_dir", None) or dl_manager.manual_dir)
        entries = self.entries(root)
        names, aliases = self._names(entries)
        held = own_data.heldout_split(names, root, self._val_fraction, self.CONFIG_NAME, aliases)
        self.info.metadata["source_fingerprint"] = self.fingerprint(root, self._val_fraction, layout_checked=True)
        self.info.metadata["heldout"] = sorted(held)
        splits = {"train": self._generate_examples([e for e in entries if e[0] not in held])}
        if held:
            splits["val"] = self._generate_examples([e for e in entries if e[0] in held])
        return splits

    def _generate_examples(self, entries):
        for i, entry in enumerate(entries):
            yield i, self._record(entry)


class FolderInstances(_OwnDataBuilder):
    """A folder of images with instance-id PNGs or per-object binary PNGs (`--config.data.builder=folder`)."""

    LAYOUT = own_data.FOLDER_LAYOUT
    CONFIG_NAME = "folder"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Expected in manual_dir: {own_data.FOLDER_LAYOUT}."

    @classmethod
    def entries(cls, root):
        return own_data.list_folder(root, cls.CONFIG_NAME)

    def _record(self, entry):
        return own_data.folder_record(*entry, what=self.CONFIG_NAME)


class CocoJsonInstances(_OwnDataBuilder):
    """Images with a COCO instances JSON, polygons or RLE (`--config.data.builder=coco_json`)."""

    LAYOUT = own_data.COCO_LAYOUT
    CONFIG_NAME = "coco_json"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Expected in manual_dir: {own_data.COCO_LAYOUT}."

    @classmethod
    def entries(cls, root):
        return own_data.list_coco(root, cls.CONFIG_NAME)

    def _names(self, entries):
        names = [e[0] for e in entries]
        stems = [Path(n).stem for n in names]
        aliases = {s: n for s, n in zip(stems, names) if stems.count(s) == 1}
        return names, aliases

    def _split_generators(self, dl_manager):
        root = Path(getattr(dl_manager, "_manual_dir", None) or dl_manager.manual_dir)
        self._json_name = own_data.coco_json_path(root, self.CONFIG_NAME).name
        return super()._split_generators(dl_manager)

    def _record(self, entry):
        return own_data.coco_record(*entry, json_name=self._json_name, what=self.CONFIG_NAME)


# -------------------------------------------------------------------------------------------------- evaluation

EVAL_CONFIGS = ("GrabCut", "Berkeley", "DAVIS", "SBD", "PascalVOC", "COCO_MVal")


class InteractiveEval(_LocalBuilder):
    """Evaluation benchmarks (one example per evaluated object) read by fcfi_jax.data.readers."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"{n} evaluation set") for n in EVAL_CONFIGS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    manual_dir is the root of the chosen benchmark, in the layout of fcfi_jax.data.readers:
    - GrabCut: data_GT/<stem>.* images, boundary_GT/<stem>.* masks;
    - Berkeley: images-f-BRS/test/ + masks-f-BRS/test/ (FCFI) or images/ + masks/ (RITM copy);
    - DAVIS, COCO_MVal: img/<stem>.* images, gt/<stem>.* masks;
    - SBD: benchmark_RELEASE/dataset (img/, inst/*.mat, val.txt);
    - PascalVOC: JPEGImages/, SegmentationObjectLabel/ (or SegmentationObject/), ImageSets/Segmentation/val.txt.
    GrabCut, Berkeley, DAVIS and COCO_MVal are the archives linked in the RITM README (SamsungLabs/
    ritm_interactive_segmentation, "Datasets"); SBD as for sbd_fcfi; PascalVOC is VOC2012.
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, disable_shuffling=True,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                "name": tfds.features.Text(),
            }),
            description="Interactive segmentation benchmark; mask: 0 background, 1 object, 255 ignore.")

    def _split_generators(self, dl_manager):
        name = self.builder_config.name
        root = _manual_root(dl_manager, f"{self.name}/{name}", f"see MANUAL_DOWNLOAD_INSTRUCTIONS ({name})")
        return {"test": self._generate_examples(readers.get_dataset(name, root))}

    def _generate_examples(self, dataset):
        for i in range(len(dataset)):
            sample = dataset[i]
            mask = sample.gt.astype(np.uint8)
            mask[sample.gt < 0] = IGNORE_VALUE
            yield i, {"image": _png(cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)), "mask": _png(mask[:, :, None]),
                      "name": sample.name}


# ---------------------------------------------------------------------------------------------------- entry

BUILDERS = {"sbd_fcfi": SbdFcfi, "cocolvis_fcfi": CocolvisFcfi, "folder": FolderInstances,
            "coco_json": CocoJsonInstances, "interactive_eval": InteractiveEval}
OWN_DATA_BUILDERS = ("folder", "coco_json")


def prepare_builder(name: str, manual_dir, data_dir, *, config: str | None = None,
                    file_format: str = "array_record", max_examples_per_split: int | None = None,
                    rebuild: bool = False, val_fraction: float = 0.1):
    """Build dataset `name` (a key of BUILDERS; `config` for interactive_eval) from `manual_dir` into
    `data_dir` if not built there yet (or again with rebuild=True), and return the builder. An already
    prepared official dataset is reused as it is (manual_dir is then not read); the own-data builders
    (`folder`, `coco_json`; `val_fraction` of their images held out) check their folder's fingerprint
    (file names, sizes, times) and rebuild when it changed. Never downloads anything."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(BUILDERS)}")
    if name == "interactive_eval" and config not in EVAL_CONFIGS:
        raise ValueError(f"interactive_eval needs config= one of {', '.join(EVAL_CONFIGS)}, got {config!r}")
    kwargs = {"config": config} if config else {}
    if name in OWN_DATA_BUILDERS:
        kwargs["val_fraction"] = val_fraction
    builder = BUILDERS[name](data_dir=str(data_dir), file_format=file_format, **kwargs)
    # A version folder that does not exist yet is simply not prepared; asking TFDS would log "Variant folder ...
    # has no dataset_info.json" on every first build.
    prepared = builder.data_path.exists() and builder.is_prepared()
    if name in OWN_DATA_BUILDERS:
        # One-line layout errors (missing folder, no images, unpaired files) before TFDS is involved.
        fingerprint = BUILDERS[name].fingerprint(manual_dir, val_fraction)
        if prepared and (builder.info.metadata or {}).get("source_fingerprint") != fingerprint:
            rebuild = True
    if prepared and not rebuild:
        return builder
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise FileNotFoundError(f"{name}: manual_dir not found: {manual_dir}\n"
                                f"  see {BUILDERS[name].__name__}.MANUAL_DOWNLOAD_INSTRUCTIONS")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir), max_examples_per_split=max_examples_per_split,
        download_mode=(tfds.download.GenerateMode.FORCE_REDOWNLOAD if rebuild
                       else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)))
    return builder


def load_builder(builder_or_dir):
    """A prepared builder: returned as is, or read back from its version directory (…/<name>/<version>)."""
    if isinstance(builder_or_dir, tfds.core.DatasetBuilder):
        return builder_or_dir
    path = Path(builder_or_dir)
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"not a prepared TFDS dataset directory (no dataset_info.json): {path}")
    return tfds.builder_from_directory(str(path))
