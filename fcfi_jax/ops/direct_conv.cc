// Direct convolution (3x3 with padding == dilation, or 1x1; stride 1 or 2; NHWC, float32) for XLA:CPU
// inference, behind jax.ffi, with Winograd F(2x2, 3x3) for the wide stride-1 3x3 layers.
//
// Why: XLA:CPU runs convolutions through Eigen, which packs the 9 * Cin input values of every output pixel
// (im2col) before its matrix multiply. For HRNet's 18-, 36- and 72-channel branches that packing, not the
// arithmetic, sets the time (~80 GFLOP/s at 18 channels against ~200 at 64); for ResNet-101's dilated layers
// and the ASPP (dilation 12-36 on a 60x80 map, up to 58% of the taps on the zero padding) it also multiplies
// the padding, which here is skipped. 1x1 layers run here for the epilogue: a BatchNorm, residual and ReLU
// applied in registers instead of separate passes over the output (which XLA, fusing the residual chain of a
// ResNet stage into each block's addition, made quadratic in the number of blocks).
// The direct form reads the input in place: each output pixel block keeps its sums in vector registers (output
// channels across the vector lanes, WB pixels along the row) and adds one broadcast input value times one
// weight vector per (tap, input channel). See direct_conv.py for how it is built and used.
//
// Large Cin: the weights of an output-channel chunk (taps * Cin * 64 floats; 4.7 MB for the ASPP's 2048
// inputs) would be streamed from L3 for every pixel block, so Cin is split into blocks whose weights stay in
// L2 while a whole output row is swept; the partial sums wait in the output between blocks.
//
// Epilogue, in registers before the last store: y = acc * scale + shift (a folded BatchNorm and/or bias)
// [+ residual], ReLU if asked, and zero outside each image's valid (rows, cols) (the canvas padding, whose
// rows and columns are not computed at all).
//
// Work is shared with XLA's intra-op thread pool: items (an image row and output-channel chunk; a row of
// Winograd tiles) taken from an atomic counter by the calling thread and by tasks scheduled on the pool; the
// caller only waits for items that another thread has already started, so it never waits on the pool's queue.

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

// The first n (<= kLanes) floats at p as a vector (zeros after), and back: one vector instruction for a whole
// vector (a variable-size memcpy would be a library call per vector).
inline vec LoadN(const float* p, int64_t n) {
  vec v = vec{};
  if (n == kLanes) std::memcpy(&v, p, sizeof(vec));
  else
    for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}

inline void StoreN(float* p, const vec& v, int64_t n) {
  if (n == kLanes) std::memcpy(p, &v, sizeof(vec));
  else
    for (int64_t i = 0; i < n; ++i) p[i] = v[i];
}

// Bytes of one chunk's weights for one Cin block: kept well inside a core's L2 (1-2 MB on current x86).
constexpr int64_t kWeightBlockBytes = 192 * 1024;

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
  int64_t k, dilation;  // k x k taps (1 or 3), (tap - k / 2) * dilation from the centre
  int64_t co_vecs;      // output vectors per pixel (Co rounded up to kLanes)
};

struct Epilogue {
  const float* scale;     // (co_vecs * kLanes,)
  const float* shift;     // (co_vecs * kLanes,)
  const float* residual;  // (B, Ho, Wo, Co) or nullptr
  const int32_t* valid;   // (B, 2): valid output rows and columns of each image
  bool relu;
};

// Input channels [ci0, ci1) of a Cin block; `first` starts the sums at zero, otherwise from the partial sums
// in y; `last` applies the epilogue.
struct CiBlock {
  int64_t ci0, ci1;
  bool first, last;
};

