"""Official MultiPointSampler (RITM/FCFI, isegm/data/points_sampler.py) in numpy + cv2, driven by an explicit np.random.Generator.

Given an augmented `InstanceSample`, pick the target and simulate the clicks the network sees at the start of
training:
- target: one random ROOT object, or (prob `merge_objects_prob`, if >= 2 roots) 2..max_num_merged_objects
  distinct roots merged pixel-wise (max); a sample without objects gives an all-zero target;
- positive masks: each selected object's mask, eroded (prob 0.9) by a 3x3 kernel x3 iterations when the result
  keeps > 10 pixels;
- negative regions: 'bg' = not target, 'border' = dilate(target, 3x3, ceil(0.1 sqrt(area)) iterations) minus
  target, 'other' = labelled pixels outside the target if the sample has more objects than were selected,
  else 'bg'; background-only samples use the background for all three;
- positive clicks (per object): count 1 + i with p ∝ gamma^i (i < N); the first one is drawn among pixels whose
  EXACT Euclidean distance to the (zero-padded) mask border exceeds max/1.7 and carries 0 as third value,
  the rest uniformly from the mask with 100. With merged objects: the first click of each object, then a
  count drawn from the negative distribution of clicks on the union (each click on a random object),
  truncated to N by a random subset;
- negative clicks: count i with p ∝ gamma^i (i <= N), each from a strategy drawn with (0.1, 0.4, 0.5) for
  (bg, other, border), skipped when that region is empty; third value 100;
- rows are (y, x, index); each half is padded with (-1, -1, -1) to N rows: 2N rows, positives first.

Deviation: positive clicks are drawn from pixels == 1 only; the official code would also pick ignore (-1)
pixels as positives (a case its training sets never hit). The options FCFI does not use (hierarchy
sampling, soft targets, only_one_first_click, sfc_full_inner_prob) are not implemented.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from fcfi_jax.data.augment import InstanceSample

__all__ = ["MultiPointSampler", "click_count_probs", "first_click_candidates"]

_KERNEL = np.ones((3, 3), np.uint8)


def click_count_probs(n: int, gamma: float) -> np.ndarray:
    """p[i] ∝ gamma**i for i in 0..n-1 (official generate_probs)."""
    p = gamma ** np.arange(n, dtype=np.float64)
    return p / p.sum()


def first_click_candidates(mask: np.ndarray, inner_k: float = 1.7) -> np.ndarray:
    """(K, 2) pixels of `mask` deeper than max(EDT)/inner_k; EDT of the zero-padded mask (exact L2)."""
    padded = np.pad((mask > 0).astype(np.uint8), 1)
    dt = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return np.argwhere(dt > dt.max() / inner_k)


class _Region:
    """A click region whose pixel list is computed on first use."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask
        self._pixels = None

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.argwhere(self.mask)
        return self._pixels


