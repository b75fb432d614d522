// block_q8_0 { d: f16, qs: [i8; 32] } (34 bytes): q * d (ggml dequantize_row_q8_0).

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 5u) * 34u;
    let b = byte_at(o + 2u + (c & 31u));
    return i8_of(b, 0u) * f16_at(o);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let xo = xb + 32u * u;
    let o = rb + u * 34u;
    var acc = 0.0;
    for (var i = 0u; i < 8u; i++) {
        let q = u32_at(o + 2u + 4u * i);
        for (var k = 0u; k < 4u; k++) {
            acc += i8_of(q, k) * xv(xo + 4u * i + k);
        }
    }
    return acc * f16_at(o);
}
