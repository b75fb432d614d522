//! The kernel sources and their compilation with NVRTC (candle-kernels' one-source-per-family
//! layout; cudarc's NVRTC bindings, loaded at run time).
//!
//! Every `.cu` file under `kernels/` is compiled as `prelude.cuh` followed by the file (a plain
//! text prefix: no source `#include`s anything, so NVRTC needs no include path). A device gets
//! each source compiled once for its own architecture (`sm_XY`) into a CUBIN, cached under
//! `$EMBER_HOME/ptx/` (default `~/.cache/ember/ptx`) by source, options, target and NVRTC version.
//! A CUBIN rather than PTX: the driver JIT-compiles only PTX of an ISA version it knows, so PTX
//! from an NVRTC newer than the driver would not load, while the CUBIN does (CUDA's minor version
//! compatibility). A device newer than the NVRTC gets PTX for the newest architecture NVRTC
//! knows, which the driver then compiles. [`compile_all`] gives the PTX of every source for one architecture, for the
//! compile check that runs without a GPU (`tests/cuda_compile.rs`).

use std::ffi::{c_char, c_int, CString};
use std::path::PathBuf;

use cudarc::nvrtc::{result, sys};

use crate::{KernelError, Result};

/// Text put before every source.
pub const PRELUDE: &str = include_str!("kernels/prelude.cuh");

/// One kernel family: a `.cu` file and the kernels (`extern "C"` names) it defines.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub name: &'static str,
    pub code: &'static str,
    pub kernels: &'static [&'static str],
}

/// Every kernel source of the backend.
pub const SOURCES: &[Source] = &[
    Source { name: "quantize_q8.cu", code: include_str!("kernels/quantize_q8.cu"), kernels: &["quantize_q8"] },
    Source {
        name: "mmvq.cu",
        code: include_str!("kernels/mmvq.cu"),
        kernels: &[
            "mmvq_q4_0",
            "mmvq_q4_1",
            "mmvq_q5_0",
            "mmvq_q5_1",
            "mmvq_q8_0",
            "mmvq_q4_k",
            "mmvq_q5_k",
            "mmvq_q6_k",
            "mmvq8_q4_0",
            "mmvq8_q4_1",
            "mmvq8_q5_0",
            "mmvq8_q5_1",
            "mmvq8_q8_0",
            "mmvq8_q4_k",
            "mmvq8_q5_k",
            "mmvq8_q6_k",
        ],
    },
    Source {
        name: "mmv_float.cu",
        code: include_str!("kernels/mmv_float.cu"),
        kernels: &["mmv_f32", "mmv_f16", "mmv_bf16", "mmv8_f32", "mmv8_f16", "mmv8_bf16"],
    },
    Source {
        name: "axpy_rows.cu",
        code: include_str!("kernels/axpy_rows.cu"),
        kernels: &[
            "axpy_rows_f32",
            "axpy_rows_f16",
            "axpy_rows_bf16",
            "axpy_rows_q4_0",
            "axpy_rows_q4_1",
            "axpy_rows_q5_0",
            "axpy_rows_q5_1",
            "axpy_rows_q8_0",
            "axpy_rows_q4_k",
            "axpy_rows_q5_k",
            "axpy_rows_q6_k",
        ],
    },
    Source { name: "rms_norm.cu", code: include_str!("kernels/rms_norm.cu"), kernels: &["rms_norm"] },
    Source { name: "rope.cu", code: include_str!("kernels/rope.cu"), kernels: &["rope"] },
    Source { name: "attention.cu", code: include_str!("kernels/attention.cu"), kernels: &["attention"] },
    Source {
        name: "elementwise.cu",
        code: include_str!("kernels/elementwise.cu"),
        kernels: &["add", "add_row", "glu_silu", "glu_relu", "glu_gelu"],
    },
];

impl Source {
    /// What NVRTC compiles: the prelude, then the file (with a `#line` so errors name the file).
    pub fn full_text(&self) -> String {
        format!("{PRELUDE}\n#line 1 \"{}\"\n{}", self.name, self.code)
    }
}

