//! Output paths checked before any work: a command that would write over one of its own
//! inputs, into a directory, or where it cannot write is refused up front, not after an hour of
//! training (or, worse, by replacing the teacher or the test split it was reading).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::UsageError;

/// `path` made absolute with symbolic links resolved: itself when it exists, else its
/// directory's resolved path joined with its file name (`None` when neither resolves).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.canonicalize().ok()?,
        _ => std::env::current_dir().ok()?,
    };
    Some(dir.join(name))
}

/// Refuses (as a usage error naming `option`) an output path that cannot be a file — one that
/// ends in a path separator or is an existing directory — and any of `outputs` (the file and
/// the files written beside it) that is the same file as one of `inputs` (`(option, path)`).
pub fn check_outputs(option: &str, outputs: &[PathBuf], inputs: &[(String, PathBuf)]) -> Result<(), UsageError> {
    let Some(out) = outputs.first() else { return Ok(()) };
    let text = out.as_os_str().to_string_lossy();
    if text.ends_with(std::path::MAIN_SEPARATOR) || text.ends_with('/') || out.is_dir() {
        return Err(UsageError(format!(
            "{option} {} is a directory, not a file name (e.g. {})",
            out.display(),
            Path::new(text.trim_end_matches(['/', std::path::MAIN_SEPARATOR])).join("model.tkd").display()
        )));
    }
    for o in outputs {
        let Some(ro) = resolved(o) else { continue };
        for (input_option, input) in inputs {
            if resolved(input).is_some_and(|ri| ri == ro) {
                let what =
                    if o == out { String::new() } else { format!(" (written beside {option} {})", out.display()) };
                return Err(UsageError(format!(
                    "{option} would write {}{what}, which is {input_option} {}: writing it would replace an \
                     input; choose another {option}",
                    o.display(),
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

/// The directory a file `path` lives in: its parent, or `.` for a bare file name.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Creates the directory of `out` if needed and checks that a file can be created in it (by
/// creating and removing a probe file), so that a long run does not end in "cannot write".
pub fn check_writable(option: &str, out: &Path) -> anyhow::Result<()> {
    let dir = dir_of(out);
    // The nearest existing ancestor must be a directory ("File exists" would not say which).
    if let Some(file) = dir.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists()).filter(|a| !a.is_dir()) {
        return Err(
            UsageError(format!("{option} {}: {} is a file, not a directory", out.display(), file.display())).into()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{option} {}: cannot create {}", out.display(), dir.display()))?;
    let probe = dir.join(format!(".tinykd-write-probe-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("{option} {}: cannot create files in {}", out.display(), dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_over_an_input_or_a_directory_is_refused() {
        let dir = std::env::temp_dir().join(format!("tinykd-paths-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let teacher = dir.join("teacher.tkd");
        std::fs::write(&teacher, b"x").unwrap();
        let inputs = vec![("--teacher".to_string(), teacher.clone())];
        // The same file, spelled differently.
        let same = dir.join("sub").join("..").join("teacher.tkd");
        let e = check_outputs("--out", &[same], &inputs).unwrap_err().0;
        assert!(e.contains("--teacher") && e.contains("replace an input"), "{e}");
        // A file written beside the output.
        let beside = [dir.join("s.tkd"), teacher.clone()];
        let e = check_outputs("--out", &beside, &inputs).unwrap_err().0;
        assert!(e.contains("written beside --out"), "{e}");
        // Directories.
        for d in [dir.join("sub"), PathBuf::from(format!("{}/", dir.join("new").display()))] {
            let e = check_outputs("--out", std::slice::from_ref(&d), &inputs).unwrap_err().0;
            assert!(e.contains("is a directory"), "{}: {e}", d.display());
        }
        // A new file elsewhere is fine, and writable.
        let ok = dir.join("sub").join("student.tkd");
        check_outputs("--out", std::slice::from_ref(&ok), &inputs).unwrap();
        check_writable("--out", &ok).unwrap();
        assert!(std::fs::read_dir(dir.join("sub")).unwrap().next().is_none(), "the probe file was left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_directory_is_reported_before_work() {
        let e = check_writable("--out", Path::new("/proc/tinykd-no/x.tkd")).unwrap_err();
        assert!(format!("{e:#}").contains("--out /proc/tinykd-no/x.tkd"), "{e:#}");
        // A directory below a file names the file.
        let dir = std::env::temp_dir().join(format!("tinykd-paths-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("student.tkd");
        std::fs::write(&file, b"x").unwrap();
        let e = check_writable("--out", &file.join("sub").join("x.tkd")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(&format!("{} is a file, not a directory", file.display())), "{msg}");
        assert!(e.downcast_ref::<UsageError>().is_some(), "not a usage error: {msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
