// Direct 3x3 convolution (padding 1, stride 1 or 2, NHWC, float32) for XLA:CPU inference, behind jax.ffi.
//
// Why: XLA:CPU runs convolutions through Eigen, which packs the 9 * Cin input values of every output pixel
// (im2col) before its matrix multiply. For HRNet's 18-, 36- and 72-channel branches that packing, not the
// arithmetic, sets the time (~80 GFLOP/s at 18 channels against ~200 at 64). This kernel reads the input
// in place: each output pixel block keeps its sums in vector registers (output channels across the vector
// lanes, WB pixels along the row) and adds one broadcast input value times one weight vector per
// (tap, input channel). See fcfi_jax/models/direct_conv.py for how it is built and used.
//
// Epilogue, in registers before the one store: y = acc * scale + shift (a folded BatchNorm and/or bias)
// [+ residual], ReLU if asked, and zero outside each image's valid (rows, cols) (the canvas padding, whose
// rows and columns are not computed at all).
//
// Work is shared with XLA's intra-op thread pool: (image row, output-channel chunk) items taken from an
// atomic counter by the calling thread and by tasks scheduled on the pool; the caller only waits for items
// that another thread has already started, so it never waits on the pool's queue.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));

// Pixels per register block for NV output vectors: NV * WB accumulators + NV weight vectors fit in the
// 32 (AVX-512) or 16 (AVX2) vector registers.
template <int NV>
constexpr int BlockWidth() {
  constexpr int regs = kLanes == 16 ? 32 : 16;
  constexpr int wb = (regs - NV - 2) / NV;
  return wb > 8 ? 8 : (wb < 1 ? 1 : wb);
}

struct Geometry {
  int64_t B, H, W, Ci, Co, Ho, Wo, stride;
  int64_t co_vecs;  // output vectors per pixel (Co rounded up to kLanes)
};

struct Epilogue {
  const float* scale;     // (co_vecs * kLanes,)
  const float* shift;     // (co_vecs * kLanes,)
  const float* residual;  // (B, Ho, Wo, Co) or nullptr
  const int32_t* valid;   // (B, 2): valid output rows and columns of each image
  bool relu;
};

// One block of WB output pixels of row `oh` of image `b`, output vectors [v0, v0 + NV).
template <int NV, int WB>
inline void Block(const Geometry& g, const Epilogue& e, const float* __restrict x, const float* __restrict wp,
                  float* __restrict y, const float* zeros, int64_t b, int64_t oh, int64_t ow0, int64_t v0) {
  vec acc[WB][NV];
  for (int p = 0; p < WB; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = vec{};
  const int64_t valid_w = e.valid[2 * b + 1];
  const bool compute = oh < e.valid[2 * b] && ow0 < valid_w;  // else the block is canvas padding: zeros
  for (int dy = 0; compute && dy < 3; ++dy) {
    const int64_t ih = oh * g.stride + dy - 1;
    if (ih < 0 || ih >= g.H) continue;
    const float* row = x + ((b * g.H + ih) * g.W) * g.Ci;
    for (int dx = 0; dx < 3; ++dx) {
      const float* src[WB];
      for (int p = 0; p < WB; ++p) {
        const int64_t iw = (ow0 + p) * g.stride + dx - 1;
        src[p] = (iw >= 0 && iw < g.W) ? row + iw * g.Ci : zeros;
      }
      const float* wt = wp + ((dy * 3 + dx) * g.Ci * g.co_vecs + v0) * kLanes;
      for (int64_t ci = 0; ci < g.Ci; ++ci) {
        vec wv[NV];
        for (int v = 0; v < NV; ++v) std::memcpy(&wv[v], wt + (ci * g.co_vecs + v) * kLanes, sizeof(vec));
        for (int p = 0; p < WB; ++p) {
          const float s = src[p][ci];
          for (int v = 0; v < NV; ++v) acc[p][v] += s * wv[v];
        }
      }
    }
  }
  vec scale[NV], shift[NV];
  for (int v = 0; v < NV; ++v) {
    std::memcpy(&scale[v], e.scale + (v0 + v) * kLanes, sizeof(vec));
    std::memcpy(&shift[v], e.shift + (v0 + v) * kLanes, sizeof(vec));
  }
  for (int p = 0; p < WB; ++p) {
    const int64_t pixel = (b * g.Ho + oh) * g.Wo + ow0 + p;
    const bool keep = compute && ow0 + p < valid_w;
    for (int v = 0; v < NV; ++v) {
      const int64_t c0 = (v0 + v) * kLanes;
      const int64_t n = std::min<int64_t>(kLanes, g.Co - c0);
      vec a = vec{};
      if (keep) {
        a = acc[p][v] * scale[v] + shift[v];
        if (e.residual) {
          vec r = vec{};
          std::memcpy(&r, e.residual + pixel * g.Co + c0, n * sizeof(float));
          a += r;
        }
        if (e.relu) a = a > 0 ? a : 0;
      }
      std::memcpy(y + pixel * g.Co + c0, &a, n * sizeof(float));
    }
  }
}

// The last `rem` (< WB) pixels of a row as one block of that width.
template <int NV, int R>
inline void Tail(const Geometry& g, const Epilogue& e, const float* x, const float* wp, float* y,
                 const float* zeros, int64_t b, int64_t oh, int64_t ow, int64_t v0, int64_t rem) {
  if constexpr (R > 0) {
    if (rem == R) return Block<NV, R>(g, e, x, wp, y, zeros, b, oh, ow, v0);
    Tail<NV, R - 1>(g, e, x, wp, y, zeros, b, oh, ow, v0, rem);
  }
}

template <int NV>
void Row(const Geometry& g, const Epilogue& e, const float* x, const float* wp, float* y, const float* zeros,
         int64_t b, int64_t oh, int64_t v0) {
  constexpr int WB = BlockWidth<NV>();
  int64_t ow = 0;
  for (; ow + WB <= g.Wo; ow += WB) Block<NV, WB>(g, e, x, wp, y, zeros, b, oh, ow, v0);
  Tail<NV, WB - 1>(g, e, x, wp, y, zeros, b, oh, ow, v0, g.Wo - ow);
}

using RowFn = void (*)(const Geometry&, const Epilogue&, const float*, const float*, float*, const float*,
                       int64_t, int64_t, int64_t);

// Output vectors split into chunks of at most 4 (5 when that avoids a chunk of 1 or 2), as even as possible.
std::vector<std::pair<int64_t, int>> Chunks(int64_t co_vecs) {
  int64_t n = co_vecs == 5 ? 1 : (co_vecs + 3) / 4;
  std::vector<std::pair<int64_t, int>> chunks;
  int64_t v0 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t nv = (co_vecs - v0) / (n - i);
    chunks.push_back({v0, static_cast<int>(nv)});
    v0 += nv;
  }
  return chunks;
}

