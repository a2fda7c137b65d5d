// Ring-buffer enqueue of N normalised keys into a queue [K, C] (one key per row) at row ptr, wrapping.
// Mirrors shaders/queue.wgsl: same kernel names, same parameter block `QueueParams` (passed by value), same
// thread-to-element mapping. kh holds the keys already normalised by normalize_rows (normalize.cu).
// Compiled after kernels/common.cuh (flat_thread) by NVRTC at run time: no #include of its own.
//
// Captured steps (CUDA graphs): `live`, when not null, points at the launch's QueueParams in device memory and
// replaces P (the pointer moves every step; the host writes it before each replay, and launches enough threads for
// any ptr); `skip`, when not null, is a count that the step wrote on the device (its non-finite features): when it
// is not zero nothing is written, as the host skips the enqueue of a non-finite step. WGSL has neither: its
// parameter block is a buffer already and its steps are not replayed.
//
// 16-bit queues are `unsigned short*` (one element per 16-bit word). enqueue_packed16 keeps the WGSL mapping of one
// thread per pair of elements ("word" w = elements 2w, 2w+1; the first segment starts at the word holding element
// ptr*C, the second at word 0), but CUDA can store 16 bits, so a thread writes only the elements of its own segment
// instead of read-modify-writing the whole word: the neighbour's element is never touched, nothing past K*C is read
// or written, and when the two segments share a word (N == K with ptr*C odd) each element still has one writer.

struct QueueParams {
    unsigned int n;       // keys to write
    unsigned int c;       // feature dim
    unsigned int k;       // queue rows
    unsigned int ptr;     // first row written
    unsigned int dtype;   // 0 f32, 1 f16, 2 bf16
    unsigned int words_a; // words of the first segment [ptr*c, min(ptr+n, k)*c)
    unsigned int total;   // threads with work: elements (f32) or words of both segments (16-bit)
    unsigned int _pad;
};

// Normalised value stored at queue element e (row e / C, written by key (row - ptr) mod K, which must be < N).
__device__ __forceinline__ float source_of(const QueueParams& P, const float* __restrict__ kh, unsigned int e) {
    const unsigned int row = e / P.c;
    const unsigned int r = (row + P.k - P.ptr) % P.k; // which key lands on this row
    return kh[r * P.c + e % P.c];
}

// queue[(ptr + r) % K, ch] = kh[r, ch]; one thread per element of kh (total = N*C).
extern "C" __global__ void __launch_bounds__(256) enqueue_f32(QueueParams P, const QueueParams* __restrict__ live, const unsigned int* __restrict__ skip, const float* __restrict__ kh, float* __restrict__ queue) {
    if (live != nullptr) P = *live;
    if (skip != nullptr && *skip != 0u) return;
    const unsigned int idx = flat_thread(blockDim.x);
    if (idx >= P.total) return;
    const unsigned int r = idx / P.c;
    const unsigned int ch = idx % P.c;
    const unsigned int row = (P.ptr + r) % P.k;
    queue[row * P.c + ch] = kh[idx];
}

// 16-bit queue (f16 when dtype == 1, bf16 otherwise); one thread per element pair (total = words of both segments).
// Segment A is elements [ptr*C, min(ptr+N, K)*C), segment B [0, (ptr+N-K)*C) (empty without wrap-around); they are
// disjoint (N <= K), and a thread stores only the elements of its word that lie in its own segment.
extern "C" __global__ void __launch_bounds__(256) enqueue_packed16(QueueParams P, const QueueParams* __restrict__ live, const unsigned int* __restrict__ skip, const float* __restrict__ kh, unsigned short* __restrict__ queue) {
    if (live != nullptr) P = *live;
    if (skip != nullptr && *skip != 0u) return;
    const unsigned int t = flat_thread(blockDim.x);
    if (t >= P.total) return;
    const unsigned int end_a = min(P.ptr + P.n, P.k);
    // word index: first segment starts at the word holding element ptr*c, second at word 0
    unsigned int w = (P.ptr * P.c) / 2u + t;
    unsigned int lo = P.ptr * P.c;
    unsigned int hi = end_a * P.c;
    if (t >= P.words_a) {
        w = t - P.words_a;
        lo = 0u;
        hi = (P.ptr + P.n - end_a) * P.c;
    }
#pragma unroll
    for (unsigned int e = 2u * w; e < 2u * w + 2u; ++e) {
        if (e >= lo && e < hi) {
            const float v = source_of(P, kh, e);
            queue[e] = (unsigned short)(P.dtype == 1u ? f32_to_f16_bits(v) : f32_to_bf16_bits(v));
        }
    }
}
