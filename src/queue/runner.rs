//! The queue runner: delivers due entries through an injected [`Deliverer`].
//!
//! One runner at a time (exclusive lock on `SPOOL/runner.lock`; a second runner waits at most
//! `RunOptions::lock_wait`, default 0, then returns cleanly with `skipped_locked` set: the
//! running one will deliver the queue). Due entries are grouped by endpoint key; up to the
//! profile's `queue_connections` sessions per group (default 4 for relay and direct, 1 for
//! the mailbox modes) serve its messages, each session taking the next entry when it is done
//! with one, so every entry goes out once; a session is `reset` between two messages (the
//! SMTP transport needs nothing on the wire after a clean transaction). Where the deliverer
//! can `start` a message before the last one's outcome is read (SMTP with PIPELINING and
//! CHUNKING), a session keeps two on the wire and records their outcomes in order. Pacing
//! spaces the messages across all sessions (a paced session does not overlap them).
//! Outcomes update, bounce or remove the entry. Only entries written by the runner's own
//! user are delivered (their files' owner, as read; see `Entry::owner`).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::config::{Config, Mode, Profile};
use crate::exit::Failure;
use crate::message::{Body, Envelope, Prepared};
use crate::status::Reply;

use super::{
    BodySource, Entry, FORMAT_VERSION, Loaded, Spool, StoredReply, bounce, clean_orphans, load_all,
    load_entry, now_unix, preserve_failed, read_header_block, remove_entry, rewrite_meta,
};

/// A boxed future (not `Send`: the runner runs on one thread).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Writes a message to the dead-letter file: `(config, profile, message, reason)` → the file.
/// In the product this is `crate::report::dead_letter`.
pub type DeadLetterFn = dyn Fn(&Config, &Profile, &Prepared, &str) -> Result<PathBuf, Failure>;

/// Why a message (or a recipient) was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The server's reply, when there was one.
    pub reply: Option<Reply>,
    /// The failure in words when there was no reply ("connection refused by ..."); may be
    /// empty when `reply` says it all.
    pub error: String,
    /// The explanation for the user (from `explain`); used in bounces.
    pub explanation: String,
}

impl Problem {
    pub fn reply(reply: Reply, explanation: impl Into<String>) -> Problem {
        Problem {
            reply: Some(reply),
            error: String::new(),
            explanation: explanation.into(),
        }
    }
    pub fn error(error: impl Into<String>) -> Problem {
        Problem {
            reply: None,
            error: error.into(),
            explanation: String::new(),
        }
    }
    /// The reply if any, else the error text.
    pub fn summary(&self) -> String {
        match &self.reply {
            Some(r) if self.error.is_empty() => r.to_string(),
            Some(r) => format!("{r} ({})", self.error),
            None => self.error.clone(),
        }
    }
}

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    Delivered,
    Transient(Problem),
    Permanent(Problem),
}

/// The outcome of sending one message in an open session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Every remaining recipient accepted it.
    Delivered,
    /// Not delivered, try again later (4xx, timeout, connection lost...).
    Transient(Problem),
    /// Not delivered, never will be (5xx for the message, e.g. MAIL FROM or end of data).
    Permanent(Problem),
    /// Per-recipient results (some RCPT refused). A recipient not listed is kept for a retry.
    Recipients(Vec<(String, RecipientResult)>),
}

/// Delivery, injected (the product's is `TransportDeliverer`, over the transport seam):
/// `open` resolves the route and connects (EHLO, STARTTLS, AUTH), `send` sends one message
/// (one flight with PIPELINING and CHUNKING), `reset` readies the session for the next
/// message, `close` ends it (QUIT). The runner calls, per group of entries with the same
/// [`endpoint_key`](Deliverer::endpoint_key), on each of its connections (this deliverer and
/// its [`fork`](Deliverer::fork)s): `open`, then `send` (or `start`, and later `finish`) for
/// each message it takes with `reset` between two messages while none is started, then
/// `close`. When `reset` fails (connection lost), the runner closes and reopens before the
/// next message. When `open` fails, the entry at hand
/// is deferred with that problem, and when no connection of the group could be opened every
/// remaining entry is (a connection or authentication failure is not the message's fault;
/// the lifetime bounds it).
pub trait Deliverer {
    /// Messages with equal keys share one connection. Default: [`default_endpoint_key`].
    fn endpoint_key(&self, profile: &Profile, envelope: &Envelope) -> String {
        default_endpoint_key(profile, envelope)
    }
    /// Connect for `profile`; `envelope` is the first message's (for an MX lookup).
    fn open<'a>(
        &'a mut self,
        config: &'a Config,
        profile: &'a Profile,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), Problem>>;
    /// Send one message in the open session.
    fn send<'a>(&'a mut self, message: &'a Prepared) -> BoxFuture<'a, MessageOutcome>;
    /// Start `message` in the open session behind the messages started before it, without
    /// waiting for their outcome, where the session allows it (its flight written, its
    /// replies not read). `false` (the default): nothing was sent — `finish` every started
    /// message, then `send` this one.
    fn start<'a>(&'a mut self, _message: &'a Prepared) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
    /// The outcome of the oldest message `start`ed; `message` is that message.
    fn finish<'a>(&'a mut self, _message: &'a Prepared) -> BoxFuture<'a, MessageOutcome> {
        Box::pin(async { MessageOutcome::Transient(Problem::error("the message was not sent")) })
    }
    /// Make the session ready for the next message (RSET). An error closes the session.
    fn reset(&mut self) -> BoxFuture<'_, Result<(), Problem>>;
    /// End the session (QUIT); errors are ignored.
    fn close(&mut self) -> BoxFuture<'_, ()>;
    /// Another deliverer like this one, for one more parallel connection to the same
    /// endpoint (`queue_connections`). None (the default): one connection only.
    fn fork(&self) -> Option<Box<dyn Deliverer>> {
        None
    }
}

