//! The durable queue: a spool of messages waiting for delivery, and the runner that drains it.
//!
//! Owns: the spool layout and its crash-safe commit protocol, entry metadata, the queue runner
//! (grouping by endpoint, connection reuse, pacing, backoff, lifetime), bounces (RFC 3464
//! reports), `mailq`-style listing, `queue show` and `queue delete`, and [`TransportDeliverer`],
//! the real delivery engine over the transport seam (`transport::connector`). Must not: speak
//! a protocol (the runner sees only [`Deliverer`]; transports live in `transport`), word
//! explanations (they come from `explain`), or write the dead-letter file itself (injected
//! through [`DeadLetterFn`]).
//!
//! # Spool layout
//!
//! ```text
//! SPOOL/tmp/        files being written (ID.eml, ID.json, ID.json.RANDOM)
//! SPOOL/msg/ID.eml  the body exactly as transmitted (CRLF, not dot-stuffed)
//! SPOOL/meta/ID.json  the metadata; its presence is the commit point of an entry
//! SPOOL/inflight/ID  marker while a runner has the message on the wire
//! SPOOL/corrupt/    unreadable entries moved aside (never deleted by us)
//! SPOOL/failed/     entries whose bounce and dead letter both failed (never deleted by us)
//!                   An entry is removed only once its failure is durably somewhere: a bounce
//!                   committed to the queue, the dead letter fsynced, or a copy here fsynced;
//!                   when none of them can be written it stays queued and is retried.
//! SPOOL/runner.lock exclusive lock of the one queue runner
//! ```
//!
//! Enqueue writes `tmp/ID.eml` and `tmp/ID.json`, fsyncs both, renames the body into `msg/`,
//! fsyncs `msg/`, renames the metadata into `meta/` and fsyncs `meta/`. Only entries with a
//! metadata file exist; a crash leaves at most an orphan body or temp file, which the runner
//! removes after an hour. Metadata rewrites go through a temp file and a rename, so a reader
//! sees the old or the new metadata, never a mix. Removal deletes the metadata first (the entry
//! is gone), then the body.
//!
//! A runner holds an exclusive lock on the body file of the entry it is delivering; `delete`
//! takes the same lock, so deleting an entry that is on the wire waits for the outcome.
//!
//! The spool belongs to one user: before use it is checked (`Spool::check`: it and its
//! directories owned by the effective user and writable by no one else, the directories
//! above it trusted), and each loaded entry carries its owner (`Entry::owner`, the uid of its
//! files as opened, never a metadata field). The runner delivers only its own user's entries.
//!
//! # Wiring (done in `submit` and `app`)
//!
//! - send path, `-bs` and `serve`: `submit::message` / `submit::queue_at_once` — on a
//!   transient failure after the in-process retries (policy `auto`), with `-odq`, with
//!   `queue = "always"`, and for every message of `serve`: `enqueue_with(&config, &profile.name, &prepared, reason, &EnqueueOptions { mode,
//!   server, delivered })` (only the pending recipients); Ok → `Disposition::Queued(id)`,
//!   exit 0 ("queued as ID" at -v); Err (73) → the dead letter, exit 73.
//! - `queue run` / `sendmail -q` / `queue flush`: `run(&config, RunOptions { flush,
//!   lifetime, dead_letter: Some(&report::dead_letter_no_fallback), verbose, .. }, &mut
//!   TransportDeliverer::new(verbose - 1))`; the summary at -v; exit 0 (a second runner returns
//!   `skipped_locked`, also exit 0, its note printed only at -v).
//! - `mailq` / `-bp` / `queue list [--json]`: `list(&config)` then `format_list` or
//!   `format_json` with `&|e| explain_last_reply(&config, e)`.
//! - `queue show ID`: `show` then `format_show`; `queue delete ID`: `delete`.

mod bounce;
mod deliverer;
mod runner;

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::exit::{Exit, Failure};
use crate::fsutil::sync_dir;
use crate::message::{Envelope, Prepared};
use crate::status::Reply;

pub use bounce::build_bounce;
pub use deliverer::TransportDeliverer;
pub use runner::{
    BoxFuture, DeadLetterFn, Deliverer, MessageOutcome, Problem, RecipientResult, RunOptions,
    RunReport, default_endpoint_key, run,
};

/// Version of the metadata format written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// Orphan bodies and temp files older than this are removed by the runner.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// Identifier of a queue entry: hex time, microseconds, process id and a random part, e.g.
/// `6928A1B20F4240-3039-1A2B3C4D`. Sorts by creation time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(String);

