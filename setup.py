"""fcfi_jax: FCFI interactive segmentation in JAX/Flax NNX."""
from setuptools import find_packages, setup

# Pinned runtime set, tested together (see README "Environment").
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",  # clu.metric_writers needs it; tensorflow-cpu 2.21 no longer pulls it
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",  # tfds 4.9.10 imports it without declaring it
    "numpy==2.4.6",
    "scipy==1.17.1",
    "protobuf==7.36.2",
    "opencv-python-headless==5.0.0.93",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "absl-py==2.5.1",
    "matplotlib==3.10.8",  # evaluation plots (mIoU vs clicks)
]

EXTRAS_REQUIRE = {
    # torch is only used by tests to cross-check the torch-free checkpoint reader.
    # Exact pin: a looser spec pulls a multi-GB CUDA build.
    # nbclient/nbformat/ipykernel run the Colab notebook headless; playwright drives the system
    # chromium for the demo's browser test (the test never downloads a browser). pytest-xdist runs the
    # suite on two workers (most of its time is single-threaded XLA compilation).
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "torch==2.13.0", "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0",
             "playwright==1.65.2"],
}

setup(
    name="fcfi_jax",
    version="0.1.0",
    description="FCFI (CVPR 2023) interactive segmentation in JAX/Flax NNX, with official checkpoint conversion",
    packages=find_packages(include=["fcfi_jax", "fcfi_jax.*"]),
    # the demo page; the direct 3x3 CPU kernel's source (compiled on first use, see fcfi_jax/models/direct_conv.py)
    package_data={"fcfi_jax.demo": ["static/*.html", "static/*.js", "static/*.css"], "fcfi_jax.models": ["*.cc"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