/// The profile name; for relay and direct send without a fixed `mx_host`, plus the sender's
/// domain (its MX decides the host).
pub fn default_endpoint_key(profile: &Profile, envelope: &Envelope) -> String {
    match profile.mode {
        Mode::Relay | Mode::Direct
            if profile.endpoint.mx_host.is_none() && profile.endpoint.host.is_none() =>
        {
            let domain = profile
                .endpoint
                .mx_domain
                .clone()
                .or_else(|| {
                    envelope
                        .sender
                        .rsplit_once('@')
                        .map(|(_, d)| d.to_ascii_lowercase())
                })
                .unwrap_or_default();
            format!("{}/{domain}", profile.name)
        }
        _ => profile.name.clone(),
    }
}

/// Messages a connection has on the wire at once, their outcomes not read yet (the
/// deliverer's `start`): two halve the round trips per message, one more would not.
const IN_FLIGHT: usize = 2;

/// A message started (`Deliverer::start`) whose outcome is not read yet.
struct Started {
    locked: Locked,
    prepared: Prepared,
    marker: PathBuf,
}

/// One connection's share of a group: take the next entry, send it, record the outcome,
/// until the group is done. Where the deliverer can (`start`), the next message goes out
/// before the last one's outcome is read, at most `IN_FLIGHT` at once, and the outcomes
/// are read and recorded in order; a message that cannot be started waits until those are
/// recorded and is sent alone. Ends with the problem when the connection cannot be opened
/// (the entry it held is deferred; other connections go on with the rest).
async fn worker(
    runner: &RefCell<&mut Runner<'_>>,
    profile: &Profile,
    queue: &RefCell<std::vec::IntoIter<Entry>>,
    d: &mut dyn Deliverer,
) -> Option<Problem> {
    let pace = pacing(profile, runner.borrow().opts);
    let mut open = false;
    let mut pending_reset = false;
    let mut started: VecDeque<Started> = VecDeque::new();
    loop {
        // No RefCell borrow is held across an await.
        let Some(entry) = queue.borrow_mut().next() else {
            break;
        };
        let Some(locked) = runner.borrow_mut().lock(&entry) else {
            continue;
        };
        let prepared = runner.borrow().prepared(&locked.entry);
        let mut locked = locked;
        if started.is_empty() {
            locked = match ready(runner, profile, d, &mut open, pending_reset, locked).await {
                Ok(l) => l,
                Err(problem) => return Some(problem),
            };
        }
        let slot = runner.borrow_mut().next_slot(pace);
        if let Some(at) = slot {
            // Paced: overlapping gains nothing; the outcomes on the wire are read first.
            let drained = !started.is_empty();
            while let Some(s) = started.pop_front() {
                finish(runner, profile, d, s).await;
            }
            tokio::time::sleep_until(at.into()).await;
            if drained {
                locked = match ready(runner, profile, d, &mut open, true, locked).await {
                    Ok(l) => l,
                    Err(problem) => return Some(problem),
                };
            }
        }
        let marker = runner.borrow().spool.inflight_path(&locked.entry.id);
        // Best effort (it only produces a "possibly duplicated" note after a crash).
        let _ = super::private_file(&marker);
        pending_reset = true;
        if d.start(&prepared).await {
            started.push_back(Started {
                locked,
                prepared,
                marker,
            });
            if started.len() >= IN_FLIGHT
                && let Some(s) = started.pop_front()
            {
                finish(runner, profile, d, s).await;
            }
            continue;
        }
        // Not started (nothing sent): the started ones first, then this one alone.
        let drained = !started.is_empty();
        while let Some(s) = started.pop_front() {
            finish(runner, profile, d, s).await;
        }
        if drained {
            locked = match ready(runner, profile, d, &mut open, true, locked).await {
                Ok(l) => l,
                Err(problem) => {
                    let _ = fs::remove_file(&marker);
                    return Some(problem);
                }
            };
        }
        let outcome = d.send(&prepared).await;
        runner.borrow_mut().outcome(profile, locked.entry, outcome);
        let _ = fs::remove_file(&marker);
    }
    while let Some(s) = started.pop_front() {
        finish(runner, profile, d, s).await;
    }
    if open {
        d.close().await;
    }
    None
}

