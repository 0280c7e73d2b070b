// Runs the correlation CUDA kernels (densessl/ops/csrc/correlation_kernels.h) on the CPU and
// compares them with direct loops over the definition.
//
// Each CUDA block is emulated by one std::thread per CUDA thread with a std::barrier for
// __syncthreads; shared memory is a buffer of exactly the launch size, filled with NaN bytes
// before every block so that reading an unstaged cell poisons the result (and reading past it
// is caught by AddressSanitizer when built with -fsanitize=address).
//
// Usage: correlation_kernels_emulation DTYPE B,C,H,W,kH,kW,pH,pW,sH,sW,padH,padW,dilH,dilW,dpH,dpW,T [...]
//   DTYPE: float, double, half or bfloat16; T caps the threads per block (small values force
//   several column tiles and channel chunks). Prints one line per case; exit status 1 on a
//   mismatch.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cuda_emulation.h"
#include "correlation_kernels.h"

using namespace densessl;
using namespace densessl::kernels;

struct Case {
  CorrParams p{};
  int max_threads = 32;
};

bool parse_case(const std::string& text, Case* out) {
  std::vector<int> v;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = text.find(',', start);
    v.push_back(std::atoi(text.substr(start, end - start).c_str()));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (v.size() != 17) return false;
  CorrParams& p = out->p;
  p.B = v[0]; p.C = v[1]; p.H = v[2]; p.W = v[3];
  p.kH = v[4]; p.kW = v[5]; p.pH = v[6]; p.pW = v[7]; p.sH = v[8]; p.sW = v[9];
  p.padH = v[10]; p.padW = v[11]; p.dilH = v[12]; p.dilW = v[13]; p.dpH = v[14]; p.dpW = v[15];
  out->max_threads = v[16];
  p.rH = (p.pH - 1) / 2;
  p.rW = (p.pW - 1) / 2;
  p.oH = (p.H + 2 * p.padH - ((p.kH - 1) * p.dilH + 1)) / p.sH + 1;
  p.oW = (p.W + 2 * p.padW - ((p.kW - 1) * p.dilW + 1)) / p.sW + 1;
  return p.oH > 0 && p.oW > 0;
}

// Direct loops over the definition, in double: forward and both gradients.
struct Naive {
  std::vector<double> out, grad1, grad2;
};

Naive naive(const CorrParams& p, const std::vector<double>& a, const std::vector<double>& b,
            const std::vector<double>& g) {
  Naive r;
  r.out.assign(size_t(p.B) * p.pH * p.pW * p.oH * p.oW, 0.0);
  r.grad1.assign(a.size(), 0.0);
  r.grad2.assign(b.size(), 0.0);
  auto in_idx = [&](int n, int c, int y, int x) {
    return ((size_t(n) * p.C + c) * p.H + y) * p.W + x;
  };
  for (int n = 0; n < p.B; ++n)
    for (int i = 0; i < p.pH; ++i)
      for (int j = 0; j < p.pW; ++j)
        for (int y = 0; y < p.oH; ++y)
          for (int x = 0; x < p.oW; ++x) {
            const size_t o = (((size_t(n) * p.pH + i) * p.pW + j) * p.oH + y) * p.oW + x;
            for (int ki = 0; ki < p.kH; ++ki)
              for (int kj = 0; kj < p.kW; ++kj) {
                const int r1 = y * p.sH - p.padH + ki * p.dilH;
                const int c1 = x * p.sW - p.padW + kj * p.dilW;
                const int r2 = r1 + (i - p.rH) * p.dpH;
                const int c2 = c1 + (j - p.rW) * p.dpW;
                if (r1 < 0 || r1 >= p.H || c1 < 0 || c1 >= p.W || r2 < 0 || r2 >= p.H ||
                    c2 < 0 || c2 >= p.W)
                  continue;
                for (int c = 0; c < p.C; ++c) {
                  r.out[o] += a[in_idx(n, c, r1, c1)] * b[in_idx(n, c, r2, c2)];
                  r.grad1[in_idx(n, c, r1, c1)] += g[o] * b[in_idx(n, c, r2, c2)];
                  r.grad2[in_idx(n, c, r2, c2)] += g[o] * a[in_idx(n, c, r1, c1)];
                }
              }
          }
  return r;
}

