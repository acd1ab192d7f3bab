//! Writing a dataset directory as a whole: readers of the directory see the old dataset or the
//! complete new one, never a mix of their files.
//!
//! The new files go to a fresh directory `.<name>.tinykd-new.<pid>.<n>.tmp` beside the target
//! (same parent, so the renames stay on one filesystem), which is `fsync`ed; then, on Linux,
//! the two directories are exchanged in one step (`renameat2` with `RENAME_EXCHANGE`) and the
//! temp name, now holding the old dataset, is removed. Where the exchange is not available
//! (another OS, or a filesystem without it) an existing target is renamed aside to
//! `.<name>.tinykd-old.<pid>.<n>.tmp` first, the new directory renamed to the target, and the
//! old one removed: a process killed between those two renames leaves no dataset at the target
//! (both under their temp names). A failure before the swap removes the new directory and
//! leaves the target untouched; a process killed before the swap, or before it removed the old
//! dataset, leaves its temp directory behind, and the next replacement of the same target
//! removes it (as [`crate::host::atomic`] does for temp files: only names of that pattern whose
//! pid does not run, and only when they hold nothing but a dataset's files).
//!
//! An existing target must be a directory holding only a dataset's files (those of
//! [`is_dataset_file`]), so that replacing it never deletes anything else.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::cifar::{DataError, META_FILE, TEST_FILE, TRAIN_FILES};
use crate::host::atomic::{self, process_running};

/// Distinguishes temp directories of concurrent replacements within one process.
static NEXT_TEMP: AtomicU32 = AtomicU32::new(0);

/// Replaces the directory `dir` (created, with its parents, if missing) by what `fill` writes
/// into an empty directory it is given, as a whole (see the [module docs](self)). Refused,
/// changing nothing, when `dir` exists and is not a directory or holds anything but a dataset's
/// files. A symbolic link to a directory is followed: the directory it names is replaced.
pub fn replace_dir(dir: &Path, fill: &mut dyn FnMut(&Path) -> Result<(), DataError>) -> Result<(), DataError> {
    let (target, exists) = resolve_target(dir)?;
    let (parent, name) = parent_and_name(&target)?;
    fs::create_dir_all(&parent).map_err(|source| DataError::Io { path: parent.clone(), source })?;
    remove_stale_temps(&parent, &name);
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let fresh = temp_path(&parent, &name, "new", n);
    fs::create_dir(&fresh).map_err(|source| DataError::Io { path: fresh.clone(), source })?;
    let result = fill(&fresh).and_then(|()| sync_dir(&fresh)).and_then(|()| {
        let aside = exists.then(|| temp_path(&parent, &name, "old", n));
        swap_in(&fresh, &target, aside.as_deref())
    });
    if result.is_err() {
        // Best effort: after a failed swap the directory may already be gone.
        let _ = fs::remove_dir_all(&fresh);
        return result;
    }
    sync_dir(&parent)
}

/// Whether `name` is a file the dataset writer makes: a training file, the test file, the
/// class-name file, or a temp file `.<one of those>.<pid>.<n>.tmp` of
/// [`crate::host::atomic::write_atomic`].
pub fn is_dataset_file(name: &str) -> bool {
    let is_final = |n: &str| TRAIN_FILES.contains(&n) || n == TEST_FILE || n == META_FILE;
    if is_final(name) {
        return true;
    }
    let Some(rest) = name.strip_prefix('.').and_then(|r| r.strip_suffix(".tmp")) else { return false };
    let mut parts = rest.rsplitn(3, '.');
    let (n, pid, file) = (parts.next(), parts.next(), parts.next());
    let decimal = |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    decimal(n) && decimal(pid) && file.is_some_and(is_final)
}

/// Whether [`replace_dir`] would take `dir` (the checks it makes before writing anything):
/// for a caller that must know before it does other work, such as removing earlier outputs.
pub fn check_target(dir: &Path) -> Result<(), DataError> {
    resolve_target(dir).map(|_| ())
}

