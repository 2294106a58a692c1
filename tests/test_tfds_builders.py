"""TFDS builders on small generated folders: SBD (synthetic), RITM COCO+LVIS, evaluation (GrabCut); errors."""
import json
import logging
import os
import pickle

import cv2
import numpy as np
import pytest
from scipy.io import loadmat

from fcfi_jax.data import readers, synthetic
from fcfi_jax.data.pipeline import record_to_sample
from fcfi_jax.data.tfds_builders import (
    SBD_WEIGHTS_FILE,
    UnsafePickleError,
    prepare_builder,
    safe_pickle_load,
    sbd_objects,
)


@pytest.fixture(scope="module")
def sbd_folder(tmp_path_factory):
    return synthetic.write_sbd_folder(tmp_path_factory.mktemp("sbd"), num_train=5, num_val=3,
                                      image_size=(48, 64), seed=3)


def test_sbd_builder_reads_the_layout(sbd_folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        builder = prepare_builder("sbd_fcfi", sbd_folder, tmp_path / "tfds")
    assert "dataset_info.json" not in caplog.text   # a first build is no broken dataset: TFDS's warning stays out
    assert {s: builder.info.splits[s].num_examples for s in ("train", "val")} == {"train": 5, "val": 3}
    assert builder.info.metadata["sample_scores"] == {}          # no weights file: uniform, and said so
    source = builder.as_data_source("train")
    names = (sbd_folder / "train.txt").read_text().split()
    for i, name in enumerate(names):                              # list order is kept (shuffling disabled)
        rec = source[i]
        assert rec["name"].decode() == name
        inst = loadmat(str(sbd_folder / "inst" / f"{name}.mat"))["GTinst"][0][0][0]
        assert len(rec["layers"]) == 1 and np.array_equal(rec["layers"][0][:, :, 0], inst)
        np.testing.assert_array_equal(rec["image"], readers.read_image(sbd_folder / "img" / f"{name}.jpg"))
        objects = json.loads(rec["objects"])["objects"]
        assert [o["id"] for o in objects] == sorted(set(np.unique(inst)) - {0})
        assert objects == sbd_objects(inst)
        for o in objects:
            assert o["area"] == int((inst == o["id"]).sum()) and o["parent"] is None and not o["stuff"]


def test_sbd_buggy_mask_filter_at_read_time():
    inst = np.zeros((40, 40), np.uint8)
    inst[5:15, 5:15] = 1                                          # solid square: kept
    idx = np.arange(40)
    inst[idx, idx] = 2                                            # thin diagonal: area/bbox = 40/1600 < 0.08
    objects = sbd_objects(inst)
    assert objects[1]["area"] / objects[1]["bbox_area"] < 0.08
    ok, jpg = cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))
    record = {"image": jpg.tobytes(), "layers": [inst[:, :, None]], "name": b"x",
              "objects": json.dumps({"objects": objects, "ignore": []})}
    sample = record_to_sample(record, np.random.default_rng(0))
    assert list(sample.objects) == [1] and not (sample.layers == 2).any()      # erased -> background
    assert len(record_to_sample(record, np.random.default_rng(0), buggy_mask_thresh=0.0)) == 2


