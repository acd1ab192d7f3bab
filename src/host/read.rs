//! Reading input files whole, regular files only: a device (`/dev/zero`) or a pipe would be
//! read without end or block forever before any check of its contents could refuse it.

use std::io;
use std::path::Path;

/// The bytes of the regular file at `path`; an `InvalidInput` error for a directory, a device,
/// a pipe or a socket (decided by `stat`, which does not block on a pipe as opening it would).
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &Path) -> io::Result<String> {
    check_regular(path)?;
    std::fs::read_to_string(path)
}

/// `Ok` when `path` (symbolic links followed) is a regular file; its `stat` error otherwise
/// (so a missing file is still `NotFound`).
fn check_regular(path: &Path) -> io::Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() { "a directory" } else { "not a regular file (a device, pipe or socket)" };
    Err(io::Error::new(io::ErrorKind::InvalidInput, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("tinykd-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f.bin");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_file(&file).unwrap(), b"abc");
        assert_eq!(read_text(&file).unwrap(), "abc");
        let e = read_file(&dir).unwrap_err();
        assert!(e.kind() == io::ErrorKind::InvalidInput && e.to_string() == "a directory", "{e}");
        // An endless device is refused before it is read.
        let e = read_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert_eq!(read_file(&dir.join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
