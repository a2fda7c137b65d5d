// A ViT's input side, as src/ops/patch/cpu.rs: the patch embedding's im2col and its backward, the token assembly
// (cls + patches + pos) and its backward, and the class-token feature. Mirrors kernels/patch.cu: same names, one
// thread per element or column. Every backward accumulates (+=) and is deterministic (each thread owns what it
// writes; the cls gradient sums the batch in index order). Host code: src/ops/patch/wgpu.rs.
//
// images [B, C, H, W] -> cols [B*P, C*p*p]: row b*P + py*(W/p) + px, column (ci*p + ky)*p + kx.
// tokens [B, T, C] (token 0: cls), patches [B*P, C] with P = T - 1, cls [C], pos [T, C]; the feature out [B, C].
// Grids: workgroup counts split over x and y (each <= 65535), flattened as wg.x + wg.y * nwg.x, a bounds guard.

const WG: u32 = 64u;

struct PatchParams {
    len: u32,        // elements of work
    b: u32,          // batch B
    t: u32,          // tokens T (cls included)
    c: u32,          // features per token C
    img_c: u32,      // image channels
    h: u32,          // image height
    w: u32,          // image width
    patch_size: u32, // p
    patches: u32,    // patches per image P
    cols: u32,       // im2col columns img_c*p*p
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: PatchParams;
// Every storage binding is read_write: two disjoint views of one buffer may be input and output of one dispatch.
@group(0) @binding(1) var<storage, read_write> cols: array<f32>;      // [B*P, C*p*p]
@group(0) @binding(2) var<storage, read_write> images: array<f32>;    // [B, C, H, W]
@group(0) @binding(3) var<storage, read_write> dimages: array<f32>;   // [B, C, H, W], accumulated
@group(0) @binding(4) var<storage, read_write> dcols: array<f32>;     // [B*P, C*p*p]
@group(0) @binding(5) var<storage, read_write> tokens: array<f32>;    // [B, T, C]
@group(0) @binding(6) var<storage, read_write> patches: array<f32>;   // [B*P, C]
@group(0) @binding(7) var<storage, read_write> cls: array<f32>;       // [C]
@group(0) @binding(8) var<storage, read_write> pos: array<f32>;       // [T, C]
@group(0) @binding(9) var<storage, read_write> dpatches: array<f32>;  // [B*P, C], accumulated
@group(0) @binding(10) var<storage, read_write> dtokens: array<f32>;  // [B, T, C] (accumulated by cls_select_backward)
@group(0) @binding(11) var<storage, read_write> dcls: array<f32>;     // [C], accumulated
@group(0) @binding(12) var<storage, read_write> out: array<f32>;      // [B, C]
@group(0) @binding(13) var<storage, read_write> dout: array<f32>;     // [B, C]

// One thread per element of cols: cols = images gathered.
@compute @workgroup_size(64)
fn patch_im2col(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_thread(tid, wg, nwg, WG);
    if (e >= P.len) {
        return;
    }
    let p = P.patch_size;
    let row = e / P.cols;
    let col = e % P.cols;
    let b = row / P.patches;
    let m = row % P.patches;
    let gw = P.w / p;
    let ci = col / (p * p);
    let ky = (col / p) % p;
    let kx = col % p;
    cols[e] = images[((b * P.img_c + ci) * P.h + (m / gw) * p + ky) * P.w + (m % gw) * p + kx];
}

// One thread per element of dimages: dimages += the one dcols element it came from.
@compute @workgroup_size(64)
fn patch_im2col_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_thread(tid, wg, nwg, WG);
    if (e >= P.len) {
        return;
    }
    let p = P.patch_size;
    let x = e % P.w;
    let y = (e / P.w) % P.h;
    let ci = (e / (P.w * P.h)) % P.img_c;
    let b = e / (P.w * P.h * P.img_c);
    let m = (y / p) * (P.w / p) + x / p;
    dimages[e] += dcols[(b * P.patches + m) * P.cols + (ci * p + y % p) * p + x % p];
}

// ---------------------------------------------------------------------------------------------------------------
// token assembly and the cls feature: tokens [B, T, C], token 0 the cls token, patches [B*P, C] (P = T - 1)

// One thread per element of tokens: cls or patch row, plus pos[t].
@compute @workgroup_size(64)
fn tokens_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_thread(tid, wg, nwg, WG);
    if (e >= P.len) {
        return;
    }
    let c = e % P.c;
    let t = (e / P.c) % P.t;
    let b = e / (P.c * P.t);
    var x: f32;
    if (t == 0u) {
        x = cls[c];
    } else {
        x = patches[(b * P.patches + t - 1u) * P.c + c];
    }
    tokens[e] = x + pos[t * P.c + c];
}

// One thread per element of dpatches : dpatches[b*P + p] += dtokens[b, 1 + p].
@compute @workgroup_size(64)
fn tokens_backward_patches(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_thread(tid, wg, nwg, WG);
    if (e >= P.len) {
        return;
    }
    let c = e % P.c;
    let row = e / P.c;
    let b = row / P.patches;
    let p = row % P.patches;
    dpatches[e] += dtokens[(b * P.t + 1u + p) * P.c + c];
}

// One thread per c: dcls[c] += dtokens[b, 0, c] for b in order 0..B.
@compute @workgroup_size(64)
fn tokens_backward_cls(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_thread(tid, wg, nwg, WG);
    if (c >= P.c) {
        return;
    }
    var acc = dcls[c];
    for (var b = 0u; b < P.b; b += 1u) {
        acc += dtokens[b * P.t * P.c + c];
    }
    dcls[c] = acc;
}

// One thread per element of out [B, C]: out[b, c] = tokens[b, 0, c].
@compute @workgroup_size(64)
fn cls_select_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_thread(tid, wg, nwg, WG);
    if (e >= P.len) {
        return;
    }
    out[e] = tokens[(e / P.c) * P.t * P.c + e % P.c];
}

// One thread per element of dout [B, C]: dtokens[b, 0, c] += dout[b, c].
@compute @workgroup_size(64)
fn cls_select_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_thread(tid, wg, nwg, WG);
    if (e >= P.len) {
        return;
    }
    dtokens[(e / P.c) * P.t * P.c + e % P.c] += dout[e];
}
