// block_q4_K { d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] } (144 bytes), 256 elements in
// eight chunks of 32: chunk c is the low (c even) or high (c odd) nibbles of qs[32 (c / 2) ..],
// value d * scale_c * q - dmin * min_c (ggml dequantize_row_q4_K, get_scale_min_k4). A unit is
// one chunk.

// Scale and min `j` (0..8) of the 12 packed bytes at `s` (ggml get_scale_min_k4).
fn scale_min(s: u32, j: u32) -> vec2<f32> {
    if j < 4u {
        return vec2<f32>(f32(byte_at(s + j) & 63u), f32(byte_at(s + j + 4u) & 63u));
    }
    let sc = (byte_at(s + j + 4u) & 0xfu) | ((byte_at(s + j - 4u) >> 6u) << 4u);
    let mn = (byte_at(s + j + 4u) >> 4u) | ((byte_at(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 8u) * 144u;
    let ch = (c >> 5u) & 7u;
    let l = c & 31u;
    let sm = scale_min(o + 4u, ch);
    let q = (byte_at(o + 16u + 32u * (ch >> 1u) + l) >> (4u * (ch & 1u))) & 0xfu;
    return f16_at(o) * sm.x * f32(q) - f16_at(o + 2u) * sm.y;
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let x4 = (xb >> 2u) + 8u * u;
    let o = rb + (u >> 3u) * 144u;
    let ch = u & 7u;
    let sm = scale_min(o + 4u, ch);
    let qo = o + 16u + 32u * (ch >> 1u);
    let sh = 4u * (ch & 1u);
    var qx = 0.0;
    var sx = 0.0;
    for (var i = 0u; i < 8u; i++) {
        let xx = xv4(x4 + i);
        qx += dot(nib4(u32_at(qo + 4u * i) >> sh), xx);
        sx += dot(xx, vec4<f32>(1.0));
    }
    return f16_at(o) * sm.x * qx - f16_at(o + 2u) * sm.y * sx;
}
