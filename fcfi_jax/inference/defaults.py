"""Shape buckets of the compiled forwards: canvas steps (`runner.CanvasRunner`), one per use, and the points
tensor's rows. No heavy imports, so that the CLIs check their options before JAX loads.

An input runs on a canvas of multiples of the step, and each new canvas compiles once.
"""

# predict, the demo and annotate: images of any size come one at a time and each new canvas compiles while the
# user waits, so coarse buckets let most sizes share one.
INTERACTIVE_CANVAS_STEP = 128
# evaluation: thousands of clicks on zoomed inputs, where fine buckets waste few pixels (a 525x700 zoom-in runs
# on 528x704, +1%, against 640x768, +34%, with 128), and a size met rarely runs on a larger compiled canvas.
EVAL_CANVAS_STEP = 16

# The points tensor holds N positive then N negative rows (-1 padding, which does not change the result); N is
# rounded up to a multiple of this so that adding clicks rarely changes its shape (a new shape compiles again).
POINTS_BUCKET = 24


def points_rows(n_clicks: int) -> int:
    """N of the points tensor that holds up to `n_clicks` clicks of one sign: a multiple of POINTS_BUCKET."""
    return -(-max(1, int(n_clicks)) // POINTS_BUCKET) * POINTS_BUCKET
