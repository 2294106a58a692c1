"""Dataset readers: real GrabCut/Berkeley copies, generated DAVIS/COCO_MVal/SBD/PascalVOC folders, bad inputs."""
import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from fcfi_jax.data.readers import Sample, get_dataset, grabcut_mask

# ------------------------------------------------------------------------------------------------ helpers

def voc_palette():
    """The PASCAL VOC / DAVIS colour map (index 255 -> (224, 224, 192))."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def write_palette_png(path, index, palette):
    """Minimal 8-bit palette PNG writer (cv2 cannot write palette PNGs; no Pillow needed)."""
    h, w = index.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + index[r].astype(np.uint8).tobytes() for r in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
                     + chunk(b"PLTE", palette.astype(np.uint8).tobytes()) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def rgb_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_rgb_png(path, rgb):
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])


def listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


# ------------------------------------------------------------------------------------------------ GrabCut

@pytest.fixture(scope="module")
def grabcut(data_dir):
    return get_dataset("GrabCut", data_dir / "GrabCut")


def test_grabcut_all_samples(grabcut, data_dir, fixtures_dir):
    official = json.loads((fixtures_dir / "eval_grabcut_hrnet18s_random.json").read_text())["per_image"]
    assert len(grabcut) == 50
    assert grabcut.names == [p["image_name"] for p in official]   # official (sorted file name) order
    n_with_ignore = 0
    for i, ref in enumerate(official):
        s = grabcut[i]
        assert isinstance(s, Sample) and s.name == ref["image_name"]
        assert s.image.dtype == np.uint8 and s.image.shape == (*ref["image_hw"], 3)
        assert s.gt.dtype == np.int32 and s.gt.shape == tuple(ref["image_hw"])
        assert set(np.unique(s.gt)) <= {-1, 0, 1} and (s.gt == 1).any()
        n_with_ignore += bool((s.gt == -1).any())
    assert n_with_ignore == 42   # data README: 42 of 50 masks have the 128 band
    s = grabcut[grabcut.names.index("banana1")]
    assert s.image.shape == (480, 640, 3)
    bgr = cv2.imread(str(data_dir / "GrabCut" / "data_GT" / "banana1.bmp"))
    np.testing.assert_array_equal(s.image, bgr[:, :, ::-1])   # BGR -> RGB


def test_grabcut_matches_official_golden_arrays(grabcut, fixtures_dir):
    """image_rgb / gt_mask recorded from the official loader on banana1 (native and a 333x417 crop)."""
    s = grabcut[grabcut.names.index("banana1")]
    for name, (r, c) in [("golden_hrnet18s_native.npz", (0, 0)), ("golden_hrnet18s_crop333x417.npz", (60, 108))]:
        z = np.load(fixtures_dir / name)
        h, w = z["gt_mask"].shape
        np.testing.assert_array_equal(s.gt[r:r + h, c:c + w], z["gt_mask"])
        np.testing.assert_array_equal(s.image[r:r + h, c:c + w], z["image_rgb"])


def test_grabcut_mask_rule_quirk():
    """128 -> ignore, > 128 -> object, and raw 1 is object too (official in-place remap, then mask == 1)."""
    raw = np.array([[0, 1, 2, 127, 128, 129, 200, 255]], np.uint8)
    np.testing.assert_array_equal(grabcut_mask(raw), [[0, 1, 0, 0, -1, 1, 1, 1]])


# ------------------------------------------------------------------------------------------------ Berkeley

def test_berkeley_ritm_layout(data_dir):
    ds = get_dataset("Berkeley", data_dir / "Berkeley")
    assert len(ds) == 100 and ds.names == sorted(ds.names)
    # two instances of one picture: byte-identical image copies, each with its own mask
    a, b, base = (ds[ds.names.index(n)] for n in ("189011a", "189011b", "189011"))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.image, base.image)
    assert not np.array_equal(a.gt, b.gt) and not np.array_equal(a.gt, base.gt)
    # stray-pixel masks: channel 0 (BGR blue) of the colour read, > 128 -> object
    for name in ("8023", "101087", "163014", "376043"):
        raw = cv2.imread(str(data_dir / "Berkeley" / "masks" / f"{name}.png"))
        gt = ds[ds.names.index(name)].gt
        np.testing.assert_array_equal(gt, (raw[:, :, 0] > 128).astype(np.int32))
        assert set(np.unique(gt)) == {0, 1}
    raw = cv2.imread(str(data_dir / "Berkeley" / "masks" / "8023.png"))[:, :, 0]
    assert {197, 243} <= set(np.unique(raw).tolist())   # stray values become object


def test_berkeley_official_layout_preferred(tmp_path, data_dir):
    src = data_dir / "Berkeley"
    for sub in ("images-f-BRS/test", "masks-f-BRS/test", "images", "masks"):
        (tmp_path / sub).mkdir(parents=True)
    for stem in ("12003", "189011a"):
        (tmp_path / "images-f-BRS/test" / f"{stem}.jpg").write_bytes((src / "images" / f"{stem}.jpg").read_bytes())
        (tmp_path / "masks-f-BRS/test" / f"{stem}.png").write_bytes((src / "masks" / f"{stem}.png").read_bytes())
    ds = get_dataset("Berkeley", tmp_path)   # RITM folders empty: the FCFI layout wins
    assert ds.names == ["12003", "189011a"]
    ref = get_dataset("Berkeley", src)
    np.testing.assert_array_equal(ds[1].gt, ref[ref.names.index("189011a")].gt)


# ------------------------------------------------------------------------------------------------ DAVIS / COCO_MVal

@pytest.mark.parametrize("name", ["DAVIS", "COCO_MVal"])
def test_davis_palette_masks(tmp_path, name):
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    ids = np.zeros((6, 8), np.uint8)
    ids[1, 1:3], ids[2, 2:5], ids[3, 5:7], ids[4, :] = 1, 2, 3, 255   # objects 1..3, void 255
    pal = voc_palette()
    write_palette_png(tmp_path / "gt" / "b.png", ids, pal)
    black_void = pal.copy()
    black_void[255] = 0
    write_palette_png(tmp_path / "gt" / "a.png", ids, black_void)
    binary = np.zeros((6, 8), np.uint8)
    binary[2:4, 2:4] = 255
    cv2.imwrite(str(tmp_path / "gt" / "c.png"), binary)
    images = {s: rgb_image(6, 8, i) for i, s in enumerate("abc")}
    for s, im in images.items():
        write_rgb_png(tmp_path / "img" / f"{s}.png", im)

    ds = get_dataset(name, tmp_path)
    assert ds.name == name and ds.names == ["a", "b", "c"]
    a, b, c = ds
    np.testing.assert_array_equal(b.image, images["b"])
    # official: colour read, any non-black channel -> object: ids merged, void (224,224,192) -> OBJECT
    np.testing.assert_array_equal(b.gt, (ids > 0).astype(np.int32))
    np.testing.assert_array_equal(a.gt, ((ids > 0) & (ids < 255)).astype(np.int32))   # black void -> background
    np.testing.assert_array_equal(c.gt, (binary > 0).astype(np.int32))
    assert all(s.gt.dtype == np.int32 and -1 not in s.gt for s in ds)


# ------------------------------------------------------------------------------------------------ SBD

def write_sbd(root, masks, split="val"):
    (root / "img").mkdir(parents=True)
    (root / "inst").mkdir()
    for i, (name, inst) in enumerate(masks.items()):
        cv2.imwrite(str(root / "img" / f"{name}.jpg"), rgb_image(*inst.shape, i))
        savemat(str(root / "inst" / f"{name}.mat"),
                {"GTinst": {"Segmentation": inst.astype(np.uint8), "Boundaries": np.zeros((1, 1)),
                            "Categories": np.arange(1, inst.max() + 1)[:, None]}})
    (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in masks))


def test_sbd_one_sample_per_instance(tmp_path):
    inst_a = np.zeros((5, 7), np.uint8)
    inst_a[0:2, 0:2], inst_a[3:5, 4:7] = 3, 1   # ids 1 and 3 (no 2)
    inst_b = np.zeros((4, 4), np.uint8)
    inst_b[1:3, 1:3] = 2
    write_sbd(tmp_path, {"2008_000002": inst_a, "2008_000001": inst_b})
    before = listing(tmp_path)
    ds = get_dataset("SBD", tmp_path)
    assert ds.names == ["2008_000002#  1", "2008_000002#  3", "2008_000001#  2"]   # list order, ids ascending
    for s, (inst, k) in zip(ds, [(inst_a, 1), (inst_a, 3), (inst_b, 2)]):
        np.testing.assert_array_equal(s.gt, (inst == k).astype(np.int32))
        assert s.image.shape == (*inst.shape, 3) and s.image.dtype == np.uint8
    assert listing(tmp_path) == before   # no cache written into the dataset


def test_sbd_train_split(tmp_path):
    inst = np.zeros((3, 3), np.uint8)
    inst[1, 1] = 4
    write_sbd(tmp_path, {"x": inst}, split="train")
    assert get_dataset("SBD_Train", tmp_path).names == ["x#  4"]
    with pytest.raises(FileNotFoundError, match="val.txt"):
        get_dataset("SBD", tmp_path)


# ------------------------------------------------------------------------------------------------ PascalVOC

def write_voc(root, labels, folder="SegmentationObjectLabel", palette=False):
    for sub in ("JPEGImages", folder, "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, (name, lab) in enumerate(labels.items()):
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), rgb_image(*lab.shape, i))
        if palette:
            write_palette_png(root / folder / f"{name}.png", lab, voc_palette())
        else:
            cv2.imwrite(str(root / folder / f"{name}.png"), lab)
    (root / "ImageSets/Segmentation/val.txt").write_text("".join(f"{n}\n" for n in labels))


def voc_label():
    lab = np.zeros((6, 6), np.uint8)
    lab[0:2, 0:3], lab[3:6, 3:6] = 2, 1
    lab[2, :] = 255   # void boundary
    return lab


def test_pascalvoc_label_layout(tmp_path):
    lab = voc_label()
    write_voc(tmp_path, {"2007_000033": lab})
    before = listing(tmp_path)
    ds = get_dataset("PascalVOC", tmp_path)
    assert ds.names == ["2007_000033#  1", "2007_000033#  2"]
    for s, k in zip(ds, (1, 2)):
        expect = (lab == k).astype(np.int32)
        expect[lab == 255] = -1
        np.testing.assert_array_equal(s.gt, expect)
    assert listing(tmp_path) == before


def test_pascalvoc_palette_segmentation_object(tmp_path):
    pytest.importorskip("PIL")
    lab = voc_label()
    write_voc(tmp_path, {"a": lab}, folder="SegmentationObject", palette=True)
    ds = get_dataset("PascalVOC", tmp_path)
    assert ds.names == ["a#  1", "a#  2"]
    assert (ds[1].gt == 1).sum() == 6 and (ds[1].gt == -1).sum() == 6


# ------------------------------------------------------------------------------------------------ bad inputs

def make_pairs(root, images_sub, masks_sub, stems):
    (root / images_sub).mkdir(parents=True)
    (root / masks_sub).mkdir(parents=True)
    for s in stems:
        write_rgb_png(root / images_sub / f"{s}.png", rgb_image(4, 4, 0))
        cv2.imwrite(str(root / masks_sub / f"{s}.png"), np.zeros((4, 4), np.uint8))


def test_missing_root_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="GrabCut.*dataset root not found"):
        get_dataset("GrabCut", tmp_path / "nope")
    (tmp_path / "data_GT").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("GrabCut", tmp_path)
    msg = str(err.value)
    assert "GrabCut" in msg and str(tmp_path / "boundary_GT") in msg and "expected layout" in msg
    with pytest.raises(FileNotFoundError, match="images-f-BRS/test"):
        get_dataset("Berkeley", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("ImageNet", tmp_path)


def test_corrupt_image(tmp_path):
    make_pairs(tmp_path, "img", "gt", ["a", "b"])
    bad = tmp_path / "img" / "b.png"
    bad.write_bytes(b"definitely not a png")
    ds = get_dataset("DAVIS", tmp_path)   # listing does not read pixels
    assert ds[0].gt.shape == (4, 4)
    with pytest.raises(ValueError, match=f"cannot read image {bad}: not a valid image file"):
        ds[1]


def test_unpaired_files(tmp_path):
    make_pairs(tmp_path, "data_GT", "boundary_GT", ["a"])
    cv2.imwrite(str(tmp_path / "boundary_GT" / "orphan.bmp"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="mask without image: .*orphan.bmp"):
        get_dataset("GrabCut", tmp_path)
    (tmp_path / "boundary_GT" / "orphan.bmp").unlink()
    write_rgb_png(tmp_path / "data_GT" / "lonely.png", rgb_image(4, 4, 1))
    with pytest.raises(ValueError, match="image without mask: .*lonely.png"):
        get_dataset("GrabCut", tmp_path)


def test_size_mismatch_and_sbd_missing_mat(tmp_path):
    make_pairs(tmp_path / "d", "img", "gt", ["a"])
    cv2.imwrite(str(tmp_path / "d" / "gt" / "a.png"), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="sizes differ"):
        get_dataset("DAVIS", tmp_path / "d")[0]
    inst = np.ones((3, 3), np.uint8)
    write_sbd(tmp_path / "s", {"x": inst})
    (tmp_path / "s" / "inst" / "x.mat").unlink()
    with pytest.raises(ValueError, match="x.mat"):
        get_dataset("SBD", tmp_path / "s")
