//! `m365send serve`: a local SMTP listener that bridges devices and applications (printers,
//! scanners, line-of-business apps) to Microsoft 365.
//!
//! Owns: the listening sockets (from `[serve] listen`, or inherited from systemd with the
//! LISTEN_FDS protocol), who may connect (client networks, connection limits overall and per
//! client address), the per-connection [`bs::Hooks`] (AUTH against `[serve.users]`, allowed
//! senders — handed to `accept` for the From and Sender fields too —, rate limit, lockout,
//! room left in the spool, the `Received:` trace field), where the data of a message waits
//! while it arrives (the spool's `tmp/`), the in-process queue runner (woken when a message
//! is accepted and on a timer), and the signals: SIGTERM/SIGINT stop gracefully, SIGHUP re-reads the
//! configuration. Must not: speak SMTP itself (the session is `bs`, shared with `-bs`), decide
//! what happens to a message (the caller's [`Steps::accept`]: the same prepare → profile →
//! route → queue steps as the sendmail path), or deliver (the queue runner does, through
//! [`Steps::drain`]).
//!
//! Durability: a message gets its 250 only after `accept` returned a queue id, which the queue
//! gives only after the body and metadata are fsynced and renamed into the spool. Everything
//! acknowledged is in the spool, so a kill -9 or a power loss loses nothing: the next `serve`
//! (or `queue run`) delivers it. Enqueueing runs on tokio's blocking pool, so fsyncs of
//! concurrent clients overlap and a slow disk never stalls the other sessions.
//!
//! Threads: connections run on one current-thread runtime (a `LocalSet`); each message's
//! prepare + enqueue on the blocking pool; the queue runner on its own thread with its own
//! runtime (its futures are not `Send`). They share [`Shared`]: the settings (swapped on
//! SIGHUP), the counters of [`access::Throttle`], and the runner's wake-up.

pub mod access;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::bs::{self, AuthOffer, BsOutcome, Verdict, flagged, reply};
use crate::config::{self, Config, PlaintextAuth};
use crate::exit::{Exit, Failure};
use crate::message::{Body, Envelope};
use crate::queue::{EntryId, RunReport};
use crate::secret::Secret;
use access::{Throttle, User};

/// A future that may stay on one thread.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A message a client handed over, for [`Steps::accept`].
pub struct Accepted {
    pub config: Arc<Config>,
    /// The profile to send through (the user's, or `[serve] profile`); None: chosen by the
    /// envelope sender, as for the sendmail interface.
    pub profile: Option<String>,
    pub envelope: Envelope,
    /// The data as received (CRLF, dots removed), with our `Received:` field first.
    pub body: Body,
    /// The senders this client may use (the user's `senders`, or `[serve] senders` for a
    /// client that did not log in), for the From and Sender fields of the prepared message
    /// ([`access::check_header_senders`]), and who they are in a refusal; None: any.
    pub senders: Option<(Vec<String>, String)>,
}

/// The steps `serve` does not own, given by `app`.
#[derive(Clone, Copy)]
pub struct Steps {
    /// Prepare the message and put it durably in the queue; its id, or why not. Runs on a
    /// blocking thread (it fsyncs) inside the serve runtime.
    pub accept: fn(Accepted) -> LocalFuture<Result<EntryId, Failure>>,
    /// One queue run (due entries), with the product's wiring (lifetime, dead letter).
    pub drain: fn(Arc<Config>) -> LocalFuture<Result<RunReport, Failure>>,
}

/// Everything derived from the configuration; rebuilt on SIGHUP.
struct Settings {
    config: Arc<Config>,
    listen: Vec<SocketAddr>,
    networks: Vec<ipnet::IpNet>,
    limits: bs::Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    plaintext_auth: PlaintextAuth,
    require_auth: bool,
    senders: Option<Vec<String>>,
    profile: Option<String>,
    users: BTreeMap<String, User>,
    max_connections: usize,
    max_connections_per_client: usize,
    client_rate_per_minute: u32,
    auth_failures: u32,
    lockout: Duration,
    idle_timeout: Duration,
    queue_interval: Duration,
    shutdown_timeout: Duration,
}

