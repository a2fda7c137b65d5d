// A probe for tests/cuda_emulated.rs: evaluates the erf of kernels/eltwise.cu (moco_erf, the formula GELU uses on
// CUDA and in shaders/eltwise.wgsl) at given points, so the test can state its error against f64. Not part of
// kernels/.
#include "../../kernels/eltwise.cu"

// y[i] = moco_erf(x[i]) for i < len, one thread per element (the launches of eltwise.cu: EltwiseParams::launch).
extern "C" __global__ void __launch_bounds__(256) erf_probe(EltwiseParams P, float* __restrict__ y, const float* __restrict__ x) {
    const unsigned int i = flat_thread(WG);
    if (i < P.len) y[i] = moco_erf(x[i]);
}
