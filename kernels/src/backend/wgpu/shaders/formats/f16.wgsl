// F16: one little-endian binary16 per element (rows start at even bytes); any row length.

fn dq(rb: u32, c: u32) -> f32 {
    return f16_at(rb + 2u * c);
}

// Unit u of a row of n = ceil(cols / 32) units is columns u, u + n, u + 2n, … below `cols`
// (neighbouring lanes read neighbouring halves).
fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    var acc = 0.0;
    let n = (cols + 31u) / 32u;
    for (var c = u; c < cols; c += n) {
        acc += f16_at(rb + 2u * c) * xv(xb + c);
    }
    return acc;
}
