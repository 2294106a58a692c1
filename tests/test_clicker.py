"""Official clicker: rule details, and replays of click sequences recorded from the official code."""
import json

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from fcfi_jax.data.readers import get_dataset
from fcfi_jax.evaluation.clicker import Click, Clicker, error_distance


def reference_next_click(gt, pred, clicked=()):
    """Independent re-derivation of the official clicker rule (docs/official_quirks.md #31) with scipy's EDT
    (float32) and np.where ordering."""
    fn = (gt == 1) & ~pred & (gt != -1)
    fp = (gt != 1) & pred & (gt != -1)
    not_clicked = np.ones(gt.shape, bool)
    for y, x in clicked:
        not_clicked[y, x] = False
    dts = [distance_transform_edt(np.pad(m, 1)).astype(np.float32)[1:-1, 1:-1] * not_clicked for m in (fn, fp)]
    positive = dts[0].max() > dts[1].max()
    dt = dts[0] if positive else dts[1]
    ys, xs = np.where(dt == dt.max())
    return int(ys[0]), int(xs[0]), bool(positive)


def as_tuple(click):
    return click.y, click.x, click.is_positive


# ------------------------------------------------------------------------------------------------ rule details

def test_first_max_in_row_major_order_and_not_clicked_map():
    gt = np.zeros((7, 9), np.int32)
    gt[2:5, 1:8] = 1   # 3x7 bar: distance 2 along row 3 for x = 2..6
    clicker = Clicker(gt)
    empty = np.zeros_like(gt, bool)
    assert as_tuple(clicker.make_next_click(empty)) == (3, 2, True)
    assert as_tuple(clicker.make_next_click(empty)) == (3, 3, True)   # clicked pixel is excluded
    assert [c.indx for c in clicker.get_clicks()] == [0, 1]


def test_tie_gives_negative_click():
    gt = np.zeros((9, 9), np.int32)
    gt[1:4, 1:4] = 1                         # missed object: max fn distance 2
    pred = np.zeros((9, 9), bool)
    pred[5:8, 5:8] = True                    # false positive of the same size: max fp distance 2
    assert as_tuple(Clicker(gt).make_next_click(pred)) == (6, 6, False)
    pred[4:8, 4:8] = True                    # larger fp wins anyway
    assert not Clicker(gt).make_next_click(pred).is_positive
    pred[:] = False
    pred[6:8, 6:8] = True                    # smaller fp: positive
    assert as_tuple(Clicker(gt).make_next_click(pred)) == (2, 2, True)


def test_perfect_prediction_clicks_top_left_negative():
    gt = np.zeros((5, 6), np.int32)
    gt[1:4, 2:5] = 1
    clicker = Clicker(gt)
    assert as_tuple(clicker.make_next_click(gt == 1)) == (0, 0, False)
    assert as_tuple(clicker.make_next_click(gt == 1)) == (0, 0, False)   # official: same pixel again


def test_ignore_pixels_are_never_errors():
    gt = np.zeros((7, 11), np.int32)
    gt[1:6, 1:10] = 1
    gt[:, :6] = np.where(gt[:, :6] == 1, -1, gt[:, :6])   # left part of the object ignored
    click = Clicker(gt).make_next_click(np.zeros_like(gt))
    assert click.is_positive and click.x >= 6             # falls in the non-ignored part
    assert as_tuple(click) == reference_next_click(gt, np.zeros(gt.shape, bool))
    pred = gt != 0                                        # object plus the whole ignore area predicted
    assert as_tuple(Clicker(gt).make_next_click(pred)) == (0, 0, False)


def test_matches_reference_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(5, 40, 2)
        gt = (rng.random((h, w)) < 0.4).astype(np.int32)
        gt[rng.random((h, w)) < 0.1] = -1
        pred = rng.random((h, w)) < 0.4
        clicker, clicked = Clicker(gt), []
        for _ in range(3):
            expect = reference_next_click(gt, pred, clicked)
            assert as_tuple(clicker.make_next_click(pred)) == expect
            clicked.append(expect[:2])