def test_sbd_sample_weights_file(tmp_path):
    root = synthetic.write_sbd_folder(tmp_path / "sbd", num_train=4, num_val=1, image_size=(48, 64))
    names = (root / "train.txt").read_text().split()
    (root / "assets").mkdir()
    # the official file: (index, name, numpy float32 score) tuples
    entries = [(i, n, np.float32(0.1 * i)) for i, n in reversed(list(enumerate(names)))]
    (root / "assets" / SBD_WEIGHTS_FILE).write_bytes(pickle.dumps(entries))
    builder = prepare_builder("sbd_fcfi", root, tmp_path / "tfds")
    np.testing.assert_allclose(builder.info.metadata["sample_scores"]["train"], [0.1 * i for i in range(4)],
                               rtol=1e-6)
    (root / "assets" / SBD_WEIGHTS_FILE).write_bytes(pickle.dumps(entries[:2]))
    with pytest.raises(ValueError, match="no score for 2 train images"):
        prepare_builder("sbd_fcfi", root, tmp_path / "tfds2")


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        prepare_builder("sbd_fcfi", tmp_path / "nowhere", tmp_path / "tfds")
    (tmp_path / "sbd" / "img").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"folder not found: .*sbd/inst"):
        prepare_builder("sbd_fcfi", tmp_path / "sbd", tmp_path / "tfds")
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"file not found: .*coco/train/hannotation.pickle"):
        prepare_builder("cocolvis_fcfi", tmp_path / "coco", tmp_path / "tfds")
    (tmp_path / "grabcut" / "data_GT").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"folder not found: .*grabcut/boundary_GT"):
        prepare_builder("interactive_eval", tmp_path / "grabcut", tmp_path / "tfds", config="GrabCut")
    with pytest.raises(ValueError, match="config"):
        prepare_builder("interactive_eval", tmp_path / "grabcut", tmp_path / "tfds")


def test_empty_manual_dir_is_named_through_tfds(tmp_path):
    import tensorflow_datasets as tfds

    from fcfi_jax.data.tfds_builders import SbdFcfi
    (tmp_path / "empty").mkdir()
    builder = SbdFcfi(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    with pytest.raises(FileNotFoundError, match=r"manual_dir not found or empty: .*empty"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "empty")))


# ---------------------------------------------------------------------------------------------- COCO+LVIS