/// Make the connection ready for the `locked` entry: reset it after a message (closed and
/// reopened when that fails), open it when it is not. When it cannot be opened, the entry
/// is deferred with the problem (and logged), and the problem returned.
async fn ready(
    runner: &RefCell<&mut Runner<'_>>,
    profile: &Profile,
    d: &mut dyn Deliverer,
    open: &mut bool,
    after_message: bool,
    locked: Locked,
) -> Result<Locked, Problem> {
    let config = runner.borrow().config;
    if *open && after_message && d.reset().await.is_err() {
        d.close().await;
        *open = false;
    }
    if !*open {
        match d.open(config, profile, &locked.entry.envelope).await {
            Ok(()) => {
                *open = true;
                runner.borrow_mut().report.sessions += 1;
            }
            Err(problem) => {
                let mut r = runner.borrow_mut();
                r.log(format!(
                    "{}: cannot connect: {}",
                    locked.entry.id,
                    problem.summary()
                ));
                r.transient(profile, locked.entry, &problem, Vec::new(), Vec::new());
                return Err(problem);
            }
        }
    }
    Ok(locked)
}

/// Read a started message's outcome and record it.
async fn finish(
    runner: &RefCell<&mut Runner<'_>>,
    profile: &Profile,
    d: &mut dyn Deliverer,
    s: Started,
) {
    let outcome = d.finish(&s.prepared).await;
    runner
        .borrow_mut()
        .outcome(profile, s.locked.entry, outcome);
    let _ = fs::remove_file(&s.marker);
}

/// Options of one queue run.
pub struct RunOptions<'a> {
    /// Ignore backoff: try every entry now (`queue flush`).
    pub flush: bool,
    /// Entries older than this fail permanently. Default 5 days.
    pub lifetime: Duration,
    /// Override the profiles' pacing, messages per minute (Some(0): none).
    pub rate_per_minute: Option<u32>,
    /// How long to wait for another runner's lock. Default 0: return at once.
    pub lock_wait: Duration,
    /// Largest original attached whole to a bounce; larger ones get their headers only.
    /// Default 10 MiB.
    pub bounce_attach_max: u64,
    /// The dead-letter writer. None: failures that cannot bounce are kept in `SPOOL/failed/`.
    pub dead_letter: Option<&'a DeadLetterFn>,
    /// Send the bounces this run queues at the end of the run (default true); false leaves
    /// them for the next run.
    pub send_bounces_now: bool,
    /// Print one line per entry on stderr.
    pub verbose: bool,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions {
            flush: false,
            lifetime: Config::default().queue_lifetime(),
            rate_per_minute: None,
            lock_wait: Duration::ZERO,
            bounce_attach_max: 10 * 1024 * 1024,
            dead_letter: None,
            send_bounces_now: true,
            verbose: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Another runner held the lock: nothing was done.
    pub skipped_locked: bool,
    /// Entries fully delivered and removed.
    pub delivered: usize,
    /// Entries where some recipients were delivered and others are still queued.
    pub partial: usize,
    /// Entries that stay queued (transient failure).
    pub deferred: usize,
    /// Entries not yet due.
    pub not_due: usize,
    /// Bounces queued.
    pub bounced: usize,
    /// Failures written to the dead letter.
    pub dead_lettered: usize,
    /// Failures kept in `SPOOL/failed/` because the dead letter could not be written.
    pub preserved: usize,
    /// Entries failed for age.
    pub expired: usize,
    /// Entries moved to `SPOOL/corrupt/`.
    pub corrupt: usize,
    /// Messages a previous runner had on the wire when it died: they are sent again, and may
    /// have been delivered already (the final reply was lost): possible duplicates.
    pub possible_duplicates: usize,
    /// Entries another user wrote (their files' owner is not this runner's user): left alone,
    /// never delivered with this user's credentials.
    pub not_owned: usize,
    /// Sessions opened.
    pub sessions: usize,
    /// Warnings also printed on stderr.
    pub warnings: Vec<String>,
}

impl RunReport {
    /// One line for the user: "queue run: 3 delivered, 1 deferred, 1 bounced, 2 not due".
    pub fn summary(&self) -> String {
        if self.skipped_locked {
            return "queue run: another queue runner is active; nothing done".into();
        }
        let parts: Vec<String> = [
            (self.delivered, "delivered"),
            (self.partial, "partly delivered"),
            (self.deferred, "deferred"),
            (self.bounced, "bounced"),
            (self.dead_lettered, "written to the dead letter"),
            (self.preserved, "kept in failed/"),
            (self.expired, "expired"),
            (self.corrupt, "corrupt (moved aside)"),
            (self.possible_duplicates, "possibly duplicated"),
            (self.not_owned, "left alone (written by another user)"),
            (self.not_due, "not due yet"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            "queue run: nothing to do".into()
        } else {
            format!("queue run: {}", parts.join(", "))
        }
    }

    fn warn(&mut self, w: String) {
        crate::console::err_line(&format!("m365send: warning: {w}"));
        self.warnings.push(w);
    }
}

/// Backoff after `attempts` failed attempts: 1 min doubling to 1 hour, ±20% jitter.
pub(crate) fn backoff(attempts: u32) -> Duration {
    let base = 60u64
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(12))
        .min(3600) as f64;
    let jitter: f64 = rand::random_range(0.8..=1.2);
    Duration::from_secs_f64(base * jitter)
}

