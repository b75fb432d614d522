// y = W x for one token (decode): LANES lanes per row (64 for long rows, 32 or 16 for rows of
// few units, so that fewer lanes idle), 256 / LANES rows per workgroup; each lane dots units (32
// elements) lane, lane + LANES, … of its row with `unit_dot` of the format, then the row's
// partial sums are added in workgroup memory. Dispatched once per piece of W.

struct Params {
    rows: u32,      // rows of this piece
    cols: u32,
    row_bytes: u32,
    row0: u32,      // the piece's first row in W
    n_units: u32,   // ceil(cols / 32)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;        // (rows, row_bytes) raw blocks
// binding 2: x (cols), declared with `xv`/`xv4` by x_vec4.wgsl or x_scalar.wgsl
@group(0) @binding(3) var<storage, read_write> y: array<f32>;  // (W rows)


// Lanes per row (16, 32 or 64, set per pipeline from the row's units): 256 / LANES rows per
// workgroup.
override LANES: u32 = 64u;

var<workgroup> part: array<f32, 256>;
var<workgroup> part8: array<f32, 128>; // (256 / LANES, 8)

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = li % LANES;
    let r = (wg.y * nwg.x + wg.x) * (256u / LANES) + li / LANES;
    var acc = 0.0;
    if r < p.rows {
        let rb = r * p.row_bytes;
        for (var u = lane; u < p.n_units; u += LANES) {
            acc += unit_dot(rb, u, 0u, p.cols);
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
    if lane == 0u && r < p.rows {
        var t = 0.0;
        for (var j = 0u; j < 8u; j++) {
            t += part8[sub * 8u + j];
        }
        y[p.row0 + r] = t;
    }
}
