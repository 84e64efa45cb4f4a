//! Durable file writes shared by the queue spool and the token cache.
//!
//! Owns: replacing a small file atomically (a reader sees the old or the new contents, never a
//! mix, and a crash leaves one of them) and syncing a directory after a rename. Must not: know
//! what the files mean.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Replace `dest` with `bytes`: a temporary file (mode `mode`) in `tmp_dir` (same file
/// system as `dest`), written, fsynced, renamed over `dest`, then `dest`'s directory fsynced.
/// The temporary file is removed on failure.
pub fn replace_file(tmp_dir: &Path, dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(tmp_dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    match dest.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// fsync a directory, so that a rename or removal in it survives a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_file_with_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.json");
        std::fs::write(&dest, b"old contents, longer").unwrap();
        replace_file(dir.path(), &dest, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temporary file was left behind");
    }
}