fn pacing(profile: &Profile, opts: &RunOptions<'_>) -> Option<Duration> {
    let rate = opts
        .rate_per_minute
        .unwrap_or_else(|| profile.rate_per_minute());
    (rate > 0).then(|| Duration::from_secs_f64(60.0 / f64::from(rate)))
}

/// Hold the runner lock, or None when another runner has it past `wait`.
fn lock_runner(spool: &Spool, wait: Duration) -> Result<Option<File>, Failure> {
    let path = spool.root().join("runner.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| super::cant_create(spool.root(), "opening runner.lock", &e))?;
    // 0600 also for a lock file an older version left readable: whoever can open it can
    // hold the lock and stop every queue run.
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    let deadline = Instant::now() + wait;
    loop {
        match super::try_lock(&file) {
            Ok(true) => break,
            Ok(false) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(false) => return Ok(None),
            Err(e) => {
                return Err(Failure::io(format!("cannot lock {}: {e}", path.display())));
            }
        }
    }
    // Record our pid for the second runner's message (best effort).
    let _ = file.set_len(0);
    let _ = (&file).write_all(format!("{}\n", std::process::id()).as_bytes());
    Ok(Some(file))
}

/// Deliver the due entries of the queue. Returns what was done; `Err` only when the spool
/// cannot be used at all.
pub async fn run(
    config: &Config,
    opts: RunOptions<'_>,
    deliverer: &mut dyn Deliverer,
) -> Result<RunReport, Failure> {
    let spool = Spool::create(config)?;
    let mut report = RunReport::default();
    let Some(_lock) = lock_runner(&spool, opts.lock_wait)? else {
        let pid = fs::read_to_string(spool.root().join("runner.lock")).unwrap_or_default();
        let pid = pid.trim();
        let msg = format!(
            "another queue runner{} is working on {}; it will deliver the queue",
            if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
            spool.root().display()
        );
        // Not an error (overlapping timer or cron runs): the caller prints it at -v.
        report.skipped_locked = true;
        report.warnings.push(msg);
        return Ok(report);
    };
    clean_orphans(&spool);
    // In-flight markers left by a runner that died with a message on the wire.
    if let Ok(rd) = fs::read_dir(spool.inflight()) {
        for de in rd.flatten() {
            let id = de.file_name().to_string_lossy().into_owned();
            if spool.meta_path(&id).exists() {
                report.possible_duplicates += 1;
                report.warn(format!(
                    "queue entry {id} was being sent when a previous queue runner stopped; \
                     it is sent again and may arrive twice"
                ));
            }
            let _ = fs::remove_file(de.path());
        }
    }

    let mut warnings = Vec::new();
    let entries = load_all(&spool, &mut warnings)?;
    report.corrupt = warnings.iter().filter(|w| w.contains("is corrupt")).count();
    report.warnings.extend(warnings);
    // An entry is delivered only with its writer's credentials: this runner's user must have
    // written it. Another user's entry (a spool that was once writable by others) could name
    // a server of theirs for this user's profile secrets: it is left alone.
    let euid = crate::trust::euid();
    let (entries, foreign): (Vec<Entry>, Vec<Entry>) =
        entries.into_iter().partition(|e| e.owner == Some(euid));
    for e in foreign {
        report.not_owned += 1;
        report.warn(format!(
            "queue entry {} was written by {}, not by {}: it is not delivered with this \
             user's credentials; deliver it as its writer, or remove it (`m365send queue \
             delete {}`)",
            e.id,
            e.owner
                .map(crate::trust::describe_uid)
                .unwrap_or_else(|| "an unknown user".into()),
            crate::trust::describe_uid(euid),
            e.id
        ));
    }

    let mut runner = Runner {
        config,
        spool: &spool,
        opts: &opts,
        report,
        last_send: None,
        new_bounces: Vec::new(),
    };
    let groups = runner.due_groups(entries, &*deliverer);
    for (profile, entries) in groups {
        runner.group(&profile, entries, deliverer).await;
    }
    // Bounces queued by this run go out now, once (a failed bounce goes to the dead letter).
    let fresh = std::mem::take(&mut runner.new_bounces);
    if opts.send_bounces_now && !fresh.is_empty() {
        let entries: Vec<Entry> = fresh
            .iter()
            .filter_map(|id| match load_entry(&spool, id.as_str()) {
                Loaded::Ok(e) => Some(*e),
                _ => None,
            })
            .collect();
        let groups = runner.due_groups(entries, &*deliverer);
        for (profile, entries) in groups {
            runner.group(&profile, entries, deliverer).await;
        }
    }
    Ok(runner.report)
}

/// The entry's profile, with the `--mode` and `--server` it was submitted with.
fn profile_for(config: &Config, entry: &Entry) -> Option<Profile> {
    let name = entry.profile.as_str();
    let mut p = config.profiles.get(name)?.clone();
    if p.name.is_empty() {
        p.name = name.to_owned();
    }
    p = p.with_mode(entry.mode.as_deref().and_then(Mode::parse));
    if let Some(server) = &entry.server
        && let Ok(host) = crate::route::parse_server(server, crate::route::default_port(p.mode))
    {
        p.endpoint.host = Some(host.name);
        p.endpoint.port = Some(host.port);
        p.endpoint.mx_host = None;
    }
    Some(p)
}

struct Runner<'r> {
    config: &'r Config,
    spool: &'r Spool,
    opts: &'r RunOptions<'r>,
    report: RunReport,
    last_send: Option<Instant>,
    /// Bounces queued during this run.
    new_bounces: Vec<super::EntryId>,
}