def test_error_distance_corner_cases():
    """With the zero border there is always a zero pixel: no 1.8e19 values even for an all-True mask."""
    full = np.ones((4, 5), bool)
    ref = distance_transform_edt(np.pad(full, 1)).astype(np.float32)[1:-1, 1:-1]
    np.testing.assert_array_equal(error_distance(full), ref)
    assert error_distance(full).max() == 2.0
    np.testing.assert_array_equal(error_distance(np.ones((1, 1), bool)), [[1.0]])
    assert not error_distance(np.zeros((3, 3), bool)).any()
    gt = np.ones((3, 4), np.int32)                         # whole image is object, nothing predicted
    assert as_tuple(Clicker(gt).make_next_click(np.zeros_like(gt))) == (1, 1, True)


def test_interactive_use_and_undo():
    clicker = Clicker()
    c0 = clicker.add_click(10, 20, True)
    c1 = clicker.add_click(Click(3.7, 4.2, False))          # official: float coordinates truncated
    assert (c0.indx, c1.indx, c1.coords) == (0, 1, (3, 4))
    y, x, positive = c0                                     # the (y, x, is_positive) triple of the predictor
    assert (y, x, positive) == (10, 20, True) and c0.coords_and_indx == (10, 20, 0)
    assert (clicker.num_pos_clicks, clicker.num_neg_clicks, len(clicker)) == (1, 1, 2)
    with pytest.raises(ValueError, match="gt_mask"):
        clicker.make_next_click(np.zeros((2, 2)))
    assert clicker.remove_last_click() == c1 and len(clicker) == 1
    gt = np.zeros((4, 4), np.int32)
    gt[1:3, 1:3] = 1
    with_gt = Clicker(gt, click_indx_offset=5)
    first = with_gt.make_next_click(np.zeros_like(gt))
    assert first.indx == 5 and not with_gt.not_clicked_map[first.y, first.x]
    with_gt.remove_last_click()
    assert with_gt.not_clicked_map.all()
    with pytest.raises(ValueError, match="outside"):
        with_gt.add_click(4, 0, True)
    with pytest.raises(ValueError, match="shape"):
        with_gt.make_next_click(np.zeros((3, 3)))


# ------------------------------------------------------------------------------------------------ official replays

@pytest.mark.parametrize("name", ["eval_grabcut_hrnet18s_random.json", "eval_grabcut_hrnet18s_clicky_every10.json"])
def test_first_click_of_official_grabcut_runs(name, data_dir, fixtures_dir):
    """The first click depends only on the gt (empty prediction): reproduce it for every recorded image."""
    dataset = get_dataset("GrabCut", data_dir / "GrabCut")
    records = json.loads((fixtures_dir / name).read_text())["per_image"]
    assert len(records) in (50, 5)
    for rec in records:
        sample = dataset[rec["index"]]
        assert sample.name == rec["image_name"]
        click = Clicker(sample.gt).make_next_click(np.zeros_like(sample.gt))
        ref = rec["clicks"][0]
        assert (click.y, click.x, click.is_positive, click.indx) == (ref["y"], ref["x"], ref["is_positive"],
                                                                     ref["indx"]), rec["image_name"]


@pytest.mark.parametrize("name", ["golden_hrnet18s_native.npz", "golden_hrnet18s_crop333x417.npz",
                                  "golden_r101_crop333x417.npz"])
def test_replay_golden_click_sequences(name, fixtures_dir):
    """Clicks 2 and 3 from the official predictions after clicks 1 and 2."""
    z = np.load(fixtures_dir / name)
    gt = z["gt_mask"]
    clicker = Clicker(gt)
    preds = [np.zeros_like(gt), z["click1_pred_mask"], z["click2_pred_mask"]]
    got = [clicker.make_next_click(p) for p in preds]
    assert [[c.y, c.x] for c in got] == z["click_yx"].astype(int).tolist()
    assert [c.is_positive for c in got] == z["click_is_positive"].astype(bool).tolist()
    assert [c.indx for c in got] == z["click_indx"].astype(int).tolist()
