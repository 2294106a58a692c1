"""Lockstep NoC evaluation (`--batch N`): the same clicks and IoUs whatever the batch and the device count."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(family="hrnet", width=6, ocr_width=8, mid_ch=8, with_aux_output=True, use_leaky_relu=True,
            expansion_ratio=0.3, use_disks=True, norm_radius=5, with_prev_mask=True)
N_CLICKS = 4


class SmallDataset:
    """5 synthetic samples of different sizes (portrait and landscape); sample 2 has a corrupt mask."""
    name = "Small"

    def __len__(self):
        return 5

    def __getitem__(self, i):
        if i == 2:
            raise ValueError("cannot read mask /x/2.png: not a valid image file")
        rng = np.random.default_rng(i)
        h, w = [(48, 64), (64, 40), None, (30, 50), (64, 64)][i]
        yy, xx = np.mgrid[:h, :w]
        gt = (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 < 1).astype(np.int32)
        gt[:2, :3] = -1
        image = (rng.random((h, w, 3)) * 80 + 120 * gt[..., None].clip(0)).astype(np.uint8)
        return SimpleNamespace(image=image, gt=gt, name=f"s{i}")


def run(batch):
    from fcfi_jax.evaluation.lockstep import LockstepEvaluator
    from fcfi_jax.models.is_model import build_model

    # zoom target 64 and min crop 200 > image: the ROI is clamped to the image, zoom still resizes it
    ev = LockstepEvaluator(build_model(TINY, seed=0), zoom_in=(64, 3.0), batch=batch)
    r = ev.evaluate(SmallDataset(), N_CLICKS, progress=False)
    return {"batch": ev.batch, "devices": ev.mesh.devices.size, "compilations": ev.compile_count,
            "samples": [{k: s[k] for k in ("index", "clicks", "iou")} |
                        {"rois": [c["zoom_roi_rmin_rmax_cmin_cmax"] for c in s["per_click"]]}
                        for s in r["per_image"]]}


def assert_same(a, b):
    assert [s["index"] for s in a["samples"]] == [s["index"] for s in b["samples"]] == [0, 1, 3, 4]
    for x, y in zip(a["samples"], b["samples"]):
        assert x["clicks"] == y["clicks"] and x["rois"] == y["rois"]
        np.testing.assert_allclose(x["iou"], y["iou"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def batch1():
    return run(1)


def test_batch_with_padding_equals_batch_1(batch1, capsys):
    r3 = run(3)   # 4 samples: a full batch and one padded with copies
    assert r3["batch"] == 3 and r3["compilations"] == 1 and batch1["compilations"] == 1
    assert_same(batch1, r3)
    assert "skipping Small sample 2: cannot read mask" in capsys.readouterr().err
    assert any(c[2] for s in batch1["samples"] for c in s["clicks"])


def test_eight_devices_equal_one_device(batch1):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, __file__, "--worker", "8"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r8 = json.loads(p.stdout.strip().splitlines()[-1])
    assert r8["devices"] == 8 and r8["batch"] == 8
    assert_same(batch1, r8)


def test_cli_batch_flag(data_dir, tmp_path):
    from fcfi_jax.convert.checkpoint import save_converted
    from fcfi_jax.evaluation.evaluate import main
    from fcfi_jax.models.is_model import build_model

    ckpt = save_converted(build_model(TINY, seed=0), tmp_path / "tiny")
    out = tmp_path / "res"
    assert main(["--checkpoint", str(ckpt), "--datasets", "GrabCut", "--data-root", str(data_dir), "--output",
                 str(out), "--n-clicks", "2", "--limit", "2", "--every", "25", "--no-zoom-in", "--batch", "2",
                 "--cache-dir", str(tmp_path / "xla")]) == 0
    r = json.loads((out / "results.json").read_text())[0]
    assert r["n_samples"] == 2 and r["protocol"]["batch"] == 2 and r["protocol"]["compilations"] == 1
    for s in r["per_image"]:
        assert len(s["iou"]) == len(s["clicks"]) == 2
        assert s["per_click"][0]["net_input_shape"] == [2] + s["image_hw"] + [4]
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--output", str(out), "--batch", "0"])


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    print(json.dumps(run(int(sys.argv[2]))))