/// What to ask of NVRTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// PTX for the virtual architecture `compute_XY`.
    Ptx,
    /// A CUBIN (SASS) for the real architecture `sm_XY`.
    Cubin,
}

/// Options besides the architecture: C++17, IEEE division and square root as the CPU computes.
const OPTIONS: &[&str] = &["--std=c++17", "--prec-div=true", "--prec-sqrt=true", "--fmad=true"];

fn nvrtc_err(op: &'static str, problem: impl Into<String>) -> KernelError {
    KernelError::Device { backend: "cuda".into(), op, problem: problem.into() }
}

/// Whether the NVRTC library can be loaded (cudarc looks for `libnvrtc.so`, `libnvrtc.so.12` …
/// on the loader's path: `LD_LIBRARY_PATH`, the system directories). It needs no driver.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

fn require_nvrtc() -> Result<()> {
    if nvrtc_available() {
        Ok(())
    } else {
        Err(nvrtc_err("nvrtc", "no NVRTC library (libnvrtc.so.12) found on the library path"))
    }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    require_nvrtc()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: two valid out-pointers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| nvrtc_err("nvrtc", format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// The two digits of an architecture given as `sm_86`, `compute_86` or `86`.
pub fn arch_digits(arch: &str) -> Result<String> {
    let digits = arch.trim().trim_start_matches("sm_").trim_start_matches("compute_");
    if digits.len() >= 2 && digits.chars().all(|c| c.is_ascii_digit()) {
        Ok(digits.to_string())
    } else {
        Err(nvrtc_err("nvrtc", format!("architecture '{arch}' is not sm_XY")))
    }
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by `create_program`, destroyed once. A failure only leaks.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles one source for architecture `arch` (`sm_XY`) into PTX text or CUBIN bytes; a compile
/// error carries NVRTC's log.
pub fn compile(source: &Source, arch: &str, output: Output) -> Result<Vec<u8>> {
    require_nvrtc()?;
    let digits = arch_digits(arch)?;
    let text = CString::new(source.full_text()).map_err(|_| nvrtc_err("nvrtc", format!("{}: NUL in source", source.name)))?;
    let name = CString::new(source.name).map_err(|_| nvrtc_err("nvrtc", "NUL in source name"))?;
    let prog = Program(result::create_program(&text, Some(&name)).map_err(|e| nvrtc_err("nvrtc", format!("{}: create: {e:?}", source.name)))?);
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(match output {
        Output::Ptx => format!("--gpu-architecture=compute_{digits}"),
        Output::Cubin => format!("--gpu-architecture=sm_{digits}"),
    });
    // SAFETY: `prog` is a live program.
    if let Err(e) = unsafe { result::compile_program(prog.0, &options) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(prog.0) }.map(|l| c_chars_to_string(&l)).unwrap_or_default();
        return Err(nvrtc_err("nvrtc", format!("{} for sm_{digits}: {e:?}\n{log}", source.name)));
    }
    match output {
        // SAFETY: compiled successfully.
        Output::Ptx => unsafe { result::get_ptx(prog.0) }
            .map(|p| c_chars_to_string(&p).into_bytes())
            .map_err(|e| nvrtc_err("nvrtc", format!("{}: get PTX: {e:?}", source.name))),
        Output::Cubin => {
            let mut size = 0usize;
            // SAFETY: compiled for a real architecture; `size` and the buffer are valid.
            unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
                .result()
                .map_err(|e| nvrtc_err("nvrtc", format!("{}: CUBIN size: {e:?}", source.name)))?;
            let mut cubin = vec![0u8; size];
            // SAFETY: `cubin` holds `size` bytes.
            unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast::<c_char>()) }
                .result()
                .map_err(|e| nvrtc_err("nvrtc", format!("{}: get CUBIN: {e:?}", source.name)))?;
            Ok(cubin)
        }
    }
}

