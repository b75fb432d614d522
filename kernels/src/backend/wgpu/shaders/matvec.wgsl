// y = W x for one token (decode): 64 lanes per row, 4 rows per workgroup of 256; each lane dots
// units (32 elements) lane, lane + 64, … of its row with `unit_dot` of the format, then the
// row's 64 partial sums are added in workgroup memory. Dispatched once per piece of W.

struct Params {
    rows: u32,      // rows of this piece
    cols: u32,
    row_bytes: u32,
    row0: u32,      // the piece's first row in W
    n_units: u32,   // ceil(cols / 32)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;        // (rows, row_bytes) raw blocks
@group(0) @binding(2) var<storage, read_write> x: array<f32>;  // (cols)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;  // (W rows)

fn xv(i: u32) -> f32 {
    return x[i];
}

const LANES: u32 = 64u;
const ROWS_PER_GROUP: u32 = 4u;

var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = li % LANES;
    let r = (wg.y * nwg.x + wg.x) * ROWS_PER_GROUP + li / LANES;
    var acc = 0.0;
    if r < p.rows {
        let rb = r * p.row_bytes;
        for (var u = lane; u < p.n_units; u += LANES) {
            acc += unit_dot(rb, u, 32u * u, p.cols);
        }
    }
    part[li] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            part[li] += part[li + s];
        }
        workgroupBarrier();
    }
    if lane == 0u && r < p.rows {
        y[p.row0 + r] = part[li];
    }
}