/// The directory to replace (`dir`, resolved to its real path when it exists, so that a
/// symbolic link is followed) and whether it exists; refused when it exists but is not a
/// directory holding only a dataset's files, or holds the current directory (the process, and
/// the shell that started it, would be left in a deleted directory).
fn resolve_target(dir: &Path) -> Result<(PathBuf, bool), DataError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((dir.to_path_buf(), false)),
        Err(source) => return Err(DataError::Io { path: dir.to_path_buf(), source }),
        Ok(_) => {}
    }
    let target = fs::canonicalize(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    let meta = fs::metadata(&target).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    if !meta.is_dir() {
        return Err(DataError::NotADirectory { path: dir.to_path_buf() });
    }
    check_only_dataset_files(&target, dir)?;
    if std::env::current_dir().and_then(fs::canonicalize).is_ok_and(|cwd| cwd.starts_with(&target)) {
        return Err(DataError::Invalid {
            what: format!(
                "{} is (or holds) the current directory, which replacing it would delete under this shell; \
                 give the dataset a directory of its own, e.g. {}",
                dir.display(),
                dir.join("data").display()
            ),
        });
    }
    Ok((target, true))
}

/// [`DataError::ForeignFile`] (naming it under `shown`, the directory as the user gave it)
/// unless every entry of `dir` is a regular file of [`is_dataset_file`].
fn check_only_dataset_files(dir: &Path, shown: &Path) -> Result<(), DataError> {
    let io_err = |source| DataError::Io { path: shown.to_path_buf(), source };
    let mut foreign: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        let is_file = entry.file_type().map_err(io_err)?.is_file();
        if !(is_file && name.to_str().is_some_and(is_dataset_file)) {
            foreign.push(shown.join(name));
        }
    }
    // The first by name, so that the message does not depend on the directory's order.
    match foreign.into_iter().min() {
        Some(path) => Err(DataError::ForeignFile { dir: shown.to_path_buf(), path }),
        None => Ok(()),
    }
}

/// The parent of `target` (`.` when it has none) and its file name.
fn parent_and_name(target: &Path) -> Result<(PathBuf, String), DataError> {
    let name = target.file_name().ok_or_else(|| DataError::Invalid {
        what: format!("{} does not name a directory that can be replaced; give a directory name", target.display()),
    })?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_string_lossy().into_owned()))
}

/// `<parent>/.<name>.tinykd-<role>.<pid>.<n>.tmp`.
fn temp_path(parent: &Path, name: &str, role: &str, n: u32) -> PathBuf {
    parent.join(format!(".{name}.tinykd-{role}.{}.{n}.tmp", std::process::id()))
}

/// The pid of `entry` if it is a temp directory name of `name`: `.<name>.tinykd-new.<pid>.<n>.tmp`
/// or `.<name>.tinykd-old.<pid>.<n>.tmp`.
fn temp_pid(entry: &str, name: &str) -> Option<u32> {
    let rest = entry.strip_prefix('.')?.strip_prefix(name)?.strip_prefix(".tinykd-")?.strip_suffix(".tmp")?;
    let rest = rest.strip_prefix("new.").or_else(|| rest.strip_prefix("old."))?;
    let (pid, n) = rest.split_once('.')?;
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(decimal(pid) && decimal(n)) {
        return None;
    }
    pid.parse().ok()
}

/// Removes the temp directories of dead replacements of `<parent>/<name>` (see the
/// [module docs](self)); errors are ignored: a leftover only costs disk space.
fn remove_stale_temps(parent: &Path, name: &str) {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|e| temp_pid(e, name)) else { continue };
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if pid != me && process_running(pid) == Some(false) && is_dir && check_only_dataset_files(&path, &path).is_ok()
        {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Puts the complete directory `fresh` at `target`. With `aside`, `target` exists: the two are
/// exchanged in one step where the OS can ([`exchange`]), else `target` is renamed to `aside`
/// and `fresh` to `target`; then the old dataset (at `fresh` or `aside`) is removed (best
/// effort: a leftover is removed by a later replacement). If the second rename fails, `target`
/// is renamed back.
fn swap_in(fresh: &Path, target: &Path, aside: Option<&Path>) -> Result<(), DataError> {
    let rename =
        |from: &Path, to: &Path| fs::rename(from, to).map_err(|source| DataError::Io { path: to.into(), source });
    let Some(aside) = aside else {
        // `target` did not exist when the replacement began; if it does now, another process
        // made it meanwhile (a concurrent `data synth` of the same directory).
        return fs::rename(fresh, target).map_err(|source| match source.kind() {
            io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists if target.is_dir() => DataError::Invalid {
                what: format!(
                    "{} was created by another process while this dataset was written (another `data synth` of \
                     the same directory?); nothing was changed: run again to replace it",
                    target.display()
                ),
            },
            _ => DataError::Io { path: target.into(), source },
        });
    };
    match exchange(fresh, target) {
        Ok(true) => {
            let _ = fs::remove_dir_all(fresh);
            return Ok(());
        }
        Ok(false) => {}
        Err(source) => return Err(DataError::Io { path: target.into(), source }),
    }
    rename(target, aside)?;
    if let Err(e) = rename(fresh, target) {
        if let Err(source) = fs::rename(aside, target) {
            return Err(DataError::Invalid {
                what: format!(
                    "{e}; moving the old dataset back from {} to {} failed too ({source}): move it back by hand",
                    aside.display(),
                    target.display()
                ),
            });
        }
        return Err(e);
    }
    let _ = fs::remove_dir_all(aside);
    Ok(())
}

/// Exchanges the directories `a` and `b` (both exist, on one filesystem) in one step:
/// `renameat2(a, b, RENAME_EXCHANGE)`. `Ok(false)`, changing nothing, where the kernel or the
/// filesystem has no such exchange (`ENOSYS`, `EINVAL`; e.g. Linux before 3.15, some network
/// filesystems).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call; renameat2 reads
    // them and nothing else of this process's memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSYS | libc::EINVAL) => Ok(false),
        _ => Err(e),
    }
}