impl EntryId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Accept an id typed by a user: letters, digits and `-` only (no paths).
    pub fn parse(s: &str) -> Result<EntryId, Failure> {
        if valid_id(s) {
            Ok(EntryId(s.to_owned()))
        } else {
            Err(Failure::usage(format!(
                "`{s}` is not a queue id (see `m365send queue list`)"
            )))
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn new_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let r: u32 = rand::random();
    format!(
        "{:X}{:05X}-{:X}-{:08X}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        r
    )
}

/// A server reply as stored in the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReply {
    pub code: u16,
    /// The enhanced status code (e.g. "4.7.500"), when the reply had one.
    #[serde(default)]
    pub enhanced: Option<String>,
    /// All lines joined with a space (the enhanced code left in, as the server sent it).
    pub text: String,
}

impl From<&Reply> for StoredReply {
    fn from(r: &Reply) -> Self {
        StoredReply {
            code: r.code,
            enhanced: r.enhanced.map(|e| e.to_string()),
            text: r.text(),
        }
    }
}

impl StoredReply {
    /// Back to a [`Reply`] (one line), e.g. for `explain::explain_reply`.
    pub fn to_reply(&self) -> Reply {
        Reply {
            code: self.code,
            enhanced: self.enhanced.as_deref().and_then(|e| e.parse().ok()),
            lines: vec![self.text.clone()],
        }
    }
}

impl std::fmt::Display for StoredReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// The metadata of one queue entry (`meta/ID.json`). Field names are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    /// The profile that delivers it (and any bounce of it).
    pub profile: String,
    /// The envelope; `recipients` holds only those not yet delivered.
    pub envelope: Envelope,
    /// Size of the body file in bytes.
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Unix seconds; the entry is due when this is in the past.
    pub next_attempt: i64,
    pub last_reply: Option<StoredReply>,
    /// The last failure in words when there was no reply (connection refused, timeout...),
    /// or the reason it was queued.
    pub last_error: Option<String>,
    /// A bounce we generated: its failure goes to the dead letter, never to another bounce.
    pub is_bounce: bool,
    /// Recipients already delivered (partial delivery).
    #[serde(default)]
    pub delivered: Vec<String>,
    /// `--mode` given when the message was submitted, when it overrides the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `--server HOST[:PORT]` given when the message was submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Who wrote the entry: the uid owning its files as the runner found them (fstat), never a
    /// field the writer chose. None for an entry not read from the spool.
    #[serde(skip)]
    pub owner: Option<u32>,
}

/// Why a message is being queued.
#[derive(Debug, Clone, Copy)]
pub enum Reason<'a> {
    /// The last (transient) reply of the in-process attempts.
    Reply(&'a Reply),
    /// A failure without a reply, or "queued on request (-odq)".
    Text(&'a str),
}

impl<'a> From<&'a Reply> for Reason<'a> {
    fn from(r: &'a Reply) -> Self {
        Reason::Reply(r)
    }
}

impl<'a> From<&'a str> for Reason<'a> {
    fn from(s: &'a str) -> Self {
        Reason::Text(s)
    }
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The spool directory: `spool_dir` from the configuration; else /var/spool/m365send for
/// root; else `$XDG_STATE_HOME/m365send/spool` or `~/.local/state/m365send/spool` (`~`: HOME,
/// else the password database's home, as for www-data under a web server).
pub fn spool_dir(config: &Config) -> Result<PathBuf, Failure> {
    if let Some(dir) = &config.spool_dir {
        return Ok(dir.clone());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/spool/m365send"));
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from)
        && state.is_absolute()
    {
        return Ok(state.join("m365send").join("spool"));
    }
    match crate::trust::home_dir() {
        Some(home) => Ok(home.join(".local/state/m365send/spool")),
        None => Err(Failure::new(
            Exit::CantCreat,
            "cannot locate the queue: HOME is not set and this user has no home directory; \
             set XDG_STATE_HOME for it",
        )),
    }
}

/// An opened spool directory.
#[derive(Debug, Clone)]
pub(crate) struct Spool {
    root: PathBuf,
}

fn cant_create(root: &Path, what: &str, e: &io::Error) -> Failure {
    Failure::new(
        Exit::CantCreat,
        format!(
            "cannot write to the mail queue {}: {what}: {e}",
            root.display()
        ),
    )
}