impl Settings {
    fn build(config: Config) -> Result<Settings, Failure> {
        let sv = config.serve.clone();
        let tls = match (&sv.tls_cert, &sv.tls_key) {
            (Some(cert), Some(key)) => {
                let server = crate::smtp::tls::server_config(cert, key)
                    .map_err(|e| Failure::config(format!("serve.tls_cert: {}", e.0)))?;
                Some(tokio_rustls::TlsAcceptor::from(server))
            }
            _ => None,
        };
        let users = access::load_users(&sv)?;
        let max_size = match sv.max_message_size {
            Some(n) => n,
            None => config
                .select_profile(sv.profile.as_deref(), None)
                .map(|p| p.max_size())
                .unwrap_or_else(|_| config::Profile::default().max_size()),
        };
        // The data of a message being received waits in the spool's own tmp directory: on
        // the spool's disk, not in /tmp (often a RAM tmpfs, where many slow clients would pin
        // max_message_size of memory each).
        let spool_tmp = crate::queue::spool_tmp_dir(&config)?;
        let limits = bs::Limits {
            hostname: sv.hostname.clone().unwrap_or_else(bs::local_hostname),
            max_size,
            max_recipients: sv.max_recipients.unwrap_or(500),
            temp_dir: Some(spool_tmp),
            ..bs::Limits::default()
        };
        let max_connections = sv.max_connections.unwrap_or(100);
        Ok(Settings {
            listen: sv.listen(),
            networks: sv.networks(),
            limits,
            tls,
            plaintext_auth: sv.plaintext_auth,
            require_auth: sv.require_auth,
            senders: sv.senders.clone(),
            profile: sv.profile.clone(),
            users,
            max_connections,
            max_connections_per_client: sv
                .max_connections_per_client
                .unwrap_or(max_connections.div_ceil(2)),
            client_rate_per_minute: sv.client_rate_per_minute.unwrap_or(0),
            auth_failures: sv.auth_failures.unwrap_or(5),
            lockout: Duration::from_secs(sv.lockout_minutes.unwrap_or(15) * 60),
            idle_timeout: Duration::from_secs(sv.idle_timeout.unwrap_or(300)),
            queue_interval: Duration::from_secs(sv.queue_interval.unwrap_or(60)),
            shutdown_timeout: Duration::from_secs(sv.shutdown_timeout.unwrap_or(30)),
            config: Arc::new(config),
        })
    }
}

/// State shared by the listeners, the connections and the queue runner.
struct Shared {
    settings: RwLock<Arc<Settings>>,
    throttle: Mutex<Throttle>,
    /// Open connections (for the limit and the graceful stop).
    active: AtomicUsize,
    /// Wakes the queue runner.
    wake: Notify,
}

