#!/usr/bin/env bash
# The wgpu engine on a lent GPU's Vulkan driver (issue 25), in one call of about 6 minutes. Build first, here:
#     scripts/build_device_bins.sh      # -> target/device-bin/ (the benches, the engines' tests, the front doors)
# The GPU machine may have no Vulkan loader: fetch one here once (the device README's recipe, into .gl/, which
# .git/info/exclude keeps out of git) and carry [".gl", "target/device-bin"]. Nothing is built there. It
#   1. finds the Vulkan loader (unpacks .gl/*.deb when `ldconfig` has none) and the NVIDIA ICD;
#   2. times the wgpu engine's MoCo v2 step (ResNet-18 CIFAR, batch 64, K 4096, benches/resnet.rs) and its MoCo v3
#      ViT step (D 192, depth 4, 3 heads, patch 4, batch 64, benches/vit.rs) on the GPU's Vulkan adapter;
#   3. the CUDA engine's same steps, and PyTorch eager + cuDNN's (scripts/bench_pytorch.py), in the same call;
#   4. prints a per-layer GPU-time profile of both wgpu steps (`--profile-steps 5` through the front doors, on
#      synthetic data at the benches' shapes), or why there is none, and the CUDA engine's (issue 24's profile of
#      today's step);
#   5. ends with the steps' table. Everything also lands in $OUT (default target/device-out).
# It never changes clocks or other GPU settings.
set -uo pipefail
cd "$(dirname "$0")/.."
# BIN, OUT, status, step; libnvrtc for cudarc
source scripts/device_env.sh

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"

step "Vulkan loader and driver"
if ! ldconfig -p | grep -q libvulkan; then
    if ls .gl/*.deb > /dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    else
        echo "device_wgpu: no libvulkan here and no .gl/*.deb carried: the wgpu steps will find no adapter"
    fi
fi
ldconfig -p | grep libvulkan || true
ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$ICD" ] && export VK_DRIVER_FILES="$ICD"

step "wgpu engine: MoCo v2 step, batch 64 (criterion)"
timeout 150 "$BIN/resnet" --bench "moco_v2_step_b64_k4096/wgpu" 2>&1 | tee "$OUT/wgpu_v2_step.txt"
step "wgpu engine: MoCo v3 ViT step, batch 64 (criterion)"
timeout 150 "$BIN/vit" --bench "mocov3_vit_step_b64/wgpu" 2>&1 | tee "$OUT/wgpu_vit_step.txt"

step "CUDA engine: the same steps"
MOCO_REQUIRE_CUDA_DEVICE=1 timeout 120 "$BIN/cuda_train" --test-threads=1 --nocapture cuda_moco_v2_step_time 2>&1 | tee "$OUT/cuda_step.txt" | tail -5
MOCO_REQUIRE_CUDA_DEVICE=1 timeout 120 "$BIN/cuda_train" --test-threads=1 --nocapture cuda_mocov3_vit_step_time 2>&1 | tee "$OUT/cuda_vit_step.txt" | tail -5

step "PyTorch eager + cuDNN: the same steps"
timeout 120 python3 scripts/bench_pytorch.py --device cuda --only moco_v2_step --moco-batch 64 2>&1 | tee "$OUT/torch_step.jsonl"
timeout 150 python3 scripts/bench_pytorch.py --device cuda --only mocov3_vit --img 32 --patch 4 --dim 192 --depth 4 --heads 3 --mlp-dim 512 --out-dim 128 --batch 64 2>&1 | tee "$OUT/torch_vit_step.txt"

step "wgpu per-layer profile: MoCo v2, ResNet-18, batch 64 (5 steps)"
timeout 120 "$BIN/train_resnet18" --backend wgpu --preset v2 --data synthetic --image-size 32 --batch 64 --queue 4096 --profile-steps 5 --out "$OUT/profile_v2" 2>&1 | tee "$OUT/wgpu_profile_v2.txt" | tail -60
step "wgpu per-layer profile: MoCo v3, ViT, batch 64 (5 steps)"
timeout 120 "$BIN/train_vit" --backend wgpu --data synthetic --image-size 32 --patch 4 --dim 192 --depth 4 --heads 3 --mlp-dim 512 --out-dim 128 --batch 64 --profile-steps 5 --out "$OUT/profile_vit" 2>&1 | tee "$OUT/wgpu_profile_vit.txt" | tail -60

step "CUDA per-layer profile: MoCo v2, ResNet-18, batch 64, and MoCo v3, ViT, batch 64 (5 steps each)"
timeout 90 "$BIN/train_resnet18" --backend cuda --preset v2 --data synthetic --image-size 32 --batch 64 --queue 4096 --profile-steps 5 --out "$OUT/profile_cuda_v2" 2>&1 | tee "$OUT/cuda_profile_v2.txt" | tail -40
timeout 90 "$BIN/train_vit" --backend cuda --data synthetic --image-size 32 --patch 4 --dim 192 --depth 4 --heads 3 --mlp-dim 512 --out-dim 128 --batch 64 --profile-steps 5 --out "$OUT/profile_cuda_vit" 2>&1 | tee "$OUT/cuda_profile_vit.txt" | tail -40

step "table: one training step, batch 64 (ms; criterion's mean for moco, the scripts' median for PyTorch)"
echo "wgpu engine (Vulkan):"; grep -hE "^(moco_v2_step_b64_k4096|mocov3_vit_step_b64)/wgpu" -A1 "$OUT/wgpu_v2_step.txt" "$OUT/wgpu_vit_step.txt" || echo "  (no adapter: see the Vulkan step)"
echo "CUDA engine:"; grep -h '"moco_cuda_engine_v2_step\|"moco_cuda_engine_v3_vit_step' "$OUT/cuda_step.txt" "$OUT/cuda_vit_step.txt" || true
echo "PyTorch + cuDNN:"; grep -h '"moco_v2_step\|mocov3_vit' "$OUT/torch_step.jsonl" "$OUT/torch_vit_step.txt" | tail -4 || true
grep -q "time:" "$OUT/wgpu_v2_step.txt" || status=1
echo
[ $status = 0 ] && echo "device_wgpu: PASS" || echo "device_wgpu: FAIL (see above)"
exit $status
