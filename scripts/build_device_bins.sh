#!/usr/bin/env bash
# Builds, here, the binaries scripts/device_check.sh runs on a lent GPU machine (which has no cargo), and copies
# them, stripped, to target/device-bin/ (with the build's repository path, for the fixture tests). Carry that folder with the device run (carry: ["target/device-bin"]).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=target/device-bin
rm -rf "$DEST" && mkdir -p "$DEST"
pick() { # $1: cargo subcommand args; prints "name path" for each executable artifact
    cargo "$@" --no-run --message-format=json 2>/dev/null | python3 -c '
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
{ pick test --release "${args[@]}"; pick bench --bench contrastive --bench resnet; } | while read -r name exe; do
    cp "$exe" "$DEST/$name"
    strip "$DEST/$name" 2>/dev/null || true
    echo "$DEST/$name $(du -h "$DEST/$name" | cut -f1)" >&2
done
# the fixture tests read tests/fixtures/ at the path they were built in; device_check.sh links it there
pwd > "$DEST/manifest_dir"
