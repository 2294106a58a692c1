"""Deterministic tf.data training input for FCFI: TFDS record -> augmentation -> click sampler -> batch.

    builder = tfds_builders.prepare_builder("sbd_fcfi", manual_dir, data_dir)
    ds = make_train_dataset(builder, "train", crop_size=(320, 480), batch_size=24, seed=0)
    for batch in ds.as_numpy_iterator():  # images (B,H,W,3) f32 in [0,1], points (B,48,3), instances (B,H,W,1)
        batch = distributed.to_global_batch(batch)   # jax.Arrays sharded over the 'data' axis of all devices

Stream layout. Element (epoch e, position p) of the global stream is fully determined by (seed, e, p):
- the image index comes from a per-epoch draw with np.random.default_rng([seed, 0, e]): weighted with
  replacement p ∝ (1 - score)^gamma when the dataset carries sample scores (SBD with the official weights
  file), uniform with replacement when an epoch length is set (COCO+LVIS 30000, validation 500 / 2000), else a
  permutation of the split (official ISDataset.__getitem__ + RandomSampler);
- everything random about the sample (stuff objects, augmentation retries, click sampling) uses
  np.random.default_rng([seed, 1, e, p]).
Each epoch has steps_per_epoch = epoch_len // batch_size global batches (drop_last); position p = step * B + j.
With several hosts, host i computes the slots j in [i * B/n, (i+1) * B/n) of every global batch, so the global
batch, assembled with `fcfi_jax.distributed.to_global_batch`, does not depend on the
number of hosts. The per-element work runs in a parallel, order-preserving `map` (tf.numpy_function), so the
stream is identical from run to run given the seed. `start_epoch` resumes at an epoch boundary.

Per element (official ISDataset): decode the record (cv2, RGB), apply the SBD "buggy mask" filter (object area /
bbox area < 0.08 -> erased) and the COCO+LVIS stuff rule (stuff ids added as roots with stuff_prob, else
erased), augment (`augment_sample` with keep_background_prob), `remove_small_objects(min_object_area)`, then
`MultiPointSampler`. Dataset presets (min area, keep-background prob, stuff prob, epoch length) follow the
official configs for `sbd_fcfi` and `cocolvis_fcfi`, train and val; every one can be overridden.

TF is restricted to the CPU (its GPU devices are hidden) and its C++ logs are silenced on import.
"""
from __future__ import annotations

import json
import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from fcfi_jax import distributed  # noqa: E402
from fcfi_jax.data.augment import Augmenter, InstanceSample, augment_sample  # noqa: E402
from fcfi_jax.data.sampler import MultiPointSampler  # noqa: E402
from fcfi_jax.data.tfds_builders import load_builder  # noqa: E402

__all__ = ["make_train_dataset", "record_to_sample", "SampleLoader", "PRESETS"]


