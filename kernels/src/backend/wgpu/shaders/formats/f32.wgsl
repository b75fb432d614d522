// F32: one little-endian binary32 per element; a row may have any length.

fn dq(rb: u32, c: u32) -> f32 {
    return bitcast<f32>(w[(rb >> 2u) + c]);
}

// Unit u of a row of n = ceil(cols / 32) units is columns u, u + n, u + 2n, … below `cols`:
// the units interleave, so that neighbouring lanes read neighbouring words.
fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    var acc = 0.0;
    let n = (cols + 31u) / 32u;
    let base = rb >> 2u;
    for (var c = u; c < cols; c += n) {
        acc += bitcast<f32>(w[base + c]) * xv(xb + c);
    }
    return acc;
}
