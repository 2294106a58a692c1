"""Training input: click sampler (official MultiPointSampler rules), augmentations, tf.data pipeline."""
import math

import numpy as np
import pytest
from scipy import ndimage

from fcfi_jax.data import synthetic
from fcfi_jax.data.augment import Augmenter, InstanceSample, augment_sample
from fcfi_jax.data.sampler import MultiPointSampler, click_count_probs, first_click_candidates

N = 24


def make_sample(h=60, w=80, boxes=((10, 40, 10, 45),), parents=None):
    """One layer; object k+1 = box k (y0, y1, x0, x1), later boxes over earlier ones."""
    layers = np.zeros((h, w, 1), np.uint8)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        layers[y0:y1, x0:x1, 0] = k + 1
    parents = parents or {}
    objects = {k: {"mapping": (0, k + 1), "parent": parents.get(k), "children": []} for k in range(len(boxes))}
    for child, parent in parents.items():
        objects[parent]["children"].append(child)
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return InstanceSample(image, layers, objects)


def check_clicks(points, target):
    """Official output layout and click validity for one sample."""
    assert points.shape == (2 * N, 3) and points.dtype == np.float32
    h, w = target.shape
    for half, inside in ((points[:N], True), (points[N:], False)):
        valid = half[:, 2] >= 0
        n = int(valid.sum())
        assert valid[:n].all() and (half[n:] == -1).all(), "clicks first, then (-1, -1, -1) padding"
        ys, xs = half[:n, 0].astype(int), half[:n, 1].astype(int)
        assert ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).all()
        assert ((target[ys, xs] == 1) == inside).all()
        assert set(half[:n, 2].tolist()) <= ({0.0, 100.0} if inside else {100.0})
    if target.max() > 0:
        assert points[0, 2] == 0, "the first positive click is the centre click"
        y, x = points[0, :2].astype(int)
        window = np.pad(target, 1)[y:y + 3, x:x + 3]
        assert (window == 1).all(), "centre click at an interior pixel (8 neighbours inside)"


# -------------------------------------------------------------------------------------------------- sampler