def _configure_tf():
    """Keep TF off accelerators (JAX owns them) and quiet."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):   # already initialised: nothing to do any more
        pass
    tf.get_logger().setLevel("ERROR")


_configure_tf()

# Official train / val settings per dataset (models/iter_mask/*.py): see module doc.
PRESETS = {
    ("sbd_fcfi", True): dict(min_object_area=80, keep_background_prob=0.01, stuff_prob=0.0, epoch_len=None),
    ("sbd_fcfi", False): dict(min_object_area=80, keep_background_prob=0.0, stuff_prob=0.0, epoch_len=500),
    ("cocolvis_fcfi", True): dict(min_object_area=1000, keep_background_prob=0.05, stuff_prob=0.30, epoch_len=30000),
    ("cocolvis_fcfi", False): dict(min_object_area=1000, keep_background_prob=0.0, stuff_prob=0.0, epoch_len=2000),
}


def record_to_sample(record: dict, rng: np.random.Generator, buggy_mask_thresh: float = 0.08,
                     stuff_prob: float = 0.0) -> InstanceSample:
    """InstanceSample of a training record (`image` JPEG bytes or decoded RGB, decoded `layers`, `objects`
    JSON, `name`)."""
    name = record["name"].decode() if isinstance(record["name"], bytes) else str(record["name"])
    image = record["image"]
    if isinstance(image, (bytes, np.bytes_)):      # raw JPEG (SkipDecoding): decode as the official cv2 read
        image = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"record {name!r}: cannot decode the image bytes")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 2 or image.shape[2] == 1:   # already decoded by TFDS (grayscale JPEG)
        image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=2)
    layers = np.stack([np.asarray(x, np.uint8).reshape(x.shape[:2]) for x in record["layers"]], axis=2)
    meta = json.loads(record["objects"])
    objects, stuff, buggy = {}, [], []
    for obj in meta["objects"]:
        if obj.get("stuff"):
            stuff.append(obj)
            continue
        objects[obj["id"]] = {"mapping": (obj["layer"], obj["value"]), "parent": obj["parent"],
                              "children": list(obj["children"])}
        if buggy_mask_thresh > 0 and obj.get("bbox_area") and obj["area"] / obj["bbox_area"] < buggy_mask_thresh:
            buggy.append(obj)
    sample = InstanceSample(image, layers, objects, [tuple(x) for x in meta.get("ignore", [])], name)
    for obj in buggy:
        plane = sample.layers[:, :, obj["layer"]]
        plane[plane == obj["value"]] = 0
        sample.remove_object(obj["id"])
    if stuff:
        keep = stuff_prob > 0 and rng.random() < stuff_prob
        for obj in stuff:
            if keep:
                sample.objects[obj["id"]] = {"mapping": (obj["layer"], obj["value"]), "parent": None, "children": []}
            else:
                plane = sample.layers[:, :, obj["layer"]]
                plane[plane == obj["value"]] = 0
    return sample


class SampleLoader:
    """(epoch, position) of the stream -> (image f32 (H, W, 3), points f32 (2N, 3), target f32 (H, W, 1)).

    epoch_len None: each epoch is a permutation of the source; an int: that many uniform draws with replacement
    (weighted draws when `scores` are given). Usable without tf.data (tests, debugging): `loader(epoch, pos)`."""

    def __init__(self, source, *, seed: int, epoch_len: int | None, augmenter: Augmenter, sampler: MultiPointSampler,
                 min_object_area: int, keep_background_prob: float, stuff_prob: float,
                 buggy_mask_thresh: float = 0.08, scores=None, scores_gamma: float = 1.25):
        self.num_examples = len(source)
        self.with_replacement = epoch_len is not None
        self.source, self.seed = source, int(seed)
        self.epoch_len = int(epoch_len) if epoch_len is not None else self.num_examples
        self.augmenter, self.sampler = augmenter, sampler
        self.min_object_area, self.keep_background_prob = min_object_area, keep_background_prob
        self.stuff_prob, self.buggy_mask_thresh = stuff_prob, buggy_mask_thresh
        self.probs = None
        if scores is not None:
            probs = (1.0 - np.asarray(scores, np.float64)) ** scores_gamma
            self.probs = probs / probs.sum()
        self._indices, self._lock = {}, threading.Lock()

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Image index of every position of `epoch` (cached for the two latest epochs)."""
        with self._lock:
            if epoch not in self._indices:
                rng = np.random.default_rng([self.seed, 0, epoch])
                if self.probs is not None:
                    idx = rng.choice(self.num_examples, size=self.epoch_len, p=self.probs)
                elif self.with_replacement:
                    idx = rng.integers(0, self.num_examples, size=self.epoch_len)
                else:
                    idx = rng.permutation(self.num_examples)
                self._indices = {e: v for e, v in self._indices.items() if e >= epoch - 1}
                self._indices[epoch] = idx
            return self._indices[epoch]

    def sample(self, epoch: int, position: int):
        """(augmented and filtered InstanceSample of (epoch, position), its generator, ready for the sampler)."""
        rng = np.random.default_rng([self.seed, 1, int(epoch), int(position)])
        index = int(self.epoch_indices(int(epoch))[int(position)])
        sample = record_to_sample(self.source[index], rng, self.buggy_mask_thresh, self.stuff_prob)
        sample = augment_sample(sample, self.augmenter, rng, self.keep_background_prob)
        sample.remove_small_objects(self.min_object_area)
        return sample, rng

    def __call__(self, epoch, position):
        sample, rng = self.sample(epoch, position)
        points, target = self.sampler(sample, rng)
        return sample.image.astype(np.float32) / 255.0, points, target[:, :, None]


def _sample_scores(builder, split: str, num_examples: int):
    scores = (builder.info.metadata or {}).get("sample_scores", {}).get(split)
    if scores is not None and len(scores) != num_examples:
        raise ValueError(f"{builder.name}: {len(scores)} sample scores for the {num_examples} examples of split "
                         f"{split!r} (a sliced split cannot use the official weights; pass use_sample_weights=False)")
    return scores


