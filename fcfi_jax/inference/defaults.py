"""Canvas steps of the compiled forwards (`runner.CanvasRunner`), one per use; no heavy imports, so that the
CLIs check their options before JAX loads.

An input runs on a canvas of multiples of the step, and each new canvas compiles once.
"""

# predict, the demo and annotate: images of any size come one at a time and each new canvas compiles while the
# user waits, so coarse buckets let most sizes share one.
INTERACTIVE_CANVAS_STEP = 128
# evaluation: thousands of clicks on zoomed inputs, where fine buckets waste few pixels (a 525x700 zoom-in runs
# on 528x704, +1%, against 640x768, +34%, with 128), and a size met rarely runs on a larger compiled canvas.
EVAL_CANVAS_STEP = 16