// One block of WB output pixels of row `oh` of image `b`, output vectors [v0, v0 + NV), input channels of `c`.
template <int NV, int WB>
inline void Block(const Geometry& g, const Epilogue& e, const CiBlock& c, const float* __restrict x,
                  const float* __restrict wp, float* __restrict y, const float* zeros, int64_t b, int64_t oh,
                  int64_t ow0, int64_t v0) {
  const int64_t valid_w = e.valid[2 * b + 1];
  const bool compute = oh < e.valid[2 * b] && ow0 < valid_w;  // else the block is canvas padding: zeros
  if (!compute && !c.last) return;
  const int64_t row0 = (b * g.Ho + oh) * g.Wo + ow0;  // the block's first output pixel
  vec acc[WB][NV];
  for (int p = 0; p < WB; ++p)
    for (int v = 0; v < NV; ++v) {
      acc[p][v] = vec{};
      if (!c.first && compute) {
        const int64_t c0 = (v0 + v) * kLanes;
        acc[p][v] = LoadN(y + (row0 + p) * g.Co + c0, std::min<int64_t>(kLanes, g.Co - c0));
      }
    }
  if (c.last && compute)  // output and residual lines arrive while the sums are computed
    for (int p = 0; p < WB; ++p)
      for (int v = 0; v < NV; ++v) {
        __builtin_prefetch(y + (row0 + p) * g.Co + (v0 + v) * kLanes, 1);
        if (e.residual) __builtin_prefetch(e.residual + (row0 + p) * g.Co + (v0 + v) * kLanes);
      }
  if (g.k == 1 && compute) {  // 1x1: the next block's input, whose first reads would otherwise stall
    const int64_t ih = oh * g.stride;
    for (int p = 0; p < WB; ++p) {
      const int64_t iw = (ow0 + WB + p) * g.stride;
      if (iw >= g.W) break;
      const float* q = x + ((b * g.H + ih) * g.W + iw) * g.Ci + c.ci0;
      for (int64_t ci = 0; ci < c.ci1 - c.ci0; ci += 16) __builtin_prefetch(q + ci);
    }
  }
  const int64_t half = g.k / 2, n = c.ci1 - c.ci0;
  for (int64_t dy = 0; compute && dy < g.k; ++dy) {
    const int64_t ih = oh * g.stride + (dy - half) * g.dilation;
    if (ih < 0 || ih >= g.H) continue;  // zero padding: nothing to add
    const float* row = x + ((b * g.H + ih) * g.W) * g.Ci + c.ci0;
    for (int64_t dx = 0; dx < g.k; ++dx) {
      const float* src[WB];
      bool any = false;
      for (int p = 0; p < WB; ++p) {
        const int64_t iw = (ow0 + p) * g.stride + (dx - half) * g.dilation;
        const bool in = iw >= 0 && iw < g.W;
        src[p] = in ? row + iw * g.Ci : zeros;
        any |= in;
      }
      if (!any) continue;
      // The chunk's packed weights: (taps, Ci, NV vectors), contiguous along Cin.
      const float* wt = wp + (g.k * g.k * g.Ci * v0 + ((dy * g.k + dx) * g.Ci + c.ci0) * NV) * kLanes;
      for (int64_t ci = 0; ci < n; ++ci) {
        vec wv[NV];
        for (int v = 0; v < NV; ++v) std::memcpy(&wv[v], wt + (ci * NV + v) * kLanes, sizeof(vec));
        for (int p = 0; p < WB; ++p) {
          const float s = src[p][ci];
          for (int v = 0; v < NV; ++v) acc[p][v] += s * wv[v];
        }
      }
    }
  }
  if (!c.last) {  // partial sums: stored as they are, read back by the next Cin block
    for (int p = 0; p < WB; ++p)
      for (int v = 0; v < NV; ++v) {
        const int64_t c0 = (v0 + v) * kLanes;
        StoreN(y + (row0 + p) * g.Co + c0, acc[p][v], std::min<int64_t>(kLanes, g.Co - c0));
      }
    return;
  }
  vec scale[NV], shift[NV];
  for (int v = 0; v < NV; ++v) {
    std::memcpy(&scale[v], e.scale + (v0 + v) * kLanes, sizeof(vec));
    std::memcpy(&shift[v], e.shift + (v0 + v) * kLanes, sizeof(vec));
  }
  for (int p = 0; p < WB; ++p) {
    const int64_t pixel = row0 + p;
    const bool keep = compute && ow0 + p < valid_w;
    for (int v = 0; v < NV; ++v) {
      const int64_t c0 = (v0 + v) * kLanes;
      const int64_t n = std::min<int64_t>(kLanes, g.Co - c0);
      vec a = vec{};
      if (keep) {
        a = acc[p][v] * scale[v] + shift[v];
        if (e.residual) a += LoadN(e.residual + pixel * g.Co + c0, n);
        if (e.relu) a = a > 0 ? a : 0;
      }
      StoreN(y + pixel * g.Co + c0, a, n);
    }
  }
}

