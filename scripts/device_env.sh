# Sourced by the scripts that run on a lent GPU machine (device_check.sh, device_bench.sh), from the repository
# root: the binaries built here ($BIN), the output folder ($OUT), the exit status and the section header; an NVRTC on
# the loader path for cudarc (the toolkit's, else the one PyTorch ships; cudarc also wants the unversioned name);
# and ptxas.
BIN="${MOCO_DEVICE_BIN:-target/device-bin}"
OUT="${OUT:-target/device-out}"
mkdir -p "$OUT"
status=0
step() { echo; echo "=== $* ==="; }

LIBDIR="$(mktemp -d)"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 -c 'import nvidia.cuda_nvrtc as m, os; print(os.path.join(os.path.dirname(m.__file__), "lib"))' 2>/dev/null); do
    so="$(ls "$d"/libnvrtc.so* 2>/dev/null | head -1)"
    if [ -n "$so" ]; then ln -sf "$so" "$LIBDIR/libnvrtc.so"; export LD_LIBRARY_PATH="$LIBDIR:$d:${LD_LIBRARY_PATH:-}"; break; fi
done
export MOCO_PTXAS="${MOCO_PTXAS:-$(command -v ptxas || echo /usr/local/cuda/bin/ptxas)}"
