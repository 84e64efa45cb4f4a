//! The token cache: one JSON file per profile, plus a lock file beside it.
//!
//! Owns: the cache directory (config `cache_dir`; root /var/cache/m365send; users
//! $XDG_CACHE_HOME/m365send or ~/.cache/m365send, `~` being HOME or else the password
//! database's home; created 0700, and when the user may not create it the error gives root's
//! `install -d` command; it must be this user's and writable by no one else, checked before
//! use and again before every write or lock, see `trust::check_private_dir`; the lock file is
//! never opened through a link), reading an entry
//! (ignored when its key — profile, tenant, client id, scope, flow, authority — no longer
//! matches the profile), writing it atomically (temp file 0600 in the same directory, fsync, rename) and the
//! exclusive lock that makes concurrent processes ask the token endpoint once.
//! Must not: talk to the network, or print a token (Debug is redacted).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::exit::{Exit, Failure};

const VERSION: u32 = 1;

/// What a cached token was issued for. A change in any field invalidates the entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub profile: String,
    pub tenant: String,
    pub client_id: String,
    pub scope: String,
    pub flow: String,
    pub authority: String,
}

/// One cache file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    pub key: CacheKey,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix seconds when the refresh token was last stored.
    #[serde(default)]
    pub refresh_stored_at: Option<i64>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("access_token", &r(&self.access_token))
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &r(&self.refresh_token))
            .finish()
    }
}

impl Entry {
    pub fn new(key: CacheKey) -> Entry {
        Entry {
            version: VERSION,
            key,
            access_token: None,
            expires_at: None,
            refresh_token: None,
            refresh_stored_at: None,
        }
    }

    /// The access token if it is still valid `window` seconds from `now`.
    pub fn valid_access_token(&self, now: i64, window: u64) -> Option<&str> {
        let exp = self.expires_at?;
        let tok = self.access_token.as_deref()?;
        (now.saturating_add(window as i64) < exp && !tok.is_empty()).then_some(tok)
    }
}

/// The cache directory for this configuration (not created).
pub fn dir(config: &Config) -> Result<PathBuf, Failure> {
    let dir = default_dir(config)?;
    // Tokens another user could plant or replace would be used as this user's: the cache
    // must be this user's private directory (checked when it exists; created 0700 if not).
    if dir.exists() {
        check_dir(&dir)?;
    }
    Ok(dir)
}

/// The cache directory must be this user's private directory: tokens another user could
/// plant or replace would be used as this user's.
fn check_dir(dir: &Path) -> Result<(), Failure> {
    let euid = crate::trust::euid();
    crate::trust::check_private_dir(dir, &[], euid).map_err(|u| {
        Failure::new(
            Exit::NoPerm,
            format!(
                "the token cache {} is not safe to use: {u}. It holds {}'s tokens, so only \
                 that user may write it",
                dir.display(),
                crate::trust::describe_uid(euid)
            ),
        )
    })?;
    Ok(())
}

/// The cache directory by configuration, user and environment.
fn default_dir(config: &Config) -> Result<PathBuf, Failure> {
    if let Some(d) = &config.cache_dir {
        return Ok(d.clone());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/cache/m365send"));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from)
        && x.is_absolute()
    {
        return Ok(x.join("m365send"));
    }
    match crate::trust::home_dir() {
        Some(h) => Ok(h.join(".cache").join("m365send")),
        None => Err(Failure::config(
            "no token cache directory: HOME is not set and this user has no home directory; \
             set XDG_CACHE_HOME for it",
        )),
    }
}

/// File-name stem for a profile: safe characters kept, others replaced, plus a short hash
/// when anything was replaced (so two profiles never share a file).
fn stem(profile: &str) -> String {
    let safe: String = profile
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == profile && !profile.is_empty() && !profile.starts_with('.') {
        safe
    } else {
        let h = ring::digest::digest(&ring::digest::SHA256, profile.as_bytes());
        let hex: String = h.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("_{safe}-{hex}")
    }
}

pub fn file_path(dir: &Path, profile: &str) -> PathBuf {
    dir.join(format!("{}.token.json", stem(profile)))
}

fn lock_path(dir: &Path, profile: &str) -> PathBuf {
    dir.join(format!("{}.token.lock", stem(profile)))
}

fn io_fail(what: &str, path: &Path, e: std::io::Error) -> Failure {
    let exit = match e.kind() {
        std::io::ErrorKind::PermissionDenied => Exit::NoPerm,
        _ => Exit::CantCreat,
    };
    Failure::new(
        exit,
        format!("token cache: cannot {what} {}: {e}", path.display()),
    )
}

/// chmod 0700 on the directory at `dir` itself, never on what a link there points to.
fn make_private(dir: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)?
        .set_permissions(fs::Permissions::from_mode(0o700))
}

