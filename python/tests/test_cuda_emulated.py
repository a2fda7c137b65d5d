"""The CUDA half of the extension on the emulated CUDA driver: runs emulated_cuda_cases.py with pytest in a process
of its own (it loads the emulated libcuda.so first, which must not leak into the other tests).

Needs the emulated driver that `cargo test --release` builds and records (target/tmp/cuda_emu/installed.txt) and
NVRTC on the loader path (scripts/install_cuda_wheels.sh). Without them the test skips, unless
MOCO_REQUIRE_CUDA_COMPILE=1 (as in CI), where it fails instead.
"""

import os
import pathlib
import subprocess
import sys

import pytest

import moco_torch

HERE = pathlib.Path(__file__).resolve().parent
MANIFEST = pathlib.Path(os.environ.get("MOCO_CUDA_EMU_MANIFEST") or HERE.parents[1] / "target/tmp/cuda_emu/installed.txt")


def test_the_cuda_ops_on_the_emulated_driver():
    missing = None
    if not moco_torch._native.HAS_CUDA:
        missing = "the extension was built without CUDA"
    elif not MANIFEST.is_file():
        missing = f"no emulated driver recorded at {MANIFEST} (run cargo test --release first)"
    if missing:
        if os.environ.get("MOCO_REQUIRE_CUDA_COMPILE") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "emulated_cuda_cases.py")],
        capture_output=True,
        text=True,
        cwd=HERE,
        env={**os.environ, "MOCO_CUDA_EMU_MANIFEST": str(MANIFEST)},
    )
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
    print(out.stdout.splitlines()[-1])
