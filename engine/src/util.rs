//! Small helpers shared across the engine.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{EngineError, Result};

/// Writes `path` atomically: the content goes to `path.tmp` first, which is renamed over `path`
/// only once complete, so a crash never leaves a half-written file under the real name.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut f = BufWriter::new(File::create(&tmp)?);
        write(&mut f)?;
        f.flush()?;
        f.get_ref().sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EngineError::io(path, e)
    })
}