/// Create the directory (mode 0700) if it does not exist, then check it is this user's
/// private directory, whoever made it: [`dir`] checks only a directory that exists, and
/// between that check and this creation (or a token request later) another user who may
/// write the parent (a `cache_dir` under /tmp) could have made it, to read or plant tokens.
pub fn ensure_dir(dir: &Path) -> Result<(), Failure> {
    if !dir.is_dir() {
        let made = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
        match made {
            Ok(()) => {
                // The umask may have removed bits but never adds any; make sure of 0700. On
                // the directory opened without following a link: create() also succeeds when
                // another user swapped in a link to a directory of theirs or root's since the
                // check above, and a chmod by path would then change that directory.
                make_private(dir).map_err(|e| io_fail("set permissions on", dir, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                let denied = e.kind() == std::io::ErrorKind::PermissionDenied;
                let mut f = io_fail("create directory", dir, e);
                let euid = crate::trust::euid();
                if denied && euid != 0 {
                    let fix = crate::trust::create_private_dir_fix(dir, euid);
                    f.message = format!("{}\n  {fix}", f.message);
                }
                return Err(f);
            }
        }
    }
    check_dir(dir)
}

/// Read the entry for `key`. None: no file, unreadable content, or a different key.
pub fn read(dir: &Path, key: &CacheKey) -> Option<Entry> {
    let raw = fs::read(file_path(dir, &key.profile)).ok()?;
    let e: Entry = serde_json::from_slice(&raw).ok()?;
    (e.version == VERSION && &e.key == key).then_some(e)
}

/// Read whatever entry the profile's file holds, whatever its key (for `token status`).
pub fn read_any(dir: &Path, profile: &str) -> Option<Entry> {
    let raw = fs::read(file_path(dir, profile)).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// Write the entry atomically: temp file (0600) in the same directory, fsync, rename.
pub fn write(dir: &Path, entry: &Entry) -> Result<(), Failure> {
    ensure_dir(dir)?;
    let path = file_path(dir, &entry.key.profile);
    let json = serde_json::to_vec_pretty(entry)
        .map_err(|e| Failure::new(Exit::Software, format!("token cache: {e}")))?;
    crate::fsutil::replace_file(dir, &path, &json, 0o600).map_err(|e| io_fail("write", &path, e))
}

/// Remove the profile's cache file (no error when absent).
pub fn remove(dir: &Path, profile: &str) -> Result<bool, Failure> {
    let path = file_path(dir, profile);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_fail("remove", &path, e)),
    }
}

/// An exclusive lock on the profile's lock file, released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

fn open_lock(dir: &Path, profile: &str) -> Result<File, Failure> {
    ensure_dir(dir)?;
    let path = lock_path(dir, profile);
    // Not through a symbolic link: opened with create, it would make an empty root-owned
    // file wherever the link points (/etc/nologin).
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode_0600()
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| io_fail("open lock file", &path, e))
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Take the lock, blocking this thread until it is free.
pub fn lock_blocking(dir: &Path, profile: &str) -> Result<Lock, Failure> {
    let file = open_lock(dir, profile)?;
    // flock(2) on Linux: the lock belongs to this open file description, so two opens in
    // one process exclude each other too; it is released when the file is closed.
    file.lock()
        .map_err(|e| io_fail("lock", &lock_path(dir, profile), e))?;
    Ok(Lock { _file: file })
}

/// Take the lock without blocking the async runtime's thread.
pub async fn lock(dir: &Path, profile: &str) -> Result<Lock, Failure> {
    let dir = dir.to_path_buf();
    let profile = profile.to_string();
    tokio::task::spawn_blocking(move || lock_blocking(&dir, &profile))
        .await
        .map_err(|e| Failure::new(Exit::Software, format!("token cache lock: {e}")))?
}

/// Take the lock, waiting at most `wait`. A holder that does not let go in that time (a
/// token request or secret command that hangs, a stopped process) must not hold every
/// other sender with it: the caller fails with a temporary failure (75; the message is
/// queued or kept) instead of waiting forever.
pub async fn lock_within(
    dir: &Path,
    profile: &str,
    wait: std::time::Duration,
) -> Result<Lock, Failure> {
    let file = open_lock(dir, profile)?;
    let path = lock_path(dir, profile);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => return Err(io_fail("lock", &path, e)),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::new(
                Exit::TempFail,
                format!(
                    "the token cache of profile \"{profile}\" ({}) has been locked by another \
                     m365send process for more than {} s (a token request or secret command \
                     that hangs?); try again later",
                    path.display(),
                    wait.as_secs()
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link swapped in where the cache directory was just created: the chmod to 0700 must
    /// not reach the directory it points to (by path, it did).
    #[test]
    fn making_the_directory_private_never_follows_a_link() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("usr-bin");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = t.path().join("cache");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(make_private(&link).is_err());
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        make_private(&real).unwrap();
        let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
    use std::os::unix::fs::PermissionsExt;

    const NOBODY: u32 = 65534;

    fn entry() -> Entry {
        let mut e = Entry::new(CacheKey {
            profile: "app".into(),
            tenant: "t".into(),
            client_id: "c".into(),
            scope: "s".into(),
            flow: "f".into(),
            authority: "a".into(),
        });
        e.access_token = Some("at-secret".into());
        e
    }

    /// Finding (low, attacker's review): `dir` checks the cache only when it exists; a
    /// directory another user made after that check (a `cache_dir` under /tmp) was then
    /// used, and the tokens written into it. Now every write checks the directory first.
    #[test]
    fn a_cache_directory_another_user_made_is_not_written() {
        if crate::trust::euid() != 0 {
            return; // needs chown
        }
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(NOBODY), None).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = write(&dir, &entry()).unwrap_err();
        assert_eq!(e.exit, Exit::NoPerm, "{}", e.message);
        assert!(e.message.contains("owned by uid 65534"), "{}", e.message);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        // A proper one is written.
        let mine = top.path().join("mine");
        write(&mine, &entry()).unwrap();
        assert!(read_any(&mine, "app").is_some());
    }

    /// Finding (low): the lock file was opened with create through a symbolic link, so a link
    /// planted in a cache directory made root create an empty file wherever it pointed.
    #[test]
    fn the_lock_file_is_not_opened_through_a_symbolic_link() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("cache");
        ensure_dir(&dir).unwrap();
        let target = top.path().join("nologin");
        std::os::unix::fs::symlink(&target, lock_path(&dir, "app")).unwrap();
        assert!(lock_blocking(&dir, "app").is_err());
        assert!(!target.exists());
    }
}
