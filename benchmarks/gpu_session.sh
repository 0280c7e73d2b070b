#!/usr/bin/env bash
# Every GPU check and benchmark, for a CUDA machine (an H100 for the figures in BENCHMARKS.md).
# Uses the machine's own PyTorch: the project runs from this checkout through PYTHONPATH, nothing
# is installed into the system. Prepare the offline kit first (`bash benchmarks/gpu_kit.sh`: the
# wheels the machine lacks, the package's sdist and the DAVIS mini set in .gpu_kit/); it is picked
# up by default.
#
#   BUDGET_S=540 bash benchmarks/gpu_session.sh      # the benchmark stages, in priority order
#   STAGES=crw-real BUDGET_S=570 bash benchmarks/gpu_session.sh   # one real-data stage per run
#
# Environment:
#   STAGES         any of: env build scs test corr crw vos prop crw-compile vos-compile
#                  crw-real crw-real-roi vos-real vos-real-nocap vos-real-t1 vos-real-hard
#                  (default: the first ten, in that order)
#   BUDGET_S=N     wall-clock budget of the whole session in seconds: each stage's time limit is
#                  cut to what is left, a stage is skipped (and says so) when too little is left
#                  (a real-data stage needs its whole limit), and the results are packed in time
#   REAL_MINUTES   training minutes of each real-data stage (default 6)
#   KIT=DIR        the kit of benchmarks/gpu_kit.sh (default: .gpu_kit/)
#   RESULTS=DIR    where the logs and tables go (default: gpu_results/)
#   OUT=DIR        also pack the logs, tables and run logs (no checkpoints) into
#                  DIR/gpu_results.tar.gz at the end, whatever happened
#   WHEELS=DIR     install every wheel in DIR first, offline, into $RESULTS/site (default:
#                  .gpu_kit/wheels when present)
#   SCS_SDIST=F    spatial_correlation_sampler-0.5.0.tar.gz: build it (its -std=c++17 patched to
#                  c++20, for this GPU's architecture) so that the benchmarks and the parity
#                  tests compare with it (default: the kit's copy when present)
#   DAVIS=DIR      a DAVIS-2016-layout folder for the real-data stages (default:
#                  .gpu_kit/davis2016_mini when present)
#
# Stages (each writes one log or table into $RESULTS):
#   env    nvidia-smi, versions                                  env.txt
#   build  compile both extensions (tools/build_ops.py)          build_ops.log
#   scs    build the package from SCS_SDIST into $RESULTS/site   scs_build.log
#   test   pytest -m cuda (kernels against the references)       pytest_cuda.log
#   corr   benchmarks/bench_correlation.py                       correlation.md
#   crw    benchmarks/bench_crw.py, eager variants + data path    crw.md, crw.json
#   vos    benchmarks/bench_motion_vos.py, fp32 and bf16          motion_vos.md
#   prop   benchmarks/bench_propagation.py, fused kernel and per-frame ops, on a generated
#          480p set                                              propagation.md
#   crw-compile  bench_crw.py's torch.compile variants           crw_compile.md, crw_compile.json
#   vos-compile  bench_motion_vos.py with torch.compile (bf16)   motion_vos_compile.md
#   crw-real   REAL_MINUTES of CRW training with the default recipe (bf16, channels_last) on
#              $DAVIS's frames, then label propagation on $DAVIS   crw_real.log
#   crw-real-roi   the same with model.mode=roi                     crw_real_roi.log
#   vos-real   DIS flow of $DAVIS, REAL_MINUTES of CIS training with the default recipe (bf16),
#              then the unsupervised evaluation of the raw masks   vos_real.log
#   vos-real-nocap the same with model.cap_ratio=false (the reference loss) vos_real_nocap.log
#   vos-real-t1    the same as vos-real with model.mask_temperature=1  vos_real_t1.log
#   vos-real-hard  the same with model.hard_weights=true              vos_real_hard.log
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="${KIT:-$ROOT/.gpu_kit}"
RESULTS="${RESULTS:-$ROOT/gpu_results}"
STAGES="${STAGES:-env build scs test corr crw vos prop crw-compile vos-compile}"
BUDGET_S="${BUDGET_S:-0}"
REAL_MINUTES="${REAL_MINUTES:-6}"
# the kit's files are defaults: set a variable (empty: none) to override
[[ -z "${WHEELS+set}" && -d "$KIT/wheels" ]] && WHEELS="$KIT/wheels"
[[ -z "${SCS_SDIST+set}" && -f "$KIT/spatial_correlation_sampler-0.5.0.tar.gz" ]] && \
  SCS_SDIST="$KIT/spatial_correlation_sampler-0.5.0.tar.gz"
