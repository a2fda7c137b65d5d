#!/usr/bin/env bash
# Installs NVRTC, ptxas and nvdisasm from NVIDIA's PyPI wheels into a private venv (no CUDA toolkit, no GPU needed) and
# prints the shell `export` lines that make them visible to cudarc and to tests/cuda_compile.rs:
#
#   eval "$(scripts/install_cuda_wheels.sh)"
#
# Idempotent: a second run installs nothing and prints the same lines. Only the export lines go to stdout;
# every log line goes to stderr. Exits non-zero (printing nothing on stdout) when the wheels cannot be had.
#
# Environment:
#   MOCO_CUDA_VENV            venv directory (default: $HOME/.cache/moco-cuda-venv)
#   MOCO_CUDA_WHEEL_VERSION   pip version spec of the NVRTC and nvcc (ptxas) wheels (default: 12.8.*, matching
#                             cudarc's cuda-12080)
#   MOCO_NVDISASM_VERSION     pip version spec of nvidia-cuda-nvdisasm (default: 13.*, the only series on PyPI; it
#                             disassembles sm_80 and sm_90 cubins of any ptxas), for the machine-code check of
#                             tests/cuda_compile.rs
#   MOCO_CUDA_ENV_FILE        if set, the export lines are also written to this file
set -euo pipefail

VENV="${MOCO_CUDA_VENV:-$HOME/.cache/moco-cuda-venv}"
VERSION="${MOCO_CUDA_WHEEL_VERSION:-12.8.*}"
PKGS=("nvidia-cuda-nvrtc-cu12==${VERSION}" "nvidia-cuda-nvcc-cu12==${VERSION}" "nvidia-cuda-nvdisasm==${MOCO_NVDISASM_VERSION:-13.*}")

log() { echo "install_cuda_wheels: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv at $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" >&2
fi
PY="$VENV/bin/python"

# Where the wheels put their files: site-packages/nvidia/cuda_nvrtc/lib and site-packages/nvidia/cuda_nvcc/bin.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
NVRTC_DIR="$SITE/nvidia/cuda_nvrtc/lib"
NVCC_DIR="$SITE/nvidia/cuda_nvcc"

nvdisasm_path() { ls "$SITE"/nvidia/*/bin/nvdisasm 2>/dev/null | head -1; }
have_all() {
    [ -f "$NVRTC_DIR/libnvrtc.so.12" ] && [ -x "$NVCC_DIR/bin/ptxas" ] && [ -n "$(nvdisasm_path)" ]
}

if ! have_all; then
    log "pip installing ${PKGS[*]} into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check "${PKGS[@]}" >&2
fi
if ! have_all; then
    log "the wheels installed but $NVRTC_DIR/libnvrtc.so.12, $NVCC_DIR/bin/ptxas or nvdisasm is missing"
    exit 1
fi

# cudarc dlopens libnvrtc.so (or libnvrtc.so.12); the wheel ships only the versioned name. Link the unversioned
# name in a directory of our own, so the wheel's directory is never written to.
LINK_DIR="$VENV/moco-lib"
mkdir -p "$LINK_DIR"
for f in "$NVRTC_DIR"/libnvrtc*.so*; do
    ln -sfn "$f" "$LINK_DIR/$(basename "$f")"
done
ln -sfn "$NVRTC_DIR/libnvrtc.so.12" "$LINK_DIR/libnvrtc.so"

LD="$LINK_DIR:$NVRTC_DIR"
case ":${LD_LIBRARY_PATH:-}:" in
    *":$LINK_DIR:"*) LD="${LD_LIBRARY_PATH}" ;;
    *) LD="$LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
esac

OUT="export LD_LIBRARY_PATH='$LD'
export MOCO_PTXAS='$NVCC_DIR/bin/ptxas'
export MOCO_NVDISASM='$(nvdisasm_path)'
export MOCO_NVRTC_LIB_DIR='$LINK_DIR'"
if [ -n "${MOCO_CUDA_ENV_FILE:-}" ]; then
    printf '%s\n' "$OUT" >"$MOCO_CUDA_ENV_FILE"
fi
log "ready: nvrtc in $NVRTC_DIR, ptxas at $NVCC_DIR/bin/ptxas"
printf '%s\n' "$OUT"
