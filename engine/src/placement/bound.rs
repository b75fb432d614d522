//! A bandwidth bound on decode speed: how fast can a placement decode at best on given hardware?
//!
//! Decode reads every weight it uses once per token, so a part's time is at least its bytes over
//! its device's memory bandwidth. Per token:
//! - attention of a layer reads its weights and the KV cache of the positions so far — taken at
//!   the mean over a conversation filling the context, `ctx / 2` positions — on its device;
//! - the FFN of a layer: the GPU reads its hot neurons (gate row + up row + Q8_0 `down` row),
//!   each weighted by its activation frequency (a predictor skips the inactive ones), or the
//!   whole FFN as in the file (a dense product); the CPU reads its cold neurons weighted the same
//!   way. The two halves run at once: the layer's FFN takes the longer of the two;
//! - the output matrix on its device;
//! - the link: the activation vector (`dim` f32) moves whenever the next part runs on the other
//!   device than the residual stream is on (it starts on the CPU, after the embedding lookup); a
//!   layer whose FFN is split sends the input to the GPU and its partial output back (2
//!   transfers); the logits (`vocab` f32) come back when the output matrix is on the GPU. Each
//!   transfer costs a fixed latency (`Link::LATENCY_S`, 10 µs: a small host↔device copy and the
//!   synchronisation around it, as measured for cudaMemcpy of a few KiB on PCIe 3 systems) plus
//!   its bytes over the link's bandwidth.
//!
//! Parts run in turn except the two FFN halves; compute, kernel launches and the CPU's own
//! overheads are ignored, so the figure is an upper bound on tokens per second.

use std::fmt;
use std::str::FromStr;

use super::footprint::Footprint;
use super::{Device, Placement};
use crate::error::{EngineError, Result};

/// The host↔GPU link (PCIe generation × lanes), with the usable bandwidth of each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Link {
    Pcie1x1,
    Pcie2x1,
    Pcie3x1,
    Pcie3x4,
    Pcie3x8,
    #[default]
    Pcie3x16,
    Pcie4x4,
    Pcie4x16,
    Pcie5x16,
}

impl Link {
    pub const ALL: [Link; 9] =
        [Link::Pcie1x1, Link::Pcie2x1, Link::Pcie3x1, Link::Pcie3x4, Link::Pcie3x8, Link::Pcie3x16, Link::Pcie4x4, Link::Pcie4x16, Link::Pcie5x16];

    /// Seconds each transfer costs besides its bytes (see the module header).
    pub const LATENCY_S: f64 = 10e-6;

    pub fn name(self) -> &'static str {
        match self {
            Link::Pcie1x1 => "pcie1x1",
            Link::Pcie2x1 => "pcie2x1",
            Link::Pcie3x1 => "pcie3x1",
            Link::Pcie3x4 => "pcie3x4",
            Link::Pcie3x8 => "pcie3x8",
            Link::Pcie3x16 => "pcie3x16",
            Link::Pcie4x4 => "pcie4x4",
            Link::Pcie4x16 => "pcie4x16",
            Link::Pcie5x16 => "pcie5x16",
        }
    }

    /// GB/s (10^9 bytes) one direction carries: per lane 0.25 (PCIe 1, 8b/10b), 0.5 (PCIe 2),
    /// 0.984 (PCIe 3, 128b/130b), 1.969 (PCIe 4), 3.938 (PCIe 5), times the lanes.
    pub fn bandwidth(self) -> f64 {
        let (per_lane, lanes) = match self {
            Link::Pcie1x1 => (0.25, 1),
            Link::Pcie2x1 => (0.5, 1),
            Link::Pcie3x1 => (0.984375, 1),
            Link::Pcie3x4 => (0.984375, 4),
            Link::Pcie3x8 => (0.984375, 8),
            Link::Pcie3x16 => (0.984375, 16),
            Link::Pcie4x4 => (1.96875, 4),
            Link::Pcie4x16 => (1.96875, 16),
            Link::Pcie5x16 => (3.9375, 16),
        };
        per_lane * lanes as f64
    }

    /// Seconds to move `bytes` one way.
    pub fn transfer_s(self, bytes: u64) -> f64 {
        Link::LATENCY_S + bytes as f64 / (self.bandwidth() * 1e9)
    }
}

impl FromStr for Link {
    type Err = String;
    /// `pcie3x16`, also `PCIe3 x16`, `pcie-3-x16` (case, spaces and dashes ignored).
    fn from_str(s: &str) -> std::result::Result<Link, String> {
        let t: String = s.chars().filter(|c| !matches!(c, ' ' | '-' | '_')).collect::<String>().to_ascii_lowercase();
        Link::ALL.into_iter().find(|l| l.name() == t).ok_or_else(|| {
            let names: Vec<&str> = Link::ALL.iter().map(|l| l.name()).collect();
            format!("unknown link '{s}': expected one of {}", names.join(", "))
        })
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The machine a placement runs on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hardware {
    /// GPU memory bandwidth, GB/s (10^9 bytes per second).
    pub gpu_bandwidth: f64,
    /// CPU memory bandwidth the decode kernels reach, GB/s.
    pub cpu_bandwidth: f64,
    pub link: Link,
}

/// Time per token by resource, and the decode speed they allow at best.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    /// Milliseconds the GPU spends reading per token.
    pub gpu_ms: f64,
    /// Milliseconds the CPU spends reading per token.
    pub cpu_ms: f64,
    /// Milliseconds of host↔GPU transfers per token.
    pub link_ms: f64,
    /// At most this many tokens per second (the FFN halves overlap, the rest runs in turn).
    pub tokens_per_s: f64,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "decode at most {:.1} tokens/s (per token: GPU {:.3} ms, CPU {:.3} ms, link {:.3} ms)",
            self.tokens_per_s, self.gpu_ms, self.cpu_ms, self.link_ms
        )
    }
}