/// The PTX of every source for architecture `arch` (`sm_61`, `sm_86` …), as (file name, PTX):
/// the compile check of CI, which has NVRTC but no GPU.
pub fn compile_all(arch: &str) -> Result<Vec<(String, String)>> {
    SOURCES
        .iter()
        .map(|s| {
            let ptx = compile(s, arch, Output::Ptx)?;
            Ok((s.name.to_string(), String::from_utf8_lossy(&ptx).into_owned()))
        })
        .collect()
}

/// `$EMBER_HOME/ptx`, `EMBER_HOME` defaulting to `~/.cache/ember`.
pub fn cache_dir() -> Option<PathBuf> {
    let home = match std::env::var_os("EMBER_HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache").join("ember"),
    };
    Some(home.join("ptx"))
}

/// 64-bit FNV-1a: a hash that stays the same across builds, for cache file names.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The architectures this NVRTC compiles for (61, 75, …, ascending).
pub fn nvrtc_archs() -> Result<Vec<i32>> {
    require_nvrtc()?;
    let mut n: c_int = 0;
    // SAFETY: a valid out-pointer.
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(|e| nvrtc_err("nvrtc", format!("nvrtcGetNumSupportedArchs: {e:?}")))?;
    let mut archs = vec![0 as c_int; n.max(0) as usize];
    // SAFETY: `archs` holds the `n` entries NVRTC writes.
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(|e| nvrtc_err("nvrtc", format!("nvrtcGetSupportedArchs: {e:?}")))?;
    archs.sort_unstable();
    Ok(archs)
}

/// What to build for a device of compute capability `cc` (e.g. 86) when NVRTC knows `archs`:
/// a CUBIN for `cc` itself, else PTX for the newest architecture below it, which the driver
/// compiles for the device; `None` when NVRTC knows nothing at or below `cc`.
pub fn pick_target(cc: i32, archs: &[i32]) -> Option<(i32, Output)> {
    if archs.contains(&cc) {
        return Some((cc, Output::Cubin));
    }
    archs.iter().copied().filter(|&a| a < cc).max().map(|a| (a, Output::Ptx))
}

/// A compiled module for a device.
pub struct Image {
    /// CUBIN bytes, or PTX text.
    pub bytes: Vec<u8>,
    pub output: Output,
    /// Whether it came from the disk cache (a module that then fails to load is rebuilt).
    pub cached: bool,
}

/// The module of `source` for a device of compute capability `cc` (see [`pick_target`]): from
/// the disk cache when there and `fresh` is false, else compiled and stored (written to a
/// temporary name, then renamed; a cache that cannot be written is skipped). The cache key is
/// the source text, the options, the target and the NVRTC version.
pub fn module_image(source: &Source, cc: i32, fresh: bool) -> Result<Image> {
    let (major, minor) = nvrtc_version()?;
    let archs = nvrtc_archs()?;
    let (arch, output) = pick_target(cc, &archs).ok_or_else(|| {
        nvrtc_err("open", format!("NVRTC {major}.{minor} knows no architecture at or below sm_{cc} (it knows {archs:?})"))
    })?;
    let version = format!("nvrtc {major}.{minor}");
    let target = format!("{arch} {output:?}");
    let opts = OPTIONS.join(" ");
    let key = fnv1a(&[source.full_text().as_bytes(), opts.as_bytes(), version.as_bytes(), target.as_bytes()]);
    let stem = source.name.trim_end_matches(".cu");
    let ext = if output == Output::Cubin { "cubin" } else { "ptx" };
    let path = cache_dir().map(|d| d.join(format!("{stem}-sm_{arch}-{key:016x}.{ext}")));
    if let (Some(p), false) = (&path, fresh) {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok(Image { bytes, output, cached: true });
            }
        }
    }
    let bytes = compile(source, &format!("sm_{arch}"), output)?;
    if let Some(p) = &path {
        let _ = store(p, &bytes);
    }
    Ok(Image { bytes, output, cached: false })
}

fn store(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
