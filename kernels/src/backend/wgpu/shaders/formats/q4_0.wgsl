// block_q4_0 { d: f16, qs: [u8; 16] } (18 bytes): element j is (qs[j] & 0xF) - 8, element
// j + 16 is (qs[j] >> 4) - 8, both times d (ggml dequantize_row_q4_0). A unit is one block.

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 5u) * 18u;
    let j = c & 31u;
    let q = (byte_at(o + 2u + (j & 15u)) >> ((j >> 4u) << 2u)) & 0xfu;
    return (f32(q) - 8.0) * f16_at(o);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let x4 = (xb >> 2u) + 8u * u;
    let o = rb + u * 18u;
    var acc = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let q = u32_at(o + 2u + 4u * i);
        acc += dot(nib4(q) - 8.0, xv4(x4 + i)) + dot(nib4(q >> 4u) - 8.0, xv4(x4 + 4u + i));
    }
    return acc * f16_at(o);
}
