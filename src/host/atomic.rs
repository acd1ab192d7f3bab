//! Crash-safe file replacement: readers of `path` see either the old file or the complete new
//! one, never a partial write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Distinguishes temp files of concurrent writers within one process (the pid separates
/// processes).
static NEXT_TEMP: AtomicU32 = AtomicU32::new(0);

/// Writes `bytes` to `path` atomically: to a new temp file in the same directory (named
/// `.<file name>.<pid>.<n>.tmp`), `fsync`s it, renames it over `path`, then `fsync`s the
/// directory so the rename itself is durable (Unix; elsewhere the directory sync is skipped).
///
/// If creating, writing, syncing or renaming fails, the temp file is removed and an existing
/// file at `path` is untouched. If only the final directory sync fails, `path` already holds
/// the new contents and that error is returned.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("`{}` does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let temp: PathBuf = dir.join(format!(".{}.{}.{}.tmp", file_name.to_string_lossy(), std::process::id(), n));

    let file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
    if let Err(e) = fill_and_rename(file, &temp, path, bytes) {
        // Best effort: the temp file may already be gone (e.g. a failed rename on some systems).
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Writes and syncs `file` (which lives at `temp`), closes it, renames `temp` to `path`.
fn fill_and_rename(mut file: File, temp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, path)
}

/// Makes a rename inside `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing on this platform; the rename is left to the OS.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
