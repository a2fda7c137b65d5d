// Ring-buffer enqueue of N normalised keys into a queue [K, C] (one key per row) at row ptr, wrapping.
// Mirrors kernels/queue.cu. kh holds the keys already normalised by normalize_rows (normalize.wgsl).
// 16-bit queues are stored as u32 words holding two elements (element e in word e/2, low half first);
// one thread owns one word and rebuilds both halves, so a row that shares a word with its neighbour is written
// without a race. (When N = K and ptr*C is odd, the two segments share one word: both threads compute and write
// the identical word. WGSL cannot store 16 bits, so queue.cu instead writes only its own segment's halves.)

struct QueueParams {
    n: u32,          // keys to write
    c: u32,          // feature dim
    k: u32,          // queue rows
    ptr: u32,        // first row written
    dtype: u32,      // 0 f32, 1 f16, 2 bf16
    words_a: u32,    // words of the first segment [ptr*c, min(ptr+n, k)*c)
    total: u32,      // threads with work: elements (f32) or words of both segments (16-bit)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: QueueParams;
@group(0) @binding(1) var<storage, read> kh: array<f32>;              // kh: [N, C]
@group(0) @binding(2) var<storage, read_write> queue_f32: array<f32>; // queue: [K, C]
@group(0) @binding(3) var<storage, read_write> queue_words: array<u32>; // queue: [ceil(K*C/2)] words

// f32 -> IEEE half bits, round to nearest even (the rounding of half::f16::from_f32).
fn f32_to_f16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let e8 = (b >> 23u) & 0xffu;
    var mant = b & 0x7fffffu;
    if (e8 == 0xffu) {
        return sign | 0x7c00u | select(0u, 0x200u | (mant >> 13u), mant != 0u);
    }
    let e = i32(e8) - 112; // rebias 127 -> 15
    if (e >= 31) {
        return sign | 0x7c00u;
    }
    if (e <= 0) {
        if (e < -10) {
            return sign;
        }
        mant = mant | 0x800000u;
        let shift = u32(14 - e);
        var r = mant >> shift;
        let rem = mant & ((1u << shift) - 1u);
        let halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u) == 1u)) {
            r = r + 1u;
        }
        return sign | r;
    }
    var r = (u32(e) << 10u) | (mant >> 13u);
    let rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u) == 1u)) {
        r = r + 1u;
    }
    return sign | r;
}

// f32 -> bf16 bits, round to nearest even; NaN stays NaN.
fn f32_to_bf16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// Source value for queue element e, or -1 in `ok` terms: returns (value, 1) when e is written by this enqueue.
fn source_of(e: u32) -> vec2<f32> {
    let row = e / P.c;
    let r = (row + P.k - P.ptr) % P.k; // which key lands on this row
    if (r < P.n) {
        return vec2<f32>(kh[r * P.c + e % P.c], 1.0);
    }
    return vec2<f32>(0.0, 0.0);
}

@compute @workgroup_size(256)
fn enqueue_f32(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * 65535u * 256u;
    if (idx >= P.total) {
        return;
    }
    let r = idx / P.c;
    let ch = idx % P.c;
    let row = (P.ptr + r) % P.k;
    queue_f32[row * P.c + ch] = kh[idx];
}

@compute @workgroup_size(256)
fn enqueue_packed16(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x + gid.y * 65535u * 256u;
    if (t >= P.total) {
        return;
    }
    // word index: first segment starts at the word holding element ptr*c, second at word 0
    var w = (P.ptr * P.c) / 2u + t;
    if (t >= P.words_a) {
        w = t - P.words_a;
    }
    let old = queue_words[w];
    var lo = old & 0xffffu;
    var hi = old >> 16u;
    let kc = P.k * P.c;
    let s0 = source_of(2u * w);
    if (s0.y > 0.5) {
        lo = select(f32_to_bf16_bits(s0.x), f32_to_f16_bits(s0.x), P.dtype == 1u);
    }
    if (2u * w + 1u < kc) {
        let s1 = source_of(2u * w + 1u);
        if (s1.y > 0.5) {
            hi = select(f32_to_bf16_bits(s1.x), f32_to_f16_bits(s1.x), P.dtype == 1u);
        }
    }
    queue_words[w] = lo | (hi << 16u);
}
