"""Packaging, checked in a fresh virtual environment (no system site-packages):

- `pip install . -c constraints.txt` without the `[train]` extra installs no TensorFlow, TFDS, clu or TensorBoard,
  and the checkpoint converter, `fcfi_jax.predict`, `fcfi_jax.evaluate` and the demo server work there, while
  `python -m fcfi_jax.main` says which extra training needs;
- the lower bounds: with every runtime dependency at the lowest version setup.py declares, installed together
  before fcfi_jax (as Colab holds its own, older JAX, NumPy and OpenCV), installing fcfi_jax keeps them all, and
  the Colab notebook, whose install cell does the installing (then converts, predicts and serves the demo),
  `fcfi_jax.evaluate` and `fcfi_jax.main`'s flag parsing run there.

One environment serves every test, because the installs dominate the time: the tests of the locked install come
first and the lower-bound test then swaps in the oldest versions (pytest runs a module's tests in the order they
are defined).
"""
import ast
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from packaging.version import Version

REPO = pathlib.Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"
TRAIN_ONLY = ("tensorflow", "tensorflow_datasets", "clu", "tensorboard")
IMAGE = "GrabCut/data_GT/106024.jpg"   # the first GrabCut sample, so that evaluate compiles what predict compiled
SAME_SHAPES = ["--no-zoom-in", "--no-flip", "--canvas-step", "128"]


class Venv:
    """A virtual environment driven through subprocesses, with a clean environment (no PYTHONPATH, no outer venv)."""

    def __init__(self, root: pathlib.Path, cache: pathlib.Path):
        self.root = root
        self.python = str(root / "bin" / "python")
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", FCFI_JAX_CACHE=str(cache))
        self.timings = {}

    def run(self, *args, cwd, timeout=900, what=None, **kwargs):
        t0 = time.perf_counter()
        r = subprocess.run([str(a) for a in args], cwd=cwd, env=self.env, capture_output=True, text=True,
                           timeout=timeout, **kwargs)
        self.timings[what or " ".join(map(str, args[:3]))] = round(time.perf_counter() - t0, 1)
        assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    def pip(self, *args, cwd, what=None):
        return self.run(self.python, "-m", "pip", *args, cwd=cwd, what=what)

    def versions(self, cwd) -> dict:
        out = self.pip("list", "--format=json", cwd=cwd, what="pip list").stdout
        return {p["name"].lower(): p["version"] for p in json.loads(out)}

    def importable(self, modules, cwd) -> dict:
        code = ("import importlib.util as u, json; "
                f"print(json.dumps({{m: u.find_spec(m) is not None for m in {list(modules)!r}}}))")
        return json.loads(self.run(self.python, "-c", code, cwd=cwd, what="find_spec").stdout)


def _name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _locked() -> dict:
    pins = (line.split("==") for line in CONSTRAINTS.read_text().splitlines() if "==" in line)
    return {_name(name): version.strip() for name, version in pins}


def _lower_bounds() -> dict:
    """{name: lowest version} of setup.py's INSTALL_REQUIRES, read without running setup.py. Every runtime
    dependency must declare one: a range without a tested bottom would promise versions nobody ran."""
    tree = ast.parse((REPO / "setup.py").read_text())
    requires = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and any(getattr(t, "id", None) == "INSTALL_REQUIRES" for t in node.targets))
    bounds = {}
    for requirement in requires:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)(,<[0-9.]+)?", requirement.replace(" ", ""))
        assert m, f"setup.py: {requirement!r} needs a lower bound (name>=version[,<version]) for this test"
        bounds[_name(m[1])] = m[2]
    return bounds


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The module's folder; its virtual environment is about 1 GB, so it goes when the module ends, pass or fail."""
    path = tmp_path_factory.mktemp("install")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def source(work):
    """What `pip install .` needs from the checkout, copied so that the build leaves nothing in the work tree."""
    src = work / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "fcfi_jax", src / "fcfi_jax", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.fixture(scope="module")