def _write_ritm_coco(root, images_dir="train2017"):
    """Two images in RITM's format: layered PNG masks (cv2.imencode arrays), hierarchy, one stuff region."""
    rng = np.random.default_rng(0)
    (root / images_dir).mkdir(parents=True)
    (root / "train" / "masks").mkdir(parents=True)
    layer0 = np.zeros((40, 50), np.uint8)
    layer0[5:35, 5:30] = 1                  # instance 0: parent
    layer0[30:40, 35:50] = 2                # instance 2: stuff
    layer1 = np.zeros((40, 50), np.uint8)
    layer1[10:20, 10:20] = 1                # instance 1: child of 0 (overlaps -> other layer)
    layers = [cv2.imencode(".png", layer0)[1], cv2.imencode(".png", layer1)[1]]
    masks = {"000000000001": (layers, [(0, 1), (1, 1), (0, 2)]),
             "000000000002": ([cv2.imencode(".png", layer0)[1]], [(0, 1)])}
    annotation = {
        "000000000001": {"num_instance_masks": 2, "hierarchy": {
            0: {"children": [1], "parent": None, "node_level": 0},
            1: {"children": [], "parent": 0, "node_level": 1}}},
        "000000000002": {"num_instance_masks": 1, "hierarchy": {0: None}},
    }
    for image_id, content in masks.items():
        cv2.imwrite(str(root / images_dir / f"{image_id}.jpg"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        (root / "train" / "masks" / f"{image_id}.pickle").write_bytes(pickle.dumps(content))
    (root / "train" / "hannotation.pickle").write_bytes(pickle.dumps(annotation, protocol=pickle.HIGHEST_PROTOCOL))
    return layer0, layer1


@pytest.mark.parametrize("images_dir", ["train2017", "train/images"])
def test_cocolvis_builder(tmp_path, images_dir):
    layer0, layer1 = _write_ritm_coco(tmp_path / "coco", images_dir)
    builder = prepare_builder("cocolvis_fcfi", tmp_path / "coco", tmp_path / "tfds")
    assert list(builder.info.splits) == ["train"]                 # val/ absent: train only
    source = builder.as_data_source("train")
    rec = source[0]
    assert rec["name"] == b"000000000001"
    np.testing.assert_array_equal(rec["layers"][0][:, :, 0], layer0)
    np.testing.assert_array_equal(rec["layers"][1][:, :, 0], layer1)
    objects = json.loads(rec["objects"])["objects"]
    assert [(o["id"], o["layer"], o["value"], o["parent"], o["children"], o["stuff"]) for o in objects] == [
        (0, 0, 1, None, [1], False), (1, 1, 1, 0, [], False), (2, 0, 2, None, [], True)]
    with_stuff = record_to_sample(rec, np.random.default_rng(0), stuff_prob=1.0)
    assert sorted(with_stuff.objects) == [0, 1, 2] and with_stuff.root_objects == [0, 2]
    without = record_to_sample(rec, np.random.default_rng(0), stuff_prob=0.0)
    assert sorted(without.objects) == [0, 1] and not (without.layers[:, :, 0] == 2).any()   # stuff erased
    assert json.loads(source[1]["objects"])["objects"][0]["parent"] is None              # hierarchy None node


def test_restricted_unpickler(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    bad = tmp_path / "hannotation.pickle"
    bad.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(UnsafePickleError, match="refusing to load .*system"):
        safe_pickle_load(bad)
    assert not marker.exists()
    obj = tmp_path / "obj.pickle"
    obj.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(UnsafePickleError, match="numeric"):
        safe_pickle_load(obj)
    # numeric numpy arrays and scalars in every protocol (protocol 2 stores bytes via _codecs.encode)
    data = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "f": np.asfortranarray(np.eye(3)),
            "s": np.float32(0.25), "t": (1, "x", b"y", None, [2.5])}
    for protocol in (2, 3, 4, 5):
        good = tmp_path / f"good{protocol}.pickle"
        good.write_bytes(pickle.dumps(data, protocol=protocol))
        out = safe_pickle_load(good)
        for key in ("a", "f"):
            np.testing.assert_array_equal(out[key], data[key])
            assert out[key].dtype == data[key].dtype
        assert out["s"] == np.float32(0.25) and out["t"] == data["t"]
    with pytest.raises(UnsafePickleError, match="not a readable pickle"):
        (tmp_path / "junk.pickle").write_bytes(b"not a pickle")
        safe_pickle_load(tmp_path / "junk.pickle")


# --------------------------------------------------------------------------------------------- evaluation

@pytest.mark.parametrize("name", ["GrabCut", "Berkeley"])
def test_interactive_eval(data_dir, tmp_path, name):
    builder = prepare_builder("interactive_eval", data_dir / name, tmp_path / "tfds", config=name,
                              max_examples_per_split=2)
    source = builder.as_data_source("test")
    assert len(source) == 2
    reference = readers.get_dataset(name, data_dir / name)
    for i in range(2):
        rec, ref = source[i], reference[i]
        assert rec["name"].decode() == ref.name
        np.testing.assert_array_equal(rec["image"], ref.image)
        expected = np.where(ref.gt < 0, 255, ref.gt).astype(np.uint8)
        np.testing.assert_array_equal(rec["mask"][:, :, 0], expected)


def test_prepare_synthetic_sbd_reuses_and_rebuilds(tmp_path):
    kw = dict(num_train=3, num_val=1, image_size=(40, 48))
    builder = synthetic.prepare_synthetic_sbd(tmp_path / "syn", tmp_path / "tfds", **kw)
    assert builder.info.splits["train"].num_examples == 3
    stamp = (tmp_path / "syn" / "img" / "syn_000000.jpg").stat().st_mtime_ns
    synthetic.prepare_synthetic_sbd(tmp_path / "syn", tmp_path / "tfds", **kw)          # same kwargs: reused
    assert (tmp_path / "syn" / "img" / "syn_000000.jpg").stat().st_mtime_ns == stamp
    builder = synthetic.prepare_synthetic_sbd(tmp_path / "syn", tmp_path / "tfds", **dict(kw, num_train=4))
    assert builder.info.splits["train"].num_examples == 4                                  # rewritten, rebuilt
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a synthetic dataset folder"):
        synthetic.prepare_synthetic_sbd(tmp_path / "other", tmp_path / "tfds", **kw)
