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
//! symbolic link at its last component (`open_file`), naming a uid for messages, this user's
//! home (`home_dir`: HOME, else the password database), and the fix for a file or directory
//! the user may not read or create (`unreadable_fix`, `closed_directory`,
//! `create_private_dir_fix`: the command root runs, in README.md's layout). Must not: read
//! what the files mean, or decide what a caller does about a refusal.

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

/// This user's home directory: `$HOME` when set (absolute), else the password database's entry
/// for the effective uid. Daemons often run without HOME (PHP's mail() under Apache or
/// PHP-FPM as www-data, services started by systemd): their home is still theirs to name, so
/// the per-user spool and token cache have a place, and a message saying how to create it.
pub fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").map(PathBuf::from)
        && h.is_absolute()
    {
        return Some(h);
    }
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: as in `user_name`.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(euid(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pw.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pw.pw_dir).to_str().ok()?;
        let dir = PathBuf::from(dir);
        dir.is_absolute().then_some(dir)
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

/// The name of group `gid`, from the group database.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: group is plain data filled by getgrgid_r; buf outlives the use of the pointers
    // it holds; result is checked before gr is read.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || gr.gr_name.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(gr.gr_name);
        name.to_str().ok().map(str::to_owned)
    }
}

/// The effective gid and the supplementary groups of this process.
fn my_groups() -> Vec<u32> {
    // SAFETY: getegid has no preconditions; getgroups writes at most `n` entries into a
    // buffer of that many.
    unsafe {
        let mut groups = vec![libc::getegid()];
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n > 0 {
            let mut buf = vec![0 as libc::gid_t; n as usize];
            let got = libc::getgroups(n, buf.as_mut_ptr());
            if got > 0 {
                groups.extend(buf.iter().take(got as usize).copied());
            }
        }
        groups
    }
}

/// The group README.md's layout shares secret files with the users that send mail through.
const SHARED_GROUP: &str = "m365send";

/// The gid of the group `name`, from the group database.
fn gid_of(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: as in `group_name`.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            c_name.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some(gr.gr_gid)
    }
}

/// A group for a command line: its name, else its number.
fn group_arg(gid: u32) -> String {
    group_name(gid).unwrap_or_else(|| gid.to_string())
}

/// Whether this process may read (`bit` 4) or enter (`bit` 1) what `meta` describes, by its
/// mode bits alone.
fn mode_allows(meta: &Metadata, euid: u32, groups: &[u32], bit: u32) -> bool {
    let mode = meta.mode();
    if euid == 0 {
        return true;
    }
    if meta.uid() == euid {
        mode & (bit << 6) != 0
    } else if groups.contains(&meta.gid()) {
        mode & (bit << 3) != 0
    } else {
        mode & bit != 0
    }
}

/// The directory above `path` that this process's user may not enter, and the fix.
pub fn closed_directory(path: &Path) -> Option<String> {
    let euid = euid();
    let groups = my_groups();
    let absolute = std::path::absolute(path).ok()?;
    let mut dirs: Vec<&Path> = absolute.ancestors().skip(1).collect();
    dirs.reverse();
    for d in dirs {
        let meta = std::fs::metadata(d).ok()?;
        if !mode_allows(&meta, euid, &groups, 0o1) {
            return Some(format!(
                "{} may not enter directory {} (mode {:04o}, owner {}): `chmod 755 {}`, as \
                 README.md lays out /etc/m365send",
                describe_owner_arg(euid),
                d.display(),
                meta.mode() & 0o7777,
                describe_owner_arg(meta.uid()),
                d.display()
            ));
        }
    }
    None
}

/// After a "permission denied" reading `path`: which directory above it or which bit of its
/// mode keeps this process's user out, and the command that lets the users that send mail read
/// it (the layout of README.md: files shared through a group such as `m365send`). None when
/// the modes allow the read (an ACL or a security module refused it).
pub fn unreadable_fix(path: &Path) -> Option<String> {
    if let Some(fix) = closed_directory(path) {
        return Some(fix);
    }
    let euid = euid();
    let groups = my_groups();
    let who = describe_owner_arg(euid);
    let absolute = std::path::absolute(path).ok()?;
    let meta = std::fs::metadata(&absolute).ok()?;
    if mode_allows(&meta, euid, &groups, 0o4) {
        return None;
    }
    let shown = absolute.display();
    let mode = meta.mode() & 0o7777;
    let (owner, gid) = (describe_owner_arg(meta.uid()), meta.gid());
    if meta.uid() == euid {
        return Some(format!(
            "it is {who}'s own file but mode {mode:04o}: `chmod u+r {shown}`"
        ));
    }
    let restart = format!(
        "then restart what sends as {who} (PHP-FPM, the web server; a login shell: log in \
         again) so that it has the group"
    );
    if gid != 0 && mode & 0o040 != 0 {
        return Some(format!(
            "it is readable by group {g} (mode {mode:04o}), and {who} is not in that group: \
             `usermod -aG {g} {who}`, {restart}",
            g = group_arg(gid)
        ));
    }
    if gid != 0 {
        let join = if groups.contains(&gid) {
            String::new()
        } else {
            format!(" and `usermod -aG {g} {who}`", g = group_arg(gid))
        };
        return Some(format!(
            "group {g} may not read it (mode {mode:04o}): `chmod g+r {shown}`{join}",
            g = group_arg(gid)
        ));
    }
    // The group README.md's layout shares secrets through: made, and joined, only if needed.
    let shared = gid_of(SHARED_GROUP);
    let mut steps = Vec::new();
    if shared.is_none() {
        steps.push(format!("groupadd --system {SHARED_GROUP}"));
    }
    if !shared.is_some_and(|g| groups.contains(&g)) {
        steps.push(format!("usermod -aG {SHARED_GROUP} {who}"));
    }
    steps.push(format!("chgrp {SHARED_GROUP} {shown} && chmod 640 {shown}"));
    Some(format!(
        "only {owner} may read it (mode {mode:04o}). To share it with the users that send mail, \
         as README.md lays out /etc/m365send: `{}`, {restart}; or send {who}'s mail through a \
         profile that does not need it",
        steps.join("; ")
    ))
}

/// The fix when `euid` (not root) may not create its private directory `dir` (the spool, the
/// token cache) because a directory above it is not its to write, as with a home directory
/// that root owns (www-data's /var/www on Debian): root creates it for that user.
pub fn create_private_dir_fix(dir: &Path, euid: u32) -> String {
    let who = describe_owner_arg(euid);
    format!(
        "{who} may not create it (a directory above it, such as its home, is not {who}'s to \
         write): as root, `install -d -o {who} -m 0700 {}`",
        dir.display()
    )
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

/// A user for a command line (`chown NAME`, `install -o NAME`): its name, else its number.
pub fn describe_owner_arg(uid: u32) -> String {
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
    /// The file cannot be opened or read (missing, an I/O error).
    Io(std::io::Error),
    /// This user may not read it: the error and what lets them (`unreadable_fix`).
    Denied(std::io::Error, Option<String>),
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
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ReadError::Denied(e, unreadable_fix(path)));
        }
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
            ReadError::Io(e) | ReadError::Denied(e, None) => write!(f, "{e}"),
            // The fix on a line of its own: the message's first line says what happened.
            ReadError::Denied(e, Some(fix)) => write!(f, "{e}\n  {fix}"),
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
