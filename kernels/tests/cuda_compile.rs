//! The CUDA backend's compile check, which needs NVRTC but no GPU (what CI runs): every `.cu`
//! source compiles with NVRTC for each architecture Ember targets (Pascal's sm_61, Turing,
//! Ampere, Hopper), each PTX names every kernel its source declares, and, when `ptxas` is found
//! (on `PATH`, or in the `target/cuda-venv` that `make cuda-toolchain` installs), assembles for
//! that architecture — catching what NVRTC lets through. NVRTC's own CUBIN output (what a device
//! loads) is built too.
//!
//! Without libnvrtc the tests print a line and pass, unless `EMBER_REQUIRE_NVRTC=1`.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use std::process::Command;

use ember_kernels::backend::cuda::{self, compile_all, CudaBackend, Output, SOURCES};

const ARCHS: [&str; 4] = ["sm_61", "sm_75", "sm_86", "sm_90"];

/// Whether NVRTC is here; without it, a skip (or a failure when CI requires it).
fn have_nvrtc(test: &str) -> bool {
    if cuda::nvrtc_available() {
        return true;
    }
    let msg = format!("{test}: libnvrtc not found (set LD_LIBRARY_PATH, or run `make cuda-toolchain`)");
    if std::env::var("EMBER_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
        panic!("{msg}, and EMBER_REQUIRE_NVRTC=1");
    }
    eprintln!("{msg}: skipped");
    false
}

/// `ptxas` on `PATH`, else in the workspace's `target/cuda-venv` (pip's nvidia-cuda-nvcc-cu12).
fn find_ptxas() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("ptxas"))
        .find(|p| p.is_file());
    on_path.or_else(|| {
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cuda-venv/lib");
        std::fs::read_dir(lib)
            .ok()?
            .flatten()
            .map(|py| py.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas"))
            .find(|p| p.is_file())
    })
}

#[test]
fn every_source_compiles_to_ptx_and_assembles_for_every_arch() {
    if !have_nvrtc("cuda_compile") {
        return;
    }
    let (major, minor) = cuda::nvrtc_version().expect("nvrtc version");
    let ptxas = find_ptxas();
    eprintln!("NVRTC {major}.{minor}; ptxas: {}", ptxas.as_ref().map_or("not found".into(), |p| p.display().to_string()));
    let dir = std::env::temp_dir().join(format!("ember-cuda-compile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut failures = Vec::new();
    for arch in ARCHS {
        let ptxs = match compile_all(arch) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{arch}: NVRTC: {e}"));
                continue;
            }
        };
        assert_eq!(ptxs.len(), SOURCES.len());
        for ((name, ptx), source) in ptxs.iter().zip(SOURCES) {
            for kernel in source.kernels {
                if !ptx.contains(&format!(".entry {kernel}(")) {
                    failures.push(format!("{arch} {name}: no entry point {kernel} in the PTX"));
                }
            }
            if name.starts_with("mmvq") && !(ptx.contains("dp4a") && ptx.contains("ld.global.nc")) {
                failures.push(format!("{arch} {name}: no dp4a or no read-only loads (ld.global.nc) in the PTX"));
            }
            let Some(ptxas) = &ptxas else { continue };
            let file = dir.join(format!("{}-{arch}.ptx", name.trim_end_matches(".cu")));
            std::fs::write(&file, ptx).expect("write PTX");
            let out = Command::new(ptxas).arg(format!("-arch={arch}")).arg("-v").arg(&file).arg("-o").arg(file.with_extension("cubin")).output();
            match out {
                Ok(o) if o.status.success() => {
                    // `-v` reports registers and spills per kernel; spills are worth a look.
                    let log = String::from_utf8_lossy(&o.stderr);
                    let spills = log.lines().filter(|l| l.contains("spill") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads")).count();
                    eprintln!("ptxas -arch={arch} {name}: ok{}", if spills > 0 { format!(" ({spills} kernels spill registers)") } else { String::new() });
                    log.lines().filter(|l| l.contains("warning")).for_each(|l| eprintln!("  {l}"));
                }
                Ok(o) => failures.push(format!("ptxas -arch={arch} {name}: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr))),
                Err(e) => failures.push(format!("running {}: {e}", ptxas.display())),
            }
        }
        eprintln!("{arch}: {} sources compiled", ptxs.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_source_compiles_to_a_cubin_for_every_arch() {
    if !have_nvrtc("cuda_compile") {
        return;
    }
    let mut failures = Vec::new();
    for arch in ARCHS {
        for source in SOURCES {
            match cuda::compile(source, arch, Output::Cubin) {
                Ok(cubin) if cubin.starts_with(b"\x7fELF") => {}
                Ok(cubin) => failures.push(format!("{arch} {}: {} bytes, not an ELF image", source.name, cubin.len())),
                Err(e) => failures.push(format!("{arch} {}: {e}", source.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_bad_architecture_is_an_error() {
    if !have_nvrtc("cuda_compile") {
        return;
    }
    assert!(compile_all("sm_x").is_err());
    assert!(cuda::compile(&SOURCES[0], "sm_11", Output::Ptx).is_err(), "NVRTC accepted sm_11");
}

/// Without a driver (this machine, CI) opening a device is an error, not a panic; with one, a
/// device index past the last is.
#[test]
fn opening_without_a_device_is_an_error() {
    match CudaBackend::new(0) {
        Err(e) => eprintln!("cuda:0: {e}"),
        Ok(_) => assert!(CudaBackend::new(4096).is_err(), "cuda:4096 opened"),
    }
    assert!(CudaBackend::new(4096).is_err());
}

/// A device NVRTC knows gets a CUBIN; a newer one PTX for the newest architecture NVRTC knows.
#[test]
fn the_target_follows_what_nvrtc_knows() {
    let archs = [61, 75, 86, 90];
    assert_eq!(cuda::pick_target(86, &archs), Some((86, Output::Cubin)));
    assert_eq!(cuda::pick_target(120, &archs), Some((90, Output::Ptx)));
    assert_eq!(cuda::pick_target(89, &archs), Some((86, Output::Ptx)));
    assert_eq!(cuda::pick_target(52, &archs), None);
    if !have_nvrtc("cuda_compile") {
        return;
    }
    let known = cuda::nvrtc_archs().expect("supported architectures");
    for arch in [61, 75, 86, 90] {
        assert!(known.contains(&arch), "NVRTC does not know sm_{arch}: {known:?}");
    }
}

/// The module a device loads is compiled once, then read from `$EMBER_HOME/ptx`.
#[test]
fn modules_are_cached_on_disk() {
    if !have_nvrtc("cuda_compile") {
        return;
    }
    let home = std::env::temp_dir().join(format!("ember-cuda-cache-{}", std::process::id()));
    std::env::set_var("EMBER_HOME", &home);
    let source = &SOURCES[0];
    let first = cuda::module_image(source, 61, false).expect("compile");
    let second = cuda::module_image(source, 61, false).expect("cached");
    let fresh = cuda::module_image(source, 61, true).expect("recompile");
    std::env::remove_var("EMBER_HOME");
    let files: Vec<_> = std::fs::read_dir(home.join("ptx")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&home);
    assert!(!first.cached && second.cached && !fresh.cached);
    assert_eq!(first.output, Output::Cubin);
    assert_eq!(first.bytes, second.bytes);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().ends_with(".cubin"), "{files:?}");
}
