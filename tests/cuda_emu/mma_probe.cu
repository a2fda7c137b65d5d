// Probes of the tensor-core and async-copy wrappers of kernels/infonce.cu for tests/cuda_emulated.rs: one warp each,
// operands loaded straight from global memory in the PTX ISA's fragment layouts, so the test can hold the
// emulator's mma / ldmatrix / cp.async / cvt.rna.tf32 to the ISA, and show that a kernel with a wrong fragment
// layout or a missing cp.async wait gives a wrong result. Not part of kernels/. Lane = 4 g + t.
#include "../../kernels/infonce.cu"

// d = a b + c for one m16n8k16 tile. a: [16][16] row-major, b: [8][16] (column n holds k contiguous, as a queue's
// row), c, d: [16][8]; 16-bit elements as bits, fmt 0 bf16, 1 f16. swap_a1_a2 = 1 plants a layout bug (a[1] and a[2]
// exchanged).
extern "C" __global__ void __launch_bounds__(32) mma_probe(unsigned int fmt, unsigned int swap_a1_a2, const unsigned short* __restrict__ a, const unsigned short* __restrict__ b, const float* __restrict__ c, float* __restrict__ d) {
    const unsigned int lane = threadIdx.x, g = lane >> 2, t = lane & 3u;
    unsigned int ar[4], br[2];
    float acc[4];
    for (unsigned int r = 0; r < 4u; ++r) {
        const unsigned int row = g + 8u * (r & 1u), col = 2u * t + 8u * (r >> 1);
        ar[r] = (unsigned int)a[row * 16u + col] | ((unsigned int)a[row * 16u + col + 1u] << 16);
    }
    if (swap_a1_a2) {
        const unsigned int x = ar[1];
        ar[1] = ar[2];
        ar[2] = x;
    }
    for (unsigned int r = 0; r < 2u; ++r) {
        const unsigned int k = 2u * t + 8u * r;
        br[r] = (unsigned int)b[g * 16u + k] | ((unsigned int)b[g * 16u + k + 1u] << 16);
    }
    for (unsigned int i = 0; i < 4u; ++i) acc[i] = c[(g + 8u * (i >> 1)) * 8u + 2u * t + (i & 1u)];
    if (fmt == 0u) mma_bf16_16816(acc, ar, br);
    else mma_f16_16816(acc, ar, br);
    for (unsigned int i = 0; i < 4u; ++i) d[(g + 8u * (i >> 1)) * 8u + 2u * t + (i & 1u)] = acc[i];
}

// d = tf32(a) tf32(b) + c for one m16n8k8 tile: a [16][8] row-major, b [8][8] (column n holds k contiguous), c, d
// [16][8] f32; the operands rounded by tf32_round.
extern "C" __global__ void __launch_bounds__(32) tf32_probe(const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ c, float* __restrict__ d) {
    const unsigned int lane = threadIdx.x, g = lane >> 2, t = lane & 3u;
    unsigned int ar[4], br[2];
    float acc[4];
    for (unsigned int r = 0; r < 4u; ++r) ar[r] = __float_as_uint(tf32_round(a[(g + 8u * (r & 1u)) * 8u + t + 4u * (r >> 1)]));
    for (unsigned int r = 0; r < 2u; ++r) br[r] = __float_as_uint(tf32_round(b[g * 8u + t + 4u * r]));
    for (unsigned int i = 0; i < 4u; ++i) acc[i] = c[(g + 8u * (i >> 1)) * 8u + 2u * t + (i & 1u)];
    mma_tf32_1688(acc, ar, br);
    for (unsigned int i = 0; i < 4u; ++i) d[(g + 8u * (i >> 1)) * 8u + 2u * t + (i & 1u)] = acc[i];
}

// y[i] = tf32_round(x[i]) for i < n.
extern "C" __global__ void __launch_bounds__(32) tf32_round_probe(unsigned int n, const float* __restrict__ x, float* __restrict__ y) {
    for (unsigned int i = threadIdx.x; i < n; i += 32u) y[i] = tf32_round(x[i]);
}

// y[i] = pack_bf16x2(x[2 i], x[2 i + 1]) for i < n (cvt.rn.bf16x2.f32: x[2 i] in the low half).
extern "C" __global__ void __launch_bounds__(32) bf16x2_probe(unsigned int n, const float* __restrict__ x, unsigned int* __restrict__ y) {
    for (unsigned int i = threadIdx.x; i < n; i += 32u) y[i] = pack_bf16x2(x[2u * i], x[2u * i + 1u]);
}

// out[lane * 4 + i] = register i of ldmatrix(_trans).x4 over m: four 8x8 b16 matrices [4][8][8], staged in shared
// memory; lane l gives the address of row l % 8 of matrix l / 8.
extern "C" __global__ void __launch_bounds__(32) ldmatrix_probe(unsigned int trans, const unsigned short* __restrict__ m, unsigned int* __restrict__ out) {
    __shared__ __align__(16) unsigned short tile[4 * 8 * 8];
    const unsigned int lane = threadIdx.x;
    for (unsigned int e = 0; e < 8u; ++e) tile[lane * 8u + e] = m[lane * 8u + e];
    __syncwarp();
    unsigned int r[4];
    if (trans) ldmatrix_x4_trans(r, &tile[lane * 8u]);
    else ldmatrix_x4(r, &tile[lane * 8u]);
    for (unsigned int i = 0; i < 4u; ++i) out[lane * 4u + i] = r[i];
}

// The staged pattern of the tensor-core kernels on one tile: a [16][16] and b [8][16] bf16 copied to shared memory
// by cp.async (a group of an unrelated copy first, then the operands' group), read back by ldmatrix, one mma:
// d [16][8] = a b. wait_newest = 0 is right (every group landed); 1 plants the bug of waiting for all but the newest
// group, which leaves the operands in flight.
extern "C" __global__ void __launch_bounds__(32) cp_async_mma_probe(unsigned int wait_newest, const unsigned short* __restrict__ a, const unsigned short* __restrict__ b, float* __restrict__ d) {
    __shared__ __align__(16) unsigned short sa[16 * 16];
    __shared__ __align__(16) unsigned short sb[8 * 16];
    __shared__ __align__(16) unsigned short other[8];
    const unsigned int lane = threadIdx.x;
    if (lane == 0u) cp_async_16(other, a, 16u);
    cp_async_commit();
    cp_async_16(&sa[lane * 8u], &a[lane * 8u], 16u); // 32 chunks of 16 bytes: a's 16 rows of 32 bytes
    if (lane < 16u) cp_async_16(&sb[lane * 8u], &b[lane * 8u], 16u);
    cp_async_commit();
    if (wait_newest) cp_async_wait<1>();
    else cp_async_wait<0>();
    __syncwarp();
    unsigned int ar[4], r[4];
    // matrix i = lane / 8: rows 8 (i & 1) + lane % 8, columns 8 (i >> 1): a[0..3] in the mma's order
    ldmatrix_x4(ar, &sa[(8u * ((lane >> 3) & 1u) + (lane & 7u)) * 16u + 8u * (lane >> 4)]);
    // b's 8 columns, k 0..7 then 8..15 (lanes 16..31 repeat lanes 0..15)
    ldmatrix_x4(r, &sb[(lane & 7u) * 16u + 8u * ((lane >> 3) & 1u)]);
    const unsigned int br[2] = {r[0], r[1]};
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_bf16_16816(acc, ar, br);
    const unsigned int g = lane >> 2, t = lane & 3u;
    for (unsigned int i = 0; i < 4u; ++i) d[(g + 8u * (i >> 1)) * 8u + 2u * t + (i & 1u)] = acc[i];
}
