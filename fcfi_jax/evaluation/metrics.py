"""Evaluation metrics of the official evaluator (isegm/inference/utils.py, scripts/evaluate_model.py).

Official quirks reproduced (docs/official_quirks.md #32, #33):
- per-click IoU / BIoU / ASSD are stored as float32 (evaluate_sample), and NoC compares those float32
  values with float64 thresholds from `np.arange(0.8, min(0.95, target_iou) + 0.001, 0.05)`, i.e.
  0.8, 0.8500000000000001, 0.9000000000000001 (, 0.9500000000000002 with --print-ious). For float32 IoUs
  this equals comparing with 0.85 / 0.9 / 0.95 (no float32 lies between), but not for exact float64 ones.
- NoF (">=20@85") counts samples whose NoC equals max_clicks, so reaching the threshold exactly at the
  last click counts as a failure.
- 0 / 0 ratios (empty union, no boundary) give nan, as the official numpy division.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

__all__ = ["iou", "boundary_iou", "assd", "official_thresholds", "NOC_THRESHOLDS", "NocMetrics",
           "compute_noc_metrics", "time_metrics"]


def _ratio(num, den) -> np.float32:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.float32(np.float64(num) / np.float64(den))


def iou(pred_mask, gt_mask, ignore_label=-1) -> np.float32:
    """Official get_iou: |pred & gt| / |pred | gt| over non-ignored pixels (gt == 1 is object), as float32."""
    gt_mask = np.asarray(gt_mask)
    pred = np.asarray(pred_mask).astype(bool)
    valid = gt_mask != ignore_label
    obj = gt_mask == 1
    return _ratio((pred & obj & valid).sum(), ((pred | obj) & valid).sum())


def _mask_to_boundary(mask_u8: np.ndarray, dilation_ratio: float) -> np.ndarray:
    """Official mask_to_boundary: mask minus its erosion by round(ratio * diagonal) 3x3 steps (>= 1),
    with a 1-px zero border so that the image edge is boundary too."""
    h, w = mask_u8.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(h ** 2 + w ** 2))))
    padded = cv2.copyMakeBorder(mask_u8, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1:h + 1, 1:w + 1]
    return mask_u8 - eroded


def boundary_iou(pred_mask, gt_mask, dilation_ratio=0.02) -> np.float32:
    """Official get_biou (float32). Quirk kept (docs/official_quirks.md #33): the gt is cast to uint8 (ignore -1 -> 255)
    before the boundary, so ignore pixels are neither object nor excluded except where the boundary map is exactly 255."""
    pred_bd = _mask_to_boundary(np.asarray(pred_mask).astype(np.uint8), dilation_ratio)
    gt_bd = _mask_to_boundary(np.asarray(gt_mask).astype(np.int32).astype(np.uint8), dilation_ratio)
    inter = ((pred_bd == 1) & (gt_bd == 1)).sum()
    union = (((pred_bd == 1) | (gt_bd == 1)) & (gt_bd != 255)).sum()
    return _ratio(inter, union)


def _contour_map(mask_u8: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask_u8.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, 1)
    return out


def assd(pred_mask, gt_mask) -> np.float32:
    """Official get_assd (float32): average symmetric distance between the outer contours of gt == 1 and pred.
    Kept as official: scipy's EDT of a map without zero pixels (empty contour) is used as is."""
    gt_bd = _contour_map((np.asarray(gt_mask) == 1).astype(np.uint8))
    pred_bd = _contour_map(np.asarray(pred_mask).astype(np.uint8))
    gt_dist = distance_transform_edt(1 - gt_bd)
    pred_dist = distance_transform_edt(1 - pred_bd)
    num = gt_dist[pred_bd == 1].sum() + pred_dist[gt_bd == 1].sum()
    return _ratio(num, gt_bd.sum() + pred_bd.sum())


def official_thresholds(target_iou: float = 0.90) -> tuple[float, ...]:
    """NoC thresholds exactly as evaluate_model.py builds them (target_iou is 1.01 with --print-ious)."""
    return tuple(np.arange(0.8, min(0.95, target_iou) + 0.001, 0.05).tolist())


NOC_THRESHOLDS = official_thresholds(0.90)   # (0.8, 0.8500000000000001, 0.9000000000000001)


@dataclass(frozen=True)
class NocMetrics:
    """NoC / NoF per threshold, per-sample NoC (n_samples, n_thresholds) and the float32 mIoU after each click."""
    thresholds: tuple
    noc: tuple
    nof: tuple
    per_sample_noc: np.ndarray
    miou_per_click: np.ndarray
    max_clicks: int

    def as_dict(self) -> dict:
        """The keys of the evaluation reports: {'NoC': {'NoC@85': ..}, '>=20': {'@85': ..}, 'mIoU_per_click': [..]}."""
        pct = [int(round(t * 100)) for t in self.thresholds]
        return {"NoC": {f"NoC@{p}": float(v) for p, v in zip(pct, self.noc)},
                f">={self.max_clicks}": {f"@{p}": int(v) for p, v in zip(pct, self.nof)},
                "mIoU_per_click": [float(v) for v in self.miou_per_click]}


def compute_noc_metrics(all_ious, thresholds=NOC_THRESHOLDS, max_clicks=20) -> NocMetrics:
    """Official compute_noc_metric plus the --print-ious mIoU line.

    all_ious: per sample, the IoU after each click (cast to float32 as the official evaluator stores them).
    NoC = 1 + index of the first IoU >= thr, or max_clicks if never reached; NoF = #samples with NoC == max_clicks.
    mIoU per click: float32 mean over samples, truncated to the shortest sequence (official)."""
    ious = [np.asarray(x, dtype=np.float32).reshape(-1) for x in all_ious]
    if not ious:
        raise ValueError("compute_noc_metrics needs at least one sample")
    per_sample = np.array([[int(np.argmax(x >= t)) + 1 if np.any(x >= t) else max_clicks for t in thresholds]
                           for x in ious], dtype=np.int64).reshape(len(ious), len(thresholds))
    n = min(len(x) for x in ious)
    miou = np.array([x[:n] for x in ious]).mean(axis=0)
    return NocMetrics(thresholds=tuple(float(t) for t in thresholds),
                      noc=tuple(float(v) for v in per_sample.mean(axis=0)),
                      nof=tuple(int(v) for v in (per_sample == max_clicks).sum(axis=0)),
                      per_sample_noc=per_sample, miou_per_click=miou, max_clicks=max_clicks)


def time_metrics(all_ious, elapsed_time: float) -> tuple[float, float]:
    """Official get_time_metrics: (seconds per click, seconds per image) of the whole evaluation loop."""
    n_clicks = sum(len(x) for x in all_ious)
    return elapsed_time / n_clicks, elapsed_time / len(all_ious)
