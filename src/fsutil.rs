//! Careful file writes shared by the queue spool, the token cache, the dead letter and the log.
//!
//! Owns: replacing a small file atomically (a reader sees the old or the new contents, never a
//! mix, and a crash leaves one of them), syncing a directory after a rename, opening a
//! private file for appending without trusting what is at its path ([`open_private_append`]),
//! and the room left on a file system ([`free_bytes`]).
//! Must not: know what the files mean.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// The bytes an unprivileged writer may still put on the file system that holds `path`
/// (statvfs(3): available blocks × fragment size); None when it cannot be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid value for statvfs(3) to fill; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the pointers outlive the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// fsync a directory, so that a rename or removal in it survives a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file opened by [`open_private_append`].
#[derive(Debug)]
pub struct PrivateAppend {
    pub file: File,
    /// The file existed with group or other permission bits, and they were removed (0600).
    pub tightened: bool,
}

/// Open `path` for appending, creating it with mode 0600, as root may do in a directory
/// another user can write (a home directory, /var/tmp): the last component must not be a
/// symbolic link (O_NOFOLLOW); opening never blocks on a FIFO (O_NONBLOCK); and the opened
/// file itself (fstat, so nothing can be swapped in between) must be a regular file with one
/// link, owned by our effective uid. Otherwise the error says which rule refused it. With
/// `tighten`, an existing file that group or others may access is set to 0600 (fchmod).
pub fn open_private_append(path: &Path, tighten: bool) -> io::Result<PrivateAppend> {
    let refused = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refused(
                "it is a symbolic link, which is not followed (it could point to any file)".into(),
            ),
            Some(libc::ENXIO) => refused("it is a FIFO or a socket, not a regular file".into()),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refused("it is not a regular file".into()));
    }
    if meta.nlink() > 1 {
        return Err(refused(format!(
            "it has {} hard links (another name could be any file)",
            meta.nlink()
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(refused(format!(
            "it belongs to uid {}, not to uid {euid} who writes it",
            meta.uid()
        )));
    }
    let mut tightened = false;
    if tighten && meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tightened = true;
    }
    Ok(PrivateAppend { file, tightened })
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
