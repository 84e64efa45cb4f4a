//! Trust: whether a file or directory that steers m365send could have been written by another
//! user.
//!
//! m365send runs as root from cron and as other users (www-data for PHP) on the same host. A
//! configuration file can run commands (`command` secrets) with the privileges of whoever
//! reads it; an aliases file redirects mail; a secret file or key decides which credentials
//! are used; a spool entry decides what is sent with them. So each of them must be writable
//! only by the user m365send runs as (its effective uid) or by root, and so must every
//! directory above it (else the file could be replaced): the rule Postfix and OpenSSH apply to
//! their own files.
//!
//! The rule, for the effective uid U:
//! - the owner is U or root (uid 0);
//! - no write permission for others; none for the group either, unless the owner is U and U is
//!   not root (a user's own file under a user-private group, umask 002);
//! - a directory writable by others is accepted only with the sticky bit (`/tmp`): others may
//!   add entries there but not replace ours.
//!
//! Owns: that rule (`check_file`, `check_dir`), opening a checked file without following a
//! symbolic link at its last component (`open_file`), and naming a uid for messages. Must not:
//! read what the files mean, or decide what a caller does about a refusal.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// "root", "uid 33 (www-data)", or "uid 1234" when the account has no name.
pub fn describe_uid(uid: u32) -> String {
    if uid == 0 {
        return "root".into();
    }
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// The account name of `uid`, from the password database.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is plain data filled by getpwuid_r; buf outlives the use of the
    // pointers it holds; result is checked before pw is read.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pw.pw_name.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(pw.pw_name);
        name.to_str().ok().map(str::to_owned)
    }
}

/// The uid of the account `name`, from the password database.
pub fn uid_of(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: as in `user_name`.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some(pw.pw_uid)
    }
}

/// Why a file or directory is not trusted, worded for the user: what is wrong and the command
/// that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted(pub String);

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `meta` (a file or directory) may be written only by `euid` or root. `what` names it
/// in the message ("/etc/m365send/config.toml", "directory /srv").
fn check_meta(meta: &Metadata, euid: u32, path: &Path, is_dir: bool) -> Result<(), Untrusted> {
    let owner = meta.uid();
    let mode = meta.mode() & 0o7777;
    let shown = path.display();
    let kind = if is_dir { "directory " } else { "" };
    if owner != euid && owner != 0 {
        let fix = if euid == 0 {
            format!("`chown root {shown}`")
        } else {
            format!("`chown {} {shown}` (as root)", describe_owner_arg(euid))
        };
        return Err(Untrusted(format!(
            "{kind}{shown} is owned by {}, not by {}{}: another user could change what \
             m365send does as {}; {fix}",
            describe_uid(owner),
            describe_uid(euid),
            if euid == 0 { "" } else { " or root" },
            describe_uid(euid),
        )));
    }
    let sticky = is_dir && mode & 0o1000 != 0;
    let group_ok = owner == euid && euid != 0;
    let others_write = mode & 0o002 != 0 && !sticky;
    let group_write = mode & 0o020 != 0 && !group_ok && !sticky;
    if others_write || group_write {
        let who = match (group_write, others_write) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(Untrusted(format!(
            "{kind}{shown} is writable by {who} (mode {mode:04o}): another user could change \
             what m365send does as {}; `chmod go-w {shown}`",
            describe_uid(euid)
        )));
    }
    Ok(())
}

fn describe_owner_arg(uid: u32) -> String {
    user_name(uid).unwrap_or_else(|| uid.to_string())
}

/// Check every directory from `/` down to `dir` (itself included), as resolved
/// (`canonical`: no symbolic links left in it).
fn check_ancestors(canonical: &Path, euid: u32) -> Result<(), Untrusted> {
    let mut dirs: Vec<&Path> = canonical.ancestors().collect();
    dirs.reverse();
    for d in dirs {
        let meta = std::fs::metadata(d)
            .map_err(|e| Untrusted(format!("cannot check directory {}: {e}", d.display())))?;
        check_meta(&meta, euid, d, true)?;
    }
    Ok(())
}

/// Check the directory `dir` and every directory above it for `euid`. Symbolic links in the
/// path are resolved first, so what is checked is what is used.
pub fn check_dir(dir: &Path, euid: u32) -> Result<PathBuf, Untrusted> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| Untrusted(format!("cannot check {}: {e}", dir.display())))?;
    check_ancestors(&canonical, euid)?;
    Ok(canonical)
}

/// Check a directory that holds this user's private state (the spool, the token cache):
/// it must be a real directory owned by `euid` and writable by no one else (no sticky
/// exception), and the directories above it must pass the rule for `euid`. Returns the
/// resolved path. `sub` names subdirectories checked the same way when they exist.
pub fn check_private_dir(dir: &Path, sub: &[&str], euid: u32) -> Result<PathBuf, Untrusted> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| Untrusted(format!("cannot check {}: {e}", dir.display())))?;
    if let Some(parent) = canonical.parent() {
        check_ancestors(parent, euid)?;
    }
    let dirs = std::iter::once(canonical.clone()).chain(sub.iter().map(|s| canonical.join(s)));
    for d in dirs {
        let meta = match std::fs::symlink_metadata(&d) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Untrusted(format!("cannot check {}: {e}", d.display()))),
        };
        let shown = d.display();
        if !meta.is_dir() {
            return Err(Untrusted(format!("{shown} is not a directory")));
        }
        if meta.uid() != euid {
            return Err(Untrusted(format!(
                "{shown} is owned by {}, not by {}; `chown -R {} {}`",
                describe_uid(meta.uid()),
                describe_uid(euid),
                describe_owner_arg(euid),
                canonical.display()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(Untrusted(format!(
                "{shown} is writable by {} (mode {mode:04o}); `chmod 700 {shown}`",
                if mode & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                }
            )));
        }
    }
    Ok(canonical)
}