impl Spool {
    /// The spool, creating its directories (mode 0700) when missing.
    pub(crate) fn create(config: &Config) -> Result<Spool, Failure> {
        let root = spool_dir(config)?;
        let spool = Spool { root };
        for dir in [
            spool.root.clone(),
            spool.tmp(),
            spool.msg(),
            spool.meta(),
            spool.inflight(),
        ] {
            if dir.is_dir() {
                continue;
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| {
                    let mut f =
                        cant_create(&spool.root, &format!("creating {}", dir.display()), &e);
                    let euid = crate::trust::euid();
                    if dir == spool.root && e.kind() == io::ErrorKind::PermissionDenied && euid != 0
                    {
                        let fix = crate::trust::create_private_dir_fix(&spool.root, euid);
                        f.message = format!("{}\n  {fix}", f.message);
                    }
                    f
                })?;
            // Make the new directory entry itself durable.
            if let Some(parent) = dir.parent() {
                let _ = sync_dir(parent);
            }
        }
        spool.check()?;
        Ok(spool)
    }

    /// The spool for reading; it may not exist (an empty queue).
    pub(crate) fn existing(config: &Config) -> Result<Spool, Failure> {
        let spool = Spool {
            root: spool_dir(config)?,
        };
        if spool.root.exists() {
            spool.check()?;
        }
        Ok(spool)
    }

    /// Refuse a spool another user could write: an entry there is delivered with this user's
    /// credentials, so the spool and its directories must belong to this user (the effective
    /// uid) and be writable by no one else, and every directory above it must pass the
    /// `trust` rule. Exit 77 with the reason and the fix.
    fn check(&self) -> Result<(), Failure> {
        let euid = crate::trust::euid();
        crate::trust::check_private_dir(
            &self.root,
            &["tmp", "msg", "meta", "inflight", "corrupt", "failed"],
            euid,
        )
        .map_err(|u| {
            Failure::new(
                Exit::NoPerm,
                format!(
                    "the mail queue {} is not safe to use: {u}. Its entries are delivered \
                     with {}'s credentials, so only that user may write it (see Security in \
                     the README for a multi-user host)",
                    self.root.display(),
                    crate::trust::describe_uid(euid)
                ),
            )
        })?;
        Ok(())
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    fn msg(&self) -> PathBuf {
        self.root.join("msg")
    }
    fn meta(&self) -> PathBuf {
        self.root.join("meta")
    }
    fn inflight(&self) -> PathBuf {
        self.root.join("inflight")
    }
    fn corrupt(&self) -> PathBuf {
        self.root.join("corrupt")
    }
    pub(crate) fn failed(&self) -> PathBuf {
        self.root.join("failed")
    }
    pub(crate) fn body_path(&self, id: &str) -> PathBuf {
        self.msg().join(format!("{id}.eml"))
    }
    pub(crate) fn meta_path(&self, id: &str) -> PathBuf {
        self.meta().join(format!("{id}.json"))
    }
    fn inflight_path(&self, id: &str) -> PathBuf {
        self.inflight().join(id)
    }
}

/// The spool's directory for temporary files, the spool created (and checked) if need be: a
/// file there is on the spool's file system, private to this user, and removed by the queue
/// runner when a crash left it behind (older than an hour). `serve` keeps the data of the
/// messages it is receiving there.
pub fn spool_tmp_dir(config: &Config) -> Result<PathBuf, Failure> {
    Ok(Spool::create(config)?.tmp())
}

/// Take an exclusive lock (flock(2) on Linux) without blocking: Ok(false) when another
/// holder has it.
pub(crate) fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Where an entry's body comes from.
pub(crate) enum BodySource<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

/// Write a new entry (body + metadata) with the commit protocol; returns its id. The
/// metadata's `id` and `size` are filled in.
pub(crate) fn commit_entry(
    spool: &Spool,
    mut entry: Entry,
    body: BodySource<'_>,
) -> Result<EntryId, Failure> {
    let root = spool.root();
    for _ in 0..16 {
        let id = new_id();
        if spool.meta_path(&id).exists() || spool.body_path(&id).exists() {
            continue;
        }
        let tmp_body = spool.tmp().join(format!("{id}.eml"));
        let mut file = match create_new(&tmp_body) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(cant_create(root, "creating a temporary file", &e)),
        };
        let tmp_meta = spool.tmp().join(format!("{id}.json"));
        let result = (|| -> Result<u64, (&'static str, io::Error)> {
            let size = match body {
                BodySource::File(path) => {
                    let mut src = File::open(path).map_err(|e| ("reading the message", e))?;
                    io::copy(&mut src, &mut file).map_err(|e| ("copying the message", e))?
                }
                BodySource::Bytes(bytes) => {
                    file.write_all(bytes)
                        .map_err(|e| ("writing the message", e))?;
                    bytes.len() as u64
                }
            };
            file.sync_all().map_err(|e| ("syncing the message", e))?;
            entry.id = id.clone();
            entry.size = size;
            let json = serde_json::to_vec_pretty(&entry)
                .map_err(|e| ("encoding the metadata", io::Error::other(e)))?;
            let mut meta = create_new(&tmp_meta).map_err(|e| ("creating the metadata", e))?;
            meta.write_all(&json)
                .and_then(|()| meta.sync_all())
                .map_err(|e| ("writing the metadata", e))?;
            fs::rename(&tmp_body, spool.body_path(&id)).map_err(|e| ("committing the body", e))?;
            sync_dir(&spool.msg()).map_err(|e| ("syncing the spool", e))?;
            fs::rename(&tmp_meta, spool.meta_path(&id))
                .map_err(|e| ("committing the metadata", e))?;
            sync_dir(&spool.meta()).map_err(|e| ("syncing the spool", e))?;
            Ok(size)
        })();
        return match result {
            Ok(_) => Ok(EntryId(id)),
            Err((what, e)) => {
                let _ = fs::remove_file(&tmp_body);
                let _ = fs::remove_file(&tmp_meta);
                let _ = fs::remove_file(spool.body_path(&id));
                Err(cant_create(root, what, &e))
            }
        };
    }
    Err(Failure::new(
        Exit::CantCreat,
        format!(
            "cannot write to the mail queue {}: no unique entry name found",
            root.display()
        ),
    ))
}

