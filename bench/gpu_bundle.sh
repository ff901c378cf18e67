#!/usr/bin/env bash
# Ray for a GPU machine that has a CUDA build of torch but no Ray and no package index (an air-gapped
# node, or a lent machine that takes at most 64 MiB of files): build a trimmed bundle here, run
# bench/gpu_check.sh with it there.
#
#   bash bench/gpu_bundle.sh build DIR [PY]   # here: DIR/site.tar.xz (~31 MB) for CPython PY (default 3.12)
#   bash bench/gpu_bundle.sh run DIR [OUT]     # there, in the repo root: unpack, check imports, gpu_check
#   bash bench/gpu_bundle.sh run DIR OUT CMD... # the same, then CMD (e.g. python bench/hm_scale.py
#                                               #   --device cuda --no-docs) in place of gpu_check
#
# Why a bundle: Ray 2.60's wheel is 79 MB; the Java jars, RLlib, Serve, LLM and the dashboard's web
# client (none used by the cache, Train or Tune) are dropped and the rest xz-compressed. Beside it go
# the packages Ray's core, Train and Tune need that a plain CUDA image tends to lack (the list below).
# `run` gives every step a time limit and writes its log as it goes, so a hang costs minutes, not the
# lease. Measured 2026-12-04 (docs/BENCHMARKS.md, GPU check).
set -uo pipefail
cd "$(dirname "$0")/.."
EXTRA="jsonschema jsonschema-specifications referencing rpds-py pydantic pydantic-core annotated-types
typing-inspection tensorboardX msgpack typing_extensions"
DROP="ray/jars ray/rllib ray/serve ray/llm ray/dashboard/client/build"

build() {
  local dir=$1 py=${2:-3.12}
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$dir"
  local pins=("ray==$(python -c 'import ray; print(ray.__version__)')")
  for p in $EXTRA; do
    v=$(python -m pip show "$p" 2>/dev/null | awk '/^Version/{print $2}')  # the versions tested here
    pins+=("$p${v:+==$v}")
  done
  # pip installs for the target interpreter and keeps the Ray binaries executable
  python -m pip install -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --target "$tmp/site" "${pins[@]}" || return 2
  (cd "$tmp/site" && rm -rf bin $DROP && find . -name '*.pyc' -delete)  # bin: scripts for this machine's python
  tar -C "$tmp/site" -cJf "$dir/site.tar.xz" . || return 2
  ls -l "$dir/site.tar.xz"
}

step() {  # step SECONDS LABEL CMD...: a time limit per step, the log kept under OUT
  local limit=$1 label=$2
  shift 2
  echo "[gpu_bundle] $label" | tee -a "$OUT_DIR/gpu_bundle.log"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT_DIR/gpu_bundle.log"
  local rc=${PIPESTATUS[0]}
  local why=""
  [ "$rc" = 124 ] && why=": stopped at its ${limit} s limit"
  [ "$rc" = 0 ] || echo "[gpu_bundle] $label: exit $rc$why" | tee -a "$OUT_DIR/gpu_bundle.log"
  return "$rc"
}

run() {
  local dir=$1 py work
  OUT_DIR=${2:-${OUT:-$(mktemp -d)}}
  shift $(( $# < 2 ? $# : 2 ))
  mkdir -p "$OUT_DIR"
  py=$(command -v python3)
  # fresh folders: never write through a link left by an earlier run; global, for the EXIT trap
  site=$(mktemp -d) bin=$(mktemp -d)
  trap 'rm -rf "$site" "$bin"' EXIT
  step 120 "unpack" tar -C "$site" -xJf "$dir/site.tar.xz" || return 3
  # a wrapper, not a link: a linked venv interpreter outside its venv loses the venv's packages
  printf '#!/bin/sh\nexec %s "$@"\n' "$py" >"$bin/python"
  chmod +x "$bin/python"
  export PATH="$bin:$PATH" PYTHONPATH="$site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  for m in torch transformers pyarrow ray ray.train.torch ray.tune xsmoe_ray.stream; do
    step 120 "import $m" python -c "import $m; print($m.__name__, getattr($m, '__version__', ''), $m.__file__)" || return 4
  done
  step 180 "a Ray task" python -c "import ray; ray.init(num_cpus=1, include_dashboard=False); print('task ->', ray.get(ray.remote(lambda: 1).remote())); ray.shutdown()" || return 5
  if [ $# -gt 0 ]; then
    step 540 "$*" "$@"
    return
  fi
  work=$(mktemp -d)  # the demo run's many files stay out of OUT: a few named files come back
  step 540 "gpu_check" bash bench/gpu_check.sh "$work"
  local rc=$?
  cp "$work"/{gpu_check.json,gpu_check.log,demo_stream.log} "$OUT_DIR"/ 2>/dev/null
  cp "$work/demo_run/history.json" "$OUT_DIR/demo_history.json" 2>/dev/null
  return "$rc"
}

case "${1:-}" in
  build) shift; build "$@" ;;
  run) shift; run "$@" ;;
  *) sed -n 2,14p "$0"; exit 2 ;;
esac