def venv(work, source):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=300)
    v = Venv(work / "venv", work / "cache")
    v.pip("install", "-q", "--no-compile", str(source), "-c", CONSTRAINTS, cwd=work, what="pip install . -c lock")
    yield v
    v.timings["module total"] = round(time.perf_counter() - t0, 1)
    print("\ntest_install timings (s):", json.dumps(v.timings))


@pytest.fixture(scope="module")
def converted(venv, work, fixtures_dir):
    out = work / "converted"
    r = venv.run(venv.python, REPO / "tools" / "convert.py", "--checkpoint", fixtures_dir / "hrnet18s_random.pth",
                 "--output", out, cwd=work, what="tools/convert.py")
    assert json.loads(r.stdout)["output"] == str(out)
    return out


def test_install_without_train_extra_has_no_tensorflow(venv, work):
    assert venv.importable(TRAIN_ONLY + ("torch",), cwd=work) == dict.fromkeys(TRAIN_ONLY + ("torch",), False)
    versions = venv.versions(cwd=work)
    locked = _locked()
    for name in ("jax", "jaxlib", "flax", "orbax-checkpoint", "numpy", "opencv-python-headless"):
        assert versions[name] == locked[name], name
    venv.pip("check", cwd=work, what="pip check")
    # the installed package, not the checkout, with its data files (the demo page, the direct conv kernel source)
    where = venv.run(venv.python, "-c", "import fcfi_jax; print(fcfi_jax.__file__)", cwd=work).stdout.strip()
    package = pathlib.Path(where).parent
    assert package.is_relative_to(venv.root)
    assert (package / "demo" / "static" / "index.html").is_file() and list((package / "ops").glob("*.cc"))


def test_convert_and_predict_without_tensorflow(venv, work, converted, data_dir):
    assert (converted / "model_config.json").is_file()
    mask = work / "mask.png"
    r = venv.run(venv.python, "-m", "fcfi_jax.predict", "--checkpoint", converted, "--image", data_dir / IMAGE,
                 "--clicks", "210,230,+;30,30,-", "--output", mask, *SAME_SHAPES, cwd=work, what="fcfi_jax.predict")
    assert "click 2: (30, 30) -" in r.stdout and mask.stat().st_size > 0


def test_evaluate_without_tensorflow(venv, work, converted, data_dir):
    out = work / "eval"
    venv.run(venv.python, "-m", "fcfi_jax.evaluate", "--checkpoint", converted, "--datasets", "GrabCut",
             "--data-root", data_dir, "--output", out, "--limit", "1", "--n-clicks", "2", *SAME_SHAPES,
             cwd=work, what="fcfi_jax.evaluate")
    results = json.loads((out / "results.json").read_text())
    assert results[0]["dataset"] == "GrabCut" and results[0]["n_samples"] == 1
    assert len(results[0]["mIoU_per_click"]) == 2
    assert (out / "summary.csv").is_file() and (out / "miou.png").is_file()