/// An entry locked for delivery.
struct Locked {
    entry: Entry,
    _lock: File,
}

impl Runner<'_> {
    /// Fail expired entries, defer those whose profile is gone, and group the due ones by
    /// profile and endpoint key; groups in order of their oldest entry.
    fn due_groups(&mut self, entries: Vec<Entry>, d: &dyn Deliverer) -> Vec<(Profile, Vec<Entry>)> {
        let now = now_unix();
        let lifetime = self.opts.lifetime.as_secs() as i64;
        let mut groups: Vec<(Profile, Vec<Entry>)> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for entry in entries {
            let Some(profile) = profile_for(self.config, &entry) else {
                if now - entry.created >= lifetime {
                    // Gone from the configuration and past its lifetime: no profile to send
                    // a bounce through, so the message goes to the dead letter.
                    let stand_in = Profile {
                        name: entry.profile.clone(),
                        ..Profile::default()
                    };
                    if let Some(locked) = self.lock(&entry) {
                        self.expire_locked(&stand_in, &locked.entry, false);
                    }
                } else {
                    self.profile_missing(entry);
                }
                continue;
            };
            if now - entry.created >= lifetime {
                self.expire(&profile, entry);
                continue;
            }
            if !self.opts.flush && entry.next_attempt > now {
                self.report.not_due += 1;
                continue;
            }
            let key = format!(
                "{}\u{0}{}\u{0}{}\u{0}{}",
                profile.name,
                profile.mode.as_str(),
                entry.server.as_deref().unwrap_or(""),
                d.endpoint_key(&profile, &entry.envelope)
            );
            match index.get(&key) {
                Some(&i) => groups[i].1.push(entry),
                None => {
                    index.insert(key, groups.len());
                    groups.push((profile, vec![entry]));
                }
            }
        }
        groups
    }

    /// Lock an entry's body and re-read its metadata (a `delete` may have won the race).
    fn lock(&mut self, entry: &Entry) -> Option<Locked> {
        let file = File::open(self.spool.body_path(&entry.id)).ok()?;
        if !matches!(super::try_lock(&file), Ok(true)) {
            return None;
        }
        match load_entry(self.spool, &entry.id) {
            Loaded::Ok(entry) => Some(Locked {
                entry: *entry,
                _lock: file,
            }),
            _ => None,
        }
    }

    fn prepared(&self, entry: &Entry) -> Prepared {
        let body = self.spool.body_path(&entry.id);
        let header_block = read_header_block(&body).unwrap_or_default();
        Prepared {
            envelope: entry.envelope.clone(),
            body: Body::at(body),
            size: entry.size,
            eight_bit: entry.eight_bit,
            smtputf8: entry.smtputf8,
            header_block,
        }
    }

    fn log(&self, line: String) {
        if self.opts.verbose {
            crate::console::err_line(&format!("m365send: {line}"));
        }
    }

    fn profile_missing(&mut self, entry: Entry) {
        let Some(locked) = self.lock(&entry) else {
            return;
        };
        let mut e = locked.entry;
        if e.last_error
            .as_deref()
            .is_none_or(|l| !l.starts_with("profile "))
        {
            self.report.warn(format!(
                "queue entry {} uses profile \"{}\", which is not in the configuration; \
                 it stays queued until the profile is restored, the entry deleted, or its \
                 lifetime ends (then it goes to the dead letter)",
                e.id, e.profile
            ));
        }
        e.last_error = Some(format!(
            "profile \"{}\" is not in the configuration",
            e.profile
        ));
        e.next_attempt = now_unix() + backoff(e.attempts.max(1)).as_secs() as i64;
        self.save(&e);
        self.report.deferred += 1;
    }

    fn expire(&mut self, profile: &Profile, entry: Entry) {
        let Some(locked) = self.lock(&entry) else {
            return;
        };
        self.expire_locked(profile, &locked.entry, true);
    }

    /// Fail an entry (already locked) for age. `can_bounce`: false when the entry's profile
    /// is gone, so there is nothing to send a bounce through.
    fn expire_locked(&mut self, profile: &Profile, e: &Entry, can_bounce: bool) {
        let last = e
            .last_reply
            .as_ref()
            .map(|r| r.to_string())
            .or_else(|| e.last_error.clone())
            .unwrap_or_else(|| "no attempt succeeded".to_owned());
        let problem = Problem {
            reply: None,
            error: format!(
                "not delivered within {} ({} attempts); last: {last}",
                super::human_duration(self.opts.lifetime.as_secs() as i64),
                e.attempts
            ),
            explanation: "The message stayed in the queue longer than its lifetime.".into(),
        };
        let failures: Vec<(String, Problem)> = e
            .envelope
            .recipients
            .iter()
            .map(|r| (r.clone(), problem.clone()))
            .collect();
        self.report.expired += 1;
        self.log(format!("{}: expired", e.id));
        match self.fail_permanently(profile, e, &failures, true, can_bounce) {
            Ok(()) => self.remove(e),
            Err(why) => self.keep_queued(e.clone(), &why),
        }
    }

    /// The failure of an entry could not be put anywhere (no bounce, no dead letter, not even
    /// `failed/`): the entry stays queued, never removed, and is tried again after a backoff.
    fn keep_queued(&mut self, mut e: Entry, why: &str) {
        e.attempts = e.attempts.saturating_add(1);
        e.last_error = Some(why.to_owned());
        e.next_attempt = now_unix() + backoff(e.attempts).as_secs() as i64;
        self.save(&e);
        self.report.deferred += 1;
    }

    /// Deliver one group's entries over up to `queue_connections` connections at once (the
    /// deliverer's forks), each taking the next entry as it is done with the last one.
    async fn group(&mut self, profile: &Profile, entries: Vec<Entry>, d: &mut dyn Deliverer) {
        let wanted = (profile.queue_connections() as usize).min(entries.len());
        let mut forks: Vec<Box<dyn Deliverer>> = (1..wanted).map_while(|_| d.fork()).collect();
        let queue = RefCell::new(entries.into_iter());
        let last_problem = {
            let runner = RefCell::new(&mut *self);
            let mut workers: Vec<BoxFuture<'_, Option<Problem>>> =
                vec![Box::pin(worker(&runner, profile, &queue, d))];
            for f in forks.iter_mut() {
                workers.push(Box::pin(worker(&runner, profile, &queue, f.as_mut())));
            }
            futures_util::future::join_all(workers)
                .await
                .into_iter()
                .flatten()
                .last()
        };
        // Every connection failed: the endpoint is not reachable now; defer the rest.
        if let Some(problem) = last_problem {
            for rest in queue.into_inner() {
                if let Some(l) = self.lock(&rest) {
                    self.transient(profile, l.entry, &problem, Vec::new(), Vec::new());
                }
            }
        }
    }

    /// The moment the next message may go (pacing across all connections), reserved.
    fn next_slot(&mut self, interval: Option<Duration>) -> Option<Instant> {
        let now = Instant::now();
        let slot = match (interval, self.last_send) {
            (Some(i), Some(last)) => (last + i).max(now),
            _ => now,
        };
        self.last_send = Some(slot);
        (slot > now).then_some(slot)
    }

    fn outcome(&mut self, profile: &Profile, entry: Entry, outcome: MessageOutcome) {
        let all = |p: Problem| -> Vec<(String, Problem)> {
            entry
                .envelope
                .recipients
                .iter()
                .map(|r| (r.clone(), p.clone()))
                .collect()
        };
        let (delivered, transient, permanent) = match outcome {
            MessageOutcome::Delivered => (entry.envelope.recipients.clone(), vec![], vec![]),
            MessageOutcome::Transient(p) => (vec![], all(p), vec![]),
            MessageOutcome::Permanent(p) => (vec![], vec![], all(p)),
            MessageOutcome::Recipients(list) => {
                let (mut d, mut t, mut p) = (vec![], vec![], vec![]);
                for rcpt in &entry.envelope.recipients {
                    match list.iter().find(|(r, _)| r.eq_ignore_ascii_case(rcpt)) {
                        Some((_, RecipientResult::Delivered)) => d.push(rcpt.clone()),
                        Some((_, RecipientResult::Permanent(pr))) => {
                            p.push((rcpt.clone(), pr.clone()))
                        }
                        Some((_, RecipientResult::Transient(pr))) => {
                            t.push((rcpt.clone(), pr.clone()))
                        }
                        None => {
                            t.push((rcpt.clone(), Problem::error("no result for this recipient")))
                        }
                    }
                }
                (d, t, p)
            }
        };
        let mut transient = transient;
        if !permanent.is_empty() {
            self.log(format!(
                "{}: failed for {}",
                entry.id,
                permanent
                    .iter()
                    .map(|(r, p)| format!("{r} ({})", p.summary()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if let Err(why) = self.fail_permanently(profile, &entry, &permanent, false, true) {
                // Nowhere to keep the failure: those recipients stay in the entry.
                let problem = Problem::error(why);
                transient.extend(permanent.iter().map(|(r, _)| (r.clone(), problem.clone())));
            }
        }
        if transient.is_empty() {
            if permanent.is_empty() {
                self.report.delivered += 1;
                self.log(format!("{}: delivered", entry.id));
            }
            self.remove(&entry);
        } else {
            if !delivered.is_empty() {
                self.report.partial += 1;
            }
            let problem = transient[0].1.clone();
            let rcpts = transient.into_iter().map(|(r, _)| r).collect();
            self.transient(profile, entry, &problem, rcpts, delivered);
        }
    }

    /// Defer an entry: keep `remaining` (all recipients when empty), count an attempt, back
    /// off. Past the lifetime it fails permanently instead.
    fn transient(
        &mut self,
        profile: &Profile,
        mut e: Entry,
        problem: &Problem,
        remaining: Vec<String>,
        delivered: Vec<String>,
    ) {
        if !remaining.is_empty() {
            e.envelope.recipients = remaining;
        }
        e.delivered.extend(delivered);
        e.attempts = e.attempts.saturating_add(1);
        e.last_reply = problem.reply.as_ref().map(StoredReply::from);
        e.last_error = (!problem.error.is_empty()).then(|| problem.error.clone());
        let now = now_unix();
        if now - e.created >= self.opts.lifetime.as_secs() as i64 {
            self.expire_locked(profile, &e, true);
            return;
        }
        e.next_attempt = now + backoff(e.attempts).as_secs() as i64;
        self.log(format!(
            "{}: deferred: {} (attempt {})",
            e.id,
            problem.summary(),
            e.attempts
        ));
        self.save(&e);
        self.report.deferred += 1;
    }

    fn save(&mut self, e: &Entry) {
        if let Err(err) = rewrite_meta(self.spool, e) {
            self.report.warn(format!(
                "cannot update queue entry {}: {err}; it is retried as before",
                e.id
            ));
        }
    }

    fn remove(&mut self, e: &Entry) {
        if let Err(err) = remove_entry(self.spool, &e.id) {
            self.report.warn(format!(
                "cannot remove queue entry {}: {err}; it may be sent again",
                e.id
            ));
        }
    }

    /// Bounce the failed recipients to the sender, or write the dead letter when that is not
    /// possible (a bounce, the null sender, NOTIFY without FAILURE, the bounce not queued);
    /// as a last resort keep a copy in `SPOOL/failed/`. Never generates a bounce of a bounce.
    /// Ok once the message is durably in one of those places (the entry may then go);
    /// Err(why) when it is in none of them (the entry must stay).
    fn fail_permanently(
        &mut self,
        profile: &Profile,
        e: &Entry,
        failures: &[(String, Problem)],
        expired: bool,
        can_bounce: bool,
    ) -> Result<(), String> {
        let notify_failure = e
            .envelope
            .dsn
            .notify
            .as_deref()
            .is_none_or(|n| n.to_ascii_uppercase().contains("FAILURE"));
        let why_not_bounce = if !can_bounce {
            Some("its profile is no longer in the configuration")
        } else if e.is_bounce {
            Some("a bounce cannot be bounced")
        } else if e.envelope.sender.is_empty() {
            Some("the message has no sender to bounce to")
        } else if !notify_failure {
            Some("the sender asked for no failure notice (DSN NOTIFY)")
        } else {
            None
        };
        let reason = failures
            .iter()
            .map(|(r, p)| format!("{r}: {}", p.summary()))
            .collect::<Vec<_>>()
            .join("; ");
        let mut bounce_error = None;
        if why_not_bounce.is_none() {
            match self.queue_bounce(profile, e, failures, expired) {
                Ok(id) => {
                    self.report.bounced += 1;
                    self.log(format!("{}: bounce queued as {id}", e.id));
                    self.new_bounces.push(id);
                    return Ok(());
                }
                Err(err) => bounce_error = Some(err.message),
            }
        }
        let reason = match (why_not_bounce, bounce_error) {
            (Some(w), _) => format!("{reason} ({w})"),
            (None, Some(b)) => format!("{reason} (the bounce could not be queued: {b})"),
            (None, None) => reason,
        };
        let prepared = self.prepared(e);
        if let Some(dl) = self.opts.dead_letter {
            match dl(self.config, profile, &prepared, &reason) {
                Ok(path) => {
                    self.report.dead_lettered += 1;
                    self.log(format!("{}: written to {}", e.id, path.display()));
                    return Ok(());
                }
                Err(f) => self.report.warn(format!(
                    "cannot write the dead letter for queue entry {}: {f}",
                    e.id
                )),
            }
        }
        match preserve_failed(self.spool, e) {
            Ok(path) => {
                self.report.preserved += 1;
                self.report.warn(format!(
                    "undeliverable queue entry {} kept as {} ({reason})",
                    e.id,
                    path.display()
                ));
                Ok(())
            }
            Err(err) => {
                let why = format!(
                    "undeliverable, and could not be kept in {}: {err}; it stays in the queue",
                    self.spool.failed().display()
                );
                self.report
                    .warn(format!("queue entry {} is {why} ({reason})", e.id));
                Err(why)
            }
        }
    }

    fn queue_bounce(
        &mut self,
        profile: &Profile,
        e: &Entry,
        failures: &[(String, Problem)],
        expired: bool,
    ) -> Result<super::EntryId, Failure> {
        let body = self.spool.body_path(&e.id);
        let bytes = bounce::build_bounce(
            profile,
            e,
            &body,
            failures,
            expired,
            self.opts.bounce_attach_max,
        )
        .map_err(|err| Failure::io(format!("cannot build the bounce: {err}")))?;
        let now = now_unix();
        // From whom Microsoft 365 accepts it in this mode (bounce::bounce_sender). A bounce
        // with a real sender asks for no notice of its own: `is_bounce` below is what keeps
        // it from ever being bounced by us.
        let sender = bounce::bounce_sender(profile);
        let dsn = crate::message::Dsn {
            notify: (!sender.is_empty()).then(|| "NEVER".to_owned()),
            ..Default::default()
        };
        let entry = Entry {
            version: FORMAT_VERSION,
            id: String::new(),
            created: now,
            profile: e.profile.clone(),
            envelope: Envelope {
                sender,
                recipients: vec![e.envelope.sender.clone()],
                dsn,
            },
            size: 0,
            eight_bit: !bytes.is_ascii(),
            smtputf8: e.smtputf8,
            attempts: 0,
            next_attempt: now,
            last_reply: None,
            last_error: Some(format!("bounce of {}", e.id)),
            is_bounce: true,
            delivered: Vec::new(),
            mode: e.mode.clone(),
            server: e.server.clone(),
            owner: None,
        };
        super::commit_entry(self.spool, entry, BodySource::Bytes(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour_with_jitter() {
        for (attempts, base) in [(1, 60.0), (2, 120.0), (3, 240.0), (6, 1920.0), (7, 3600.0)] {
            for _ in 0..50 {
                let d = backoff(attempts).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 0.001 && d <= base * 1.2 + 0.001,
                    "{attempts}: {d}"
                );
            }
        }
        assert!(backoff(u32::MAX).as_secs_f64() <= 3600.0 * 1.2 + 0.001);
        assert!(backoff(0).as_secs_f64() >= 48.0);
    }

    #[test]
    fn pacing_defaults_to_30_per_minute_for_submission_only() {
        let opts = RunOptions::default();
        let mut p = Profile::default();
        assert_eq!(pacing(&p, &opts), Some(Duration::from_secs(2)));
        p.mode = Mode::Relay;
        assert_eq!(pacing(&p, &opts), None);
        p.rate_per_minute = Some(120);
        assert_eq!(pacing(&p, &opts), Some(Duration::from_millis(500)));
        p.mode = Mode::Submit;
        p.rate_per_minute = Some(0);
        assert_eq!(pacing(&p, &opts), None, "0 = off");
        let off = RunOptions {
            rate_per_minute: Some(0),
            ..RunOptions::default()
        };
        p.rate_per_minute = None;
        assert_eq!(pacing(&p, &off), None);
    }

    /// A `--server` without a port queued for a mode keeps that mode's port (Graph: 443).
    #[test]
    fn a_queued_server_without_a_port_gets_the_modes_port() {
        let mut config = Config::default();
        config.profiles.insert("p".into(), Profile::default());
        let entry = |mode: &str| Entry {
            version: FORMAT_VERSION,
            id: "x".into(),
            created: 0,
            profile: "p".into(),
            envelope: Envelope::default(),
            size: 1,
            eight_bit: false,
            smtputf8: false,
            attempts: 0,
            next_attempt: 0,
            last_reply: None,
            last_error: None,
            is_bounce: false,
            delivered: Vec::new(),
            mode: Some(mode.into()),
            server: Some("relay.example".into()),
            owner: None,
        };
        for (mode, port) in [("graph", 443), ("relay", 25), ("submit", 587)] {
            let p = profile_for(&config, &entry(mode)).unwrap();
            assert_eq!(
                (p.endpoint.host.as_deref(), p.endpoint.port),
                (Some("relay.example"), Some(port)),
                "{mode}"
            );
        }
    }

    #[test]
    fn endpoint_key_splits_relay_by_sender_domain() {
        let env = |s: &str| Envelope {
            sender: s.into(),
            ..Envelope::default()
        };
        let mut p = Profile {
            name: "cron".into(),
            ..Profile::default()
        };
        assert_eq!(default_endpoint_key(&p, &env("a@Contoso.com")), "cron");
        p.mode = Mode::Relay;
        assert_eq!(
            default_endpoint_key(&p, &env("a@Contoso.com")),
            "cron/contoso.com"
        );
        p.endpoint.mx_host = Some("mx.example".into());
        assert_eq!(default_endpoint_key(&p, &env("a@fabrikam.com")), "cron");
    }
}