def test_sampler_clicks_valid_and_deterministic():
    sample = make_sample(boxes=((10, 40, 10, 45), (5, 20, 50, 75)))
    sampler = MultiPointSampler()
    for seed in range(60):
        points, target = sampler(sample, np.random.default_rng(seed))
        assert target.dtype == np.float32 and set(np.unique(target)) <= {0.0, 1.0}
        check_clicks(points, target)
    a = sampler(sample, np.random.default_rng(7))
    b = sampler(sample, np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_click_count_distributions_follow_gamma_powers():
    sample = make_sample()               # one object, every negative region non-empty -> counts are exact
    sampler = MultiPointSampler()
    rng = np.random.default_rng(0)
    n_draws = 3000
    pos, neg = np.zeros(N + 1), np.zeros(N + 1)
    for _ in range(n_draws):
        points, _ = sampler(sample, rng)
        pos[int((points[:N, 2] >= 0).sum())] += 1
        neg[int((points[N:, 2] >= 0).sum())] += 1
    expected_pos = np.concatenate([[0], click_count_probs(N, 0.8)])        # 1 + i positives
    expected_neg = click_count_probs(N + 1, 0.8)                            # i negatives
    assert pos[0] == 0
    for hist, expected in ((pos / n_draws, expected_pos), (neg / n_draws, expected_neg)):
        assert 0.5 * np.abs(hist - expected).sum() < 0.05                    # total variation
        np.testing.assert_allclose(hist[:3], expected[:3], atol=0.03)
    np.testing.assert_allclose(click_count_probs(3, 0.8), np.array([1, 0.8, 0.64]) / 2.44)


def test_merge_probability_and_merged_target():
    sample = make_sample(boxes=((5, 25, 5, 30), (35, 55, 45, 75)))
    sampler = MultiPointSampler()
    rng = np.random.default_rng(1)
    merged = 0
    for _ in range(1500):
        points, target = sampler(sample, rng)
        both = target[15, 15] == 1 and target[45, 60] == 1
        merged += both
        assert (points[:N, 2] == 0).sum() == (2 if both else 1)           # one centre click per merged object
        check_clicks(points, target)
    assert abs(merged / 1500 - 0.15) < 0.03


def test_negative_regions_and_erosion():
    sample = make_sample(boxes=((10, 40, 10, 45), (45, 55, 60, 75)))
    sampler = MultiPointSampler(merge_objects_prob=0.0)
    target, positives, neg = sampler.select(sample, np.random.default_rng(3))
    binary = target > 0
    iters = math.ceil(0.1 * math.sqrt(binary.sum()))
    ring = ndimage.binary_dilation(binary, np.ones((3, 3)), iterations=iters) & ~binary
    np.testing.assert_array_equal(neg["border"], ring)
    np.testing.assert_array_equal(neg["bg"], ~binary)
    np.testing.assert_array_equal(neg["other"], (sample.layers[:, :, 0] > 0) & ~binary)   # the other object
    eroded = ndimage.binary_erosion(binary, np.ones((3, 3)), iterations=3, border_value=1)
    assert np.array_equal(positives[0], eroded) or np.array_equal(positives[0], binary)
    single = make_sample()
    _, _, neg1 = sampler.select(single, np.random.default_rng(0))
    np.testing.assert_array_equal(neg1["other"], neg1["bg"])           # nothing else selected: other = bg


def test_background_only_sample():
    sample = make_sample(boxes=())
    points, target = MultiPointSampler()(sample, np.random.default_rng(0))
    assert not target.any() and (points[:N] == -1).all()
    check_clicks(points, target)


def test_first_click_candidates_exact_edt():
    mask = np.zeros((30, 40), bool)
    mask[3:27, 5:22] = True
    mask[10:20, 22:38] = True
    dt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].astype(np.float32)
    expected = np.argwhere(dt > dt.max() / np.float32(1.7))
    np.testing.assert_array_equal(first_click_candidates(mask), expected)


def test_ignore_label_is_kept_in_target():
    sample = make_sample(boxes=((10, 40, 10, 45), (20, 30, 50, 60)))
    sample.objects.pop(1)
    sample.ignore = [(0, 2)]
    points, target = MultiPointSampler()(sample, np.random.default_rng(0))
    assert (target[20:30, 50:60] == -1).all() and target.max() == 1
    check_clicks(points, target)


# ------------------------------------------------------------------------------------------------ augment

def coloured(layers):
    """Image whose colour encodes the layer label, to test image/mask alignment."""
    palette = np.array([[0, 0, 0], [250, 40, 0], [0, 200, 60], [30, 60, 240]], np.uint8)
    return palette[layers[:, :, 0]], palette


@pytest.mark.parametrize("scale_range", [(1.0, 1.0), (0.75, 1.40)])
def test_augmentations_keep_image_mask_alignment(scale_range):
    sample = make_sample(boxes=((10, 40, 10, 45), (30, 58, 40, 78), (0, 12, 60, 80)))
    image, palette = coloured(sample.layers)
    aug = Augmenter((48, 64), train=True, scale_range=scale_range, brightness_contrast_prob=0, rgb_shift_prob=0)
    for seed in range(20):
        out_image, out_layers = aug(image, sample.layers, np.random.default_rng(seed))
        assert out_image.shape == (48, 64, 3) and out_layers.shape == (48, 64, 1)
        labels = out_layers[:, :, 0]
        expected = palette[labels].astype(int)
        if scale_range == (1.0, 1.0):
            np.testing.assert_array_equal(out_image, expected)
        else:   # linear (image) vs nearest (labels) differ by < 1 px at label edges (also the crop frame)
            flat = ndimage.minimum_filter(labels, 5) == ndimage.maximum_filter(labels, 5)
            flat[:2], flat[-2:], flat[:, :2], flat[:, -2:] = False, False, False, False
            assert flat.mean() > 0.5 and np.abs(out_image.astype(int) - expected)[flat].max() <= 2


