#!/usr/bin/env bash
# Builds, here, the binaries scripts/device_check.sh runs on a lent GPU machine (which has no cargo), and copies
# them, stripped, to target/device-bin/ (with the build's repository path, for the fixture tests), and the
# moco_torch wheel that scripts/device_bench.sh installs there (target/device-bin/wheels/; needs maturin: MATURIN,
# else target/pyvenv's, else one on PATH). Carry that folder with the device run (carry: ["target/device-bin"]).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=target/device-bin
rm -rf "$DEST" && mkdir -p "$DEST"
pick() { # $@: cargo subcommand and args; prints "name path" for each executable artifact
    cargo "$@" --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except Exception: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        name = m["target"]["name"]
        # the test tests/resnet.rs shares its name with a bench
        if name == "resnet" and "test" in m["target"]["kind"]:
            name = "resnet_fixture"
        print(name, m["executable"])'
}
# the op tests (tests/ops/: every family, the optimisers included), the compile check, the engines and the fixtures
TESTS=(ops cuda_compile cuda_train resnet vit_fixture)
args=()
for t in "${TESTS[@]}"; do
    if [ -f "tests/$t.rs" ] || [ -f "tests/$t/main.rs" ]; then args+=(--test "$t"); else echo "build_device_bins: no test target $t (skipped)" >&2; fi
done
# (and the front doors, for the wgpu profile of scripts/device_wgpu.sh)
{ pick test --no-run --release "${args[@]}"; pick bench --no-run --bench contrastive --bench resnet --bench vit; pick build --release --example train_resnet18 --example train_vit; } | while read -r name exe; do
    cp "$exe" "$DEST/$name"
    strip "$DEST/$name" 2>/dev/null || true
    echo "$DEST/$name $(du -h "$DEST/$name" | cut -f1)" >&2
done
# the fixture tests read tests/fixtures/ at the path they were built in; device_check.sh links it there
pwd > "$DEST/manifest_dir"
# the Python package (abi3: any python3 >= 3.9 there), CUDA included
MATURIN="${MATURIN:-$( [ -x target/pyvenv/bin/maturin ] && echo target/pyvenv/bin/maturin || command -v maturin || true)}"
if [ -n "$MATURIN" ]; then
    "$MATURIN" build --release --quiet --skip-auditwheel -m python/Cargo.toml -o "$DEST/wheels" >&2 && ls -l "$DEST"/wheels/*.whl >&2
else
    echo "build_device_bins: no maturin (set MATURIN): no wheel for device_bench.sh" >&2
fi