/// No single-step exchange on this OS: the caller renames twice.
#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<bool> {
    Ok(false)
}

/// Makes the entries of `dir` durable ([`atomic::sync_dir`] with the error naming `dir`).
fn sync_dir(dir: &Path) -> Result<(), DataError> {
    atomic::sync_dir(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_file_names() {
        for ok in ["data_batch_1.bin", "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"] {
            assert!(is_dataset_file(ok), "{ok}");
        }
        assert!(is_dataset_file(".data_batch_2.bin.123.0.tmp"));
        assert!(is_dataset_file(".batches.meta.txt.9.17.tmp"));
        for bad in [
            "data_batch_6.bin",
            "notes.txt",
            ".data_batch_2.bin.123.tmp",
            ".data_batch_2.bin.x.0.tmp",
            ".notes.txt.1.2.tmp",
            "readme.html",
            "",
        ] {
            assert!(!is_dataset_file(bad), "{bad}");
        }
    }

    #[test]
    fn swap_exchanges_an_existing_directory_and_removes_the_old_one() {
        let root = std::env::temp_dir().join(format!("tinykd-swap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (fresh, target, aside) = (root.join(".new"), root.join("d"), root.join(".old"));
        for (dir, text) in [(&fresh, "new"), (&target, "old")] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("test_batch.bin"), text).unwrap();
        }
        swap_in(&fresh, &target, Some(&aside)).unwrap();
        assert_eq!(fs::read_to_string(target.join("test_batch.bin")).unwrap(), "new");
        assert!(!fresh.exists() && !aside.exists(), "the old dataset is removed");
        // The exchange itself, where the filesystem has it: both directories stay, swapped.
        fs::create_dir_all(&fresh).unwrap();
        fs::write(fresh.join("test_batch.bin"), "newer").unwrap();
        let (at_target, at_fresh) =
            if exchange(&fresh, &target).unwrap() { ("newer", "new") } else { ("new", "newer") };
        assert_eq!(fs::read_to_string(target.join("test_batch.bin")).unwrap(), at_target);
        assert_eq!(fs::read_to_string(fresh.join("test_batch.bin")).unwrap(), at_fresh);
        // A target that appeared after the replacement began (another writer's) is kept.
        let err = swap_in(&fresh, &target, None).unwrap_err().to_string();
        assert!(err.contains("created by another process") && err.contains("run again"), "{err}");
        assert_eq!(fs::read_to_string(target.join("test_batch.bin")).unwrap(), at_target);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn temp_dir_names() {
        assert_eq!(temp_pid(".d.tinykd-new.42.0.tmp", "d"), Some(42));
        assert_eq!(temp_pid(".d.tinykd-old.7.3.tmp", "d"), Some(7));
        assert_eq!(temp_pid(".d.tinykd-new.42.0.tmp", "e"), None);
        assert_eq!(temp_pid(".dd.tinykd-new.42.0.tmp", "d"), None);
        assert_eq!(temp_pid(".d.tinykd-xyz.42.0.tmp", "d"), None);
        assert_eq!(temp_pid(".d.tinykd-new.42.tmp", "d"), None);
        assert_eq!(temp_pid(".d.tinykd-new.4a.0.tmp", "d"), None);
        let p = temp_path(Path::new("/x"), "d", "new", 5);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(temp_pid(name, "d"), Some(std::process::id()));
    }
}
