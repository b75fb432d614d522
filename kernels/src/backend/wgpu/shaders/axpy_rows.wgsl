// out[c] = Σ_k coef[k] · W[rows[k]][c]: one thread per output column walks the row list, so
// neighbouring threads read neighbouring bytes of each listed row (`dq` of the format).
// Dispatched once per piece of W: the first piece overwrites `out`, later ones add to it; a
// listed row outside this piece is left to its own piece. A row index ≥ the matrix's rows is
// skipped and recorded (largest index + 1) in `status`.

struct Params {
    rows: u32,        // rows of this piece
    cols: u32,
    row_bytes: u32,
    row0: u32,        // the piece's first row in W
    n_list: u32,
    total_rows: u32,
    accumulate: u32,  // 0: overwrite out, 1: add to it
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;           // (rows, row_bytes)
@group(0) @binding(2) var<storage, read_write> list: array<u32>;  // (n_list)
@group(0) @binding(3) var<storage, read_write> coef: array<f32>;  // (n_list)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;     // (cols)
@group(0) @binding(5) var<storage, read_write> status: array<atomic<u32>>;

// Only `dq` of the format is used here; `unit_dot` (matvec) needs these to compile.
fn xv(i: u32) -> f32 {
    return 0.0;
}

fn xv4(i: u32) -> vec4<f32> {
    return vec4<f32>(0.0);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = (wg.y * nwg.x + wg.x) * 256u + li;
    var acc = 0.0;
    if c < p.cols && p.accumulate != 0u {
        acc = y[c];
    }
    for (var k = 0u; k < p.n_list; k++) {
        let row = list[k];
        if row >= p.total_rows {
            if c == 0u {
                atomicMax(&status[0], row + 1u);
            }
        } else if row >= p.row0 && row - p.row0 < p.rows && c < p.cols {
            acc += coef[k] * dq((row - p.row0) * p.row_bytes, c);
        }
    }
    if c < p.cols {
        y[c] = acc;
    }
}
