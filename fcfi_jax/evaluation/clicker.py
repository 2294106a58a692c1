"""The official evaluation clicker (isegm/inference/clicker.py, identical to RITM; docs/official_quirks.md #31).

Next click from a ground truth and the current prediction:
  fn = gt & ~pred & ~ignore,  fp = ~gt & pred & ~ignore
  D = exact Euclidean distance to the nearest non-error pixel, computed with a 1-px zero border (so the
      image edge counts as "outside"), times the not-clicked map (clicked pixels get 0)
  positive iff max D_fn > max D_fp (ties, both 0 included, give a negative click)
  the click is the FIRST pixel in row-major order holding that maximum.
A perfect prediction therefore yields a negative click at the first zero-distance pixel (normally (0, 0)).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["Click", "Clicker", "error_distance"]


class _YXP(NamedTuple):
    y: int
    x: int
    is_positive: bool


class Click(_YXP):
    """A click: behaves as the (y, x, is_positive) triple the predictor takes; `indx` = number of earlier
    clicks (plus the clicker's offset), as the official Click. Float coordinates are truncated (official)."""

    def __new__(cls, y, x, is_positive, indx=None):
        self = super().__new__(cls, int(y), int(x), bool(is_positive))
        self.indx = indx
        return self

    @property
    def coords(self) -> tuple[int, int]:
        return self.y, self.x

    @property
    def coords_and_indx(self) -> tuple:
        return self.y, self.x, self.indx

    def __repr__(self) -> str:
        return f"Click(y={self.y}, x={self.x}, is_positive={self.is_positive}, indx={self.indx})"

    def __reduce__(self):   # keep indx through copy/pickle
        return Click, (self.y, self.x, self.is_positive, self.indx)


def error_distance(mask: np.ndarray) -> np.ndarray:
    """float32 exact L2 distance of every `mask` pixel to the nearest pixel outside it, the image border
    counting as outside (official 1-px zero padding + cv2 DIST_MASK_PRECISE); 0 outside the mask.

    With the zero border there is always a zero pixel, so cv2's ~1.8e19 "no zero pixel" output cannot occur;
    an all-False mask short-cuts to zeros (same values, no transform)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    padded = np.pad(mask, 1).astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1]


class Clicker:
    """Click sequence for one object.

    Clicker(gt_mask): simulated user (`make_next_click(pred_mask)`); gt 1 = object, `ignore_label` = ignored.
    Clicker(): interactive use, clicks only come from `add_click(y, x, is_positive)`.
    """

    def __init__(self, gt_mask=None, init_clicks=None, ignore_label=-1, click_indx_offset=0):
        self.click_indx_offset = click_indx_offset
        if gt_mask is not None:
            gt_mask = np.asarray(gt_mask)
            if gt_mask.ndim != 2 or gt_mask.size == 0:
                raise ValueError(f"gt_mask must be a non-empty (H, W) array, got shape {gt_mask.shape}")
            self.gt_mask = gt_mask == 1
            self.not_ignore_mask = gt_mask != ignore_label
        else:
            self.gt_mask = self.not_ignore_mask = None
        self.reset_clicks()
        for click in init_clicks or ():
            self.add_click(click)

    # ------------------------------------------------------------------ simulated user
    def make_next_click(self, pred_mask) -> Click:
        """Add (and return) the official next click for the current prediction (non-zero = predicted object)."""
        if self.gt_mask is None:
            raise ValueError("make_next_click needs a Clicker built with a gt_mask")
        return self.add_click(self._get_next_click(pred_mask))

    def _get_next_click(self, pred_mask) -> Click:
        pred = np.asarray(pred_mask).astype(bool)
        if pred.shape != self.gt_mask.shape:
            raise ValueError(f"pred_mask shape {pred.shape} != gt_mask shape {self.gt_mask.shape}")
        fn = self.gt_mask & ~pred & self.not_ignore_mask
        fp = ~self.gt_mask & pred & self.not_ignore_mask
        fn_dt = error_distance(fn) * self.not_clicked_map
        fp_dt = error_distance(fp) * self.not_clicked_map
        fn_max, fp_max = fn_dt.max(), fp_dt.max()
        is_positive = bool(fn_max > fp_max)
        dt, best = (fn_dt, fn_max) if is_positive else (fp_dt, fp_max)
        # first pixel in row-major order holding the maximum (= np.where(dt == best)[...][0])
        y, x = np.unravel_index(np.argmax(dt == best), dt.shape)
        return Click(y, x, is_positive)

    # ------------------------------------------------------------------ click list
    def add_click(self, click_or_y, x=None, is_positive=None) -> Click:
        """Append a click: `add_click(click)` (official) or `add_click(y, x, is_positive)`; returns it with indx."""
        if x is None and is_positive is None:
            y, x, is_positive = click_or_y[0], click_or_y[1], click_or_y[2]
        elif x is None or is_positive is None:
            raise TypeError("add_click takes a click or (y, x, is_positive)")
        else:
            y = click_or_y
        click = Click(y, x, is_positive, indx=self.click_indx_offset + len(self.clicks_list))
        if self.gt_mask is not None:
            h, w = self.gt_mask.shape
            if not (0 <= click.y < h and 0 <= click.x < w):
                raise ValueError(f"click (y={click.y}, x={click.x}) outside the {h}x{w} mask")
            self.not_clicked_map[click.y, click.x] = False
        self.clicks_list.append(click)
        if click.is_positive:
            self.num_pos_clicks += 1
        else:
            self.num_neg_clicks += 1
        return click

    def remove_last_click(self) -> Click | None:
        """Undo the last click (its pixel becomes clickable again, as official); None when there is no click."""
        if not self.clicks_list:
            return None
        click = self.clicks_list.pop()
        if click.is_positive:
            self.num_pos_clicks -= 1
        else:
            self.num_neg_clicks -= 1
        if self.gt_mask is not None:
            self.not_clicked_map[click.y, click.x] = True
        return click

    _remove_last_click = remove_last_click   # official name

    def reset_clicks(self) -> None:
        self.clicks_list: list[Click] = []
        self.num_pos_clicks = self.num_neg_clicks = 0
        if self.gt_mask is not None:
            self.not_clicked_map = np.ones(self.gt_mask.shape, dtype=bool)

    def get_clicks(self, clicks_limit=None) -> list[Click]:
        return self.clicks_list[:clicks_limit]

    def get_state(self) -> list[Click]:
        return list(self.clicks_list)

    def set_state(self, state) -> None:
        self.reset_clicks()
        for click in state:
            self.add_click(click)

    def __len__(self) -> int:
        return len(self.clicks_list)
