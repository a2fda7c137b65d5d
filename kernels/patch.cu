// A ViT's input side, as src/ops/patch/cpu.rs: the patch embedding's im2col and its backward, the token assembly
// (cls + patches + pos) and its backward, and the class-token feature. Mirrors shaders/patch.wgsl: same names, one
// thread per element or column. Every backward accumulates (`+=`) and is deterministic (each thread owns what it
// writes; the cls gradient sums the batch in index order).
//
// Compiled after kernels/common.cuh (flat_thread) by NVRTC at run time, and by tests/cuda_compile.rs in CI: no
// #include of its own.
//
// Scalars: every kernel takes the WGSL uniform block `PatchParams` by value as its first argument (48 bytes); the
// buffers follow in the order of the CPU function's arguments (outputs first). 64 threads per block over a 2-D grid
// (x <= 65535), flattened as blockIdx.x + blockIdx.y * gridDim.x, with a bounds guard.

#define WG 64u

struct PatchParams {
    unsigned int len;        // elements of work
    unsigned int b;          // batch B
    unsigned int t;          // tokens T (cls included)
    unsigned int c;          // features per token C
    unsigned int img_c;      // image channels
    unsigned int h;          // image height
    unsigned int w;          // image width
    unsigned int patch_size; // p
    unsigned int patches;    // patches per image P
    unsigned int cols;       // im2col columns img_c*p*p
    unsigned int _pad0;
    unsigned int _pad1;
};

// One thread per element of cols [B*P, C*p*p]: row b*P + py*gw + px, column (ci*p + ky)*p + kx holds
// images[b, ci, py*p + ky, px*p + kx] (images [B, C, H, W], gw = W/p).
extern "C" __global__ void __launch_bounds__(64) patch_im2col(PatchParams P, float* __restrict__ cols, const float* __restrict__ images) {
    const unsigned int o = flat_thread(WG);
    if (o >= P.len) return;
    const unsigned int p = P.patch_size;
    const unsigned int gw = P.w / p;
    const unsigned int row = o / P.cols;
    const unsigned int col = o % P.cols;
    const unsigned int b = row / P.patches;
    const unsigned int m = row % P.patches;
    const unsigned int ci = col / (p * p);
    const unsigned int ky = (col / p) % p;
    const unsigned int kx = col % p;
    cols[o] = images[((b * P.img_c + ci) * P.h + (m / gw) * p + ky) * P.w + (m % gw) * p + kx];
}

// One thread per element of dimages [B, C, H, W], gathering the one cols element it came from: dimages += dcols.
extern "C" __global__ void __launch_bounds__(64) patch_im2col_backward(PatchParams P, float* __restrict__ dimages, const float* __restrict__ dcols) {
    const unsigned int e = flat_thread(WG);
    if (e >= P.len) return;
    const unsigned int p = P.patch_size;
    const unsigned int x = e % P.w;
    const unsigned int y = (e / P.w) % P.h;
    const unsigned int ci = (e / (P.w * P.h)) % P.img_c;
    const unsigned int b = e / (P.w * P.h * P.img_c);
    const unsigned int row = b * P.patches + (y / p) * (P.w / p) + x / p;
    const unsigned int col = (ci * p + y % p) * p + x % p;
    dimages[e] += dcols[row * P.cols + col];
}

// tokens [B, T, C] (token 0: cls), patches [B*P, C] with P = T - 1, cls [C], pos [T, C].

// One thread per element of tokens: tokens[b, 0] = cls + pos[0], tokens[b, 1 + p] = patches[b*P + p] + pos[1 + p].
extern "C" __global__ void __launch_bounds__(64) tokens_forward(PatchParams P, float* __restrict__ tokens, const float* __restrict__ patches, const float* __restrict__ cls, const float* __restrict__ pos) {
    const unsigned int e = flat_thread(WG);
    if (e >= P.len) return;
    const unsigned int c = e % P.c;
    const unsigned int t = (e / P.c) % P.t;
    const unsigned int b = e / (P.c * P.t);
    const float x = t == 0u ? cls[c] : patches[(b * P.patches + t - 1u) * P.c + c];
    tokens[e] = x + pos[t * P.c + c];
}

// One thread per element of dpatches [B*P, C] (len = B*P*C, P >= 1): dpatches += the patch rows of dtokens.
extern "C" __global__ void __launch_bounds__(64) tokens_backward_patches(PatchParams P, float* __restrict__ dpatches, const float* __restrict__ dtokens) {
    const unsigned int e = flat_thread(WG);
    if (e >= P.len) return;
    const unsigned int c = e % P.c;
    const unsigned int row = e / P.c;
    const unsigned int b = row / P.patches;
    const unsigned int p = row % P.patches;
    dpatches[e] += dtokens[(b * P.t + 1u + p) * P.c + c];
}

// One thread per feature c: dcls[c] += dtokens[b, 0, c] for b in order 0..B (as the CPU adds them).
extern "C" __global__ void __launch_bounds__(64) tokens_backward_cls(PatchParams P, float* __restrict__ dcls, const float* __restrict__ dtokens) {
    const unsigned int c = flat_thread(WG);
    if (c >= P.c) return;
    float acc = dcls[c];
    for (unsigned int b = 0; b < P.b; ++b) acc += dtokens[b * P.t * P.c + c];
    dcls[c] = acc;
}

// One thread per element of out [B, C] (len = B*C): out[b, c] = tokens[b, 0, c].
extern "C" __global__ void __launch_bounds__(64) cls_select_forward(PatchParams P, float* __restrict__ out, const float* __restrict__ tokens) {
    const unsigned int e = flat_thread(WG);
    if (e >= P.len) return;
    out[e] = tokens[(e / P.c) * P.t * P.c + e % P.c];
}

// One thread per element of dout [B, C]: dtokens[b, 0, c] += dout[b, c].
extern "C" __global__ void __launch_bounds__(64) cls_select_backward(PatchParams P, float* __restrict__ dtokens, const float* __restrict__ dout) {
    const unsigned int e = flat_thread(WG);
    if (e >= P.len) return;
    dtokens[(e / P.c) * P.t * P.c + e % P.c] += dout[e];
}