// The last `rem` (< WB) pixels of a row as one block of that width.
template <int NV, int R>
inline void Tail(const Geometry& g, const Epilogue& e, const CiBlock& c, const float* x, const float* wp, float* y,
                 const float* zeros, int64_t b, int64_t oh, int64_t ow, int64_t v0, int64_t rem) {
  if constexpr (R > 0) {
    if (rem == R) return Block<NV, R>(g, e, c, x, wp, y, zeros, b, oh, ow, v0);
    Tail<NV, R - 1>(g, e, c, x, wp, y, zeros, b, oh, ow, v0, rem);
  }
}

// One output row of one channel chunk: the Cin blocks in turn, each over the whole row (its weights stay
// in L2 meanwhile).
template <int NV>
void Row(const Geometry& g, const Epilogue& e, int64_t ci_block, const float* x, const float* wp, float* y,
         const float* zeros, int64_t b, int64_t oh, int64_t v0) {
  constexpr int WB = BlockWidth<NV>();
  for (int64_t ci0 = 0; ci0 < g.Ci; ci0 += ci_block) {
    const CiBlock c{ci0, std::min(g.Ci, ci0 + ci_block), ci0 == 0, ci0 + ci_block >= g.Ci};
    int64_t ow = 0;
    for (; ow + WB <= g.Wo; ow += WB) Block<NV, WB>(g, e, c, x, wp, y, zeros, b, oh, ow, v0);
    Tail<NV, WB - 1>(g, e, c, x, wp, y, zeros, b, oh, ow, v0, g.Wo - ow);
  }
}

using RowFn = void (*)(const Geometry&, const Epilogue&, int64_t, const float*, const float*, float*,
                       const float*, int64_t, int64_t, int64_t);

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