/// Put a prepared message into the queue for `profile_name`. With a reason (the in-process
/// attempts failed) the first queued attempt waits one backoff step; without one (`-odq`,
/// `queue = "always"`) the entry is due at once. Errors are Exit::CantCreat (73) with the
/// reason; the caller then writes the dead letter.
pub fn enqueue(
    config: &Config,
    profile_name: &str,
    prepared: &Prepared,
    reason: Option<Reason<'_>>,
) -> Result<EntryId, Failure> {
    enqueue_with(
        config,
        profile_name,
        prepared,
        reason,
        &EnqueueOptions::default(),
    )
}

/// What else an entry records about how the message was submitted.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// `--mode` over the profile's mode.
    pub mode: Option<crate::config::Mode>,
    /// `--server HOST[:PORT]` over the profile's endpoint.
    pub server: Option<String>,
    /// Recipients the in-process attempts already delivered to (the envelope given to
    /// `enqueue_with` holds only those still pending).
    pub delivered: Vec<String>,
}

/// [`enqueue`] with the submission's overrides and partial delivery.
pub fn enqueue_with(
    config: &Config,
    profile_name: &str,
    prepared: &Prepared,
    reason: Option<Reason<'_>>,
    opts: &EnqueueOptions,
) -> Result<EntryId, Failure> {
    let spool = Spool::create(config)?;
    let now = now_unix();
    let (last_reply, last_error) = match reason {
        Some(Reason::Reply(r)) => (Some(StoredReply::from(r)), None),
        Some(Reason::Text(t)) => (None, Some(t.to_owned())),
        None => (None, None),
    };
    let attempts = u32::from(reason.is_some());
    let next_attempt = if attempts > 0 {
        now + runner::backoff(attempts).as_secs() as i64
    } else {
        now
    };
    let entry = Entry {
        version: FORMAT_VERSION,
        id: String::new(),
        created: now,
        profile: profile_name.to_owned(),
        envelope: prepared.envelope.clone(),
        size: prepared.size,
        eight_bit: prepared.eight_bit,
        smtputf8: prepared.smtputf8,
        attempts,
        next_attempt,
        last_reply,
        last_error,
        is_bounce: false,
        delivered: opts.delivered.clone(),
        mode: opts.mode.map(|m| m.as_str().to_owned()),
        server: opts.server.clone(),
        owner: None,
    };
    commit_entry(&spool, entry, BodySource::File(prepared.body.path()))
}

/// Rewrite an entry's metadata atomically (temp file, fsync, rename, fsync dir).
pub(crate) fn rewrite_meta(spool: &Spool, entry: &Entry) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
    crate::fsutil::replace_file(&spool.tmp(), &spool.meta_path(&entry.id), &json, 0o600)
}

