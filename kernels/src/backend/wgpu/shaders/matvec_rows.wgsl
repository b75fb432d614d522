// out[k] = W[rows[k]] · x for k < n (one token, a subset of rows): matvec.wgsl's layout (LANES
// lanes per listed row, 256 / LANES per workgroup) with the row taken from the list. Dispatched once per
// piece of W; a listed row outside this piece is left to its own piece. A row index ≥ the
// matrix's rows is skipped and recorded (largest index + 1) in `status`, which the host reports
// at the next read or synchronize.

struct Params {
    rows: u32,        // rows of this piece
    cols: u32,
    row_bytes: u32,
    row0: u32,        // the piece's first row in W
    n_units: u32,     // ceil(cols / 32)
    n_list: u32,      // entries of `rows`
    total_rows: u32,  // rows of W
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;              // (rows, row_bytes)
// binding 2: x (cols), declared with `xv`/`xv4` by x_vec4.wgsl or x_scalar.wgsl
@group(0) @binding(3) var<storage, read_write> y: array<f32>;        // (n_list)
@group(0) @binding(4) var<storage, read_write> list: array<u32>;     // (n_list)
@group(0) @binding(5) var<storage, read_write> status: array<atomic<u32>>;


// Lanes per row (16, 32 or 64, set per pipeline from the row's units): 256 / LANES rows per
// workgroup.
override LANES: u32 = 64u;

var<workgroup> part: array<f32, 256>;
var<workgroup> part8: array<f32, 128>; // (256 / LANES, 8)

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = li % LANES;
    let k = (wg.y * nwg.x + wg.x) * (256u / LANES) + li / LANES;
    var mine = false;
    var acc = 0.0;
    if k < p.n_list {
        let row = list[k];
        if row >= p.total_rows {
            if lane == 0u {
                atomicMax(&status[0], row + 1u);
            }
        } else if row >= p.row0 && row - p.row0 < p.rows {
            mine = true;
            let rb = (row - p.row0) * p.row_bytes;
            for (var u = lane; u < p.n_units; u += LANES) {
                acc += unit_dot(rb, u, 0u, p.cols);
            }
        }
    }
    // Two steps of 8 (two barriers), cheaper than a tree of six on a CPU Vulkan (lavapipe).
    part[li] = acc;
    workgroupBarrier();
    let sub = li / LANES;
    if lane < 8u {
        var t = 0.0;
        for (var j = lane; j < LANES; j += 8u) {
            t += part[sub * LANES + j];
        }
        part8[sub * 8u + lane] = t;
    }
    workgroupBarrier();
    if lane == 0u && mine {
        var t = 0.0;
        for (var j = 0u; j < 8u; j++) {
            t += part8[sub * 8u + j];
        }
        y[k] = t;
    }
}
