// block_q4_1 { d: f16, m: f16, qs: [u8; 16] } (20 bytes): q * d + m with Q4_0's nibble order
// (ggml dequantize_row_q4_1). A unit is one block.

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 5u) * 20u;
    let j = c & 31u;
    let q = (byte_at(o + 4u + (j & 15u)) >> ((j >> 4u) << 2u)) & 0xfu;
    return f32(q) * f16_at(o) + f16_at(o + 2u);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let x4 = (xb >> 2u) + 8u * u;
    let o = rb + u * 20u;
    var qx = 0.0;
    var sx = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let q = u32_at(o + 4u + 4u * i);
        let x0 = xv4(x4 + i);
        let x1 = xv4(x4 + 4u + i);
        qx += dot(nib4(q), x0) + dot(nib4(q >> 4u), x1);
        sx += dot(x0 + x1, vec4<f32>(1.0));
    }
    return qx * f16_at(o) + sx * f16_at(o + 2u);
}
