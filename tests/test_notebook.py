"""colab/fcfi_jax_demo.ipynb runs end to end headless (nbclient, a fresh ipykernel) on the small checkpoint:
conversion, scripted clicks, undo/reset, the saved mask (equal to the Predictor's for the same clicks) and the
web demo started in the background. The committed notebook carries no outputs.
"""
import pathlib

import cv2
import nbformat
import numpy as np

from fcfi_jax.data.readers import read_image

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "colab" / "fcfi_jax_demo.ipynb"
IMAGE = "GrabCut/data_GT/106024.jpg"
CLICKS = "210,230,+;162,231,+;30,30,-"


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "FCFI_DEMO_CHECKPOINT" in code[0].source   # the parameters cell comes first


def test_notebook_runs_headless(fixtures_dir, data_dir, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    from fcfi_jax.predict import parse_clicks

    for key, value in {"FCFI_DEMO_CHECKPOINT": fixtures_dir / "hrnet18s_clicky.pth", "FCFI_DEMO_IMAGE": data_dir / IMAGE,
                       "FCFI_DEMO_CLICKS": CLICKS, "FCFI_DEMO_NO_ZOOM_IN": "1", "FCFI_DEMO_NO_FLIP": "1",
                       "FCFI_DEMO_WORK_DIR": tmp_path / "work", "FCFI_DEMO_PORT": "0",
                       "FCFI_JAX_CACHE": tmp_path / "xla"
                       }.items():
        monkeypatch.setenv(key, str(value))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "converted " in text and "click 3: (30, 30) -" in text and "after reset: 0 clicks" in text
    assert "demo server answers" in text and "Demo running at http://127.0.0.1:" in text
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert figures >= 3   # the image, the mask after each click, undo/reset
    assert (tmp_path / "work/converted/model_config.json").is_file()

    import fcfi_jax
    from fcfi_jax.inference.predictor import Predictor
    from fcfi_jax.inference.runner import CanvasRunner

    ref = Predictor(CanvasRunner(fcfi_jax.load_model(fixtures_dir / "hrnet18s_clicky.pth")), zoom_in=None,
                    with_flip=False)
    ref.set_image(read_image(data_dir / IMAGE))
    for c in parse_clicks(CLICKS):
        ref.add_click(*c)
    saved = cv2.imread(str(tmp_path / "work/mask.png"), cv2.IMREAD_UNCHANGED)
    assert saved.shape == ref.mask.shape and set(np.unique(saved)) <= {0, 255}
    assert ref.mask.any() and np.array_equal(saved > 127, ref.mask)