/// Remove a committed entry: metadata first (the entry is gone), then the body.
pub(crate) fn remove_entry(spool: &Spool, id: &str) -> io::Result<()> {
    match fs::remove_file(spool.meta_path(id)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let _ = sync_dir(&spool.meta());
    match fs::remove_file(spool.body_path(id)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The result of reading one entry.
pub(crate) enum Loaded {
    Ok(Box<Entry>),
    /// Removed meanwhile (delivered or deleted by someone else).
    Gone,
    /// Unreadable: move it aside.
    Corrupt(String),
    /// Written by a newer m365send: leave it alone.
    Unsupported(String),
}

pub(crate) fn load_entry(spool: &Spool, id: &str) -> Loaded {
    use std::os::unix::fs::MetadataExt;
    let meta_path = spool.meta_path(id);
    // Opened without following a link, its owner taken from the open file.
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&meta_path)
        .and_then(|mut f| {
            let m = f.metadata()?;
            if !m.is_file() {
                return Err(io::Error::other("not a regular file"));
            }
            let mut bytes = Vec::new();
            (&mut f).take(16 * 1024 * 1024).read_to_end(&mut bytes)?;
            Ok((m.uid(), bytes))
        });
    let (meta_owner, bytes) = match opened {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Gone,
        Err(e) => return Loaded::Corrupt(format!("cannot read {}: {e}", meta_path.display())),
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return Loaded::Corrupt(format!("metadata is not valid JSON: {e}")),
    };
    if let Some(v) = value.get("version").and_then(|v| v.as_u64())
        && v > u64::from(FORMAT_VERSION)
    {
        return Loaded::Unsupported(format!(
            "entry {id} has metadata version {v}, written by a newer m365send"
        ));
    }
    let mut entry: Entry = match serde_json::from_value(value) {
        Ok(e) => e,
        Err(e) => return Loaded::Corrupt(format!("metadata is incomplete: {e}")),
    };
    if entry.id != id {
        return Loaded::Corrupt(format!(
            "metadata names entry {} but is stored as {id}",
            entry.id
        ));
    }
    match fs::symlink_metadata(spool.body_path(id)) {
        Ok(m) if !m.is_file() => Loaded::Corrupt("message file is not a regular file".into()),
        Ok(m) if m.len() == entry.size => {
            // Body and metadata written by different users: the entry is the other one's.
            let euid = crate::trust::euid();
            entry.owner = Some(if m.uid() != meta_owner && meta_owner == euid {
                m.uid()
            } else {
                meta_owner
            });
            Loaded::Ok(Box::new(entry))
        }
        Ok(m) => Loaded::Corrupt(format!(
            "message file has {} bytes, metadata says {}",
            m.len(),
            entry.size
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if meta_path.exists() {
                Loaded::Corrupt("message file is missing".into())
            } else {
                Loaded::Gone
            }
        }
        Err(e) => Loaded::Corrupt(format!("cannot read the message file: {e}")),
    }
}

/// Move an unreadable entry to `corrupt/` and return the warning to show.
pub(crate) fn move_aside(spool: &Spool, id: &str, why: &str) -> String {
    let dir = spool.corrupt();
    let moved = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|()| {
            let body = spool.body_path(id);
            if body.exists() {
                fs::rename(&body, dir.join(format!("{id}.eml")))?;
            }
            let meta = spool.meta_path(id);
            if meta.exists() {
                fs::rename(&meta, dir.join(format!("{id}.json")))?;
            }
            sync_dir(&spool.meta())
        });
    match moved {
        Ok(()) => format!(
            "queue entry {id} is corrupt ({why}); moved to {}",
            dir.display()
        ),
        Err(e) => format!(
            "queue entry {id} is corrupt ({why}); could not move it to {}: {e}",
            dir.display()
        ),
    }
}

/// Copy an entry to `failed/` (its bounce and dead letter both failed): never lose a message.
/// Both files are written 0600 and fsynced, and the directory too, before this returns Ok:
/// only then may the caller remove the entry.
pub(crate) fn preserve_failed(spool: &Spool, entry: &Entry) -> io::Result<PathBuf> {
    let dir = spool.failed();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let json = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
    let body = dir.join(format!("{}.eml", entry.id));
    let meta = dir.join(format!("{}.json", entry.id));
    let mut src = File::open(spool.body_path(&entry.id))?;
    let mut copy = private_file(&body)?;
    io::copy(&mut src, &mut copy)?;
    copy.sync_all()?;
    let mut m = private_file(&meta)?;
    m.write_all(&json)?;
    m.sync_all()?;
    sync_dir(&dir)?;
    Ok(body)
}

/// Create or truncate a 0600 file, not through a symbolic link.
fn private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Ids of committed entries, oldest first.
pub(crate) fn entry_ids(spool: &Spool) -> Result<Vec<String>, Failure> {
    let dir = spool.meta();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Failure::io(format!(
                "cannot read the mail queue {}: {e}",
                dir.display()
            )));
        }
    };
    let mut ids = Vec::new();
    for de in rd {
        let de = de.map_err(|e| {
            Failure::io(format!("cannot read the mail queue {}: {e}", dir.display()))
        })?;
        let name = de.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".json")
            && valid_id(id)
        {
            ids.push(id.to_owned());
        }
    }
    ids.sort();
    Ok(ids)
}