def make_train_dataset(builder_or_dir, split: str = "train", crop_size=(320, 480), batch_size: int = 24,
                       seed: int = 0, num_points: int = 24, *, train: bool | None = None,
                       min_object_area: int | None = None, keep_background_prob: float | None = None,
                       stuff_prob: float | None = None, epoch_len: int | None = None,
                       buggy_mask_thresh: float = 0.08, use_sample_weights: bool = True,
                       sample_weights_gamma: float = 1.25, start_epoch: int = 0, start_step: int = 0,
                       num_epochs: int | None = None,
                       process_index: int | None = None, process_count: int | None = None,
                       num_parallel_calls: int | None = None, prefetch: int = 2, sampler_kwargs: dict | None = None,
                       augment_kwargs: dict | None = None, return_info: bool = False):
    """Batched tf.data.Dataset of {'images', 'points', 'instances'} for this host (see module doc).

    builder_or_dir: a prepared TFDS builder (array_record format) or its directory. batch_size is GLOBAL (all
    hosts); each host yields batch_size / process_count. train (default: split starts with 'train') selects
    the training augmentation, else pad + random crop. None-valued settings come from PRESETS.
    num_epochs None repeats forever. start_step (global steps, added to start_epoch) resumes mid-epoch: the
    stream then continues exactly where an uninterrupted run would be. return_info=True also returns a dict
    (num_examples, epoch_len, steps_per_epoch, local_batch_size, weighted, settings)."""
    builder = load_builder(builder_or_dir)
    if getattr(builder.info.file_format, "value", builder.info.file_format) != "array_record":
        raise ValueError(f"{builder.name} at {builder.data_dir} is stored as {builder.info.file_format}; the "
                         f"training pipeline needs random access: prepare it with file_format='array_record'")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    train = split.startswith("train") if train is None else bool(train)
    settings = dict(PRESETS.get((builder.name, train), PRESETS[("sbd_fcfi", train)]))
    for key, value in dict(min_object_area=min_object_area, keep_background_prob=keep_background_prob,
                           stuff_prob=stuff_prob, epoch_len=epoch_len).items():
        if value is not None:
            settings[key] = value

    import jax
    process_index = jax.process_index() if process_index is None else int(process_index)
    local_bs = distributed.per_process_batch(batch_size, process_count)

    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    num_examples = len(source)
    if num_examples == 0:
        raise ValueError(f"{builder.name}: split {split!r} is empty")
    scores = _sample_scores(builder, split, num_examples) if (use_sample_weights and train) else None
    n_epoch = settings["epoch_len"] or num_examples
    steps_per_epoch = n_epoch // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"epoch of {n_epoch} samples is shorter than one global batch of {batch_size}")

    loader = SampleLoader(
        source, seed=seed, epoch_len=settings["epoch_len"],
        augmenter=Augmenter(crop_size, train=train, **(augment_kwargs or {})),
        sampler=MultiPointSampler(max_num_points=num_points, **(sampler_kwargs or {})),
        min_object_area=settings["min_object_area"], keep_background_prob=settings["keep_background_prob"],
        stuff_prob=settings["stuff_prob"], buggy_mask_thresh=buggy_mask_thresh, scores=scores,
        scores_gamma=sample_weights_gamma)

    per_epoch = steps_per_epoch * local_bs
    start = start_epoch * per_epoch + int(start_step) * local_bs
    stop = start + num_epochs * per_epoch if num_epochs is not None else np.iinfo(np.int64).max
    h, w = int(crop_size[0]), int(crop_size[1])

    def coords(k):
        epoch, r = k // per_epoch, k % per_epoch
        return epoch, (r // local_bs) * batch_size + process_index * local_bs + r % local_bs

    def load(epoch, position):
        image, points, target = tf.numpy_function(loader, [epoch, position], [tf.float32] * 3)
        image.set_shape((h, w, 3))
        points.set_shape((2 * num_points, 3))
        target.set_shape((h, w, 1))
        return {"images": image, "points": points, "instances": target}

    ds = tf.data.Dataset.range(start, stop).map(coords)
    ds = ds.map(load, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_bs, drop_remainder=True).prefetch(prefetch)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    if not return_info:
        return ds
    info = dict(settings, num_examples=num_examples, epoch_len=n_epoch, steps_per_epoch=steps_per_epoch,
                local_batch_size=local_bs, weighted=scores is not None, train=train)
    return ds, info

