#!/usr/bin/env bash
# Prepares .gpu_kit/ for a GPU machine that has no network (run it here, with the package
# registries in reach), so that benchmarks/gpu_session.sh needs nothing from outside:
#
#   .gpu_kit/wheels/          kornia, kornia_rs and decord wheels for the GPU machine's Python
#   .gpu_kit/spatial_correlation_sampler-0.5.0.tar.gz   the package's sdist (benchmarks, parity tests)
#   .gpu_kit/davis2016_mini/  frames, annotations and image sets of a DAVIS-2016 folder
#
#   bash benchmarks/gpu_kit.sh
#
# Environment:
#   KIT=DIR          where to write (default: .gpu_kit/, ignored by git)
#   DAVIS_SRC=DIR    the DAVIS-2016 folder to copy (default: ../shared/data/davis2016_mini)
#   PY_VERSION=3.12  the GPU machine's Python, for the wheels' tags
#   LIMIT_MB=64      fail when the kit and the tracked files together exceed this many MiB
#                    (what may travel to the GPU machine)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="${KIT:-$ROOT/.gpu_kit}"
DAVIS_SRC="${DAVIS_SRC:-$ROOT/../shared/data/davis2016_mini}"
PY_VERSION="${PY_VERSION:-3.12}"
LIMIT_MB="${LIMIT_MB:-64}"
# the sdist's metadata step imports torch, so it is fetched with the project's environment
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || { echo "no Python with torch at $PYTHON: run 'make install' or set PYTHON" >&2; exit 2; }

mkdir -p "$KIT/wheels"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux2010_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp "${platforms[@]}" -d "$KIT/wheels" \
  "kornia==0.9.0" "kornia_rs==0.2.0" "decord==0.6.0"
"$PYTHON" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$KIT" \
  "spatial-correlation-sampler==0.5.0"

if [[ -d "$DAVIS_SRC/JPEGImages" ]]; then
  mkdir -p "$KIT/davis2016_mini"
  for part in JPEGImages Annotations ImageSets; do
    [[ -d "$DAVIS_SRC/$part" ]] && cp -r "$DAVIS_SRC/$part" "$KIT/davis2016_mini/"
  done
else
  echo "no DAVIS folder at $DAVIS_SRC (set DAVIS_SRC): the real-data stages will lack data" >&2
fi

kit_bytes=$(du -sb "$KIT" | cut -f1)
tracked_bytes=$(cd "$ROOT" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total_mb=$(( (kit_bytes + tracked_bytes) / 1048576 ))
echo "kit: $KIT ($(( kit_bytes / 1048576 )) MiB; with the tracked files $total_mb MiB)"
ls "$KIT" "$KIT/wheels"
if (( total_mb > LIMIT_MB )); then
  echo "more than $LIMIT_MB MiB would travel: leave decord out or copy fewer sequences" >&2
  exit 1
fi
