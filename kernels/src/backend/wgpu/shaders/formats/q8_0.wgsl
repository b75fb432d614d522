// block_q8_0 { d: f16, qs: [i8; 32] } (34 bytes): q * d (ggml dequantize_row_q8_0).

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 5u) * 34u;
    let b = byte_at(o + 2u + (c & 31u));
    return i8_of(b, 0u) * f16_at(o);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let x4 = (xb >> 2u) + 8u * u;
    let o = rb + u * 34u;
    var acc = 0.0;
    for (var i = 0u; i < 8u; i++) {
        acc += dot(ibytes4(u32_at(o + 2u + 4u * i)), xv4(x4 + i));
    }
    return acc * f16_at(o);
}