/// Load every entry; corrupt ones are moved aside with a warning on stderr (and in `warnings`).
pub(crate) fn load_all(spool: &Spool, warnings: &mut Vec<String>) -> Result<Vec<Entry>, Failure> {
    let mut entries = Vec::new();
    for id in entry_ids(spool)? {
        match load_entry(spool, &id) {
            Loaded::Ok(e) => entries.push(*e),
            Loaded::Gone => {}
            Loaded::Corrupt(why) => {
                let w = move_aside(spool, &id, &why);
                crate::console::err_line(&format!("m365send: warning: {w}"));
                warnings.push(w);
            }
            Loaded::Unsupported(why) => {
                let w = format!("{why}; left alone");
                crate::console::err_line(&format!("m365send: warning: {w}"));
                warnings.push(w);
            }
        }
    }
    entries.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(entries)
}

/// Every entry in the queue, oldest first. Corrupt entries are moved to `spool/corrupt/`
/// with a warning on stderr and left out.
pub fn list(config: &Config) -> Result<Vec<Entry>, Failure> {
    let spool = Spool::existing(config)?;
    let mut warnings = Vec::new();
    load_all(&spool, &mut warnings)
}

/// Read the header block of a body file (up to the first empty line, at most 256 KiB).
pub(crate) fn read_header_block(path: &Path) -> io::Result<String> {
    let mut buf = Vec::new();
    File::open(path)?.take(256 * 1024).read_to_end(&mut buf)?;
    let end = find(&buf, b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| find(&buf, b"\n\n").map(|i| i + 1))
        .unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `queue show ID`: the entry's metadata and the message headers.
pub fn show(config: &Config, id: &str) -> Result<(Entry, String), Failure> {
    let id = EntryId::parse(id)?;
    let spool = Spool::existing(config)?;
    match load_entry(&spool, id.as_str()) {
        Loaded::Ok(e) => {
            let e = *e;
            let headers = read_header_block(&spool.body_path(&e.id)).map_err(|err| {
                Failure::io(format!(
                    "cannot read the message of queue entry {id}: {err}"
                ))
            })?;
            Ok((e, headers))
        }
        Loaded::Gone => Err(not_found(&id)),
        Loaded::Corrupt(why) => {
            let w = move_aside(&spool, id.as_str(), &why);
            Err(Failure::data(w))
        }
        Loaded::Unsupported(why) => Err(Failure::data(why)),
    }
}

fn not_found(id: &EntryId) -> Failure {
    Failure::new(
        Exit::NoInput,
        format!("no queue entry {id} (delivered or deleted?); see `m365send queue list`"),
    )
}

/// How long `delete` waits for a runner that has the entry on the wire.
const DELETE_WAIT: Duration = Duration::from_secs(30);

/// `queue delete ID`: remove an entry. When a runner is delivering it, wait for the outcome
/// (at most 30 s); if it was delivered meanwhile, say so.
pub fn delete(config: &Config, id: &str) -> Result<(), Failure> {
    let id = EntryId::parse(id)?;
    let spool = Spool::existing(config)?;
    let body_path = spool.body_path(id.as_str());
    let body = match File::open(&body_path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Failure::io(format!("cannot open queue entry {id}: {e}")));
        }
    };
    if let Some(f) = &body {
        let deadline = std::time::Instant::now() + DELETE_WAIT;
        loop {
            match try_lock(f) {
                Ok(true) => break,
                Ok(false) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(false) => {
                    return Err(Failure::new(
                        Exit::TempFail,
                        format!(
                            "queue entry {id} is being delivered right now; try again in a minute"
                        ),
                    ));
                }
                Err(e) => {
                    return Err(Failure::io(format!("cannot lock queue entry {id}: {e}")));
                }
            }
        }
    }
    if !spool.meta_path(id.as_str()).exists() {
        // Delivered (or deleted) while we waited; clean an orphan body if any.
        if body.is_some() {
            let _ = fs::remove_file(&body_path);
        }
        return Err(not_found(&id));
    }
    remove_entry(&spool, id.as_str())
        .map_err(|e| Failure::io(format!("cannot delete queue entry {id}: {e}")))
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The one-line explanation of an entry's last reply, from the explanation catalogue, for
/// [`format_list`] / [`format_json`] / [`format_show`]:
/// `format_list(&entries, &|e| queue::explain_last_reply(&config, e))`.
pub fn explain_last_reply(config: &Config, entry: &Entry) -> Option<String> {
    let reply = entry.last_reply.as_ref()?.to_reply();
    let profile = config.profiles.get(&entry.profile);
    let ctx = crate::explain::Context {
        mode: profile.map(|p| p.mode),
        profile: Some(&entry.profile),
        mailbox: profile.and_then(|p| p.mailbox.as_deref()),
        sender: Some(&entry.envelope.sender),
        recipient: entry.envelope.recipients.first().map(String::as_str),
        retried_by_queue: Some(true),
        ..Default::default()
    };
    crate::explain::explain_reply(&reply, &ctx).map(|x| format!("{} {}", x.meaning, x.advice))
}

