"""tools/benchmark.py runs and writes its JSON (a smoke test: timings are printed, never asserted)."""
import json
import os
import subprocess
import sys

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
