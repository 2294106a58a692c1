"""Fine-tuning on your own images: the `folder` and `coco_json` builders, the held-out split, bad-input messages,
`init_from` with a whole FCFI checkpoint, and `python -m fcfi_jax.main --config=configs/hrnet18s.py:local
--config.data.builder=folder|coco_json --config.data.manual_dir=DIR` end to end on generated folders."""
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fcfi_jax.data import own_data
from fcfi_jax.data.pipeline import record_to_sample
from fcfi_jax.data.synthetic import make_image
from fcfi_jax.data.tfds_builders import prepare_builder

REPO = Path(__file__).resolve().parents[1]


def _scenes(n, seed=0, size=(64, 96)):
    rng = np.random.default_rng(seed)
    return [make_image(rng, *size) for _ in range(n)]


def write_folder(root, n=8, seed=0, size=(64, 96)):
    """Even images: 8-bit id map; odd images: one binary PNG per object. Returns {stem: (image, instances)}."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    out = {}
    for i, (image, inst) in enumerate(_scenes(n, seed, size)):
        stem = f"img_{i:02d}"
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if i % 2 == 0:
            cv2.imwrite(str(root / "masks" / f"{stem}.png"), inst)
        else:
            (root / "masks" / stem).mkdir()
            for k in range(1, int(inst.max()) + 1):
                cv2.imwrite(str(root / "masks" / stem / f"obj{k}.png"), (inst == k).astype(np.uint8) * 255)
        out[stem] = (image, inst)
    return out


def write_coco(root, n=6, seed=1, size=(64, 96)):
    """COCO JSON: polygons (image 0), uncompressed RLE (1), compressed RLE (others), a crowd region on image 2;
    images in root/images/ except the last, which sits in root/. Returns {file_name: (image, [masks], crowd)}."""
    from pycocotools import mask as mask_utils
    root = Path(root)
    (root / "images").mkdir(parents=True)
    images, annotations, out, ann_id = [], [], {}, 1
    h, w = size
    for i, (image, inst) in enumerate(_scenes(n, seed, size)):
        name = f"pic{i}.png"
        cv2.imwrite(str((root / "images" if i < n - 1 else root) / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        images.append({"id": 100 + i, "file_name": name, "height": h, "width": w})
        masks = []
        for k in range(1, int(inst.max()) + 1):
            m = inst == k
            if i == 0:     # polygons: the mask becomes what pycocotools rasterises from the contour
                contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                seg = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
                m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
            elif i == 1:   # uncompressed RLE: column-major run lengths starting with zeros
                flat = m.T.reshape(-1).astype(np.int8)
                change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])) != 0)
                seg = {"size": [h, w], "counts": np.diff(np.concatenate([[0], change])).tolist()}
            else:
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                seg = {"size": rle["size"], "counts": rle["counts"].decode()}
            annotations.append({"id": ann_id, "image_id": 100 + i, "category_id": 1, "iscrowd": 0,
                                "segmentation": seg, "area": float(m.sum()), "bbox": [0, 0, 1, 1]})
            masks.append((ann_id, m))
            ann_id += 1
        crowd = None
        if i == 2:
            crowd = np.zeros((h, w), bool)
            crowd[:6, :10] = True
            rle = mask_utils.encode(np.asfortranarray(crowd.astype(np.uint8)))
            annotations.append({"id": ann_id, "image_id": 100 + i, "category_id": 1, "iscrowd": 1,
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
            ann_id += 1
        out[name] = (image, masks, crowd)
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": [{"id": 1, "name": "thing"}]}))
    return out


def _object_masks(record):
    layers = [np.asarray(x)[:, :, 0] for x in record["layers"]]
    meta = json.loads(record["objects"])
    masks = {o["id"]: layers[o["layer"]] == o["value"] for o in meta["objects"]}
    ignore = np.zeros(layers[0].shape, bool)
    for layer, value in meta["ignore"]:
        ignore |= layers[layer] == value
    return masks, ignore


def _expected_val(names, fraction=0.1):
    n_val = max(1, round(fraction * len(names)))
    return set(sorted(names, key=lambda n: (zlib.crc32(Path(n).stem.encode()), n))[:n_val])


# ------------------------------------------------------------------------------------------------ builders

def test_folder_builder_reads_both_mask_forms(tmp_path):
    truth = write_folder(tmp_path / "f", n=8)
    builder = prepare_builder("folder", tmp_path / "f", tmp_path / "tfds")
    held = _expected_val(list(truth))
    assert builder.info.metadata["heldout"] == sorted(held) and len(held) == 1
    assert builder.info.splits["train"].num_examples == 7 and builder.info.splits["val"].num_examples == 1
    seen = set()
    for split in ("train", "val"):
        source = builder.as_data_source(split)
        for i in range(len(source)):
            rec = source[i]
            stem = rec["name"].decode()
            seen.add(stem)
            assert (stem in held) == (split == "val")
            image, inst = truth[stem]
            # the JPEG is stored unchanged: TFDS's decode equals cv2's
            jpeg = cv2.imread(str(tmp_path / "f" / "images" / f"{stem}.jpg"))[:, :, ::-1]
            np.testing.assert_array_equal(rec["image"], jpeg)
            masks, ignore = _object_masks(rec)
            assert not ignore.any()
            assert sorted(masks) == list(range(1, int(inst.max()) + 1))
            for k, m in masks.items():
                np.testing.assert_array_equal(m, inst == k)
            sample = record_to_sample(rec, np.random.default_rng(0))   # the training reader takes it as is
            assert sorted(sample.objects) == sorted(masks)
    assert seen == set(truth)


def test_id_map_modes_and_overlapping_binary_masks(tmp_path):
    from PIL import Image
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = np.zeros((20, 30), np.uint8)
    ids[2:8, 2:8], ids[10:18, 5:25], ids[0:2, 20:30] = 1, 7, 255
    for stem in ("grey", "palette", "sixteen", "rgb", "overlap"):
        cv2.imwrite(str(root / "images" / f"{stem}.png"), np.full((20, 30, 3), 99, np.uint8))
    cv2.imwrite(str(root / "masks" / "grey.png"), ids)
    pal = Image.fromarray(ids, mode="P")
    pal.putpalette([0, 0, 0, 230, 25, 75, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60, 180, 75] + [255] * 744)
    pal.save(root / "masks" / "palette.png")                 # a "visible" id map: indices are the ids
    cv2.imwrite(str(root / "masks" / "sixteen.png"), ids.astype(np.uint16) * 200)
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[ids == 1], rgb[ids == 7] = (255, 0, 0), (0, 0, 255)
    cv2.imwrite(str(root / "masks" / "rgb.png"), rgb)
    (root / "masks" / "overlap").mkdir()
    a, b = np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8)
    a[2:12, 2:12], b[6:16, 6:16] = 255, 1
    cv2.imwrite(str(root / "masks" / "overlap" / "a.png"), a)
    cv2.imwrite(str(root / "masks" / "overlap" / "b.png"), b)
    (root / "val.txt").write_text("grey\n")
    builder = prepare_builder("folder", root, tmp_path / "tfds")
    recs = {}
    for split in ("train", "val"):
        source = builder.as_data_source(split)
        recs.update({source[i]["name"].decode(): source[i] for i in range(len(source))})
    assert builder.info.metadata["heldout"] == ["grey"]
    for stem in ("grey", "palette"):                          # 8-bit: 255 is ignore
        masks, ignore = _object_masks(recs[stem])
        assert sorted(masks) == [1, 7]
        np.testing.assert_array_equal(masks[7], ids == 7)
        np.testing.assert_array_equal(ignore, ids == 255)
    masks, ignore = _object_masks(recs["sixteen"])            # 16-bit: every value is an id
    assert sorted(masks) == [200, 1400, 51000] and not ignore.any()
    masks, _ = _object_masks(recs["rgb"])                     # colours: one object each, in colour order
    assert len(masks) == 2 and {m.sum() for m in masks.values()} == {36, 160}
    masks, _ = _object_masks(recs["overlap"])                 # overlapping objects: two layers
    assert len(recs["overlap"]["layers"]) == 2
    np.testing.assert_array_equal(masks[1], a > 0)
    np.testing.assert_array_equal(masks[2], b > 0)


def test_coco_json_builder_polygons_rle_crowd(tmp_path):
    truth = write_coco(tmp_path / "c", n=6)
    (tmp_path / "c" / "val.txt").write_text("pic3\n")         # a stem names its file
    builder = prepare_builder("coco_json", tmp_path / "c", tmp_path / "tfds")
    assert builder.info.metadata["heldout"] == ["pic3.png"]
    recs = {}
    for split in ("train", "val"):
        source = builder.as_data_source(split)
        recs.update({source[i]["name"].decode(): source[i] for i in range(len(source))})
    assert sorted(recs) == sorted(truth)
    for name, (image, masks, crowd) in truth.items():
        rec = recs[name]
        np.testing.assert_array_equal(rec["image"], image)   # PNG stored as it is (lossless)
        got, ignore = _object_masks(rec)
        assert sorted(got) == [k for k, _ in masks]
        for k, m in masks:
            np.testing.assert_array_equal(got[k], m)
        np.testing.assert_array_equal(ignore, crowd if crowd is not None else np.zeros_like(ignore))
    # the held-out split as an evaluation set: one sample per object, crowd pixels ignored
    ds = own_data.heldout_eval_dataset(builder)
    assert ds.names == [f"pic3.png#{k}" for k, _ in truth["pic3.png"][1]]
    np.testing.assert_array_equal(ds[0].gt, truth["pic3.png"][1][0][1].astype(np.int32))


def test_split_rule_and_rebuild_when_the_folder_changes(tmp_path):
    truth = write_folder(tmp_path / "f", n=12)
    b1 = prepare_builder("folder", tmp_path / "f", tmp_path / "tfds", val_fraction=0.25)
    assert set(b1.info.metadata["heldout"]) == _expected_val(list(truth), 0.25) and len(truth) == 12
    assert b1.info.splits["val"].num_examples == 3
    again = prepare_builder("folder", tmp_path / "f", tmp_path / "tfds", val_fraction=0.25)
    assert again.info.metadata["source_fingerprint"] == b1.info.metadata["source_fingerprint"]
    # adding images rebuilds; the images held out before stay held out unless the boundary moves
    more = write_folder(tmp_path / "g", n=16, seed=5)
    for stem in list(more)[12:]:
        os.replace(tmp_path / "g" / "images" / f"{stem}.jpg", tmp_path / "f" / "images" / f"{stem}.jpg")
        src = tmp_path / "g" / "masks" / (stem if (tmp_path / "g" / "masks" / stem).is_dir() else f"{stem}.png")
        os.replace(src, tmp_path / "f" / "masks" / src.name)
    b2 = prepare_builder("folder", tmp_path / "f", tmp_path / "tfds", val_fraction=0.25)
    names = [f"img_{i:02d}" for i in range(16)]
    assert set(b2.info.metadata["heldout"]) == _expected_val(names, 0.25)
    assert b2.info.splits["train"].num_examples + b2.info.splits["val"].num_examples == 16


@pytest.mark.parametrize("case,message", [
    ("empty", r"folder: no images in .*/images: expected DIR/images/"),
    ("no_masks_dir", r"folder: no folder .*/masks: expected"),
    ("size", r"folder: mask .*img_00.png is 32x48 \(HxW\) but image .*img_00.jpg is 64x96: save the mask at the "
             r"image's size"),
    ("unreadable", r"folder: cannot read image .*img_01.jpg \(not an image file cv2 can decode\): replace it or "
                   r"remove it"),
    ("unreadable_mask", r"folder: cannot read mask .*img_00.png"),
    ("no_mask", r"folder: image .*img_02.jpg has no mask: add .*masks/img_02.png \(instance ids\) or"),
    ("orphan_mask", r"folder: mask .*zzz.png has no image .*images/zzz\.\*: add the image or remove the mask"),
    ("jpeg_mask", r"folder: mask .*img_00.jpg is not a .png: save masks as PNG"),
    ("one_image", r"folder: 1 image in .*: need at least 2"),
    ("bad_val", r"folder: .*val.txt names 'nope', which is not an image of"),
])
def test_folder_bad_input_is_one_line(tmp_path, case, message):
    root = tmp_path / "f"
    if case == "empty":
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
    else:
        write_folder(root, n=1 if case == "one_image" else 4)
    if case == "no_masks_dir":
        for p in (root / "masks").rglob("*"):
            if p.is_file():
                p.unlink()
        for p in sorted((root / "masks").iterdir()):
            p.rmdir()
        (root / "masks").rmdir()
    elif case == "size":
        cv2.imwrite(str(root / "masks" / "img_00.png"), np.zeros((32, 48), np.uint8))
    elif case == "unreadable":
        (root / "images" / "img_01.jpg").write_bytes(b"not a jpeg")
    elif case == "unreadable_mask":
        (root / "masks" / "img_00.png").write_bytes(b"\x89PNG broken")
    elif case == "no_mask":
        for p in (root / "masks" / "img_02").iterdir() if (root / "masks" / "img_02").is_dir() else []:
            p.unlink()
        (root / "masks" / "img_02.png").unlink(missing_ok=True)
        if (root / "masks" / "img_02").is_dir():
            (root / "masks" / "img_02").rmdir()
    elif case == "orphan_mask":
        cv2.imwrite(str(root / "masks" / "zzz.png"), np.zeros((64, 96), np.uint8))
    elif case == "jpeg_mask":
        os.replace(root / "masks" / "img_00.png", root / "masks" / "img_00.jpg")
    elif case == "bad_val":
        (root / "val.txt").write_text("img_00\nnope\n")
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        prepare_builder("folder", root, tmp_path / "tfds")
    text = str(info.value)
    assert "\n" not in text, text
    import re
    assert re.search(message, text), text


@pytest.mark.parametrize("case,message", [
    ("missing_image", r"coco_json: image 'pic2.png' \(id 102\) of annotations.json not found in .*images or .*: "
                      r"copy it there or remove it from the JSON"),
    ("bad_image_id", r"coco_json: .*annotation 999 refers to image_id 7, which 'images' does not list"),
    ("size", r"coco_json: annotations.json gives image 'pic0.png' as 10x10 \(HxW\) but .*pic0.png is 64x96"),
    ("rle_size", r"coco_json: annotations.json annotation \d+ of 'pic4.png': RLE size 10x10 \(HxW\) differs"),
    ("no_json", r"coco_json: no annotations.json in .*: expected DIR/annotations.json"),
    ("not_json", r"coco_json: .*annotations.json is not valid JSON"),
])
def test_coco_bad_input_is_one_line(tmp_path, case, message):
    root = tmp_path / "c"
    write_coco(root, n=6)
    ann = root / "annotations.json"
    data = json.loads(ann.read_text())
    if case == "missing_image":
        (root / "images" / "pic2.png").unlink()
    elif case == "bad_image_id":
        data["annotations"].append({"id": 999, "image_id": 7, "segmentation": [[0, 0, 5, 0, 5, 5]]})
    elif case == "size":
        data["images"][0].update(height=10, width=10)
    elif case == "rle_size":
        next(a for a in data["annotations"] if a["image_id"] == 104)["segmentation"]["size"] = [10, 10]
    if case == "no_json":
        ann.unlink()
    elif case == "not_json":
        ann.write_text("{broken")
    else:
        ann.write_text(json.dumps(data))
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        prepare_builder("coco_json", root, tmp_path / "tfds")
    text = str(info.value)
    assert "\n" not in text, text
    import re
    assert re.search(message, text), text


# --------------------------------------------------------------------------------------------------- init_from

def _local_config(**overrides):
    import importlib.util
    spec = importlib.util.spec_from_file_location("hrnet18s_cfg", REPO / "configs" / "hrnet18s.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("local")
    for k, v in overrides.items():
        c[k] = v
    return c


def _params(model):
    import jax
    from flax import nnx
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))


def test_init_from_official_pth_and_converted_dir(fixtures_dir, tmp_path, capsys):
    from fcfi_jax.convert.checkpoint import convert_official, save_converted
    from fcfi_jax.training.train import model_from_config
    pth = fixtures_dir / "hrnet18s_random.pth"
    ref, _ = convert_official(pth)
    model = model_from_config(_local_config(init_from=str(pth)))
    out = capsys.readouterr().out
    assert "initialised the whole model from" in out and "architecture from the checkpoint" in out and "width=18" in out
    assert model.cfg == ref.cfg                                 # the released architecture, not :local's width 8
    for a, b in zip(_params(model), _params(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    save_converted(ref, tmp_path / "converted")
    again = model_from_config(_local_config(init_from=str(tmp_path / "converted"), init_format="fcfi"))
    for a, b in zip(_params(again), _params(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from fcfi_jax.convert.mapping import ConversionError
    with pytest.raises(ConversionError, match="is a directory .* but init_format='hrnet_imagenet'"):
        model_from_config(_local_config(init_from=str(tmp_path / "converted"), init_format="hrnet_imagenet"))


# ----------------------------------------------------------------------------------------- end to end (CLI)

SHORT = [  # the :local recipe, short: 64x96 crops, batch 4, 4 steps without simulated clicks (a smaller step to
    # compile), evaluation of 3 objects with 2 clicks at the end
    "--config=configs/hrnet18s.py:local", "--config.data.crop_size=(64,96)", "--config.batch_size=4",
    "--config.max_num_next_clicks=0",
    "--config.total_steps=4", "--config.log_every=2", "--config.checkpoint_every_steps=4",
    "--config.eval.at_start=False", "--config.eval.max_samples=3", "--config.eval.n_clicks=2",
]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_cli")
    env = dict(os.environ, FCFI_JAX_CACHE=str(root / "xla_cache"), TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    return root, env


def _main(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "fcfi_jax.main", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_main_trains_on_a_folder(cli_env):
    root, env = cli_env
    truth = write_folder(root / "mydata", n=10)
    p = _main(env, *SHORT, "--config.data.builder=folder", f"--config.data.manual_dir={root / 'mydata'}",
              f"--workdir={root / 'run'}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Preparing TFDS dataset folder_instances" in p.stdout
    assert "step 4/4" in p.stdout and "eval @ step 4 (end)" in p.stdout
    res = json.loads((root / "run" / "results.json").read_text())
    held = _expected_val(list(truth))
    n_objects = sum(int(truth[s][1].max()) for s in held)
    assert res["eval_end"]["eval_samples"] == min(3, n_objects)          # the held-out split, not SBD
    assert np.isfinite(res["train"]["loss"]) and (root / "run" / "model" / "model_config.json").is_file()


def test_main_coco_json_from_a_converted_model(cli_env):
    """coco_json + init_from a converted directory (the :local architecture, so the compiled step is shared)."""
    from fcfi_jax.convert.checkpoint import save_converted
    from fcfi_jax.models.is_model import ModelConfig, build_model
    root, env = cli_env
    write_coco(root / "coco", n=6)
    cfg = _local_config()
    save_converted(build_model(ModelConfig.from_dict(dict(cfg.model)), seed=3), root / "start")
    p = _main(env, *SHORT, "--config.data.builder=coco_json", f"--config.data.manual_dir={root / 'coco'}",
              f"--config.init_from={root / 'start'}", "--config.data.val_fraction=0.34",
              f"--workdir={root / 'run_coco'}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"initialised the whole model from {root / 'start'}" in p.stdout
    assert "architecture from the checkpoint" not in p.stdout
    res = json.loads((root / "run_coco" / "results.json").read_text())
    assert res["eval_end"]["eval_samples"] >= 1


@pytest.mark.parametrize("extra,message", [
    (["--config.data.builder=folder", "--config.data.manual_dir={root}/nowhere"],
     "fcfi_jax.main: error: folder: manual_dir {root}/nowhere is not a folder: expected DIR/images/"),
    (["--config.data.builder=folder", "--config.data.manual_dir={root}/badsize"],
     "fcfi_jax.main: error: folder: mask {root}/badsize/masks/img_00.png is 32x48 (HxW) but image"),
    (["--config.data.builder=coco_json", "--config.data.manual_dir={root}/badcoco"],
     "fcfi_jax.main: error: coco_json: image 'pic2.png' (id 102) of annotations.json not found"),
    (["--config.data.builder=folders", "--config.data.manual_dir={root}"],
     "data.builder='folders' must be one of sbd_fcfi, cocolvis_fcfi, folder, coco_json"),
    (["--config.loss.feedback2=fixed"], "loss.feedback2='fixed' must be one of official, corrected"),
])
def test_main_bad_input_is_one_line(cli_env, extra, message):
    root, env = cli_env
    if not (root / "badsize").is_dir():
        write_folder(root / "badsize", n=3)
        cv2.imwrite(str(root / "badsize" / "masks" / "img_00.png"), np.zeros((32, 48), np.uint8))
        write_coco(root / "badcoco", n=4)
        (root / "badcoco" / "images" / "pic2.png").unlink()
    p = _main(env, *SHORT, *[e.format(root=root) for e in extra], f"--workdir={root / 'bad'}", timeout=300)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert message.format(root=root) in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 or "invalid config" in p.stderr, p.stderr


def test_coco_objects_with_missing_or_repeated_ids_are_all_kept(tmp_path):
    """Objects are keyed by id downstream: a repeated or missing annotation id must not merge two objects."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((12, 12, 3), np.uint8))
    square = lambda y, x: [[x, y, x + 3, y, x + 3, y + 3, x, y + 3]]
    anns = [{"id": 5, "segmentation": square(1, 1)}, {"id": 5, "segmentation": square(1, 7)},
            {"segmentation": square(7, 1)}, {"id": 6, "segmentation": square(7, 7)}]
    rec = own_data.coco_record("a.png", tmp_path / "a.png", {}, anns, "c.json")
    layers = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED) for b in rec["layers"]]
    masks = {o["id"]: layers[o["layer"]] == o["value"] for o in json.loads(rec["objects"])["objects"]}
    assert sorted(masks) == [5, 6, 7, 8]   # the first 5 and the 6 keep their ids, the others get fresh ones
    assert [int(masks[k][y, x]) for k, (y, x) in zip((5, 6, 7, 8), [(2, 2), (8, 8), (2, 8), (8, 2)])] == [1, 1, 1, 1]
