// A probe for tests/cuda_emulated.rs: evaluates the erf of kernels/vit.cu (moco_erf, the formula GELU uses on
// CUDA and in shaders/vit.wgsl) at given points, so the test can state its error against f64. Not part of kernels/.
#include "../../kernels/vit.cu"

// y[i] = moco_erf(x[i]) for i < n, grid-stride.
extern "C" __global__ void __launch_bounds__(64) erf_probe(Params P, float* __restrict__ y, const float* __restrict__ x) {
    for (unsigned int i = first_elem(); i < P.len; i += elem_stride()) y[i] = moco_erf(x[i]);
}
