//! Crash-safe file replacement: readers of `path` see either the old file or the complete new
//! one, never a partial write. A writer killed mid-write leaves its temp file behind; the next
//! write of the same file removes it (see [`write_atomic`]).

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
///
/// Before writing, temp files of earlier writers of the same `path` that were killed before
/// their rename are removed (best effort): exactly the names `.<file name>.<pid>.<n>.tmp` with
/// decimal `pid` and `n`, where `pid` is not this process and no process `pid` runs. Whether a
/// process runs is read from `/proc` on Linux (processes of the same PID namespace); elsewhere,
/// or without `/proc`, nothing is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("`{}` does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    remove_stale_temps(dir, &file_name.to_string_lossy());
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

/// Removes the temp files of dead writers of `<dir>/<file_name>` (see [`write_atomic`]);
/// errors are ignored: a leftover temp file only costs disk space.
fn remove_stale_temps(dir: &Path, file_name: &str) {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| temp_pid(n, file_name)) else { continue };
        if pid != me && process_running(pid) == Some(false) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The pid of `name` if it is a temp file name of `file_name`: `.<file_name>.<pid>.<n>.tmp`.
fn temp_pid(name: &str, file_name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_prefix(file_name)?.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (pid, n) = rest.split_once('.')?;
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(decimal(pid) && decimal(n)) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` runs; `None` when that cannot be told.
#[cfg(target_os = "linux")]
pub(crate) fn process_running(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return None;
    }
    Some(proc.join(pid.to_string()).exists())
}

/// Whether process `pid` runs: not known on this platform.
#[cfg(not(target_os = "linux"))]
pub(crate) fn process_running(_pid: u32) -> Option<bool> {
    None
}

/// Writes and syncs `file` (which lives at `temp`), closes it, renames `temp` to `path`.
fn fill_and_rename(mut file: File, temp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, path)
}

/// Makes a rename inside `dir` (and the names of its files) durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing on this platform; the rename is left to the OS.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