class MultiPointSampler:
    """`sampler(sample, rng)` -> (points float32 (2N, 3), target float32 (H, W) in {0, 1} or -1 on ignore).

    Defaults are the FCFI training settings (max 24 points, gamma 0.8, merge 0.15 of 2 objects, centre first
    click); the official class defaults (gamma 0.7, no merging, no centre click) differ."""

    def __init__(self, max_num_points=24, prob_gamma=0.80, expand_ratio=0.1, positive_erode_prob=0.9,
                 positive_erode_iters=3, negative_bg_prob=0.1, negative_other_prob=0.4, negative_border_prob=0.5,
                 merge_objects_prob=0.15, max_num_merged_objects=2, first_click_center=True, sfc_inner_k=1.7):
        probs = (negative_bg_prob, negative_other_prob, negative_border_prob)
        if not math.isclose(sum(probs), 1.0):
            raise ValueError(f"negative strategy probabilities must sum to 1, got {probs}")
        self.max_num_points = int(max_num_points)
        self.expand_ratio = expand_ratio
        self.positive_erode_prob, self.positive_erode_iters = positive_erode_prob, positive_erode_iters
        self.neg_strategy_probs = np.asarray(probs, np.float64)
        self.merge_objects_prob = merge_objects_prob
        self.max_num_merged_objects = (self.max_num_points if max_num_merged_objects == -1
                                       else int(max_num_merged_objects))
        self.first_click_center, self.sfc_inner_k = first_click_center, sfc_inner_k
        self.pos_probs = click_count_probs(self.max_num_points, prob_gamma)
        self.neg_probs = click_count_probs(self.max_num_points + 1, prob_gamma)

    # ------------------------------------------------------------------------------------ object choice
    def select(self, sample: InstanceSample, rng: np.random.Generator):
        """(target int32 (H, W), positive masks [bool], negative regions {'bg', 'other', 'border'})."""
        if len(sample) == 0:
            bg = sample.background_mask()
            return np.zeros(bg.shape, np.int32), [], {"bg": bg, "other": bg, "border": bg}
        roots = sample.root_objects
        if len(roots) > 1 and rng.random() < self.merge_objects_prob:
            most = min(len(roots), self.max_num_merged_objects)
            count = int(rng.integers(2, most + 1))
            chosen = [roots[i] for i in rng.choice(len(roots), size=count, replace=False)]
        else:
            chosen = [roots[int(rng.integers(len(roots)))]]
        masks = [sample.object_mask(k) for k in chosen]
        target = masks[0]
        for m in masks[1:]:
            target = np.maximum(target, m)
        positives = [self._erode(m == 1, rng) for m in masks]
        binary = target > 0
        bg = ~binary
        other = bg if len(sample) <= len(chosen) else (~sample.background_mask() & bg)
        return target, positives, {"bg": bg, "other": other, "border": self._border(binary)}

    def _erode(self, mask: np.ndarray, rng) -> np.ndarray:
        if rng.random() > self.positive_erode_prob:
            return mask
        eroded = cv2.erode(mask.astype(np.uint8), _KERNEL, iterations=self.positive_erode_iters) > 0
        return eroded if eroded.sum() > 10 else mask

    def _border(self, binary: np.ndarray) -> np.ndarray:
        iters = int(np.ceil(self.expand_ratio * np.sqrt(binary.sum())))
        expanded = cv2.dilate(binary.astype(np.uint8), _KERNEL, iterations=iters) > 0
        return expanded & ~binary

    # ------------------------------------------------------------------------------------------- clicks
    def _count(self, rng, negative: bool) -> int:
        if negative:
            return int(rng.choice(self.max_num_points + 1, p=self.neg_probs))
        return 1 + int(rng.choice(self.max_num_points, p=self.pos_probs))

    def _object_clicks(self, mask: np.ndarray, rng) -> list:
        """Clicks on one positive mask: first near the centre (index 0), the rest uniform (index 100)."""
        region = _Region(mask)
        clicks = []
        for j in range(self._count(rng, negative=False)):
            first = self.first_click_center and j == 0
            pixels = first_click_candidates(mask, self.sfc_inner_k) if first else region.pixels
            if len(pixels):
                y, x = pixels[int(rng.integers(len(pixels)))]
                clicks.append((int(y), int(x), 0 if first else 100))
        return clicks

    def _weighted_clicks(self, regions: list, probs: np.ndarray, rng) -> list:
        """Negative-distribution count; each click from a region drawn with `probs` (skipped if empty)."""
        clicks = []
        for _ in range(self._count(rng, negative=True)):
            pixels = regions[int(rng.choice(len(regions), p=probs))].pixels
            if len(pixels):
                y, x = pixels[int(rng.integers(len(pixels)))]
                clicks.append((int(y), int(x), 100))
        return clicks

    def positive_clicks(self, positives: list, rng) -> list:
        per_object = [c for c in (self._object_clicks(m, rng) for m in positives[:self.max_num_points]) if c]
        if len(per_object) <= 1:
            return per_object[0] if per_object else []
        clicks = [c[0] for c in per_object]
        regions = [_Region(m) for m in positives[:self.max_num_points]]
        union = self._weighted_clicks(regions, np.full(len(regions), 1.0 / len(regions)), rng)
        room = self.max_num_points - len(clicks)
        if len(union) > room:
            union = [union[i] for i in rng.choice(len(union), size=room, replace=False)]
        return clicks + union

    def negative_clicks(self, negatives: dict, rng) -> list:
        regions = [_Region(negatives[k]) for k in ("bg", "other", "border")]
        return self._weighted_clicks(regions, self.neg_strategy_probs, rng)

    def _pad(self, clicks: list) -> list:
        return clicks + [(-1, -1, -1)] * (self.max_num_points - len(clicks))

    def __call__(self, sample: InstanceSample, rng: np.random.Generator):
        target, positives, negatives = self.select(sample, rng)
        rows = self._pad(self.positive_clicks(positives, rng)) + self._pad(self.negative_clicks(negatives, rng))
        return np.asarray(rows, np.float32).reshape(2 * self.max_num_points, 3), target.astype(np.float32)