/// Running totals, seconds.
#[derive(Default)]
struct Clock {
    gpu: f64,
    cpu: f64,
    link: f64,
    wall: f64,
    at: Option<Device>, // where the residual stream is (None: not yet anywhere but the CPU)
}

impl Clock {
    /// The activation vector moves to `d` if it is elsewhere.
    fn bring(&mut self, d: Device, bytes: u64, link: Link) {
        if self.at.unwrap_or(Device::Cpu) != d {
            let t = link.transfer_s(bytes);
            (self.link, self.wall) = (self.link + t, self.wall + t);
        }
        self.at = Some(d);
    }

    /// One part reading `bytes` on `d`, in turn with the others.
    fn read(&mut self, d: Device, bytes: f64, hw: &Hardware) {
        let t = seconds(d, bytes, hw);
        match d {
            Device::Gpu => self.gpu += t,
            Device::Cpu => self.cpu += t,
        }
        self.wall += t;
    }
}

fn seconds(d: Device, bytes: f64, hw: &Hardware) -> f64 {
    bytes / (1e9 * if d == Device::Gpu { hw.gpu_bandwidth } else { hw.cpu_bandwidth })
}

impl Placement {
    /// The bandwidth bound on decode speed of this placement of `fp` on `hw` (see the module
    /// header of `placement/bound.rs`). `frequency` as for [`Placement::plan`].
    pub fn decode_bound(&self, fp: &Footprint, frequency: Option<&[f32]>, hw: &Hardware) -> Result<Bound> {
        for (name, bw) in [("gpu_bandwidth", hw.gpu_bandwidth), ("cpu_bandwidth", hw.cpu_bandwidth)] {
            if !(bw.is_finite() && bw > 0.0) {
                return Err(EngineError::Param { name, problem: format!("{bw} GB/s: must be a positive number") });
            }
        }
        if self.layers.len() != fp.layers.len() {
            return Err(EngineError::Param {
                name: "placement",
                problem: format!("has {} layers but the model {}", self.layers.len(), fp.layers.len()),
            });
        }
        let freqs = super::Freqs::new(fp, frequency)?; // checks the shape
        let ffn = fp.ffn_dim;
        let f = |l: usize, j: u32| frequency.map_or(1.0, |f| f[l * ffn + j as usize] as f64);
        let act = 4 * fp.dim as u64; // the activation vector, f32
        let positions = (self.budget.ctx / 2) as u64;
        let mut c = Clock::default();
        for (l, (lp, lf)) in self.layers.iter().zip(&fp.layers).enumerate() {
            c.bring(lp.attention, act, hw.link);
            c.read(lp.attention, (lf.attention.cpu_read + lf.kv_per_position * positions) as f64, hw);
            let (gpu_bytes, cpu_bytes) = if lp.whole_ffn {
                (lf.whole_ffn.cpu_read as f64, 0.0)
            } else {
                let hot: f64 = lp.hot.iter().map(|&j| f(l, j)).sum();
                (hot * lf.neuron_gpu() as f64, (freqs.prefix(l, ffn) - hot).max(0.0) * lf.neuron_cpu_read)
            };
            let (t_gpu, t_cpu) = (seconds(Device::Gpu, gpu_bytes, hw), seconds(Device::Cpu, cpu_bytes, hw));
            match (lp.hot.is_empty(), lp.hot.len() == ffn) {
                (true, _) => c.bring(Device::Cpu, act, hw.link),
                (false, true) => c.bring(Device::Gpu, act, hw.link),
                (false, false) => {
                    // The input goes where it is not, the GPU's partial output comes back to be added.
                    let t = 2.0 * hw.link.transfer_s(act);
                    (c.link, c.wall, c.at) = (c.link + t, c.wall + t, Some(Device::Cpu));
                }
            }
            (c.gpu, c.cpu, c.wall) = (c.gpu + t_gpu, c.cpu + t_cpu, c.wall + t_gpu.max(t_cpu));
        }
        c.bring(self.output, act, hw.link);
        c.read(self.output, fp.output.cpu_read as f64, hw);
        if self.output == Device::Gpu {
            c.bring(Device::Cpu, 4 * fp.vocab as u64, hw.link); // the logits, to sample
        }
        Ok(Bound { gpu_ms: c.gpu * 1e3, cpu_ms: c.cpu * 1e3, link_ms: c.link * 1e3, tokens_per_s: if c.wall > 0.0 { 1.0 / c.wall } else { f64::INFINITY } })
    }
}