def test_augment_params_follow_official_rules():
    aug = Augmenter((50, 60), train=True)
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = aug.sample_params(rng, 30, 45)
        h, w = p["resize"]
        assert 0.75 * 30 - 1 <= h <= 1.4 * 30 + 1 and 0.75 * 45 - 1 <= w <= 1.4 * 45 + 1
        top, bottom, left, right = p["pad"]
        assert (top, left) == (max(50 - h, 0) // 2, max(60 - w, 0) // 2)
        assert top + bottom == max(50 - h, 0) and left + right == max(60 - w, 0)
        y, x = p["crop"]
        assert 0 <= y <= top + bottom + h - 50 and 0 <= x <= left + right + w - 60
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    layers = np.zeros((16, 16, 1), np.uint8)
    params = {"pad": (0, 0, 0, 0), "crop": (0, 0), "contrast": 1.3, "brightness": -0.1,
              "rgb_shift": (5.5, -7.25, 0.0)}
    out, _ = Augmenter((16, 16), train=True).apply(image, layers, params)
    x = np.arange(256, dtype=np.float32).reshape(16, 16)
    bc = np.clip(x * np.float32(1.3) + np.float32(-0.1 * 255), 0, 255).astype(np.uint8).astype(np.float32)
    for c, shift in enumerate(params["rgb_shift"]):
        np.testing.assert_array_equal(out[:, :, c], np.clip(bc + np.float32(shift), 0, 255).astype(np.uint8))


def test_validation_augment_is_pad_and_crop():
    sample = make_sample(40, 50)
    aug = Augmenter((48, 40), train=False)
    p = aug.sample_params(np.random.default_rng(0), 40, 50)
    assert set(p) == {"pad", "crop"} and p["pad"] == (4, 4, 0, 0)
    out, layers = aug.apply(sample.image, sample.layers, p)
    y, x = p["crop"]
    np.testing.assert_array_equal(out[4:44], sample.image[:, x:x + 40])
    assert (out[:4] == 0).all() and (layers[:4] == 0).all()


def test_remove_small_objects_reparents_children():
    # areas 1600, 42, 100, 4; object 2 is a child of 1, itself a child of 0
    sample = make_sample(boxes=((0, 40, 0, 40), (0, 6, 50, 57), (20, 30, 20, 30), (50, 52, 70, 72)),
                         parents={1: 0, 2: 1})
    sample.remove_small_objects(50)
    assert sorted(sample.objects) == [0, 2]          # objects 1 and 3 removed
    assert sample.objects[2]["parent"] == 0 and sample.objects[0]["children"] == [2]
    assert sample.root_objects == [0]


def test_augment_sample_retries_until_an_object_survives():
    sample = make_sample(100, 100, boxes=((0, 12, 0, 12),))        # object in a corner, often cropped away
    sample.layers[90:95, 90:95, 0] = 9                               # unknown label -> zeroed
    aug = Augmenter((40, 40), train=True)
    for seed in range(10):
        out = augment_sample(sample, aug, np.random.default_rng(seed), keep_background_prob=0.0)
        assert len(out) == 1 and out.objects[0]["area"] > 0
        assert not (out.layers == 9).any()
    assert (sample.layers == 9).any(), "the source sample is not modified"


# ------------------------------------------------------------------------------------------------ pipeline

@pytest.fixture(scope="module")
def sbd_builder(tmp_path_factory):
    from fcfi_jax.data.tfds_builders import prepare_builder
    root = synthetic.write_sbd_folder(tmp_path_factory.mktemp("syn"), num_train=6, num_val=3, image_size=(48, 64))
    return prepare_builder("sbd_fcfi", root, tmp_path_factory.mktemp("tfds"))


def take(ds, n):
    it = ds.as_numpy_iterator()
    return [next(it) for _ in range(n)]


def test_pipeline_shapes_clicks_and_determinism(sbd_builder):
    from fcfi_jax.data.pipeline import make_train_dataset
    kw = dict(crop_size=(40, 56), batch_size=4, num_parallel_calls=2)
    ds, info = make_train_dataset(sbd_builder, "train", seed=5, return_info=True, **kw)
    assert info["steps_per_epoch"] == 1 and info["epoch_len"] == 6 and not info["weighted"]
    batches = take(ds, 3)
    for batch in batches:
        assert batch["images"].shape == (4, 40, 56, 3) and batch["images"].dtype == np.float32
        assert batch["points"].shape == (4, 48, 3) and batch["points"].dtype == np.float32
        assert batch["instances"].shape == (4, 40, 56, 1) and batch["instances"].dtype == np.float32
        assert 0 <= batch["images"].min() and batch["images"].max() <= 1
        for points, target in zip(batch["points"], batch["instances"][..., 0]):
            check_clicks(points, target)
    again = take(make_train_dataset(sbd_builder.data_dir, "train", seed=5, **kw), 3)     # from its directory
    other = take(make_train_dataset(sbd_builder, "train", seed=6, **kw), 1)
    for a, b in zip(batches, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(batches[0]["images"], other[0]["images"])
    resumed = take(make_train_dataset(sbd_builder, "train", seed=5, start_epoch=2, **kw), 1)
    np.testing.assert_array_equal(resumed[0]["points"], batches[2]["points"])
    mid = take(make_train_dataset(sbd_builder, "train", seed=5, start_step=1, **kw), 2)  # resume at a step
    for a, b in zip(mid, batches[1:]):
        np.testing.assert_array_equal(a["images"], b["images"])


def test_pipeline_host_sharding_and_global_batch(sbd_builder):
    from fcfi_jax.data.pipeline import make_train_dataset
    from fcfi_jax.distributed import to_global_batch
    kw = dict(crop_size=(32, 32), batch_size=4, seed=1, train=False, num_epochs=1, num_parallel_calls=2)
    whole = take(make_train_dataset(sbd_builder, "val", **kw), 1)[0]
    parts = [take(make_train_dataset(sbd_builder, "val", process_index=i, process_count=2, **kw), 1)[0]
             for i in range(2)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    for points, target in zip(whole["points"], whole["instances"][..., 0]):
        check_clicks(points, target)   # min_object_area after the crop can leave background-only samples
    glob = to_global_batch(whole)
    assert glob["images"].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(glob["points"]), whole["points"])


def test_pipeline_weighted_indices_and_errors(sbd_builder, tmp_path):
    from fcfi_jax.data.pipeline import SampleLoader, make_train_dataset
    scores = [0.0, 0.5, 0.9, 0.99]
    loader = SampleLoader([None] * 4, seed=0, epoch_len=None, augmenter=None, sampler=None, min_object_area=0,
                          keep_background_prob=0, stuff_prob=0, scores=scores)
    counts = np.bincount(np.concatenate([loader.epoch_indices(e) for e in range(3000)]), minlength=4)
    expected = (1 - np.array(scores)) ** 1.25
    np.testing.assert_allclose(counts / counts.sum(), expected / expected.sum(), atol=0.01)
    perm = SampleLoader([None] * 5, seed=0, epoch_len=None, augmenter=None, sampler=None, min_object_area=0,
                        keep_background_prob=0, stuff_prob=0)
    assert sorted(perm.epoch_indices(0)) == list(range(5))          # no scores, no epoch_len: a permutation
    with pytest.raises(ValueError, match="shorter than one global batch"):
        make_train_dataset(sbd_builder, "train", batch_size=8)
    with pytest.raises(ValueError, match="not divisible"):
        make_train_dataset(sbd_builder, "train", batch_size=3, process_count=2, process_index=0)
    with pytest.raises(FileNotFoundError, match="dataset_info.json"):
        make_train_dataset(tmp_path, "train")