/// Open `path` for reading after checking it and every directory above it for `euid`, and
/// check the opened file again (fstat), so that what is read is what was checked. The last
/// component is opened without following a symbolic link (the path is resolved before).
/// `Err(io)` when the file cannot be opened at all (missing, no permission), `Ok(Err(..))`
/// when it is not trusted.
pub fn open_file(path: &Path, euid: u32) -> std::io::Result<Result<File, Untrusted>> {
    let canonical = path.canonicalize()?;
    if let Some(parent) = canonical.parent()
        && let Err(u) = check_ancestors(parent, euid)
    {
        return Ok(Err(Untrusted(format!("{u} (it holds {})", path.display()))));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&canonical)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err(Untrusted(format!(
            "{} is not a regular file",
            path.display()
        ))));
    }
    Ok(check_meta(&meta, euid, path, false).map(|()| file))
}

/// Why a checked read gave nothing.
#[derive(Debug)]
pub enum ReadError {
    /// The file cannot be opened or read (missing, no permission, an I/O error).
    Io(std::io::Error),
    /// It could be read, but another user could have written it.
    Untrusted(Untrusted),
    /// It holds more than the caller's limit.
    TooLarge(u64),
}

/// Read a file m365send acts on, as `open_file` checks it for this process's effective uid,
/// at most `limit` bytes.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let file = match open_file(path, euid()) {
        Ok(Ok(f)) => f,
        Ok(Err(u)) => return Err(ReadError::Untrusted(u)),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    Ok(buf)
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Untrusted(u) => write!(f, "refused: {u}"),
            ReadError::TooLarge(n) => write!(f, "larger than {} KiB", n / 1024),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const NOBODY: u32 = 65534;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refused(r: std::io::Result<Result<File, Untrusted>>) -> String {
        match r.unwrap() {
            Ok(_) => panic!("accepted"),
            Err(u) => u.0,
        }
    }

    /// Run as root (the tests do): files of another user, or writable by others, are refused
    /// for root; the same files are fine for their owner.
    #[test]
    fn the_rule_for_root_and_for_a_user() {
        if euid() != 0 {
            return; // needs chown
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        std::fs::write(&f, "x").unwrap();
        chmod(&f, 0o644);
        assert!(open_file(&f, 0).unwrap().is_ok());
        // A user may read root's file.
        assert!(open_file(&f, NOBODY).unwrap().is_ok());

        chmod(&f, 0o664);
        let e = refused(open_file(&f, 0));
        assert!(e.contains("writable by its group (mode 0664)"), "{e}");
        assert!(e.contains(&format!("`chmod go-w {}`", f.display())), "{e}");
        chmod(&f, 0o646);
        assert!(refused(open_file(&f, 0)).contains("writable by others"));

        chmod(&f, 0o644);
        std::os::unix::fs::chown(&f, Some(NOBODY), None).unwrap();
        let e = refused(open_file(&f, 0));
        assert!(e.contains("is owned by uid 65534"), "{e}");
        assert!(e.contains("not by root"), "{e}");
        // Its owner may use it, even group-writable (a user-private group).
        chmod(&f, 0o664);
        assert!(open_file(&f, NOBODY).unwrap().is_ok());
        // But not another user.
        assert!(refused(open_file(&f, 1234)).contains("not by uid 1234 or root"));
    }

    #[test]
    fn directories_above_count_and_sticky_ones_are_fine() {
        if euid() != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("etc");
        std::fs::create_dir(&sub).unwrap();
        let f = sub.join("config.toml");
        std::fs::write(&f, "x").unwrap();
        chmod(&f, 0o600);
        chmod(&sub, 0o777);
        let e = refused(open_file(&f, 0));
        assert!(e.contains(&format!("directory {}", sub.display())), "{e}");
        assert!(e.contains("writable by"), "{e}");
        // Sticky, as /tmp: others cannot replace our entries.
        chmod(&sub, 0o1777);
        assert!(open_file(&f, 0).unwrap().is_ok());
        chmod(&sub, 0o755);
        std::os::unix::fs::chown(&sub, Some(NOBODY), None).unwrap();
        let e = refused(open_file(&f, 0));
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert!(check_dir(&sub, 0).is_err());
        assert!(check_dir(dir.path(), 0).is_ok());
    }

    /// A symbolic link is resolved and its target checked; a FIFO is refused without blocking.
    #[test]
    fn links_are_resolved_and_only_regular_files_are_read() {
        if euid() != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(NOBODY), None).unwrap();
        let target = theirs.join("cfg.toml");
        std::fs::write(&target, "x").unwrap();
        let link = dir.path().join("config.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = refused(open_file(&link, 0));
        assert!(e.contains("owned by uid 65534"), "{e}");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(refused(open_file(&fifo, 0)).contains("not a regular file"));
    }

    #[test]
    fn names() {
        assert_eq!(describe_uid(0), "root");
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(uid_of("no-such-user-m365send"), None);
    }
}
