#!/usr/bin/env bash
# Mutation check of the CUDA host-side tests on the emulated driver: applies each planted bug of
# tests/cuda_emu/planted/ in turn, runs the test that should catch it, and reverts it. Every planted bug must make
# its test fail; the script prints what failed and exits non-zero if one went unnoticed. Not part of CI (each plant
# rebuilds the crate, ~2 minutes); run it after changing the emulated driver or the CUDA host code:
#     eval "$(scripts/install_cuda_wheels.sh)"; scripts/plant_host_bugs.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if ! git diff --quiet -- src; then echo "plant_host_bugs: src/ has uncommitted changes; commit or stash them first" >&2; exit 2; fi
export MOCO_CUDA_EMU=1 MOCO_REQUIRE_CUDA_COMPILE=1
# patch | test binary | test filter
PLANTS=(
  "1-swapped-launch-arguments|cuda_layers|conv2d_fixed_shapes"
  "2-wrong-grid|cuda_ops|ema_matches_reference"
  "3-readback-without-its-sync|contrastive|large_temperature_range_is_stable"
  "4-scratch-freed-before-its-launch|cuda_ops|ema_multi_tensor_matches_reference"
  "5-another-streams-write-without-an-event|cuda_ops|ema_matches_reference"
)
missed=0
rows=()
for plant in "${PLANTS[@]}"; do
  IFS='|' read -r name test filter <<<"$plant"
  patch="tests/cuda_emu/planted/$name.patch"
  git apply "$patch" || { echo "cannot apply $patch" >&2; exit 2; }
  log="target/plant-$name.log"
  cargo test --release --test "$test" -- "$filter" --test-threads=1 >"$log" 2>&1
  rc=$?
  git apply -R "$patch"
  report="$(grep -m1 -o 'cuda_emu: error.*' "$log" | cut -c18-240)"
  panic="$(grep -m1 -A1 -E "panicked at" "$log" | tail -1 | cut -c1-160)"
  if [ $rc = 0 ]; then verdict="NOT CAUGHT"; missed=1; else verdict="caught"; fi
  rows+=("| $name | $test $filter | $verdict | ${report:-(no driver report)} | ${panic:-} |")
done
echo
echo "| planted bug | test | result | emulated driver's report | test failure |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit $missed