impl Shared {
    fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Say something on stderr (the journal under systemd). What clients said is part of it
/// (user names, addresses): control and format characters are escaped, so a record stays one
/// line and reads as written.
fn note(text: &str) {
    crate::console::err_line(&format!(
        "m365send: serve: {}",
        crate::printable::for_terminal(text, false)
    ));
}

/// Run the server until SIGTERM or SIGINT. `config_path`: `--config`, re-read on SIGHUP.
pub fn run(config_path: Option<PathBuf>, steps: Steps) -> Result<(), Failure> {
    let config = load(config_path.as_deref())?;
    let settings = Arc::new(Settings::build(config)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Exit::OsErr, format!("cannot start the async runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(config_path, settings, steps))
}

fn load(path: Option<&std::path::Path>) -> Result<Config, Failure> {
    config::load(path)?.ok_or_else(|| {
        Failure::config(
            "serve: no configuration file found: give --config FILE or create \
             /etc/m365send/config.toml with a profile and a [serve] table (see \
             config.example.toml)",
        )
    })
}

async fn serve(
    config_path: Option<PathBuf>,
    settings: Arc<Settings>,
    steps: Steps,
) -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |kind: SignalKind| {
        signal(kind).map_err(|e| Failure::new(Exit::OsErr, format!("cannot handle signals: {e}")))
    };
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;

    let (listeners, activated) = listeners(&settings.listen).await?;
    let spool = crate::queue::spool_dir(&settings.config)?;
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    note(&format!(
        "listening on {}{}; queue {}",
        addrs.join(", "),
        if activated { " (from systemd)" } else { "" },
        spool.display()
    ));
    if !settings.users.is_empty()
        && settings.tls.is_none()
        && settings
            .listen
            .iter()
            .any(|a| access::auth_needs_tls(settings.plaintext_auth, a.ip()))
    {
        note(
            "warning: users are configured but there is no serve.tls_cert: AUTH is offered \
             only on loopback connections",
        );
    }

    let shared = Arc::new(Shared {
        settings: RwLock::new(settings),
        throttle: Mutex::new(Throttle::default()),
        active: AtomicUsize::new(0),
        wake: Notify::new(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    for listener in listeners {
        tokio::task::spawn_local(accept_loop(
            listener,
            shared.clone(),
            steps,
            stop_rx.clone(),
        ));
    }
    let runner = start_runner(shared.clone(), steps, stop_rx.clone())?;

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(config_path.as_deref(), &shared, activated),
        }
    }

    // Stop accepting; sessions between transactions close at once (421), the others finish
    // their message first, up to shutdown_timeout.
    let grace = shared.settings().shutdown_timeout;
    note("stopping: no new connections; open transactions may finish");
    let _ = stop_tx.send(true);
    shared.wake.notify_one();
    let deadline = Instant::now() + grace;
    while shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.active.load(Ordering::SeqCst);
    if left > 0 {
        note(&format!(
            "{left} connection(s) still open after {} s: closed without acknowledging their \
             message",
            grace.as_secs()
        ));
    }
    // The runner finishes the delivery it is in (an interrupted one is retried later).
    while !runner.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if runner.is_finished() {
        let _ = runner.join();
    }
    note("stopped");
    Ok(())
}

/// Re-read the configuration; on an error keep the running one.
fn reload(path: Option<&std::path::Path>, shared: &Shared, activated: bool) {
    let built = load(path).and_then(Settings::build);
    match built {
        Ok(new) => {
            let old = shared.settings();
            if !activated && new.listen != old.listen {
                note(
                    "warning: serve.listen changed; the listening addresses change only with a \
                     restart",
                );
            }
            match shared.settings.write() {
                Ok(mut s) => *s = Arc::new(new),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
            }
            shared.wake.notify_one();
            note("configuration reloaded");
        }
        Err(f) => note(&format!(
            "reload failed, keeping the running configuration: {}",
            f.message
        )),
    }
}

/// The listening sockets: inherited from systemd (socket activation), else bound.
async fn listeners(listen: &[SocketAddr]) -> Result<(Vec<TcpListener>, bool), Failure> {
    let inherited = inherited_listeners()?;
    if !inherited.is_empty() {
        let mut out = Vec::new();
        for l in inherited {
            l.set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(l))
                .map(|l| out.push(l))
                .map_err(|e| {
                    Failure::new(Exit::OsErr, format!("inherited socket unusable: {e}"))
                })?;
        }
        return Ok((out, true));
    }
    let mut out = Vec::new();
    for addr in listen {
        let l = TcpListener::bind(addr).await.map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::PermissionDenied => {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE; or use the systemd \
                     socket unit)"
                }
                io::ErrorKind::AddrInUse => " (another program listens there)",
                _ => "",
            };
            Failure::new(
                Exit::OsErr,
                format!("serve: cannot listen on {addr}: {e}{hint}"),
            )
        })?;
        out.push(l);
    }
    Ok((out, false))
}