template <typename T>
double max_rel_error(const std::vector<T>& got, const std::vector<double>& want) {
  double err = 0.0, scale = 1e-30;
  for (size_t k = 0; k < want.size(); ++k) {
    const double value = static_cast<double>(static_cast<float>(got[k]));
    const double diff = std::isnan(value) ? INFINITY : std::fabs(value - want[k]);
    err = std::max(err, diff);
    scale = std::max(scale, std::fabs(want[k]));
  }
  return err / scale;
}

template <>
double max_rel_error<double>(const std::vector<double>& got, const std::vector<double>& want) {
  double err = 0.0, scale = 1e-30;
  for (size_t k = 0; k < want.size(); ++k) {
    const double diff = std::isnan(got[k]) ? INFINITY : std::fabs(got[k] - want[k]);
    err = std::max(err, diff);
    scale = std::max(scale, std::fabs(want[k]));
  }
  return err / scale;
}

// The tensor-core kernels (16-bit types), where they apply; appends to the case's line.
template <typename T>
bool run_mma(const Case& cs, const std::vector<T>& a, const std::vector<T>& b,
             const std::vector<T>& g, const Naive& want, double tolerance) {
  const CorrParams& p = cs.p;
  if (!mma_backward_applies(p)) {
    std::printf(" mma[n/a]");
    return true;
  }
  bool ok = true;
  with_mma_bands(p, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    if (mma_forward_applies(p)) {
      const MmaForwardGeometry geo = mma_forward_geometry(p, NT, std::max(1, cs.max_threads / 32));
      std::vector<T> out(want.out.size());
      launch(geo.gridX, p.B, geo.warps * 32, geo.smem, [&] {
        corr_forward_mma_kernel<T, T, NT>(a.data(), b.data(), out.data(), p, geo.warps,
                                          geo.tilesX, geo.ldA, geo.ldB, geo.ldD);
      });
      const double e_out = max_rel_error(out, want.out);
      ok = ok && e_out <= tolerance && geo.smem <= kSmemLimit;
      std::printf(" mma forward[NT=%d warps=%d tiles=%d] out=%.3g", NT, geo.warps, geo.tilesX,
                  e_out);
    }
    const MmaBackwardGeometry geo = mma_backward_geometry(p, NT, std::max(1, cs.max_threads / 32));
    std::vector<T> grad1(a.size()), grad2(b.size());
    launch(geo.gridX, p.B, geo.threads, geo.smem, [&] {
      corr_backward_mma_kernel<T, T, NT, false>(g.data(), b.data(), grad1.data(), p, geo.warpsX,
                                                geo.warpsC, geo.tilesX, geo.chunksC, geo.ldS,
                                                geo.ldG);
    });
    launch(geo.gridX, p.B, geo.threads, geo.smem, [&] {
      corr_backward_mma_kernel<T, T, NT, true>(g.data(), a.data(), grad2.data(), p, geo.warpsX,
                                               geo.warpsC, geo.tilesX, geo.chunksC, geo.ldS,
                                               geo.ldG);
    });
    const double e_g1 = max_rel_error(grad1, want.grad1);
    const double e_g2 = max_rel_error(grad2, want.grad2);
    ok = ok && e_g1 <= tolerance && e_g2 <= tolerance && geo.smem <= kSmemLimit;
    std::printf(" mma backward[NT=%d warps=%dx%d tiles=%d chunks=%d] grad1=%.3g grad2=%.3g", NT,
                geo.warpsX, geo.warpsC, geo.tilesX, geo.chunksC, e_g1, e_g2);
  });
  return ok;
}

