"""Shared test fixtures: paths to ../shared (fixtures and real data), float32 parity settings, and the skip rule.

Skips fail the run: a test that cannot run here (no fixtures, no compiler, no chromium, no torch) hides a missing
prerequisite, and README's set-up commands install all of them. `ALLOWED_SKIPS` lists the exceptions.
"""
import os
import pathlib

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("FCFI_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
DATA = SHARED / "data"

# Substrings of skip reasons that may skip without failing the run. None today.
ALLOWED_SKIPS: tuple[str, ...] = ()
_unexpected_skips: list[str] = []


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.fail(f"official fixtures not found at {FIXTURES}: put the project's shared/ folder beside the "
                    "repository or set FCFI_SHARED", pytrace=False)
    return FIXTURES


@pytest.fixture(scope="session")
def data_dir():
    if not DATA.is_dir():
        pytest.fail(f"benchmark data not found at {DATA}: put the project's shared/ folder beside the repository "
                    "or set FCFI_SHARED", pytrace=False)
    return DATA


def write_r101_checkpoint(fixtures_dir, path):
    """Write the seeded ResNet-101 checkpoint (the fixtures keep it as a recipe, 224 MB as a file) with torch.save,
    as the official save_checkpoint does; returns `path`."""
    import importlib.util
    import json

    import numpy as np
    import torch

    spec = importlib.util.spec_from_file_location("seeded_weights", fixtures_dir / "seeded_weights.py")
    seeded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeded)
    sd = seeded.state_dict("r101")
    torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                "config": json.loads((fixtures_dir / "r101_config.json").read_text())}, path)
    return path


def train_grad_fn(feedback_weight):
    """The jitted loss-and-gradient of a train-mode forward (soft box) and the official losses, for the train-step
    parity tests; one per module, so that cases of the same shapes (A and B) compile once per kernel set."""
    from flax import nnx

    from fcfi_jax.training.losses import fcfi_loss

    def loss_fn(m, x, p, n, g, gt):
        out = m(x, p, n, g, soft_box=True)
        total, terms = fcfi_loss(out, gt, feedback_weight)
        return total, (terms, out)

    return nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(allowed in reason for allowed in ALLOWED_SKIPS):
            _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _unexpected_skips and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _unexpected_skips:
        terminalreporter.write_line(f"{len(_unexpected_skips)} test(s) skipped, which fails the run (install what "
                                    "they need, see README; allow-list in tests/conftest.py):", red=True)
        for line in _unexpected_skips:
            terminalreporter.write_line(f"  {line}", red=True)
