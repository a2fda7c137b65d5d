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
        # the tests tests/resnet.rs and tests/contrastive.rs share their names with benches
        if name == "resnet" and "test" in m["target"]["kind"]:
            name = "resnet_fixture"
        if name == "contrastive" and "test" in m["target"]["kind"]:
            name = "contrastive_ops"
        print(name, m["executable"])'
}
{ pick test --release --test cuda_ops --test cuda_layers --test cuda_optim --test cuda_compile --test cuda_train --test resnet --test vit_fixture --test contrastive --test queue --test ema --test moco_device; pick bench --bench contrastive --bench resnet; } | while read -r name exe; do
    cp "$exe" "$DEST/$name"
    strip "$DEST/$name" 2>/dev/null || true
    echo "$DEST/$name $(du -h "$DEST/$name" | cut -f1)" >&2
done
# the fixture tests read tests/fixtures/ at the path they were built in; device_check.sh links it there
pwd > "$DEST/manifest_dir"
