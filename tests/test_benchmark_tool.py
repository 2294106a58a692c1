"""tools/benchmark.py runs and writes its JSON (a smoke test: timings are printed, never asserted)."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


def test_benchmark_forward_row_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, "tools/benchmark.py", "--what", "forward", "--models", "hrnet18s",
                        "--sizes", "64x96", "--repeats", "1", "--output", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [(r["bench"], r["model"], r["input"]) for r in rows] == [("forward", "hrnet18s", "1x64x96")]
    assert rows[0]["gflop"] > 0 and rows[0]["median_s"] > 0
    assert "forward           hrnet18s  1x64x96" in p.stdout


@pytest.mark.slow
def test_benchmark_onnx_rows_side_by_side(tmp_path):
    """--what onnx: onnxruntime and fcfi_jax per click on the same canvas in one run, with the artifact sizes
    (a 64x96 canvas, three clicks; the export verifies itself on the way). Slow (~80 s, an ONNX conversion of
    the released HRNet): CI converts and checks ONNX in tests/test_export.py; this is the tool's smoke test."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, "tools/benchmark.py", "--what", "onnx", "--models", "hrnet18s",
                        "--sizes", "64x96", "--repeats", "1", "--output", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [(r["bench"], r["runtime"], r["canvas"], r["clicks"]) for r in rows] == [
        ("onnx_vs_jax_click", "onnxruntime", "64x96", 3), ("onnx_vs_jax_click", "fcfi_jax", "64x96", 3)]
    assert rows[0]["onnx_bytes"] > 1e6 and rows[0]["stablehlo_bytes"] > 1e6
    assert all(r["median_s"] > 0 and r["first_click_s"] > 0 for r in rows)
    # random weights of the released architecture: the two runtimes agree within float32 noise
    assert rows[0]["max_abs_prob_diff"] == rows[1]["max_abs_prob_diff"] < 1e-2
    assert "click onnxruntime" in p.stdout and "click fcfi_jax" in p.stdout