/// Sockets passed by systemd (sd_listen_fds(3)): `LISTEN_PID` is ours, `LISTEN_FDS` says how
/// many, starting at descriptor 3. The variables are removed so children do not see them.
fn inherited_listeners() -> Result<Vec<std::net::TcpListener>, Failure> {
    use std::os::fd::FromRawFd;
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    // SAFETY: called before any other thread is started (serve's first step after the
    // configuration), so nothing reads the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let n: i32 = fds
        .trim()
        .parse()
        .map_err(|_| Failure::new(Exit::OsErr, format!("LISTEN_FDS={fds} is not a number")))?;
    let mut out = Vec::new();
    for fd in 3..3 + n.clamp(0, 64) {
        // Only a listening stream socket is taken; anything else is refused, not guessed at.
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an integer descriptor with a correctly sized out-parameter;
        // an fd that is not a socket makes it fail with ENOTSOCK, nothing else.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut kind as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 || kind != libc::SOCK_STREAM {
            return Err(Failure::new(
                Exit::OsErr,
                format!("descriptor {fd} from systemd is not a stream socket"),
            ));
        }
        // SAFETY: systemd passed this descriptor to us (LISTEN_PID is our pid) and nothing
        // else in this process owns it; it is a stream socket (checked above).
        out.push(unsafe { std::net::TcpListener::from_raw_fd(fd) });
    }
    Ok(out)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    steps: Steps,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = flagged(&mut stop) => return,
        };
        match accepted {
            Ok((sock, peer)) => {
                tokio::task::spawn_local(connection(
                    sock,
                    peer,
                    shared.clone(),
                    steps,
                    stop.clone(),
                ));
            }
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                note(&format!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Counts an open connection while it lives.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a client's open connection while it lives.
struct ClientGuard(Arc<Shared>, IpAddr);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.throttle().connection_closed(self.1);
    }
}