/// "3d 4h", "2h 5m", "12m", "40s".
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

fn human_size(n: u64) -> String {
    if n < 10 * 1024 {
        format!("{n} B")
    } else if n < 10 * 1024 * 1024 {
        format!("{} KB", n / 1024)
    } else {
        format!("{} MB", n / (1024 * 1024))
    }
}

/// The `mailq` / `sendmail -bp` / `queue list` text. `explain` gives the one-line
/// explanation of an entry's last reply (None: nothing to add).
pub fn format_list(entries: &[Entry], explain: &dyn Fn(&Entry) -> Option<String>) -> String {
    format_list_at(entries, now_unix(), explain)
}

pub(crate) fn format_list_at(
    entries: &[Entry],
    now: i64,
    explain: &dyn Fn(&Entry) -> Option<String>,
) -> String {
    if entries.is_empty() {
        return "Mail queue is empty\n".to_owned();
    }
    let mut out = String::new();
    let mut total = 0u64;
    for e in entries {
        total += e.size;
        let next = if e.next_attempt <= now {
            "due now".to_owned()
        } else {
            format!("next in {}", human_duration(e.next_attempt - now))
        };
        let _ = writeln!(
            out,
            "{}  {}  queued {} ago  attempts {}  {}{}",
            e.id,
            human_size(e.size),
            human_duration(now - e.created),
            e.attempts,
            next,
            if e.is_bounce { "  (bounce)" } else { "" }
        );
        let sender = if e.envelope.sender.is_empty() {
            "<>"
        } else {
            &e.envelope.sender
        };
        let _ = writeln!(
            out,
            "  from: {}  (profile {})",
            shown(sender),
            shown(&e.profile)
        );
        let _ = writeln!(out, "  to:   {}", shown(&e.envelope.recipients.join(", ")));
        if let Some(r) = &e.last_reply {
            let _ = writeln!(out, "  last: {}", shown(&r.to_string()));
        } else if let Some(err) = &e.last_error {
            let _ = writeln!(out, "  last: {}", shown(err));
        }
        if let Some(x) = explain(e) {
            let _ = writeln!(out, "        {}", shown(&x));
        }
    }
    // Postfix's summary line, which monitoring scripts (check_mailq) already parse.
    let n = entries.len();
    let _ = writeln!(
        out,
        "-- {} Kbytes in {n} Request{}.",
        total.div_ceil(1024),
        if n == 1 { "" } else { "s" }
    );
    out
}

/// `queue list --json`: one object `{"version":1,"count":N,"entries":[...]}`; each entry
/// has id, profile, created (RFC 3339), created_unix, age_seconds, size, sender, recipients,
/// delivered, attempts, next_attempt, next_attempt_unix, last_reply {code, enhanced, text}
/// or null, last_error, explanation, is_bounce. Field names are stable.
pub fn format_json(entries: &[Entry], explain: &dyn Fn(&Entry) -> Option<String>) -> String {
    format_json_at(entries, now_unix(), explain)
}

