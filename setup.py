"""fcfi_jax: FCFI interactive segmentation in JAX/Flax NNX.

Dependencies are declared as ranges so that `pip install` keeps a compatible JAX, TensorFlow or OpenCV that is
already installed (Colab ships its own, GPU-enabled ones). `constraints.txt` holds the exact versions CI tests:
    pip install ".[train,test]" -c constraints.txt
"""
from setuptools import find_packages, setup

# Conversion, inference (`fcfi_jax.predict`, `fcfi_jax.evaluate`, the demo, the notebook): no TensorFlow.
# Every lower bound below is tested: tests/test_install.py installs all of them together (read from this list) and
# runs the notebook (convert, predict, demo server), `fcfi_jax.evaluate` and `fcfi_jax.main`'s flag parsing there;
# CI runs the suite on the lock. Raise a bound rather than declare one no test installs.
# JAX/Flax: up to the next minor release, whose API changes are not known yet. Libraries with stable APIs: no cap.
INSTALL_REQUIRES = [
    "jax>=0.10.1,<0.11",
    "jaxlib>=0.10.1,<0.11",        # imported directly: the direct 3x3 conv kernel builds against its headers
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12,<0.13",  # the converted checkpoint format
    "numpy>=2.0,<3",
    "scipy>=1.14",
    "ml-dtypes>=0.5",              # bfloat16 tensors in official checkpoints
    # 4.x and 5.x both: Colab ships opencv-python 4.x, and a 5.x forced beside it would mix two builds in one cv2
    # directory; the lower-bound test runs on 4.10, CI on the lock's 5.x. 4.10.0.84: the first wheels built for
    # NumPy 2 (older ones fail at `import cv2` with "numpy.core.multiarray failed to import").
    "opencv-python-headless>=4.10.0.84,<6",
    "pillow>=10",                  # demo uploads; palette PNGs of PascalVOC
    "ml-collections>=1.0",
    "absl-py>=1.0",
    # `fcfi_jax.evaluate` writes miou.png; the notebook draws with it. 3.8.4: the first release built for NumPy 2.
    "matplotlib>=3.8.4",
]

EXTRAS_REQUIRE = {
    # `python -m fcfi_jax.main` (training): tf.data + TFDS input pipeline, clu metric writers (TensorBoard).
    # Where `tensorflow` is already installed (Colab), install the other four by hand: tensorflow-cpu beside
    # tensorflow overwrites the same package directory.
    "train": [
        "tensorflow-cpu>=2.18,<3",
        "tensorflow-datasets>=4.9.7,<5",
        "clu>=0.0.10",
        "tensorboard>=2.18,<3",     # clu.metric_writers needs it; tensorflow-cpu 2.21 no longer pulls it
        "importlib_resources",      # tensorflow-datasets 4.9.10 imports it without declaring it
        "pycocotools>=2.0.8",       # data.builder=coco_json (polygons, RLE); 2.0.8: the first wheels for NumPy 2
    ],
    # tools/export.py: ONNX checked with onnxruntime (StableHLO needs nothing more; SavedModel needs TensorFlow, in
    # [train]). jax2onnx itself is installed separately with --no-deps (README): every release since 0.13 pins
    # orbax-checkpoint<0.11.37, which this package's orbax range excludes, and the converter needs none of its
    # dependencies.
    "export": [
        "onnx>=1.18,<2",
        "onnx-ir>=1.0,<2",
        "onnxruntime>=1.22,<2",
    ],
    # `python -m fcfi_jax.annotate` and the demo's COCO export/import (RLE masks); everything else works without it.
    # 2.0.8: the first wheels built for NumPy 2; CI runs the lock's version.
    "annotate": [
        "pycocotools>=2.0.8",
    ],
    # torch only cross-checks the torch-free checkpoint reader; exact version: a range pulls a multi-GB CUDA build.
    # nbclient/nbformat/ipykernel run the notebook headless; playwright drives the system chromium for the demo's
    # browser test (the test never downloads a browser); pytest-xdist runs the suite on two workers.
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "torch==2.13.0",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
        "playwright>=1.50",
        "ruff>=0.16,<0.17",         # lint rules change between minor releases
    ],
}

setup(
    name="fcfi_jax",
    version="0.1.0",
    description="FCFI (CVPR 2023) interactive segmentation in JAX/Flax NNX, with official checkpoint conversion",
    packages=find_packages(include=["fcfi_jax", "fcfi_jax.*"]),
    # the demo page; the direct 3x3 CPU kernel's source (compiled on first use, see fcfi_jax/ops/direct_conv.py)
    package_data={"fcfi_jax.demo": ["static/*.html", "static/*.js", "static/*.css"], "fcfi_jax.ops": ["*.cc"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
