// Runs the fused context top-k CUDA kernel (densessl/ops/csrc/context_topk_kernels.h) on the
// CPU (see cuda_emulation.h) and compares it with a direct search over every candidate.
//
// Usage: context_topk_emulation DTYPE H,W,C,F,k,radius,square,splits SLOTS [CASE SLOTS ...]
//   DTYPE: float, half or bfloat16. SLOTS: frame:windowed:multiplicity entries joined by '/',
//   e.g. 0:0:1/0:1:3/2:1:1. Prints one line per case; exit status 1 on a mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cuda_emulation.h"
#include "context_topk_kernels.h"

using namespace densessl::topk;

struct Slot {
  int frame, windowed, multiplicity;
};

struct Case {
  ContextTopKParams p{};
  int frames = 1;
  std::vector<Slot> slots;
};

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = text.find(sep, start);
    parts.push_back(text.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return parts;
}

bool parse_case(const std::string& shape, const std::string& slots, Case* out) {
  const auto v = split(shape, ',');
  if (v.size() != 8) return false;
  ContextTopKParams& p = out->p;
  p.H = std::atoi(v[0].c_str());
  p.W = std::atoi(v[1].c_str());
  p.C = std::atoi(v[2].c_str());
  out->frames = std::atoi(v[3].c_str());
  p.k = std::atoi(v[4].c_str());
  p.radius = static_cast<float>(std::atof(v[5].c_str()));
  p.square = std::atoi(v[6].c_str());
  p.splits = std::atoi(v[7].c_str());
  p.reach = p.square ? static_cast<int>(std::floor(p.radius))
                     : static_cast<int>(std::ceil(p.radius)) - 1;
  p.tiles_x = (p.W + kTile - 1) / kTile;
  for (const auto& entry : split(slots, '/')) {
    const auto f = split(entry, ':');
    if (f.size() != 3) return false;
    out->slots.push_back({std::atoi(f[0].c_str()), std::atoi(f[1].c_str()),
                          std::atoi(f[2].c_str())});
  }
  p.num_slots = static_cast<int>(out->slots.size());
  return p.k >= 1 && p.k <= kMaxK && p.C >= 1 && p.splits >= 1;
}

bool naive_in_window(const ContextTopKParams& p, int dy, int dx) {
  if (p.square) return std::abs(dy) <= p.radius && std::abs(dx) <= p.radius;
  return double(dy) * dy + double(dx) * dx < double(p.radius) * p.radius;
}

template <typename T>
bool run_case(const Case& cs, const std::string& label) {
  const ContextTopKParams& p = cs.p;
  const int N = p.H * p.W;
  std::mt19937 rng(4321);
  std::normal_distribution<float> normal;
  std::vector<T> queries(size_t(N) * p.C), keys(size_t(cs.frames) * N * p.C);
  for (auto& v : queries) v = T(normal(rng));
  for (auto& v : keys) v = T(normal(rng));
  // Exact repeats of a few keys make ties, which the kernel may order either way.
  for (int f = 0; f < cs.frames; ++f)
    for (int c = 0; c < p.C; ++c) keys[(size_t(f) * N + N - 1) * p.C + c] = keys[size_t(f) * N * p.C + c];
  auto value = [](const T& v) { return double(float(v)); };
  auto score = [&](int q, int frame, int pos) {
    double s = 0.0;
    for (int c = 0; c < p.C; ++c)
      s += value(queries[size_t(q) * p.C + c]) * value(keys[(size_t(frame) * N + pos) * p.C + c]);
    return s;
  };

  std::vector<int> frame_of(p.num_slots), flags(p.num_slots);
  for (int s = 0; s < p.num_slots; ++s) {
    frame_of[s] = cs.slots[s].frame;
    flags[s] = cs.slots[s].windowed | (cs.slots[s].multiplicity << 1);
  }
  std::vector<float> values(size_t(p.splits) * N * p.k, NAN);
  std::vector<int> indices(size_t(p.splits) * N * p.k, -7);
  const int tiles = ((p.H + kTile - 1) / kTile) * p.tiles_x;
  launch(tiles, p.splits, kThreads, context_topk_smem_bytes(), [&] {
    context_topk_kernel<T>(queries.data(), keys.data(), frame_of.data(), flags.data(),
                           values.data(), indices.data(), p);
  });

  const double tolerance = 1e-5 * std::sqrt(double(p.C));
  int bad = 0;
  for (int q = 0; q < N && bad < 5; ++q) {
    const int qy = q / p.W, qx = q % p.W;
    // Every candidate with its multiplicity, best first.
    std::vector<double> want;
    std::map<int, int> allowed;  // encoded candidate -> copies
    for (int s = 0; s < p.num_slots; ++s) {
      for (int pos = 0; pos < N; ++pos) {
        if (cs.slots[s].windowed && !naive_in_window(p, pos / p.W - qy, pos % p.W - qx)) continue;
        const double v = score(q, cs.slots[s].frame, pos);
        for (int m = 0; m < cs.slots[s].multiplicity; ++m) want.push_back(v);
        allowed[s * N + pos] = cs.slots[s].multiplicity;
      }
    }
    std::sort(want.rbegin(), want.rend());
    // The caller's merge of the splits: the k best of splits·k entries.
    std::vector<std::pair<float, int>> got;
    for (int g = 0; g < p.splits; ++g)
      for (int i = 0; i < p.k; ++i) {
        const size_t at = (size_t(g) * N + q) * p.k + i;
        got.push_back({values[at], indices[at]});
      }
    std::stable_sort(got.begin(), got.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    std::map<int, int> used;
    for (int i = 0; i < p.k; ++i) {
      const float v = got[i].first;
      const int index = got[i].second;
      bool ok;
      if (i >= static_cast<int>(want.size())) {
        ok = std::isinf(v) && v < 0 && index == -1;
      } else {
        const auto found = allowed.find(index);
        ok = found != allowed.end() && ++used[index] <= found->second &&
             std::fabs(v - want[i]) <= tolerance &&
             std::fabs(score(q, frame_of[index / N], index % N) - want[i]) <= tolerance;
      }
      if (!ok) {
        std::printf("%s: query %d rank %d got (%g, %d), want %g\n", label.c_str(), q, i, v,
                    index, i < static_cast<int>(want.size()) ? want[i] : -INFINITY);
        ++bad;
        break;
      }
    }
  }
  std::printf("%s %s\n", label.c_str(), bad ? "FAIL" : "OK");
  return bad == 0;
}

int main(int argc, char** argv) {
  if (argc < 4 || argc % 2 != 0) {
    std::fprintf(stderr, "usage: %s DTYPE CASE SLOTS [CASE SLOTS ...]\n", argv[0]);
    return 2;
  }
  const std::string dtype = argv[1];
  bool all_ok = true;
  for (int a = 2; a + 1 < argc; a += 2) {
    Case cs;
    if (!parse_case(argv[a], argv[a + 1], &cs)) {
      std::fprintf(stderr, "bad case: %s %s\n", argv[a], argv[a + 1]);
      return 2;
    }
    const std::string label = dtype + " " + argv[a] + " " + argv[a + 1];
    bool ok;
    if (dtype == "float")
      ok = run_case<float>(cs, label);
    else if (dtype == "half")
      ok = run_case<c10::Half>(cs, label);
    else if (dtype == "bfloat16")
      ok = run_case<c10::BFloat16>(cs, label);
    else {
      std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
      return 2;
    }
    all_ok = all_ok && ok;
  }
  return all_ok ? 0 : 1;
}