template <typename T>
bool run_case(const Case& cs, double tolerance, const std::string& label) {
  const CorrParams& p = cs.p;
  using acc_t = typename AccType<T>::type;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal;
  const size_t n_in = size_t(p.B) * p.C * p.H * p.W;
  const size_t n_out = size_t(p.B) * p.pH * p.pW * p.oH * p.oW;
  std::vector<T> a(n_in), b(n_in), g(n_out);
  std::vector<double> ad(n_in), bd(n_in), gd(n_out);
  for (size_t k = 0; k < n_in; ++k) {
    a[k] = T(normal(rng));
    b[k] = T(normal(rng));
    ad[k] = static_cast<double>(static_cast<float>(a[k]));
    bd[k] = static_cast<double>(static_cast<float>(b[k]));
  }
  for (size_t k = 0; k < n_out; ++k) {
    g[k] = T(normal(rng));
    gd[k] = static_cast<double>(static_cast<float>(g[k]));
  }
  if constexpr (std::is_same_v<T, double>) {
    for (size_t k = 0; k < n_in; ++k) ad[k] = a[k], bd[k] = b[k];
    for (size_t k = 0; k < n_out; ++k) gd[k] = g[k];
  }
  const Naive want = naive(p, ad, bd, gd);

  std::vector<T> out(n_out), grad1(n_in), grad2(n_in);
  bool ok = true;
  with_forward_variant(p, [&](auto tdt, auto slide) {
    constexpr int TDT = decltype(tdt)::value;
    constexpr bool SLIDE = decltype(slide)::value;
    ForwardGeometry geo{};
    if (!forward_geometry<kForwardTXT, TDT>(p, sizeof(acc_t), cs.max_threads, &geo)) {
      std::printf("%s: forward geometry does not fit\n", label.c_str());
      ok = false;
      return;
    }
    launch(geo.gridX, p.B, geo.threads, geo.smem, [&] {
      corr_forward_kernel<T, kForwardTXT, TDT, SLIDE>(a.data(), b.data(), out.data(), p, geo.nXg,
                                                      geo.nDg, geo.tilesX);
    });
    std::printf("%s forward[TDT=%d slide=%d nXg=%d nDg=%d tiles=%d]", label.c_str(), TDT,
                int(SLIDE), geo.nXg, geo.nDg, geo.tilesX);
  });
  BackwardGeometry geo{};
  if (!backward_geometry<kBackwardTCT, kBackwardTXT>(p, sizeof(acc_t), cs.max_threads, &geo)) {
    std::printf("%s: backward geometry does not fit\n", label.c_str());
    return false;
  }
  launch(geo.gridX, p.B, geo.threads, geo.smem, [&] {
    corr_backward_kernel<T, kBackwardTCT, kBackwardTXT, false>(g.data(), b.data(), grad1.data(),
                                                               p, geo.nCg, geo.nXg, geo.tilesX,
                                                               geo.chunksC);
  });
  launch(geo.gridX, p.B, geo.threads, geo.smem, [&] {
    corr_backward_kernel<T, kBackwardTCT, kBackwardTXT, true>(g.data(), a.data(), grad2.data(),
                                                              p, geo.nCg, geo.nXg, geo.tilesX,
                                                              geo.chunksC);
  });
  const double e_out = max_rel_error(out, want.out);
  const double e_g1 = max_rel_error(grad1, want.grad1);
  const double e_g2 = max_rel_error(grad2, want.grad2);
  ok = ok && e_out <= tolerance && e_g1 <= tolerance && e_g2 <= tolerance;
  std::printf(" backward[nCg=%d nXg=%d tiles=%d chunks=%d] rel.err out=%.3g grad1=%.3g "
              "grad2=%.3g",
              geo.nCg, geo.nXg, geo.tilesX, geo.chunksC, e_out, e_g1, e_g2);
  if constexpr (!std::is_same_v<acc_t, T>) ok = run_mma(cs, a, b, g, want, tolerance) && ok;
  std::printf(" %s\n", ok ? "OK" : "FAIL");
  return ok;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s DTYPE CASE [CASE...]\n", argv[0]);
    return 2;
  }
  const std::string dtype = argv[1];
  bool all_ok = true;
  for (int k = 2; k < argc; ++k) {
    Case cs;
    if (!parse_case(argv[k], &cs)) {
      std::fprintf(stderr, "bad case: %s\n", argv[k]);
      return 2;
    }
    const std::string label = dtype + " " + argv[k];
    bool ok;
    if (dtype == "float")
      ok = run_case<float>(cs, 1e-5, label);
    else if (dtype == "double")
      ok = run_case<double>(cs, 1e-12, label);
    else if (dtype == "half")
      ok = run_case<c10::Half>(cs, 2e-3, label);
    else if (dtype == "bfloat16")
      ok = run_case<c10::BFloat16>(cs, 1.6e-2, label);
    else {
      std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
      return 2;
    }
    all_ok = all_ok && ok;
  }
  return all_ok ? 0 : 1;
}
