// The helpers of more than one family: grid indexing and workgroup tree reductions with their scratch. Appended to
// every shaders/<family>.wgsl: KernelFamily::wgsl (src/ops/kernel_family.rs) is the family's file, a newline, then
// this file (WGSL has no #include, and module-scope declarations may come in any order). In a naga or wgpu message
// about a family, lines past the family's own are this file's (build.rs validates this file alone first, so its own
// errors name it). Mirrors kernels/common.cuh: same helper names (CUDA's block is the WGSL workgroup).
//
// A workgroup variable takes memory only in the entry points that use it, so the scratch below, sized for the largest
// reducing workgroup (256 invocations), costs nothing elsewhere; a reduction over n invocations uses [0, n).

var<workgroup> red2: array<vec2<f32>, 256>;
var<workgroup> red_u: array<u32, 256>;

// This workgroup's index in a 2-D grid (x <= 65535), flattened as wg.x + wg.y * nwg.x.
fn flat_block(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// This invocation's element in a 2-D grid of `block`-invocation workgroups: flat_block * block + tid.
fn flat_thread(tid: u32, wg: vec3<u32>, nwg: vec3<u32>, block: u32) -> u32 {
    return flat_block(wg, nwg) * block + tid;
}

// ---- workgroup tree reductions (the order of kernels/common.cuh tree_reduce) ---------------------------------------

const SUM_OP: u32 = 0u;
const MAX_OP: u32 = 1u; // max: as fmaxf in CUDA

fn reduce_op(a: vec2<f32>, b: vec2<f32>, op: u32) -> vec2<f32> {
    if (op == MAX_OP) {
        return max(a, b);
    }
    return a + b;
}

// `op` over the n invocations of the workgroup (n a power of two, every invocation calls it in uniform control flow),
// component-wise, returned to every invocation: a tree, red2[t] = op(red2[t], red2[t + s]) for s = n/2, n/4, ..., 1.
// The trailing barrier lets the caller reduce again.
fn tree_reduce(tid: u32, v: vec2<f32>, n: u32, op: u32) -> vec2<f32> {
    red2[tid] = v;
    workgroupBarrier();
    for (var s = n / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red2[tid] = reduce_op(red2[tid], red2[tid + s], op);
        }
        workgroupBarrier();
    }
    let r = red2[0];
    workgroupBarrier();
    return r;
}

// Two sums at once (the components are independent: each is the scalar tree sum).
fn tree_sum2(tid: u32, v: vec2<f32>, n: u32) -> vec2<f32> {
    return tree_reduce(tid, v, n, SUM_OP);
}

fn tree_sum(tid: u32, v: f32, n: u32) -> f32 {
    return tree_reduce(tid, vec2<f32>(v, 0.0), n, SUM_OP).x;
}

fn tree_max(tid: u32, v: f32, n: u32) -> f32 {
    return tree_reduce(tid, vec2<f32>(v, 0.0), n, MAX_OP).x;
}

// tree_sum of integers (exact; red_u in place of red2).
fn tree_sum_u(tid: u32, v: u32, n: u32) -> u32 {
    red_u[tid] = v;
    workgroupBarrier();
    for (var s = n / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red_u[tid] += red_u[tid + s];
        }
        workgroupBarrier();
    }
    let r = red_u[0];
    workgroupBarrier();
    return r;
}
