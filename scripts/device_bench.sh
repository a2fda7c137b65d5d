#!/usr/bin/env bash
# The timings on a lent GPU that CI cannot take, in one call of about 6 minutes: the Python package (moco_torch,
# issue 26), the tensor-core kernels (issue 23) and the convolutions per layer (issue 24). Build first, here:
#     scripts/build_device_bins.sh      # -> target/device-bin/, the wheel in target/device-bin/wheels/
# then run this script there with carry ["target/device-bin"]. It
#   1. installs the wheel (no dependencies: torch is the machine's) into $OUT/site;
#   2. runs python/tests on CUDA tensors (test_ops.py's correctness cases through the `device` fixture, test_cuda.py's
#      stream, device and no-wait checks, the hostile inputs, the drop-in) and FAILS if any CUDA case skips;
#   3. times fused InfoNCE fwd+bwd against PyTorch eager on the same GPU (scripts/bench_python.py --device cuda)
#      and on the CPU;
#   4. runs the tensor-core logits and InfoNCE through the op tests on the real driver (Precision::Half, Tf32x3 and
#      Tf32 against their bounds, and the kernels they pick) and times them against the f32 kernels (criterion,
#      benches/contrastive.rs: N=256, C=128, K=4096 and 65536 for the logits, and 1,048,576 for the loss; f32 queue
#      at Fp32, Tf32x3, Tf32 and Half, bf16 queue at Fp32 and Half), then PyTorch's losses
#      on the same GPU at fp32, allow_tf32 and bf16 autocast and the bf16 GEMM floor (bench_torch_losses.py), and
#      prints the tables;
#   5. times ResNet-18's convolutions layer by layer on CUDA at fp32, 3xTF32 and TF32 (issue 24; benches/resnet.rs
#      resnet18_layers_cuda) beside cuDNN at fp32 and TF32 (bench_pytorch.py --only conv_layers), and prints the
#      per-layer table. Everything also lands in $OUT (default target/device-out).
# It never changes clocks or other GPU settings.
set -uo pipefail
cd "$(dirname "$0")/.."
# BIN, OUT, status, step; libnvrtc for cudarc, ptxas
source scripts/device_env.sh
export PYTHONUNBUFFERED=1

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"

step "install the moco_torch wheel built here"
SITE="$(cd "$OUT" && pwd)/site"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$BIN"/wheels/moco_torch-*.whl || exit 1
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import moco_torch, torch; print("moco_torch", moco_torch.__version__, "cuda_status", moco_torch.cuda_status(), "torch", torch.__version__)' || exit 1

step "python/tests on CPU and CUDA tensors (a CUDA case that skips fails the run)"
timeout 300 python3 -m pytest -q -p no:cacheprovider -rs python/tests 2>&1 | tee "$OUT/pytest.txt" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1
# (the reasons the `device` fixture and test_cuda.py give for skipping a CUDA case: conftest.py)
if grep -E "^SKIPPED.*(PyTorch sees no CUDA device|moco_torch cannot run CUDA)" "$OUT/pytest.txt"; then
    echo "device_bench: CUDA cases skipped on a GPU machine"; status=1
fi

step "fused InfoNCE fwd+bwd from Python: moco_torch vs PyTorch eager, CUDA tensors"
timeout 120 python3 scripts/bench_python.py 30 --device cuda 2>&1 | tee "$OUT/bench_python_cuda.md"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
step "the same on CPU tensors (this machine's CPU)"
timeout 120 python3 scripts/bench_python.py 5 2>&1 | tee "$OUT/bench_python_cpu.md"

step "tensor-core logits: the op tests on the real driver, then each precision"
MOCO_REQUIRE_CUDA_DEVICE=1 MOCO_CUDA_EMU=0 MOCO_PROPTEST_CASES=8 timeout 120 "$BIN/ops" --test-threads=1 half 2>&1 | tee "$OUT/ops_half.txt" | grep -E '^test |test result|panicked'
[ "${PIPESTATUS[0]}" = 0 ] || status=1
MOCO_REQUIRE_CUDA_DEVICE=1 MOCO_CUDA_EMU=0 MOCO_PROPTEST_CASES=8 timeout 120 "$BIN/ops" --test-threads=1 tf32 2>&1 | tee "$OUT/ops_tf32.txt" | grep -E '^test |test result|panicked'
[ "${PIPESTATUS[0]}" = 0 ] || status=1
timeout 120 "$BIN/contrastive" --bench 'cuda/logits_materialised' 2>&1 | tee "$OUT/logits_bench.txt" | grep -E '^cuda/|time:'
step "tensor-core InfoNCE: fused fwd+bwd, f32 queue at Fp32, Tf32x3, Tf32 and Half, bf16 queue at Fp32 and Half (N=256, C=128)"
timeout 150 "$BIN/contrastive" --bench 'cuda/infonce_fused' 2>&1 | tee "$OUT/infonce_bench.txt" | grep -E '^cuda/|time:'
step "tensor-core v3 loss: C=256 (f32 only) and C=128 at Fp32, Tf32x3, Tf32 and Half, N=1024 and 4096"
timeout 150 "$BIN/contrastive" --bench 'cuda/moco_v3_fused' 2>&1 | tee "$OUT/v3_bench.txt" | grep -E '^cuda/|time:'
step "PyTorch on the same GPU: the losses at fp32, allow_tf32 and bf16 autocast, and the bf16 GEMM floor"
timeout 150 python3 scripts/bench_torch_losses.py 2>&1 | tee "$OUT/torch_losses.md"

step "ResNet-18's convolutions on CUDA, layer by layer at batch 64: ours at fp32, 3xTF32 and TF32 beside cuDNN at fp32 and TF32"
timeout 150 "$BIN/resnet" --bench resnet18_layers_cuda 2>&1 | tee "$OUT/conv_layers_bench.txt" | grep -E '^resnet18_layers_cuda|time:'
timeout 120 python3 scripts/bench_pytorch.py --device cuda --only conv_layers 2>&1 | tee "$OUT/torch_conv_layers.jsonl" | tail -3
python3 scripts/bench_table.py --conv-layers "$OUT/conv_layers_bench.txt" "$OUT/torch_conv_layers.jsonl" | tee "$OUT/conv_layers.md"

echo
[ $status = 0 ] && echo "device_bench: PASS" || echo "device_bench: FAIL (see above)"
exit $status