[[ -z "${DAVIS+set}" && -d "$KIT/davis2016_mini/JPEGImages" ]] && DAVIS="$KIT/davis2016_mini"
RUNS="$RESULTS/runs"
PYTHON="${PYTHON:-python3}"
PACK_S=20   # kept back from the budget for packing the results
mkdir -p "$RESULTS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$RESULTS/torch_extensions}"
cd "$ROOT" || exit 1

pack() {  # the logs, tables and run logs (no checkpoints, flow or pictures) into $OUT
  [[ -n "${OUT:-}" ]] || return 0
  mkdir -p "$OUT"
  (cd "$RESULTS" && find . -maxdepth 1 -type f -print0 && \
     find runs \( -name '*.csv' -o -name 'log.jsonl' -o -name 'config.yaml' -o -name 'scores.txt' \) \
       -print0 2>/dev/null) | tar czf "$OUT/gpu_results.tar.gz" -C "$RESULTS" --null -T -
  echo "packed $(du -h "$OUT/gpu_results.tar.gz" | cut -f1) into $OUT/gpu_results.tar.gz"
}
trap pack EXIT

if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$RESULTS/site" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$RESULTS/site"
fi

seconds_left() {  # what the budget leaves for stages (a large number without a budget)
  if (( BUDGET_S > 0 )); then echo $(( BUDGET_S - SECONDS - PACK_S )); else echo 999999; fi
}

run() {  # run NAME LIMIT NEED CMD...: one stage, its output into $RESULTS/NAME
  # LIMIT: the stage's time limit, cut to what the budget leaves; NEED: the seconds it needs to start
  local name=$1 limit=$2 need=$3 left
  shift 3
  left=$(seconds_left)
  if (( left < need )); then
    echo "== $name: skipped, ${left} s of the budget left, ${need} s needed" | tee "$RESULTS/$name"
    return
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout -k 10 "$limit" "$@" >"$RESULTS/$name" 2>&1
  local status=$?
  echo "   exit $status after $((SECONDS - start)) s"
  tail -n 25 "$RESULTS/$name"
}

need_davis() {
  [[ -d "${DAVIS:-}/JPEGImages" ]] && return 0
  echo "$1 needs DAVIS=<DAVIS-2016 folder> (or .gpu_kit/davis2016_mini from benchmarks/gpu_kit.sh)" >&2
  exit 2
}

# a real-data stage's limit: its training minutes plus setup and evaluation (and flow for CIS)
train_s=$(python3 -c "print(int(float('$REAL_MINUTES') * 60))" 2>/dev/null) || {
  echo "REAL_MINUTES must be a number, got '$REAL_MINUTES'" >&2; exit 2; }