pub(crate) fn format_json_at(
    entries: &[Entry],
    now: i64,
    explain: &dyn Fn(&Entry) -> Option<String>,
) -> String {
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id,
                "profile": e.profile,
                "created": rfc3339(e.created),
                "created_unix": e.created,
                "age_seconds": (now - e.created).max(0),
                "size": e.size,
                "sender": e.envelope.sender,
                "recipients": e.envelope.recipients,
                "delivered": e.delivered,
                "attempts": e.attempts,
                "next_attempt": rfc3339(e.next_attempt),
                "next_attempt_unix": e.next_attempt,
                "last_reply": e.last_reply,
                "last_error": e.last_error,
                "explanation": explain(e),
                "is_bounce": e.is_bounce,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "version": 1,
        "count": list.len(),
        "entries": list,
    });
    let mut s = doc.to_string();
    s.push('\n');
    s
}

/// Text from the spool (headers, addresses, replies: written by whoever queued the message or
/// by a server) as it is printed on a terminal: control characters (ESC…) escaped.
fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    crate::printable::for_terminal(s, false)
}

/// `queue show ID` text: the metadata, then the headers. Every value from the entry is printed
/// with control characters escaped (`\x1b`), so a header cannot drive the terminal.
pub fn format_show(entry: &Entry, headers: &str, explanation: Option<&str>) -> String {
    let now = now_unix();
    let mut out = String::new();
    let _ = writeln!(out, "id:           {}", shown(&entry.id));
    let _ = writeln!(out, "profile:      {}", shown(&entry.profile));
    if let Some(m) = &entry.mode {
        let _ = writeln!(out, "mode:         {} (from --mode)", shown(m));
    }
    if let Some(server) = &entry.server {
        let _ = writeln!(out, "server:       {} (from --server)", shown(server));
    }
    let _ = writeln!(
        out,
        "queued:       {} ({} ago)",
        rfc3339(entry.created),
        human_duration(now - entry.created)
    );
    let _ = writeln!(out, "size:         {} bytes", entry.size);
    let sender = if entry.envelope.sender.is_empty() {
        "<>"
    } else {
        &entry.envelope.sender
    };
    let _ = writeln!(out, "sender:       {}", shown(sender));
    let _ = writeln!(
        out,
        "recipients:   {}",
        shown(&entry.envelope.recipients.join(", "))
    );
    if !entry.delivered.is_empty() {
        let _ = writeln!(out, "delivered to: {}", shown(&entry.delivered.join(", ")));
    }
    let dsn = &entry.envelope.dsn;
    if dsn.is_requested() {
        let _ = writeln!(
            out,
            "dsn:          notify={} ret={} envid={}",
            shown(dsn.notify.as_deref().unwrap_or("-")),
            dsn.ret
                .map(|r| format!("{r:?}").to_uppercase())
                .unwrap_or("-".into()),
            shown(dsn.envid.as_deref().unwrap_or("-"))
        );
    }
    let _ = writeln!(out, "attempts:     {}", entry.attempts);
    let _ = writeln!(out, "next attempt: {}", rfc3339(entry.next_attempt));
    if let Some(r) = &entry.last_reply {
        let _ = writeln!(out, "last reply:   {}", shown(&r.to_string()));
    }
    if let Some(e) = &entry.last_error {
        let _ = writeln!(out, "last error:   {}", shown(e));
    }
    if let Some(x) = explanation {
        let _ = writeln!(out, "explanation:  {}", shown(x));
    }
    if entry.is_bounce {
        let _ = writeln!(out, "bounce:       yes (a failure goes to the dead letter)");
    }
    out.push('\n');
    // One header line per output line (folded lines keep their TAB); a bare CR or an escape
    // sequence inside a line is shown escaped.
    let headers = headers.replace("\r\n", "\n");
    for line in headers.split_inclusive('\n') {
        let (text, nl) = match line.strip_suffix('\n') {
            Some(t) => (t, "\n"),
            None => (line, ""),
        };
        out.push_str(&crate::printable::for_terminal(text, true));
        out.push_str(nl);
    }
    out
}

/// Remove temp files and orphan bodies older than an hour (runner only, under its lock).
pub(crate) fn clean_orphans(spool: &Spool) {
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_AGE)
    };
    if let Ok(rd) = fs::read_dir(spool.tmp()) {
        for de in rd.flatten() {
            let p = de.path();
            if old(&p) {
                let _ = fs::remove_file(&p);
            }
        }
    }
    if let Ok(rd) = fs::read_dir(spool.msg()) {
        for de in rd.flatten() {
            let p = de.path();
            let Some(id) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".eml"))
            else {
                continue;
            };
            if !spool.meta_path(id).exists() && old(&p) {
                let _ = fs::remove_file(&p);
            }
        }
    }
}
