#!/usr/bin/env bash
# Builds spatial-correlation-sampler 0.5.0, the package densessl.ops replaces, into a folder of
# its own (nothing is installed into the environment), for the parity tests and the correlation
# benchmark. Its setup.py asks for C++17, which current PyTorch headers reject: the copy built
# here asks for C++20.
#
#   bash benchmarks/build_correlation_package.sh            # CPU only, into .scs_site/
#   PYTHONPATH=.scs_site .venv/bin/python -m pytest -q tests/test_correlation.py -k parity
#   GPU_ARCH=90 bash benchmarks/build_correlation_package.sh DIR   # with its CUDA kernels (sm_90)
#
# Arguments: TARGET (default .scs_site/, ignored by git).
# Environment:
#   SCS_SDIST=FILE  the sdist (default: .gpu_kit/'s copy when present, else fetched from PyPI)
#   GPU_ARCH=90     compute capability digits: build the CUDA kernels too (needs nvcc)
#   PYTHON          the Python with torch (default .venv/bin/python)
#   MAX_JOBS        parallel compile jobs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="$(realpath -m "${1:-$ROOT/.scs_site}")"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
GPU_ARCH="${GPU_ARCH:-}"
if [[ "$PYTHON" == */* ]]; then
  # absolute (still valid after a cd) without following the venv's symlink
  [[ -x "$PYTHON" ]] && PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
fi
[[ -x "$PYTHON" ]] || command -v "$PYTHON" >/dev/null || {
  echo "no Python with torch at $PYTHON: run 'make install' or set PYTHON" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sdist="${SCS_SDIST:-}"
if [[ -z "$sdist" && -f "$ROOT/.gpu_kit/spatial_correlation_sampler-0.5.0.tar.gz" ]]; then
  sdist="$ROOT/.gpu_kit/spatial_correlation_sampler-0.5.0.tar.gz"
fi
if [[ -z "$sdist" ]]; then
  # the sdist's metadata step imports torch, hence no build isolation
  "$PYTHON" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$work" \
    "spatial-correlation-sampler==0.5.0"
  sdist="$work/spatial_correlation_sampler-0.5.0.tar.gz"
fi
[[ -f "$sdist" ]] || { echo "SCS_SDIST: no file at $sdist" >&2; exit 2; }

src="$work/src"
mkdir -p "$src" && tar xzf "$sdist" -C "$src" --strip-components 1
sed -i 's/-std=c++17/-std=c++20/' "$src/setup.py"
# the toolkit as densessl's own build finds it: $CUDA_HOME, else the one behind the nvcc on PATH
# (wrapper scripts followed; torch would take the parent of a /usr/local/bin/nvcc wrapper)
cuda_home="$(cd "$ROOT" && "$PYTHON" -c \
  'from densessl.ops._jit import find_cuda_home; print(find_cuda_home() or "")')"
if [[ -z "$GPU_ARCH" ]]; then
  sed -i 's/^CPU_ONLY = False/CPU_ONLY = True/' "$src/setup.py"
  # its CPU sources include c10/cuda headers all the same: point them at the CUDA runtime
  # headers of the toolkit or of the nvidia-cuda-runtime wheel that comes with torch
  include=$(CUDA_TOOLKIT="$cuda_home" "$PYTHON" - <<'EOF'
import glob, os, site
home = os.environ["CUDA_TOOLKIT"]
candidates = [os.path.join(home, "include")] if home else []
for base in site.getsitepackages():
    candidates += sorted(glob.glob(os.path.join(base, "nvidia", "*", "include")))
complete = lambda d: all(os.path.isfile(os.path.join(d, f)) for f in ("cuda_runtime.h", "crt/host_config.h"))
print(next((c for c in candidates if complete(c)), ""))
EOF
)
  [[ -n "$include" ]] || { echo "cuda_runtime.h not found (no CUDA toolkit, no nvidia-cuda-runtime wheel)" >&2; exit 2; }
  build_env=(CFLAGS="-I$include")
else
  [[ -n "$cuda_home" ]] || { echo "GPU_ARCH=$GPU_ARCH: no CUDA toolkit found (set CUDA_HOME)" >&2; exit 2; }
  export CUDA_HOME="$cuda_home" PATH="$cuda_home/bin:$PATH"
  build_env=(GPU_ARCH="$GPU_ARCH" TORCH_CUDA_ARCH_LIST="${GPU_ARCH:0:1}.${GPU_ARCH:1}")
fi

rm -rf "$TARGET"
env "${build_env[@]}" "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation \
  --target "$TARGET" "$src"
PYTHONPATH="$TARGET" "$PYTHON" -c "import spatial_correlation_sampler as s; print('built', s.__file__)"
echo "use it with: PYTHONPATH=$TARGET"
