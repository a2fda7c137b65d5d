// The row gather, as src/ops/gather/cpu.rs: out[r, :] = x[idx[r], :]. Shuffle-BN's unshuffle of the keys on the
// device. Mirrors shaders/gather.wgsl: same name, one thread per output element. An index at or past src_rows
// gives a zero row (the CPU kernel reports it; a kernel cannot, and never reads outside x).
//
// Compiled after kernels/common.cuh (flat_thread) by NVRTC at run time, and by tests/cuda_compile.rs in CI: no
// #include of its own. Scalars: `GatherParams` by value first (16 bytes), then the buffers, the output first.
// Grid 2-D (x <= 65535), flattened as blockIdx.x + blockIdx.y * gridDim.x.

#define WG 256u

struct GatherParams {
    unsigned int rows;     // output rows (= indices)
    unsigned int src_rows; // rows of x
    unsigned int row;      // values per row
    unsigned int _pad;
};

// out: [rows, row], idx: [rows], x: [src_rows, row], all row-major.
extern "C" __global__ void __launch_bounds__(256) gather_rows(GatherParams P, float* __restrict__ out, const unsigned int* __restrict__ idx, const float* __restrict__ x) {
    const unsigned int e = flat_thread(WG);
    if (e >= P.rows * P.row) return;
    const unsigned int r = e / P.row, c = e - r * P.row;
    const unsigned int src = idx[r];
    out[e] = src < P.src_rows ? x[src * P.row + c] : 0.0f;
}
