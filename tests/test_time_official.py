"""tools/time_official.py and `benchmark.py --official`: the harness that times the official code in the same hour.

The official code is not available here, so a stand-in checkout with the same entry points (load_is_model,
get_predictor, evaluate_sample, the model's forward signature) checks the plumbing: what is called with what,
the rows, the ratios and the errors. Timings are printed, never asserted.
"""
import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO

FAKE = {
    "isegm/__init__.py": "",
    "isegm/model/__init__.py": "",
    "isegm/model/is_hrnet_model.py": "",
    "isegm/inference/__init__.py": "",
    "isegm/inference/utils.py": """
        import numpy as np
        import torch
        from isegm.data.datasets import GrabCutDataset  # the real module imports the training datasets

        assert hasattr(np, "int") and hasattr(np, "float")  # restored for the official code

        class _FE:
            expansion_ratio = 0.3

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(4, 1, 3, padding=1)
                self.feature_extractor = _FE()

            def forward(self, image, points, new_points, gate, is_training=True):
                assert image.shape[:2] == (1, 4) and points.shape[-1] == 3 and new_points.dtype == torch.int64
                return {"instances": self.conv(image)}

        def load_is_model(checkpoint, device):
            state = torch.load(checkpoint, map_location="cpu")  # an official .pth needs weights_only=False
            assert "state_dict" in state and "config" in state
            return Net().eval()
    """,
    "isegm/inference/predictors/__init__.py": """
        def get_predictor(model, mode, device, **kwargs):
            assert mode == "NoBRS" and kwargs["with_flip"] and kwargs["zoom_in_params"]["target_size"] == 700
            return model
    """,
    "isegm/inference/evaluation.py": """
        import numpy as np

        def evaluate_sample(image_name, image, gt_mask, predictor, max_iou_thr, max_clicks=20, **kwargs):
            assert image.dtype == np.uint8 and image.ndim == 3 and gt_mask.dtype == np.int32
            return [], np.linspace(0.0, 0.5, max_clicks), None, None, None
    """,
}


def _fake_checkout(root):
    for rel, text in FAKE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def _run(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_time_official_rows(tmp_path, fixtures_dir, data_dir):
    fake, out = _fake_checkout(tmp_path / "FCFI"), tmp_path / "official.json"
    p = _run(["tools/time_official.py", "--official", str(fake), "--what", "forward,eval", "--sizes", "32x48",
              "--repeats", "2", "--eval-images", "2", "--checkpoint", str(fixtures_dir / "hrnet18s_random.pth"),
              "--data-root", str(data_dir), "--output", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["bench"] for r in rows] == ["official_forward", "official_eval_grabcut"]
    assert rows[0]["input"] == "1x32x48" and rows[0]["n"] == 2 and rows[0]["median_s"] > 0
    ev = rows[1]
    assert ev["images"] == 2 and ev["clicks"] == 40 and len(ev["per_image"]) == 2
    assert ev["per_image"][0]["iou"][-1] == 0.5 and len(ev["per_image"][0]["iou"]) == 20


def test_benchmark_official_prints_the_ratio(tmp_path, fixtures_dir, data_dir):
    fake, out = _fake_checkout(tmp_path / "FCFI"), tmp_path / "bench.json"
    p = _run(["tools/benchmark.py", "--what", "forward", "--models", "hrnet18s", "--sizes", "64x96", "--repeats", "1",
              "--checkpoint", str(fixtures_dir / "hrnet18s_random.pth"), "--data-root", str(data_dir),
              "--official", str(fake), "--output", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["bench"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"forward", "official_forward", "vs_official"}
    vs = rows["vs_official"]
    assert vs["what"] == "forward 1x64x96" and vs["ours_s"] == rows["forward"]["median_s"]
    assert vs["ours_over_official"] == vs["ours_s"] / rows["official_forward"]["median_s"]
    assert "vs official       forward 1x64x96: ours" in p.stdout


def test_missing_checkout_is_named(tmp_path):
    for tool in ("tools/time_official.py", "tools/benchmark.py"):
        p = _run([tool, "--official", str(tmp_path / "nowhere")])
        assert p.returncode == 2
        assert "not a checkout of the official FCFI code" in p.stderr and "veizgyauzgyauz/FCFI" in p.stderr