RowFn RowFor(int nv) {
  switch (nv) {
    case 1: return &Row<1>;
    case 2: return &Row<2>;
    case 3: return &Row<3>;
    case 4: return &Row<4>;
    default: return &Row<5>;
  }
}

struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

ffi::Error Conv3x3Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> residual,
                       ffi::Buffer<ffi::S32> valid, ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t relu,
                       int64_t has_residual) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || wd[0] != 3 || wd[1] != 3 || wd[2] != xd[3] ||
      (stride != 1 && stride != 2)) {
    return ffi::Error::InvalidArgument("fcfi_direct_conv3x3: expects x (B, H, W, Ci), w (3, 3, Ci, Co), stride 1 or 2");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], wd[3], yd[1], yd[2], stride, (wd[3] + kLanes - 1) / kLanes};
  if (yd[0] != g.B || yd[3] != g.Co || g.Ho != (g.H - 1) / stride + 1 || g.Wo != (g.W - 1) / stride + 1) {
    return ffi::Error::InvalidArgument("fcfi_direct_conv3x3: output shape does not match the input");
  }
  if (scale.element_count() != static_cast<size_t>(g.Co) || shift.element_count() != static_cast<size_t>(g.Co) ||
      valid.element_count() != static_cast<size_t>(2 * g.B) ||
      (has_residual && residual.element_count() != static_cast<size_t>(g.B * g.Ho * g.Wo * g.Co))) {
    return ffi::Error::InvalidArgument("fcfi_direct_conv3x3: scale/shift (Co,), valid (B, 2) or residual "
                                       "(B, Ho, Wo, Co) has the wrong size");
  }
  std::vector<float> sc(g.co_vecs * kLanes, 0.f), sh(g.co_vecs * kLanes, 0.f);
  std::memcpy(sc.data(), scale.typed_data(), g.Co * sizeof(float));
  std::memcpy(sh.data(), shift.typed_data(), g.Co * sizeof(float));
  const Epilogue e{sc.data(), sh.data(), has_residual ? residual.typed_data() : nullptr, valid.typed_data(),
                   relu != 0};
  // Weights (3, 3, Ci, Co) -> (3, 3, Ci, co_vecs * kLanes), zero-padded output channels.
  std::vector<float> wp(9 * g.Ci * g.co_vecs * kLanes, 0.f);
  const float* wsrc = w.typed_data();
  for (int64_t t = 0; t < 9 * g.Ci; ++t) std::memcpy(&wp[t * g.co_vecs * kLanes], wsrc + t * g.Co, g.Co * sizeof(float));
  std::vector<float> zeros(g.Ci, 0.f);

  const auto chunks = Chunks(g.co_vecs);
  const int64_t rows = g.B * g.Ho, items = rows * static_cast<int64_t>(chunks.size());
  const float* xs = x.typed_data();
  float* ys = y->typed_data();
  auto shared = std::make_shared<Shared>();
  // Captures by value what outlives this call (tasks that start after it returned find no item left).
  auto work = [=, wp = wp.data(), zeros = zeros.data(), chunks = chunks.data(), e = &e](Shared* s) {
    for (int64_t i; (i = s->next.fetch_add(1)) < items;) {
      const auto& c = chunks[i / rows];
      const int64_t r = i % rows;
      RowFor(c.second)(g, *e, xs, wp, ys, zeros, r / g.Ho, r % g.Ho, c.first);
      s->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([shared, work] { work(shared.get()); });
  work(shared.get());
  while (shared->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FcfiDirectConv3x3, Conv3x3Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // shift
                                  .Arg<ffi::Buffer<ffi::F32>>()  // residual (read only if has_residual)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // valid
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("relu")
                                  .Attr<int64_t>("has_residual"));
