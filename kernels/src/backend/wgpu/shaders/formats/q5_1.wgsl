// block_q5_1 { d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] } (24 bytes): 5-bit q * d + m
// (ggml dequantize_row_q5_1).

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 5u) * 24u;
    let j = c & 31u;
    let lo = (byte_at(o + 8u + (j & 15u)) >> ((j >> 4u) << 2u)) & 0xfu;
    let hi = ((u32_at(o + 4u) >> j) & 1u) << 4u;
    return f32(lo | hi) * f16_at(o) + f16_at(o + 2u);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let x4 = (xb >> 2u) + 8u * u;
    let o = rb + u * 24u;
    let qh = u32_at(o + 4u);
    var qx = 0.0;
    var sx = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let q = u32_at(o + 8u + 4u * i);
        let x0 = xv4(x4 + i);
        let x1 = xv4(x4 + 4u + i);
        qx += dot(nib4(q) + 16.0 * bits4(qh >> (4u * i)), x0) + dot(nib4(q >> 4u) + 16.0 * bits4(qh >> (16u + 4u * i)), x1);
        sx += dot(x0 + x1, vec4<f32>(1.0));
    }
    return qx * f16_at(o) + sx * f16_at(o + 2u);
}
