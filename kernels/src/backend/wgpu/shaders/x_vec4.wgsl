// The input x of the matvec kernels for formats whose rows are whole blocks of 32 (x is then a
// whole number of vec4s): read four elements at a time.

@group(0) @binding(2) var<storage, read_write> x: array<vec4<f32>>;  // (cols / 4)

fn xv(i: u32) -> f32 {
    return x[i >> 2u][i & 3u];
}

fn xv4(i: u32) -> vec4<f32> {
    return x[i];
}