def test_demo_server_without_tensorflow(venv, work, converted):
    t0 = time.perf_counter()
    proc = subprocess.Popen([venv.python, "-m", "fcfi_jax.demo", "--checkpoint", str(converted), "--port", "0"],
                            cwd=work, env=venv.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()   # the first line names the URL once the server listens
        assert line.startswith("FCFI demo on http://"), line
        url = line.split()[3]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert b"<html" in r.read().lower()
        with urllib.request.urlopen(url + "api/config", timeout=30) as r:
            assert isinstance(json.load(r), dict)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    venv.timings["fcfi_jax.demo"] = round(time.perf_counter() - t0, 1)


def test_training_without_train_extra_says_what_to_install(venv, work):
    r = subprocess.run([venv.python, "-m", "fcfi_jax.main", f"--config={REPO / 'configs' / 'hrnet18s.py'}:local",
                        f"--workdir={work / 'train'}"], cwd=work, env=venv.env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "training needs the [train] extra" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (work / "train").exists()


def test_lowest_versions_are_kept_and_notebook_evaluate_run(venv, work, source, fixtures_dir, data_dir,
                                                            monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    # The state Colab starts from: its own, older in-range packages (here every runtime dependency at setup.py's
    # lower bound, which also tests those bounds), a Jupyter kernel, no fcfi_jax. The rest stays locked.
    oldest = _lower_bounds()
    assert oldest["jax"] != _locked()["jax"]   # else the "kept, not replaced" check below proves nothing for JAX
    lock_but_oldest = work / "constraints_oldest.txt"
    lock_but_oldest.write_text("".join(line + "\n" for line in CONSTRAINTS.read_text().splitlines()
                                       if _name(line.split("==")[0]) not in oldest))
    venv.pip("install", "-q", "--no-compile", *(f"{k}=={v}" for k, v in oldest.items()), "ipykernel",
             "-c", lock_but_oldest, cwd=work, what="pip install lower bounds + ipykernel")
    venv.pip("uninstall", "-y", "-q", "fcfi_jax", cwd=work, what="pip uninstall fcfi_jax")

    # A kernel running the venv's python, so that the notebook's install cell installs into the venv.
    kernels = work / "jupyter" / "kernels" / "fcfi-install-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [venv.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fcfi_jax install test", "language": "python"}))
    nb_work = work / "notebook"
    for key, value in {"JUPYTER_PATH": work / "jupyter", "FCFI_DEMO_INSTALL": source,
                       "FCFI_DEMO_CHECKPOINT": fixtures_dir / "hrnet18s_clicky.pth",
                       "FCFI_DEMO_IMAGE": data_dir / IMAGE, "FCFI_DEMO_CLICKS": "210,230,+;30,30,-",
                       "FCFI_DEMO_NO_ZOOM_IN": "1", "FCFI_DEMO_NO_FLIP": "1",
                       "FCFI_DEMO_WORK_DIR": nb_work, "FCFI_DEMO_PORT": "0", "FCFI_JAX_CACHE": work / "cache",
                       "PIP_DISABLE_PIP_VERSION_CHECK": "1"}.items():
        monkeypatch.setenv(key, str(value))
    notebook = REPO / "colab" / "fcfi_jax_demo.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="fcfi-install-test",
                   resources={"metadata": {"path": str(work)}}).execute()
    venv.timings["notebook (install cell + run)"] = round(time.perf_counter() - t0, 1)

    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"fcfi_jax from {venv.root}" in text
    assert "click 2: (30, 30) -" in text and "demo server answers" in text
    assert (nb_work / "mask.png").is_file()
    versions = {_name(k): v for k, v in venv.versions(cwd=work).items()}
    # kept, not replaced by newer ones (compared as versions: "1.0" in setup.py is installed as 1.0.0)
    assert {k: Version(versions[k]) for k in oldest} == {k: Version(v) for k, v in oldest.items()}
    assert "fcfi-jax" in versions
    assert not any(venv.importable(TRAIN_ONLY, cwd=work).values())
    venv.pip("check", cwd=work, what="pip check (lower bounds)")

    # What the notebook does not run, on the same lowest versions: evaluation (scipy's distance transform, the
    # matplotlib plot) on the checkpoint the notebook converted, and the training CLI's flag parsing (absl-py,
    # ml-collections) up to its missing-extra message.
    out = work / "eval_oldest"
    venv.run(venv.python, "-m", "fcfi_jax.evaluate", "--checkpoint", nb_work / "converted", "--datasets", "GrabCut",
             "--data-root", data_dir, "--output", out, "--limit", "1", "--n-clicks", "2", *SAME_SHAPES,
             cwd=work, what="fcfi_jax.evaluate (lower bounds)")
    assert json.loads((out / "results.json").read_text())[0]["n_samples"] == 1 and (out / "miou.png").is_file()
    r = subprocess.run([venv.python, "-m", "fcfi_jax.main", f"--config={REPO / 'configs' / 'hrnet18s.py'}:local",
                        f"--workdir={work / 'train_oldest'}"], cwd=work, env=venv.env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "training needs the [train] extra" in r.stderr, r.stderr[-2000:]
