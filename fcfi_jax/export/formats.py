"""Writers and loaders of the three artifact formats.

Each `write_*(f, spec, path)` serializes a function `f` of arrays (the network call of
`network.network_function`, or the click step of `step.step_function`) for the shapes of `spec` (anything with
`input_structs()`, `input_names` and `output_names`); each `load_*(path)` returns `run(feed) -> list of outputs`
(a dict of numpy inputs by name in, numpy out, in the order of `outputs`: by default the network's
instances, updated_feedback1, updated_feedback2) the way a deployment would load the file: onnxruntime,
`jax.export.deserialize`, or `tf.saved_model.load`. The export verifies the written file through these loaders.
"""
from __future__ import annotations

import contextlib
import logging
import os

import jax
import numpy as np

from fcfi_jax.export.network import INPUTS, OUTPUTS

# Lowered for every platform jax.export knows, so one StableHLO file serves CPU, NVIDIA GPU and TPU hosts
# (lowering needs no such device here).
STABLEHLO_PLATFORMS = ("cpu", "cuda", "tpu")


# ----------------------------------------------------------------------------------------------
# ONNX (jax2onnx, checked with onnxruntime)

@contextlib.contextmanager
def _fast_jax2onnx():
    """Make jax2onnx's conversion linear in the graph size for the duration of one export.

    Two parts of jax2onnx scan the whole graph once per operation, which is quadratic: for the ~10k
    operations of HRNet18s the conversion took 12.5 minutes instead of 18 seconds here.
    - After each lowered operation it checks that the outputs are in the graph by scanning every node; the
      replacement answers from the value's own producer link (the same answer when the value is in the
      graph) and falls back to the scan otherwise.
    - Its graph clean-up passes (transpose-pair removal, constant folding) look producers up the same way.
      They only tidy the graph, and onnxruntime's own optimizer does the same work when it loads the model
      (the optimized and unoptimized files ran equally fast here), so they are skipped.
    The plugin registry also imports example modules that need packages the model does not use; their
    import warnings are silenced.
    """
    from jax2onnx.converter import conversion_api

    try:  # jax2onnx internals: a release without them converts correctly, only slowly
        from jax2onnx.converter import output_binding
    except ImportError:
        output_binding = None
    scan = getattr(output_binding, "_value_is_graph_connected", None)

    def connected(ctx, value):
        graph = getattr(ctx.builder, "graph", None)
        if graph is not None and value.graph is graph and (
                value.producer() is not None or value.is_graph_input() or value.is_initializer()):
            return True
        return scan(ctx, value)

    saved_opt = getattr(conversion_api, "optimize_graph", None)
    log = logging.getLogger("jax2onnx")
    level = log.level
    if scan is not None:
        output_binding._value_is_graph_connected = connected
    if saved_opt is not None:
        conversion_api.optimize_graph = lambda model: model
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if scan is not None:
            output_binding._value_is_graph_connected = scan
        if saved_opt is not None:
            conversion_api.optimize_graph = saved_opt
        log.setLevel(level)


def write_onnx(f, spec, path, opset: int = 17):
    """ONNX file of f; opset 17 (onnxruntime >= 1.13 and most other runtimes read it)."""
    import onnx_ir
    from jax2onnx import to_onnx
    from onnx_ir.passes import common

    with _fast_jax2onnx():
        model = to_onnx(f, spec.input_structs(), input_names=spec.input_names, output_names=list(spec.output_names),
                        model_name="fcfi", opset=opset, return_mode="ir")
    # jax2onnx leaves shape constants it folded away; drop them (onnxruntime would list each one on load).
    for p in (common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()):
        model = p(model).model
    onnx_ir.save(model, path)


def load_onnx(path, threads: int = 0, outputs=OUTPUTS):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    return lambda feed: session.run(list(outputs), feed)


# ----------------------------------------------------------------------------------------------
# StableHLO (jax.export)

def write_stablehlo(f, spec, path, platforms=STABLEHLO_PLATFORMS):
    exported = jax.export.export(jax.jit(f), platforms=platforms)(*spec.input_structs())
    with open(path, "wb") as fh:
        fh.write(exported.serialize())


def load_stablehlo(path, inputs=INPUTS):
    with open(path, "rb") as fh:
        exported = jax.export.deserialize(bytearray(fh.read()))
    call = jax.jit(exported.call)
    names = inputs[:len(exported.in_avals)]  # positional: without valid_hw in a fixed-size export
    return lambda feed: [np.asarray(o) for o in call(*(feed[n] for n in names))]


# ----------------------------------------------------------------------------------------------
# TF SavedModel (jax2tf)

def write_savedmodel(f, spec, path):
    """SavedModel directory with a `serving_default` signature (named inputs, a dict of named outputs).

    jax2tf embeds the StableHLO of f in an XlaCallModule op, which TensorFlow (and TF Serving) compile with
    XLA; the weights travel inside that module as constants.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    lowered = jax2tf.convert(f, with_gradient=False, native_serialization_platforms=("cpu", "cuda", "tpu"))
    signature = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=n)
                 for s, n in zip(spec.input_structs(), spec.input_names)]

    module = tf.Module()

    @tf.function(input_signature=signature, autograph=False, jit_compile=True)
    def serve(*inputs):
        return dict(zip(spec.output_names, lowered(*inputs)))

    module.serve = serve
    tf.saved_model.save(module, os.fspath(path), signatures={"serving_default": serve})


def load_savedmodel(path, outputs=OUTPUTS):
    import tensorflow as tf

    fn = tf.saved_model.load(os.fspath(path)).signatures["serving_default"]

    def run(feed):
        out = fn(**{n: tf.constant(x) for n, x in feed.items()})
        return [out[k].numpy() for k in outputs]

    return run


WRITERS = {"onnx": write_onnx, "stablehlo": write_stablehlo, "savedmodel": write_savedmodel}
LOADERS = {"onnx": load_onnx, "stablehlo": load_stablehlo, "savedmodel": load_savedmodel}