/// Refuse a connection with one reply and close it.
async fn refuse(mut sock: TcpStream, line: &str) {
    let write = async {
        sock.write_all(format!("{line}\r\n").as_bytes()).await?;
        sock.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    steps: Steps,
    stop: watch::Receiver<bool>,
) {
    let _ = sock.set_nodelay(true);
    let settings = shared.settings();
    let ip = access::canonical(peer.ip());
    if !access::network_allowed(&settings.networks, ip) {
        note(&format!("refused {ip}: not in serve.networks"));
        refuse(
            sock,
            &format!("554 5.7.1 Access denied: {ip} is not an allowed client network"),
        )
        .await;
        return;
    }
    let open = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = ActiveGuard(shared.clone());
    if open > settings.max_connections {
        note(&format!(
            "refused {ip}: {} connections open (serve.max_connections)",
            open - 1
        ));
        refuse(sock, "421 4.7.0 Too many connections, try again later").await;
        return;
    }
    // One client may not hold every slot (and keep them: a byte now and then resets the idle
    // timeout), or the other devices could not connect at all.
    if !shared
        .throttle()
        .connection_opened(ip, settings.max_connections_per_client)
    {
        note(&format!(
            "refused {ip}: {} connections from it open (serve.max_connections_per_client)",
            settings.max_connections_per_client
        ));
        refuse(
            sock,
            &format!("421 4.7.0 Too many connections from {ip}, try again later"),
        )
        .await;
        return;
    }
    let _client = ClientGuard(shared.clone(), ip);
    let local = sock
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let options = bs::Options {
        banner: "ESMTP m365send ready".into(),
        tls: settings.tls.clone(),
        idle_timeout: Some(settings.idle_timeout),
        shutdown: Some(stop),
    };
    let mut client = Client {
        needs_tls: access::auth_needs_tls(settings.plaintext_auth, local),
        settings: settings.clone(),
        shared: shared.clone(),
        ip,
        steps,
    };
    if let Err(e) = bs::serve_with(sock, &settings.limits, &options, &mut client).await {
        tracing::debug!(client = %ip, error = %e, "session ended");
    }
}

/// One client's hooks.
struct Client {
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    ip: IpAddr,
    /// AUTH waits for STARTTLS on this connection.
    needs_tls: bool,
    steps: Steps,
}

impl bs::Hooks for Client {
    fn auth_offer(&self, tls: bool) -> AuthOffer {
        if self.settings.users.is_empty() {
            AuthOffer::No
        } else if tls || !self.needs_tls {
            AuthOffer::Yes
        } else {
            AuthOffer::AfterTls
        }
    }

    fn authenticate(&mut self, user: &str, password: Secret) -> impl Future<Output = Verdict> {
        let user = user.to_owned();
        let settings = self.settings.clone();
        let shared = self.shared.clone();
        let ip = self.ip;
        async move {
            // Counted before the password is checked: AUTH sent at once on many connections
            // gets no more checks than `auth_failures` allows.
            let begun = shared.throttle().begin_auth(
                ip,
                settings.auth_failures,
                settings.lockout,
                Instant::now(),
            );
            match begun {
                Ok(()) => {}
                Err(access::AuthRefused::Locked(left)) => {
                    return Verdict::Refuse(reply(
                        454,
                        &format!(
                            "4.7.0 Too many failed authentications from {ip}; try again in {} \
                             minute(s)",
                            left.as_secs().div_ceil(60).max(1)
                        ),
                    ));
                }
                Err(access::AuthRefused::Busy) => {
                    return Verdict::Refuse(reply(
                        454,
                        &format!(
                            "4.7.0 Too many authentications in progress from {ip}; try again \
                             later"
                        ),
                    ));
                }
            }
            // An unknown user costs a hash check too (the first user's hash, whatever the
            // password), so the time of the answer does not tell which user names exist.
            let known = settings.users.get(&user).map(|u| u.hash.clone());
            let exists = known.is_some();
            let hash = known.or_else(|| settings.users.values().next().map(|u| u.hash.clone()));
            // argon2 takes tens of milliseconds: off the thread that serves the sessions.
            let ok = match hash {
                Some(h) => tokio::task::spawn_blocking(move || h.verify(&password))
                    .await
                    .unwrap_or(false),
                None => false,
            } && exists;
            let locked = shared.throttle().end_auth(
                ip,
                ok,
                settings.auth_failures,
                settings.lockout,
                Instant::now(),
            );
            if ok {
                tracing::debug!(client = %ip, %user, "authenticated");
                return Verdict::Accept;
            }
            let name: String = user.chars().take(64).collect();
            note(&format!("AUTH failed for \"{name}\" from {ip}"));
            if locked {
                note(&format!(
                    "{ip} locked out for {} minute(s) after {} failed AUTH attempts",
                    settings.lockout.as_secs() / 60,
                    settings.auth_failures
                ));
                return Verdict::RefuseAndClose(reply(
                    421,
                    "4.7.0 Too many failed authentications, try again later",
                ));
            }
            Verdict::Refuse(reply(535, "5.7.8 Authentication credentials invalid"))
        }
    }

    fn mail(&mut self, sender: &str, user: Option<&str>) -> Verdict {
        let s = &self.settings;
        match user.and_then(|u| s.users.get(u).map(|entry| (u, entry))) {
            Some((name, entry)) => {
                if !entry.may_send_as(sender) {
                    return Verdict::Refuse(reply(
                        553,
                        &format!("5.7.1 Sender address <{sender}> not allowed for user {name}"),
                    ));
                }
            }
            None => {
                if s.require_auth {
                    return Verdict::Refuse(reply(530, "5.7.0 Authentication required"));
                }
                if let Some(list) = &s.senders
                    && !list.iter().any(|p| config::sender_matches(p, sender))
                {
                    return Verdict::Refuse(reply(
                        553,
                        &format!("5.7.1 Sender address <{sender}> not allowed"),
                    ));
                }
            }
        }
        // Room for the message in the spool, with a margin (as Postfix asks for 1.5 times its
        // message_size_limit): a full disk is a temporary condition the client retries after,
        // not a reason to refuse the message for good.
        if let Some(dir) = &s.limits.temp_dir
            && let Some(free) = crate::fsutil::free_bytes(dir)
            && free < s.limits.max_size.saturating_add(s.limits.max_size / 2)
        {
            note(&format!(
                "refused a message from {}: {free} bytes left in the spool's file system",
                self.ip
            ));
            return Verdict::Refuse(reply(
                452,
                "4.3.1 Insufficient system storage, try again later",
            ));
        }
        let rate = s.client_rate_per_minute;
        if !self
            .shared
            .throttle()
            .allow_message(self.ip, rate, Instant::now())
        {
            return Verdict::Refuse(reply(
                450,
                &format!(
                    "4.7.1 Too much mail from {}: at most {rate} messages a minute, try again \
                     later",
                    self.ip
                ),
            ));
        }
        Verdict::Accept
    }

    fn trace(&self, helo: &str, tls: bool, user: Option<&str>) -> Option<String> {
        let proto = match (tls, user.is_some()) {
            (false, false) => "ESMTP",
            (true, false) => "ESMTPS",
            (false, true) => "ESMTPA",
            (true, true) => "ESMTPSA",
        };
        // The name as the client gave it, but within a header line: printable ASCII only (what
        // is not becomes `?`), at most 255 characters (the longest domain name).
        let helo: String = helo
            .chars()
            .take(255)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect();
        let helo = if helo.is_empty() { "unknown" } else { &helo };
        Some(format!(
            "Received: from {helo} ([{}])\r\n\tby {} (m365send) with {proto};\r\n\t{}",
            self.ip,
            self.settings.limits.hostname,
            chrono::Local::now().to_rfc2822()
        ))
    }

    fn message(
        &mut self,
        envelope: Envelope,
        body: Body,
        user: Option<&str>,
    ) -> impl Future<Output = BsOutcome> {
        let settings = self.settings.clone();
        let shared = self.shared.clone();
        let accept = self.steps.accept;
        let ip = self.ip;
        let profile = user
            .and_then(|u| settings.users.get(u))
            .and_then(|u| u.profile.clone())
            .or_else(|| settings.profile.clone());
        let senders = match user.and_then(|u| settings.users.get(u).map(|e| (u, e))) {
            Some((name, entry)) => Some((entry.senders.clone(), format!("user {name}"))),
            None => settings.senders.clone().map(|list| {
                (
                    list,
                    "a client that did not log in (serve.senders)".to_owned(),
                )
            }),
        };
        let user = user.map(str::to_owned);
        async move {
            let summary = format!(
                "from=<{}> recipients={} client={ip}{}",
                envelope.sender,
                envelope.recipients.len(),
                user.map(|u| format!(" user={u}")).unwrap_or_default()
            );
            let request = Accepted {
                config: settings.config.clone(),
                profile,
                envelope,
                body,
                senders,
            };
            let handle = tokio::runtime::Handle::current();
            let done = tokio::task::spawn_blocking(move || handle.block_on(accept(request))).await;
            match done {
                Ok(Ok(id)) => {
                    shared.wake.notify_one();
                    tracing::info!("accepted {id} {summary}");
                    BsOutcome::QueuedAs(id.to_string())
                }
                Ok(Err(f)) => {
                    let first = f.message.lines().next().unwrap_or("");
                    note(&format!("refused a message {summary}: {first}"));
                    BsOutcome::from_failure(&f)
                }
                Err(e) => {
                    note(&format!("internal error storing a message {summary}: {e}"));
                    BsOutcome::Failed(reply(451, "4.3.0 Local error: cannot store the message"))
                }
            }
        }
    }
}

/// The queue runner's thread: a run when woken (a message was accepted) and every
/// `queue_interval`; stops after the run in progress when `stop` becomes true.
fn start_runner(
    shared: Arc<Shared>,
    steps: Steps,
    mut stop: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, Failure> {
    std::thread::Builder::new()
        .name("queue-runner".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    note(&format!("cannot start the queue runner: {e}"));
                    return;
                }
            };
            runtime.block_on(async move {
                loop {
                    let settings = shared.settings();
                    match (steps.drain)(settings.config.clone()).await {
                        Ok(report) => {
                            if report.delivered + report.deferred + report.bounced > 0 {
                                tracing::debug!("{}", report.summary());
                            }
                        }
                        Err(f) => note(&format!("queue run failed: {}", f.message)),
                    }
                    if *stop.borrow() {
                        return;
                    }
                    tokio::select! {
                        () = shared.wake.notified() => {}
                        () = tokio::time::sleep(settings.queue_interval) => {}
                        () = flagged(&mut stop) => return,
                    }
                }
            });
        })
        .map_err(|e| Failure::new(Exit::OsErr, format!("cannot start the queue runner: {e}")))
}
