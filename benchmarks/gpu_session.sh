#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a CUDA machine (an H100 for the figures in
# BENCHMARKS.md). Uses the machine's own PyTorch: the project runs from this checkout through
# PYTHONPATH, nothing is installed into the system.
#
#   bash benchmarks/gpu_session.sh                   # all stages
#   STAGES="build test corr" bash benchmarks/gpu_session.sh
#
# Environment:
#   RESULTS=DIR    where the logs and tables go (default: gpu_results/)
#   WHEELS=DIR     install every wheel in DIR first, offline, into $RESULTS/site (e.g. kornia,
#                  kornia_rs and decord when the machine lacks them)
#   SCS_SDIST=F    spatial_correlation_sampler-0.5.0.tar.gz: build it (its -std=c++17 patched to
#                  c++20, for this GPU's architecture) so that the benchmarks and the parity
#                  tests compare with it
#   STAGES         any of: env build test corr prop crw vos crw-real crw-real-roi vos-real
#                  vos-real-nocap (default: the first seven, in that order)
#   DAVIS=DIR      a DAVIS-2016-layout folder (such as davis2016_mini) for the real-data stages
#
# Stages (each writes one log or table into $RESULTS):
#   env    nvidia-smi, versions                                  env.txt
#   build  compile both extensions (tools/build_ops.py)          build_ops.log
#   test   pytest -m cuda (kernels against the references)       pytest_cuda.log
#   corr   benchmarks/bench_correlation.py                       correlation.md
#   prop   benchmarks/bench_propagation.py, fused kernel and per-frame ops, on a generated
#          480p set                                              propagation.md
#   crw    benchmarks/bench_crw.py (model variants, data path)   crw.md, crw.json
#   vos    benchmarks/bench_motion_vos.py, fp32 and bf16          motion_vos.md
#   crw-real   6 minutes of CRW training with the default recipe (bf16, channels_last) on
#              $DAVIS's frames, then label propagation on $DAVIS   crw_real.log
#   crw-real-roi   the same with model.mode=roi                     crw_real_roi.log
#   vos-real   DIS flow of $DAVIS, 6 minutes of CIS training with the default recipe (bf16),
#              then the unsupervised evaluation of the raw masks   vos_real.log
#   vos-real-nocap the same with model.cap_ratio=false (the reference loss) vos_real_nocap.log
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${RESULTS:-$ROOT/gpu_results}"
STAGES="${STAGES:-env build test corr prop crw vos}"
RUNS="$RESULTS/runs"
PYTHON="${PYTHON:-python3}"
mkdir -p "$RESULTS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$RESULTS/torch_extensions}"
cd "$ROOT" || exit 1

if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$RESULTS/site" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$RESULTS/site"
fi

if [[ -n "${SCS_SDIST:-}" ]]; then
  arch=$("$PYTHON" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
  src="$RESULTS/scs_src"
  rm -rf "$src" && mkdir -p "$src" && tar xzf "$SCS_SDIST" -C "$src" --strip-components 1
  sed -i 's/-std=c++17/-std=c++20/' "$src/setup.py"
  GPU_ARCH="$arch" TORCH_CUDA_ARCH_LIST="${arch:0:1}.${arch:1}" \
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --target "$RESULTS/site" \
    "$src" >"$RESULTS/scs_build.log" 2>&1 \
    && echo "spatial-correlation-sampler built for sm_$arch" \
    || echo "spatial-correlation-sampler did not build: see scs_build.log"
  export PYTHONPATH="$PYTHONPATH:$RESULTS/site"
fi

run() {  # run NAME TIMEOUT CMD...: one stage, its output into $RESULTS/NAME
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$RESULTS/$name" 2>&1
  local status=$?
  echo "   exit $status after $((SECONDS - start)) s"
  tail -n 25 "$RESULTS/$name"
}

for stage in $STAGES; do
  case $stage in
    env)
      run env.txt 60 bash -c "date -u; nvidia-smi; $PYTHON -c 'import torch, sys; \
print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; \
nvcc --version | tail -2" ;;
    build) run build_ops.log 900 "$PYTHON" tools/build_ops.py ;;
    test) run pytest_cuda.log 900 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests ;;
    corr) run correlation.md 600 "$PYTHON" benchmarks/bench_correlation.py --device cuda --repeats 50 ;;
    prop)
      run propagation.md 600 bash -c "$PYTHON benchmarks/bench_propagation.py --synthetic 4 \
--frames 60 && $PYTHON benchmarks/bench_propagation.py --synthetic 4 --frames 60 \
--opt fused_kernel=false" ;;
    crw) run crw.md 900 "$PYTHON" benchmarks/bench_crw.py --out "$RESULTS/crw.json" ;;
    vos)
      run motion_vos.md 600 bash -c "$PYTHON benchmarks/bench_motion_vos.py && \
$PYTHON benchmarks/bench_motion_vos.py --amp bf16 --channels-last" ;;
    crw-real|crw-real-roi)
      [[ -d "${DAVIS:-}/JPEGImages" ]] || { echo "$stage needs DAVIS=<DAVIS-2016 folder>" >&2; exit 2; }
      mode=patch; [[ $stage == crw-real-roi ]] && mode=roi
      run "${stage//-/_}.log" 600 bash -c "$PYTHON tools/train_crw.py \
data.frames=$DAVIS/JPEGImages/480p data.frames_fps=24 model.mode=$mode train.max_minutes=6 \
train.amp=bf16 train.channels_last=true train.num_workers=12 train.out_dir=$RUNS \
train.name=$stage train.progress=false --overwrite && $PYTHON -m densessl.cli eval-davis \
--backbone resnet18-crw --weights $RUNS/$stage/checkpoints/backbone.pt --davis-root $DAVIS \
--year 2016 --out $RUNS/$stage-eval --overwrite" ;;
    vos-real|vos-real-nocap)
      [[ -d "${DAVIS:-}/JPEGImages" ]] || { echo "$stage needs DAVIS=<DAVIS-2016 folder>" >&2; exit 2; }
      cap=true; [[ $stage == vos-real-nocap ]] && cap=false
      # compute-flow skips the flow files that exist, so the second stage reuses the first's
      run "${stage//-/_}.log" 600 bash -c "$PYTHON tools/compute_flow.py --davis-root $DAVIS --year 2016 \
--set val --out $RUNS/flows --workers 16 && $PYTHON tools/train_motion_vos.py \
--config configs/motion_vos.yaml data.davis_root=$DAVIS data.flow_root=$RUNS/flows \
data.split=val model.cap_ratio=$cap train.max_minutes=6 train.amp=bf16 train.num_workers=12 \
train.out_dir=$RUNS train.name=$stage train.progress=false --overwrite && $PYTHON \
tools/eval_motion_vos.py --checkpoint $RUNS/$stage/checkpoints/motion_vos.pt --davis-root $DAVIS \
--flow-root $RUNS/flows --out $RUNS/$stage-eval --overwrite" ;;
    *) echo "unknown stage '$stage' (expected env build test corr prop crw vos crw-real crw-real-roi" \
            "vos-real vos-real-nocap)" >&2
       exit 2 ;;
  esac
done
