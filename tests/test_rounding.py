"""`models.rounding.div_f32` against IEEE float32 division (numpy's), bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np

from fcfi_jax.models.rounding import div_f32


def _bits(a):
    return np.asarray(a, np.float32).view(np.int32)


def test_every_quotient_of_image_sized_integers():
    p, q = np.meshgrid(np.arange(-64, 2049), np.arange(1, 1025), indexing="ij")
    p, q = p.ravel().astype(np.float32), q.ravel().astype(np.float32)
    np.testing.assert_array_equal(_bits(jax.jit(div_f32)(p, q)), _bits(p / q))


def test_random_quotients_over_the_whole_range():
    rs = np.random.RandomState(0)
    q = rs.randint(1, 2**24, 200_000)
    p = np.minimum(rs.rand(200_000) * q * 2.0 ** rs.randint(-24, 24, 200_000), 2**24 - 1).astype(np.int64)
    p[::7] *= -1
    got = jax.jit(div_f32)(p.astype(np.float32), q.astype(np.float32))
    np.testing.assert_array_equal(_bits(got), _bits(p.astype(np.float32) / q.astype(np.float32)))
    # int32 numerators beyond float32's integers: the float64 quotient stored to float32
    q2 = rs.randint(1, 5000, 200_000)
    p2 = rs.randint(0, 2**31 - 1, 200_000) % (q2 * 4000)
    got = jax.jit(div_f32)(jnp.asarray(p2, jnp.int32), jnp.asarray(q2, jnp.int32))
    np.testing.assert_array_equal(_bits(got), _bits((p2 / q2).astype(np.float32)))


def test_vmapped_broadcast_divisor_is_still_correctly_rounded():
    # XLA:CPU's own division gives 476 / 640 * 160 = 119.00001 here (FFCM's box edge 120 instead of 119).
    f = jax.jit(jax.vmap(lambda a, b: div_f32(a, b) * 160.0))
    got = f(np.float32([[476.0, 341.0, 639.0]]), np.float32([[640.0]]))
    want = np.float32([476.0, 341.0, 639.0]) / np.float32(640) * np.float32(160)
    np.testing.assert_array_equal(_bits(got[0]), _bits(want))
    assert float(got[0, 0]) == 119.0


def test_ffcm_box_vmapped_equals_the_official_float32_formula():
    """FFCM's box on a dynamic (canvas) geometry, batched with vmap as the lockstep evaluation runs it: the
    right edge 476 / 640 * 160 = 119 exactly (it was 120 with XLA:CPU's division, and the clicky record
    diverged at banana1's click 7)."""
    from fcfi_jax.models.fcfi_modules import ffcm_box

    def box(py, px, half, hw):
        f = [v.astype(jnp.float32) for v in (half[0], half[1], hw[0], hw[1], hw[0] // 4, hw[1] // 4)]
        return ffcm_box(py, px, *f)

    py, px = np.float32([341, 341, 0, 479]), np.float32([380, 259, 639, 0])
    half, hw = np.int32([72, 96]), np.int32([480, 640])
    got = jax.jit(jax.vmap(box))(py[None], px[None], half[None], hw[None])
    f32 = np.float32
    fb_h, fb_w, ft_h, ft_w = f32(480), f32(640), f32(120), f32(160)
    y0, x0 = np.trunc(np.maximum(py - f32(72), 0)), np.trunc(np.maximum(px - f32(96), 0))
    y1, x1 = np.trunc(np.minimum(py + f32(72), fb_h)), np.trunc(np.minimum(px + f32(96), fb_w))
    want = np.stack([np.floor(y0 / fb_h * ft_h), np.floor(x0 / fb_w * ft_w),
                     np.minimum(np.ceil(y1 / fb_h * ft_h), ft_h), np.minimum(np.ceil(x1 / fb_w * ft_w), ft_w)], 1)
    np.testing.assert_array_equal(np.asarray(got[2][0]), want.astype(np.int32))
    np.testing.assert_array_equal(np.asarray(got[0][0]), np.trunc(py / fb_h * ft_h).astype(np.int32))
    np.testing.assert_array_equal(np.asarray(got[1][0]), np.trunc(px / fb_w * ft_w).astype(np.int32))
    assert int(got[2][0][0, 3]) == 119