for stage in $STAGES; do
  case $stage in
    env)
      run env.txt 60 10 bash -c "date -u; nvidia-smi; $PYTHON -c 'import torch, sys; \
print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; \
nvcc --version | tail -2; echo 'budget ${BUDGET_S} s, stages: $STAGES'" ;;
    build) run build_ops.log 600 60 "$PYTHON" tools/build_ops.py ;;
    scs)
      if [[ -z "${SCS_SDIST:-}" ]]; then
        echo "== scs: skipped (no SCS_SDIST): the package is not compared"
        continue
      fi
      arch=$("$PYTHON" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
      run scs_build.log 400 60 env SCS_SDIST="$SCS_SDIST" GPU_ARCH="$arch" MAX_JOBS=16 PYTHON="$PYTHON" \
        bash benchmarks/build_correlation_package.sh "$RESULTS/site"
      export PYTHONPATH="$PYTHONPATH:$RESULTS/site" ;;
    test) run pytest_cuda.log 420 60 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests ;;
    corr) run correlation.md 300 40 "$PYTHON" benchmarks/bench_correlation.py --device cuda --repeats 50 ;;
    crw)
      run crw.md 360 60 "$PYTHON" benchmarks/bench_crw.py --variants fp32 bf16-cl roi-fp32 roi-bf16-cl \
        --workers 0 8 16 --out "$RESULTS/crw.json" ;;
    vos)
      run motion_vos.md 240 40 bash -c "$PYTHON benchmarks/bench_motion_vos.py && \
$PYTHON benchmarks/bench_motion_vos.py --amp bf16 --channels-last" ;;
    prop)
      run propagation.md 300 60 bash -c "$PYTHON benchmarks/bench_propagation.py --synthetic 4 \
--frames 60 && $PYTHON benchmarks/bench_propagation.py --synthetic 4 --frames 60 \
--opt fused_kernel=false" ;;
    crw-compile)
      run crw_compile.md 420 120 "$PYTHON" benchmarks/bench_crw.py --skip-data \
        --variants bf16-cl-compile roi-bf16-cl-compile --out "$RESULTS/crw_compile.json" ;;
    vos-compile)
      run motion_vos_compile.md 300 120 "$PYTHON" benchmarks/bench_motion_vos.py --amp bf16 \
        --channels-last --compile ;;
    crw-real|crw-real-roi)
      need_davis "$stage"
      mode=patch; [[ $stage == crw-real-roi ]] && mode=roi
      run "${stage//-/_}.log" $((train_s + 150)) $((train_s + 150)) bash -c "$PYTHON tools/train_crw.py \
data.frames=$DAVIS/JPEGImages/480p data.frames_fps=24 model.mode=$mode train.max_minutes=$REAL_MINUTES \
train.amp=bf16 train.channels_last=true train.num_workers=12 train.out_dir=$RUNS \
train.name=$stage train.progress=false --overwrite && $PYTHON -m densessl.cli eval-davis \
--backbone resnet18-crw --weights $RUNS/$stage/checkpoints/backbone.pt --davis-root $DAVIS \
--year 2016 --out $RUNS/$stage-eval --overwrite" ;;
    vos-real|vos-real-nocap|vos-real-t1|vos-real-hard)
      need_davis "$stage"
      # the one override that sets a variant apart; vos-real follows configs/motion_vos.yaml
      case $stage in
        vos-real-nocap) variant="model.cap_ratio=false" ;;
        vos-real-t1) variant="model.mask_temperature=1" ;;
        vos-real-hard) variant="model.hard_weights=true" ;;
        *) variant="" ;;
      esac
      # compute-flow skips the flow files that exist, so the second stage reuses the first's
      run "${stage//-/_}.log" $((train_s + 180)) $((train_s + 180)) bash -c "$PYTHON tools/compute_flow.py \
--davis-root $DAVIS --year 2016 --set val --out $RUNS/flows --workers 16 && $PYTHON \
tools/train_motion_vos.py --config configs/motion_vos.yaml data.davis_root=$DAVIS \
data.flow_root=$RUNS/flows data.split=val $variant train.max_minutes=$REAL_MINUTES \
train.amp=bf16 train.num_workers=12 train.out_dir=$RUNS train.name=$stage train.progress=false \
--overwrite && $PYTHON tools/eval_motion_vos.py --checkpoint $RUNS/$stage/checkpoints/motion_vos.pt \
--davis-root $DAVIS --flow-root $RUNS/flows --out $RUNS/$stage-eval --overwrite --temporal" ;;
    *) echo "unknown stage '$stage' (expected env build scs test corr crw vos prop crw-compile" \
            "vos-compile crw-real crw-real-roi vos-real vos-real-nocap vos-real-t1 vos-real-hard)" >&2
       exit 2 ;;
  esac
done