// fn(i) for i in [0, n) on the calling thread and pool helpers; returns when all are done. A helper that
// starts after that finds no item left and touches nothing of the caller's.
template <typename F>
void ParallelFor(ffi::ThreadPool* pool, int64_t n, const F& fn) {
  if (n <= 0) return;
  auto shared = std::make_shared<Shared>();
  auto work = [shared, fn, n] {
    for (int64_t i; (i = shared->next.fetch_add(1)) < n;) {
      fn(i);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = pool ? std::min<int64_t>(pool->num_threads(), n) - 1 : 0;
  for (int64_t i = 0; i < helpers; ++i) pool->Schedule([work] { work(); });
  work();
  while (shared->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

// Weights (k, k, Ci, Co) -> per chunk (k * k, Ci, nv * kLanes), zero-padded output channels: the block's
// weight loads then run along memory (in place they would stride by Co: a new page per input channel for
// Co >= 1024) and a Cout that is no multiple of kLanes needs no masked loads.
void Pack(ffi::ThreadPool* pool, const Geometry& g, const std::vector<std::pair<int64_t, int>>& chunks,
          const float* w, float* packed) {
  const int64_t taps = g.k * g.k;
  ParallelFor(pool, static_cast<int64_t>(chunks.size()), [&](int64_t i) {
    const auto [v0, nv] = chunks[i];
    float* dst = packed + taps * g.Ci * v0 * kLanes;
    const int64_t c0 = v0 * kLanes, n = std::min<int64_t>(nv * kLanes, g.Co - c0);
    for (int64_t t = 0; t < taps * g.Ci; ++t) {
      std::memcpy(dst + t * nv * kLanes, w + t * g.Co + c0, n * sizeof(float));
      std::fill(dst + t * nv * kLanes + n, dst + (t + 1) * nv * kLanes, 0.f);
    }
  });
}

void RunDirect(ffi::ThreadPool* pool, const Geometry& g, const Epilogue& e, const float* x, const float* w,
               float* y) {
  const auto chunks = Chunks(g.co_vecs);
  const std::unique_ptr<float[]> packed(new float[g.k * g.k * g.Ci * g.co_vecs * kLanes]);
  Pack(pool, g, chunks, w, packed.get());
  const std::vector<float> zeros(g.Ci, 0.f);
  int max_nv = 1;
  for (const auto& c : chunks) max_nv = std::max(max_nv, c.second);
  const int64_t per_channel = g.k * g.k * max_nv * kLanes * static_cast<int64_t>(sizeof(float));
  const int64_t ci_block = std::max<int64_t>(kLanes, kWeightBlockBytes / per_channel);
  const int64_t rows = g.B * g.Ho, n_chunks = static_cast<int64_t>(chunks.size());
  // Row by row, all chunks of a row in turn: its output, residual and input lines are fetched once (chunk by
  // chunk, every chunk would touch every page of the output: TLB misses for Co >= 1024), while a chunk's
  // weights (40 FLOP per byte) come from L3 at a rate it easily serves.
  ParallelFor(pool, rows * n_chunks, [&](int64_t i) {
    const auto& c = chunks[i % n_chunks];
    const int64_t r = i / n_chunks;
    RowFor(c.second)(g, e, ci_block, x, packed.get(), y, zeros.data(), r / g.Ho, r % g.Ho, c.first);
  });
}

// ---- Winograd F(2x2, 3x3) for stride-1 3x3 convolutions with many channels --------------------------------
//
// Each 2x2 output tile (rows oh0, oh0 + d, columns ow0, ow0 + d for dilation d) comes from a 4x4 input tile
// (rows oh0 + (r - 1) d, columns ow0 + (c - 1) d): V = B^T x B per input channel, U = G w G^T per (input,
// output) channel pair, M[xi] = sum over input channels of V[xi] U[xi] (16 matrix products, the work: 16
// multiplications per 4 outputs instead of 36), y = A^T M A. The transforms only add, subtract and halve, so
// the result differs from the direct sum by float rounding (tests/test_direct_conv.py bounds it). Work item:
// one row of tiles (all of its channels), its V kept in a per-thread buffer.

// Tile origins along an axis of n outputs: o = q * 2d + a (a < d), so that o and o + d cover 0..n-1 once.
std::vector<int64_t> TileOrigins(int64_t n, int64_t d) {
  std::vector<int64_t> o;
  for (int64_t q = 0; q * 2 * d < n; ++q)
    for (int64_t a = 0; a < d && q * 2 * d + a < n; ++a) o.push_back(q * 2 * d + a);
  return o;
}

// U per chunk: (16, Ci, nv * kLanes), the chunk's Co slice, zero-padded.
void WinogradWeights(ffi::ThreadPool* pool, const Geometry& g, const std::vector<std::pair<int64_t, int>>& chunks,
                     const float* w, float* u) {
  ParallelFor(pool, static_cast<int64_t>(chunks.size()), [&](int64_t i) {
    const auto [v0, nv] = chunks[i];
    float* dst = u + 16 * g.Ci * v0 * kLanes;
    for (int64_t ci = 0; ci < g.Ci; ++ci)
      for (int v = 0; v < nv; ++v) {
        const int64_t c0 = (v0 + v) * kLanes, n = std::max<int64_t>(0, std::min<int64_t>(kLanes, g.Co - c0));
        vec k[3][3], t[4][3], r[4][4];
        for (int a = 0; a < 3; ++a)
          for (int b = 0; b < 3; ++b) {
            k[a][b] = LoadN(w + ((a * 3 + b) * g.Ci + ci) * g.Co + c0, n);
          }
        for (int b = 0; b < 3; ++b) {  // G w: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2
          t[0][b] = k[0][b];
          t[1][b] = (k[0][b] + k[1][b] + k[2][b]) * 0.5f;
          t[2][b] = (k[0][b] - k[1][b] + k[2][b]) * 0.5f;
          t[3][b] = k[2][b];
        }
        for (int a = 0; a < 4; ++a) {  // (G w) G^T
          r[a][0] = t[a][0];
          r[a][1] = (t[a][0] + t[a][1] + t[a][2]) * 0.5f;
          r[a][2] = (t[a][0] - t[a][1] + t[a][2]) * 0.5f;
          r[a][3] = t[a][2];
        }
        for (int xi = 0; xi < 16; ++xi)
          std::memcpy(dst + ((xi * g.Ci + ci) * nv + v) * kLanes, &r[xi / 4][xi % 4], sizeof(vec));
      }
  });
}

// c[p][v] = sum_k a[p * lda + k] * b[k][v] for WB rows p of a and NV output vectors; c row stride ldc.
template <int NV, int WB>
inline void Gemm(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t K,
                 float* __restrict c, int64_t ldc) {
  vec acc[WB][NV];
  for (int p = 0; p < WB; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    vec wv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&wv[v], b + (k * NV + v) * kLanes, sizeof(vec));
    for (int p = 0; p < WB; ++p) {
      const float s = a[p * lda + k];
      for (int v = 0; v < NV; ++v) acc[p][v] += s * wv[v];
    }
  }
  for (int p = 0; p < WB; ++p)
    for (int v = 0; v < NV; ++v) std::memcpy(c + p * ldc + v * kLanes, &acc[p][v], sizeof(vec));
}

template <int NV, int R>
inline void GemmTail(const float* a, int64_t lda, const float* b, int64_t K, float* c, int64_t ldc, int64_t rem) {
  if constexpr (R > 0) {
    if (rem == R) return Gemm<NV, R>(a, lda, b, K, c, ldc);
    GemmTail<NV, R - 1>(a, lda, b, K, c, ldc, rem);
  }
}

// M[xi][t] (t < T tiles, NV vectors) = V[xi][t] . U[xi] for the 16 xi.
template <int NV>
void GemmRows(const float* v, int64_t T, int64_t Ci, const float* u, float* m) {
  constexpr int WB = BlockWidth<NV>();
  for (int xi = 0; xi < 16; ++xi) {
    const float* a = v + xi * T * Ci;
    const float* b = u + xi * Ci * NV * kLanes;
    float* c = m + xi * T * NV * kLanes;
    int64_t t = 0;
    for (; t + WB <= T; t += WB) Gemm<NV, WB>(a + t * Ci, Ci, b, Ci, c + t * NV * kLanes, NV * kLanes);
    GemmTail<NV, WB - 1>(a + t * Ci, Ci, b, Ci, c + t * NV * kLanes, NV * kLanes, T - t);
  }
}

using GemmRowsFn = void (*)(const float*, int64_t, int64_t, const float*, float*);

GemmRowsFn GemmRowsFor(int nv) {
  switch (nv) {
    case 1: return &GemmRows<1>;
    case 2: return &GemmRows<2>;
    case 3: return &GemmRows<3>;
    case 4: return &GemmRows<4>;
    default: return &GemmRows<5>;
  }
}

// Whether the tiles cost less than the direct kernel's in-bounds taps for this geometry (the tiles also
// multiply the zero padding and the rows and columns past the end that a partial tile covers).
bool WinogradPays(const Geometry& g) {
  // Short sums over Cin leave the transforms a large share (64 -> 64: no gain, 64 -> 128: 1.2x, measured).
  if (g.k != 3 || g.stride != 1 || g.Ci < 64 || g.Co < 64 || g.Ci + g.Co < 192) return false;
  auto taps = [&](int64_t n) {  // in-bounds (output, tap) pairs per output along an axis
    int64_t c = 0;
    for (int64_t o = 0; o < n; ++o)
      for (int64_t t = -1; t <= 1; ++t) c += o + t * g.dilation >= 0 && o + t * g.dilation < n;
    return static_cast<double>(c) / (3.0 * n);
  };
  const double direct = taps(g.Ho) * taps(g.Wo);
  const double tiles = (2.0 * TileOrigins(g.Ho, g.dilation).size() / g.Ho) * (2.0 * TileOrigins(g.Wo, g.dilation).size() / g.Wo);
  // 1.4: the transforms and the GEMM's shorter rows (measured: 1.7-1.8x faster than direct at 256-512 channels
  // and dilation 1-4; even at the ASPP's dilation 12, where the tiles cover 32% past the map).
  return 16.0 / 36.0 * tiles * 1.4 < direct;
}

thread_local std::vector<float> tls_v, tls_m;

void RunWinograd(ffi::ThreadPool* pool, const Geometry& g, const Epilogue& e, const float* x, const float* w,
                 float* y) {
  const auto chunks = Chunks(g.co_vecs);
  const std::unique_ptr<float[]> u(new float[16 * g.Ci * g.co_vecs * kLanes]);  // every entry is written
  WinogradWeights(pool, g, chunks, w, u.get());
  const int64_t d = g.dilation;
  const std::vector<int64_t> rows = TileOrigins(g.Ho, d), cols = TileOrigins(g.Wo, d);
  const int64_t bands = static_cast<int64_t>(rows.size()), T = static_cast<int64_t>(cols.size());
  ParallelFor(pool, g.B * bands, [&](int64_t item) {
    const int64_t b = item / bands, oh0 = rows[item % bands];
    const int64_t valid_h = e.valid[2 * b], valid_w = e.valid[2 * b + 1];
    const int64_t out_rows[2] = {oh0, oh0 + d};
    // Tiles with a column inside the valid region (origins increase along the row); the rest is zeros.
    const int64_t tv = oh0 < valid_h ? std::lower_bound(cols.begin(), cols.end(), valid_w) - cols.begin() : 0;
    for (int i = 0; i < 2; ++i) {
      if (out_rows[i] >= g.Ho) continue;
      for (int64_t t = tv; t < T; ++t)
        for (int j = 0; j < 2; ++j)
          if (cols[t] + j * d < g.Wo)
            std::memset(y + ((b * g.Ho + out_rows[i]) * g.Wo + cols[t] + j * d) * g.Co, 0, g.Co * sizeof(float));
    }
    if (tv == 0) return;
    // V (16, tv, Ci).
    if (tls_v.size() < static_cast<size_t>(16 * tv * g.Ci)) tls_v.resize(16 * tv * g.Ci);
    float* v = tls_v.data();
    for (int64_t t = 0; t < tv; ++t) {
      const float* src[4][4];
      for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) {
          const int64_t ih = oh0 + (r - 1) * d, iw = cols[t] + (c - 1) * d;
          src[r][c] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? x + ((b * g.H + ih) * g.W + iw) * g.Ci : nullptr;
        }
      for (int64_t c0 = 0; c0 < g.Ci; c0 += kLanes) {
        const int64_t n = std::min<int64_t>(kLanes, g.Ci - c0);
        vec in[4][4], s[4][4];
        for (int r = 0; r < 4; ++r)
          for (int c = 0; c < 4; ++c) {
            in[r][c] = src[r][c] ? LoadN(src[r][c] + c0, n) : vec{};
          }
        for (int c = 0; c < 4; ++c) {  // B^T x: rows x0 - x2, x1 + x2, x2 - x1, x1 - x3
          s[0][c] = in[0][c] - in[2][c];
          s[1][c] = in[1][c] + in[2][c];
          s[2][c] = in[2][c] - in[1][c];
          s[3][c] = in[1][c] - in[3][c];
        }
        for (int r = 0; r < 4; ++r) {  // (B^T x) B
          const vec o[4] = {s[r][0] - s[r][2], s[r][1] + s[r][2], s[r][2] - s[r][1], s[r][1] - s[r][3]};
          for (int c = 0; c < 4; ++c) StoreN(v + ((r * 4 + c) * tv + t) * g.Ci + c0, o[c], n);
        }
      }
    }
    for (const auto& [v0, nv] : chunks) {
      if (tls_m.size() < static_cast<size_t>(16 * tv * nv * kLanes)) tls_m.resize(16 * tv * nv * kLanes);
      float* m = tls_m.data();
      GemmRowsFor(nv)(v, tv, g.Ci, u.get() + 16 * g.Ci * v0 * kLanes, m);
      for (int64_t t = 0; t < tv; ++t)
        for (int vi = 0; vi < nv; ++vi) {
          const int64_t c0 = (v0 + vi) * kLanes, n = std::min<int64_t>(kLanes, g.Co - c0);
          if (n <= 0) continue;
          vec mm[4][4], s[2][4], out[2][2];
          for (int xi = 0; xi < 16; ++xi) std::memcpy(&mm[xi / 4][xi % 4], m + ((xi * tv + t) * nv + vi) * kLanes, sizeof(vec));
          for (int c = 0; c < 4; ++c) {  // A^T M: rows m0 + m1 + m2, m1 - m2 - m3
            s[0][c] = mm[0][c] + mm[1][c] + mm[2][c];
            s[1][c] = mm[1][c] - mm[2][c] - mm[3][c];
          }
          for (int r = 0; r < 2; ++r) {
            out[r][0] = s[r][0] + s[r][1] + s[r][2];
            out[r][1] = s[r][1] - s[r][2] - s[r][3];
          }
          vec scale, shift;
          std::memcpy(&scale, e.scale + c0, sizeof(vec));
          std::memcpy(&shift, e.shift + c0, sizeof(vec));
          for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) {
              const int64_t oh = out_rows[i], ow = cols[t] + j * d;
              if (oh >= g.Ho || ow >= g.Wo) continue;
              const int64_t pixel = (b * g.Ho + oh) * g.Wo + ow;
              vec a = vec{};
              if (oh < valid_h && ow < valid_w) {
                a = out[i][j] * scale + shift;
                if (e.residual) a += LoadN(e.residual + pixel * g.Co + c0, n);
                if (e.relu) a = a > 0 ? a : 0;
              }
              StoreN(y + pixel * g.Co + c0, a, n);
            }
        }
    }
  });
}

// method: 0 chooses (Winograd where `WinogradPays`), 1 direct, 2 Winograd (stride-1 3x3 only).
ffi::Error Run(ffi::ThreadPool* pool, const Geometry& g, const Epilogue& e, const float* x, const float* w,
               float* y, int64_t method) {
  if (method == 2 && (g.k != 3 || g.stride != 1))
    return ffi::Error::InvalidArgument("fcfi_direct_conv: Winograd needs a stride-1 3x3 convolution");
  if (method == 2 || (method == 0 && WinogradPays(g))) RunWinograd(pool, g, e, x, w, y);
  else RunDirect(pool, g, e, x, w, y);
  return ffi::Error::Success();
}

ffi::Error ConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                    ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> residual,
                    ffi::Buffer<ffi::S32> valid, ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t dilation,
                    int64_t relu, int64_t has_residual, int64_t method) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || wd[0] != wd[1] || (wd[0] != 3 && wd[0] != 1) ||
      wd[2] != xd[3] || (stride != 1 && stride != 2) || dilation < 1 || method < 0 || method > 2) {
    return ffi::Error::InvalidArgument("fcfi_direct_conv: expects x (B, H, W, Ci), w (k, k, Ci, Co) with k 1 or 3, "
                                       "stride 1 or 2, dilation >= 1, method 0-2");
  }
  const Geometry g{xd[0], xd[1], xd[2], xd[3], wd[3], yd[1], yd[2], stride, wd[0], dilation,
                   (wd[3] + kLanes - 1) / kLanes};
  if (yd[0] != g.B || yd[3] != g.Co || g.Ho != (g.H - 1) / stride + 1 || g.Wo != (g.W - 1) / stride + 1) {
    return ffi::Error::InvalidArgument("fcfi_direct_conv: output shape does not match the input");
  }
  if (scale.element_count() != static_cast<size_t>(g.Co) || shift.element_count() != static_cast<size_t>(g.Co) ||
      valid.element_count() != static_cast<size_t>(2 * g.B) ||
      (has_residual && residual.element_count() != static_cast<size_t>(g.B * g.Ho * g.Wo * g.Co))) {
    return ffi::Error::InvalidArgument("fcfi_direct_conv: scale/shift (Co,), valid (B, 2) or residual "
                                       "(B, Ho, Wo, Co) has the wrong size");
  }
  std::vector<float> sc(g.co_vecs * kLanes, 0.f), sh(g.co_vecs * kLanes, 0.f);
  std::memcpy(sc.data(), scale.typed_data(), g.Co * sizeof(float));
  std::memcpy(sh.data(), shift.typed_data(), g.Co * sizeof(float));
  const Epilogue e{sc.data(), sh.data(), has_residual ? residual.typed_data() : nullptr, valid.typed_data(),
                   relu != 0};
  return Run(&pool, g, e, x.typed_data(), w.typed_data(), y->typed_data(), method);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FcfiDirectConv, ConvImpl,
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
                                  .Attr<int64_t>("dilation")
                                  .Attr<int64_t>("relu")
                                  .Attr<int64_t>("has_residual")
                                  .Attr<int64_t>("method"));
