#!/usr/bin/env bash
# Mutation check of the CUDA host-side tests on the emulated driver: applies each planted bug of
# tests/cuda_emu/planted/ in turn to a COPY of this working tree (this checkout is never modified), runs the test
# of the `ops` binary that should catch it there, and reverts it. Every planted bug must make its test fail; the
# script prints what failed and exits non-zero if one went unnoticed. Not part of CI (each plant rebuilds the crate
# in the copy, ~2-4 minutes on 2 cores); run it after changing the emulated driver or the CUDA host code:
#     eval "$(scripts/install_cuda_wheels.sh)"; scripts/plant_host_bugs.sh
# The copy and its own target dir live in $MOCO_PLANT_DIR (default ${TMPDIR:-/tmp}/moco-plant-host-bugs, outside
# any repository); the first run seeds that target dir from target/release, later runs reuse it.
set -uo pipefail
cd "$(dirname "$0")/.."
command -v patch >/dev/null || { echo "plant_host_bugs: needs GNU patch" >&2; exit 2; }
COPY="${MOCO_PLANT_DIR:-${TMPDIR:-/tmp}/moco-plant-host-bugs}"
TREE="$COPY/tree"
# a target dir of its own: the copy's crate gets this checkout's artifact names, so sharing target/ would make
# this checkout's test binaries flip between the planted and the real code
export CARGO_TARGET_DIR="$COPY/target"
if [ ! -d "$CARGO_TARGET_DIR/release" ] && [ -d target/release ]; then
  echo "plant_host_bugs: seeding $CARGO_TARGET_DIR from target/ (dependencies built once)" >&2
  mkdir -p "$CARGO_TARGET_DIR/tmp"
  cp -a --reflink=auto target/release "$CARGO_TARGET_DIR/" || exit 2
  [ -d target/tmp/cuda_emu ] && cp -a --reflink=auto target/tmp/cuda_emu "$CARGO_TARGET_DIR/tmp/"
fi
# the working tree as it is now (tracked and untracked files, not the ignored ones), mtimes kept
rm -rf "$TREE" && mkdir -p "$TREE" || exit 2
git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$TREE" || { echo "plant_host_bugs: copying the tree failed" >&2; exit 2; }
export MOCO_CUDA_EMU=1 MOCO_REQUIRE_CUDA_COMPILE=1 MOCO_PROPTEST_CASES="${MOCO_PROPTEST_CASES:-8}"
# a failing property test reports its first failing case (no shrinking: each case runs on every device)
export PROPTEST_MAX_SHRINK_ITERS=0
# patch | test binary | test filter
PLANTS=(
  "1-swapped-launch-arguments|ops|conv2d_fixed_shapes"
  "2-wrong-grid|ops|ema_matches_reference"
  "3-readback-without-its-sync|ops|large_temperature_range_is_stable"
  "4-scratch-freed-before-its-launch|ops|batchnorm_fixed_shapes"
  "5-another-streams-write-without-an-event|ops|ema_matches_reference"
)
missed=0
rows=()
for plant in "${PLANTS[@]}"; do
  IFS='|' read -r name test filter <<<"$plant"
  patch="$PWD/tests/cuda_emu/planted/$name.patch"
  (cd "$TREE" && patch -p1 --forward --silent <"$patch") || { echo "cannot apply $patch" >&2; exit 2; }
  log="$COPY/plant-$name.log"
  (cd "$TREE" && cargo test --release --test "$test" -- "$filter" --test-threads=1) >"$log" 2>&1
  rc=$?
  (cd "$TREE" && patch -p1 -R --silent <"$patch") || { echo "cannot revert $patch in $TREE" >&2; exit 2; }
  report="$(grep -m1 -o 'cuda_emu: error.*' "$log" | cut -c18-240)"
  panic="$(grep -m1 -A1 -E "panicked at" "$log" | tail -1 | cut -c1-160)"
  if grep -qE '^error(\[E[0-9]+\])?: ' "$log" && ! grep -q '^running [0-9]* test' "$log"; then
    verdict="NOT RUN (the copy does not build: $log)"; missed=1
  elif grep -q '^running 0 tests' "$log"; then
    verdict="NOT RUN (no test matches: $log)"; missed=1
  elif [ $rc = 0 ]; then
    verdict="NOT CAUGHT"; missed=1
  else
    verdict="caught"
  fi
  rows+=("| $name | $test $filter | $verdict | ${report:-(no driver report)} | ${panic:-} |")
done
echo
echo "| planted bug | test | result | emulated driver's report | test failure |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit $missed
