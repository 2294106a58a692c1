"""Training samples and the official training augmentations (isegm/data/base.py, transforms.py), in numpy + cv2
(no albumentations).

`InstanceSample` is one training image with its instance layers and object tree (the official `DSample`):
`layers` is uint8 (H, W, L); object k is the pixels where `layers[..., layer] == value`; objects form a
forest through `parent` / `children` (COCO+LVIS hierarchy; SBD objects are all roots). Optional `ignore`
regions are (layer, value) pairs that read as -1 in object masks.

`Augmenter` reproduces the two albumentations pipelines of the official configs:
- train: UniformRandomResize(0.75, 1.40) -> HorizontalFlip(0.5) -> PadIfNeeded(crop, centred, constant 0)
  -> RandomCrop(crop) -> RandomBrightnessContrast(+-0.25 by max, (-0.15, 0.4), p 0.75) -> RGBShift(+-10, p 0.75);
- val: PadIfNeeded -> RandomCrop.
Parameters are drawn first (`sample_params`, from an explicit `np.random.Generator`) and then applied
(`apply`), so a test can check each operation against its formula. The pixel rules follow albumentations
1.3.0: resize with round() sizes, INTER_LINEAR image / INTER_NEAREST layers; pad top/left = floor(missing/2);
crop offset = int((size - crop + 1) * u); brightness/contrast and RGB shift through uint8 lookup tables
(float LUT, clipped, truncated to uint8).

`augment_sample` is the official retry loop (augment the ORIGINAL sample again until it has an object or a
draw < keep_background_prob; objects whose area became 0 are dropped, layer values of unknown objects are
zeroed), and `InstanceSample.remove_small_objects` the min-area filter with re-parenting of children.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["InstanceSample", "Augmenter", "augment_sample"]


@dataclass
class InstanceSample:
    """Image uint8 (H, W, 3) RGB, layers uint8 (H, W, L), objects {id: {'mapping': (layer, value), 'parent',
    'children', ['area']}}, ignore [(layer, value)]. Object ids are arbitrary ints (dict order is kept)."""
    image: np.ndarray
    layers: np.ndarray
    objects: dict
    ignore: list = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        if self.layers.ndim == 2:
            self.layers = self.layers[:, :, None]
        if self.image.shape[:2] != self.layers.shape[:2]:
            raise ValueError(f"sample {self.name!r}: image {self.image.shape[:2]} and instance layers "
                             f"{self.layers.shape[:2]} differ in size")

    def __len__(self) -> int:
        return len(self.objects)

    def copy(self) -> "InstanceSample":
        return InstanceSample(self.image.copy(), self.layers.copy(), copy.deepcopy(self.objects),
                              list(self.ignore), self.name)

    @property
    def root_objects(self) -> list:
        return [k for k, info in self.objects.items() if info["parent"] is None]

    def object_mask(self, obj_id) -> np.ndarray:
        """int32 (H, W): 1 on the object, 0 elsewhere, -1 on ignore regions (official get_object_mask)."""
        layer, value = self.objects[obj_id]["mapping"]
        mask = (self.layers[:, :, layer] == value).astype(np.int32)
        for ign_layer, ign_value in self.ignore:
            mask[self.layers[:, :, ign_layer] == ign_value] = -1
        return mask

    def background_mask(self) -> np.ndarray:
        """bool (H, W): pixels with no label in any layer (removed small objects still count as labelled)."""
        return self.layers.max(axis=2) == 0

    def compute_areas(self):
        """Pixel area of every object; layer values that belong to no object (and are not ignore) are zeroed."""
        by_mapping = {tuple(info["mapping"]): k for k, info in self.objects.items()}
        ignore = {tuple(x) for x in self.ignore}
        for info in self.objects.values():
            info["area"] = 0
        for layer in range(self.layers.shape[2]):
            counts = np.bincount(self.layers[:, :, layer].ravel(), minlength=256)
            for value in np.flatnonzero(counts):
                if value == 0 or (layer, value) in ignore:
                    continue
                key = by_mapping.get((layer, int(value)))
                if key is None:
                    plane = self.layers[:, :, layer]
                    plane[plane == value] = 0
                else:
                    self.objects[key]["area"] = int(counts[value])

    def remove_object(self, obj_id):
        """Delete an object; its children move to its parent (official DSample._remove_object)."""
        info = self.objects.pop(obj_id)
        parent = info["parent"]
        for child in info["children"]:
            self.objects[child]["parent"] = parent
        if parent is not None:
            siblings = [c for c in self.objects[parent]["children"] if c != obj_id]
            self.objects[parent]["children"] = siblings + list(info["children"])

    def remove_small_objects(self, min_area: int):
        if self.objects and "area" not in next(iter(self.objects.values())):
            self.compute_areas()
        for obj_id in [k for k, info in self.objects.items() if info["area"] < min_area]:
            self.remove_object(obj_id)


def _resize_layers(layers: np.ndarray, height: int, width: int) -> np.ndarray:
    out = cv2.resize(layers, (width, height), interpolation=cv2.INTER_NEAREST)
    return out.reshape(height, width, layers.shape[2])


class Augmenter:
    """Official training (`train=True`) or validation (`train=False`) augmentation for a crop (H, W)."""

    def __init__(self, crop_size=(320, 480), train=True, scale_range=(0.75, 1.40), flip_prob=0.5,
                 brightness_limit=(-0.25, 0.25), contrast_limit=(-0.15, 0.4), brightness_contrast_prob=0.75,
                 rgb_shift_limit=10.0, rgb_shift_prob=0.75):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.train = train
        self.scale_range = scale_range
        self.flip_prob = flip_prob
        self.brightness_limit, self.contrast_limit = brightness_limit, contrast_limit
        self.brightness_contrast_prob = brightness_contrast_prob
        self.rgb_shift_limit, self.rgb_shift_prob = rgb_shift_limit, rgb_shift_prob

    def sample_params(self, rng: np.random.Generator, height: int, width: int) -> dict:
        """Draw every random choice for an image of size (height, width), in pipeline order."""
        p = {}
        if self.train:
            scale = rng.uniform(*self.scale_range)
            height, width = int(round(height * scale)), int(round(width * scale))
            p["resize"] = (height, width)
            p["flip"] = bool(rng.random() < self.flip_prob)
        ch, cw = self.crop_size
        pad_h, pad_w = max(ch - height, 0), max(cw - width, 0)
        p["pad"] = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
        height, width = height + pad_h, width + pad_w
        p["crop"] = (int((height - ch + 1) * rng.random()), int((width - cw + 1) * rng.random()))
        if self.train:
            if rng.random() < self.brightness_contrast_prob:
                p["contrast"] = 1.0 + rng.uniform(*self.contrast_limit)
                p["brightness"] = rng.uniform(*self.brightness_limit)
            if rng.random() < self.rgb_shift_prob:
                lim = self.rgb_shift_limit
                p["rgb_shift"] = tuple(rng.uniform(-lim, lim) for _ in range(3))
        return p

    def apply(self, image: np.ndarray, layers: np.ndarray, params: dict):
        """Apply drawn params to uint8 image (H, W, 3) and uint8 layers (H, W, L); returns new arrays."""
        if "resize" in params:
            h, w = params["resize"]
            if (h, w) != image.shape[:2]:
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
                layers = _resize_layers(layers, h, w)
        if params.get("flip"):
            image, layers = image[:, ::-1], layers[:, ::-1]
        top, bottom, left, right = params["pad"]
        if top or bottom or left or right:
            image = np.pad(image, ((top, bottom), (left, right), (0, 0)))
            layers = np.pad(layers, ((top, bottom), (left, right), (0, 0)))
        y, x = params["crop"]
        ch, cw = self.crop_size
        image = np.ascontiguousarray(image[y:y + ch, x:x + cw])
        layers = np.ascontiguousarray(layers[y:y + ch, x:x + cw])
        if "contrast" in params:
            lut = np.arange(256, dtype=np.float32)
            if params["contrast"] != 1:
                lut *= params["contrast"]
            if params["brightness"] != 0:
                lut += params["brightness"] * 255
            image = cv2.LUT(image, np.clip(lut, 0, 255).astype(np.uint8))
        if "rgb_shift" in params:
            channels = []
            for c, shift in enumerate(params["rgb_shift"]):
                lut = np.clip(np.arange(256, dtype=np.float32) + np.float32(shift), 0, 255).astype(np.uint8)
                channels.append(cv2.LUT(image[:, :, c], lut))
            image = np.stack(channels, axis=2)
        return image, layers

    def __call__(self, image, layers, rng: np.random.Generator):
        return self.apply(image, layers, self.sample_params(rng, *image.shape[:2]))


def augment_sample(sample: InstanceSample, augmenter: Augmenter, rng: np.random.Generator,
                   keep_background_prob: float = 0.0, max_tries: int = 100) -> InstanceSample:
    """Official ISDataset.augment_sample: re-augment the original until the result has >= 1 object or a
    draw falls below keep_background_prob. Deviation: gives up after `max_tries` (the official loop never
    ends on a sample without objects when keep_background_prob is 0, as in validation) and returns the
    last, background-only result."""
    for _ in range(max_tries):
        image, layers = augmenter(sample.image, sample.layers, rng)
        out = InstanceSample(image, layers, copy.deepcopy(sample.objects), list(sample.ignore), sample.name)
        out.compute_areas()
        out.remove_small_objects(1)
        keep = keep_background_prob < 0.0 or rng.random() < keep_background_prob
        if len(out) > 0 or keep:
            return out
    return out
