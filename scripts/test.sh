#!/usr/bin/env bash
# The test command. Installs what the tests need when it is missing, then runs `cargo test --release`.
#   - Mesa's lavapipe (a Vulkan driver on the CPU) so the WGSL kernels run without a GPU;
#   - the NVRTC and ptxas PyPI wheels so every CUDA kernel is compiled for sm_80 and sm_90;
#   - g++ (with AddressSanitizer) so every CUDA kernel also runs on the CPU (tests/cuda_emulated.rs), and the whole
#     CUDA path, host code included, runs on the emulated CUDA driver (tests/cuda_emu/driver) where no GPU is.
# Extra arguments go to cargo test. Environment:
#   MOCO_REQUIRE_WGPU=1          fail (not skip) when no wgpu adapter is found (CI sets it)
#   MOCO_REQUIRE_CUDA_COMPILE=1  fail when NVRTC/ptxas or g++ are missing (default here: 1)
#   MOCO_PROPTEST_CASES=N        proptest cases per property (default 24)
#   MOCO_FEATURE_MATRIX=0        skip the feature matrix (--no-default-features alone, + wgpu, + cuda; unit and
#                                integration tests, 8 proptest cases) that runs after the default test when no
#                                arguments are given
#   MOCO_CUDA_EMU=1|0            force / forbid the emulated CUDA driver (default: used when no libcuda loads); the
#                                feature matrix sets 0, since the default run already ran every CUDA test on it
#   MOCO_FORCED_DISPATCH=0       skip the forced-dispatch runs: after the default test (which runs the CPU kernels on
#                                the widest vector unit the machine has, AVX-512 where present), the CPU's op,
#                                fixture and training tests run again with MOCO_CPU_ISA=avx2 and =scalar (CPU only:
#                                MOCO_TEST_DEVICES=cpu)
#   MOCO_PYTHON=0                skip the Python package (python/: `pip install ./python` into a venv with PyTorch,
#                                then its tests) that runs last when no arguments are given
#   MOCO_PY_VENV=DIR             the venv for it (default target/pyvenv, kept between runs)
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$(date +%s)
log() { echo "[test.sh +$(( $(date +%s) - T0 ))s] $*" >&2; }
# Disk: the CI machine's free space varies (once a few hundred MB). Each stage logs what target/ holds and what is
# free, test executables are deleted once no later stage runs them, and pip keeps no wheel cache.
disk() { log "disk: target/ $(du -sh target 2>/dev/null | cut -f1), free $(df -h --output=avail . | tail -1 | tr -d ' ')"; }
# The test executables (and their line tables) that cargo test built under target/release/deps: the largest part
# of target/. Libraries, build scripts and the emulated CUDA driver (target/tmp) stay, so the next build reuses them.
prune_test_binaries() {
    find target/release/deps -maxdepth 1 -type f -perm -u+x ! -name '*.so' ! -name '*.rlib' ! -name '*.rmeta' -delete 2>/dev/null || true
    disk
}
export PIP_NO_CACHE_DIR=1
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    log "installing Mesa lavapipe (mesa-vulkan-drivers, libvulkan1)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

if ! command -v "${CXX:-g++}" >/dev/null 2>&1; then
    log "installing g++ (builds the CPU emulation of the CUDA kernels, with AddressSanitizer)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++ >/dev/null
fi

CUDA_ENV="$(bash scripts/install_cuda_wheels.sh)"
eval "$CUDA_ENV"

export MOCO_REQUIRE_CUDA_COMPILE="${MOCO_REQUIRE_CUDA_COMPILE:-1}"
export MOCO_PROPTEST_CASES="${MOCO_PROPTEST_CASES:-24}"
# lavapipe's loader complains when this is unset
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/moco-xdg-runtime}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

log "cargo test --release $*"
cargo test --release "$@"
disk

# Every fixture and property test on each narrower dispatch path of the crate's own CPU kernels (the `gemm` crate
# keeps its own choice), with the binaries the default test built.
if [ "$#" -eq 0 ] && [ "${MOCO_FORCED_DISPATCH:-1}" = "1" ]; then
    for isa in avx2 scalar; do
        log "MOCO_CPU_ISA=$isa: the CPU's op, fixture and training tests (MOCO_TEST_DEVICES=cpu)"
        MOCO_CPU_ISA="$isa" MOCO_TEST_DEVICES=cpu cargo test --release --test device --test ops --test pytorch_fixtures \
            --test resnet --test vit_fixture --test vit --test winograd --test train_v3 --test optim
    done
fi
if [ "$#" -eq 0 ]; then prune_test_binaries; fi

# The feature matrix (only for the plain command, not when arguments select tests): the kernels alone with no
# GPU or trainer crates, and each GPU backend alone, each built and tested on its own.
if [ "$#" -eq 0 ] && [ "${MOCO_FEATURE_MATRIX:-1}" = "1" ]; then
    for features in "" "wgpu" "cuda"; do
        # the doc tests and the full proptest case count already ran in the default test: here each configuration's
        # unit and integration tests, with 8 cases per property (CI's time limit)
        log "cargo test --release --no-default-features ${features:+--features $features} --tests (CUDA tests skip: MOCO_CUDA_EMU=0)"
        MOCO_CUDA_EMU=0 MOCO_PROPTEST_CASES=8 cargo test --release --no-default-features ${features:+--features "$features"} --tests
        prune_test_binaries
    done
fi

# The Python package, as README's "From PyTorch" installs it: a venv with PyTorch (CPU use; PyPI's wheel),
# torchvision (the drop-in test runs the colab's ResNet model), pytest and maturin; `pip install ./python` builds
# the extension with cargo (CUDA launchers included); then python/tests (against PyTorch's own formulation, hostile
# inputs, the drop-in into the colab's ModelMoCo, the README's command, and the extension's CUDA entry points on the
# emulated driver that the cargo test above built: test_cuda_emulated.py).
if [ "$#" -eq 0 ] && [ "${MOCO_PYTHON:-1}" = "1" ]; then
    if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
        log "installing python3-venv"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    fi
    VENV="${MOCO_PY_VENV:-target/pyvenv}"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    if ! "$VENV/bin/python" -c "import torch, torchvision, pytest, maturin" >/dev/null 2>&1; then
        # Everything pip resolves for them but triton (torch.compile's compiler: 1 GB installed, which no test uses;
        # torch imports without it): resolved once with --dry-run, then installed as pinned with --no-deps.
        log "installing PyTorch, torchvision, pytest and maturin into $VENV (not triton)"
        "$VENV/bin/pip" install -q --dry-run --report "$VENV/resolved.json" torch torchvision pytest maturin
        mapfile -t PY_PKGS < <("$VENV/bin/python" - "$VENV/resolved.json" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if meta["name"].lower() != "triton":
        print(meta["name"] + "==" + meta["version"])
PY
)
        "$VENV/bin/pip" install -q --no-deps "${PY_PKGS[@]}"
    fi
    disk
    log "pip install ./python, then pytest python/tests"
    # --no-deps: its one dependency, torch, is there; pip would otherwise add torch's triton back
    "$VENV/bin/pip" install -q --no-deps ./python
    "$VENV/bin/pytest" -q python/tests
    disk
fi
