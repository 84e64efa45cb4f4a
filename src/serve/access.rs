//! Who may use `m365send serve`: client networks, local users and their password hashes, the
//! senders each may use, per-client message rates, and the lockout after failed AUTH.
//!
//! Owns: parsing and checking password hashes (argon2 PHC strings, SHA-512-crypt `$6$`) and
//! verifying a password against one (RustCrypto's `argon2` and `sha-crypt`), the network and
//! sender rules (the envelope's, and the From and Sender fields of the prepared message), and
//! the counters behind connection and rate limits and lockouts. Must not: speak SMTP (it
//! answers with decisions; `serve` turns them into replies), or keep or log a password.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::{PlaintextAuth, ServeConfig, sender_matches};
use crate::exit::Failure;
use crate::secret::Secret;

/// A password hash in a format we can verify.
#[derive(Clone)]
pub enum PasswordHash {
    /// `$argon2id$v=19$m=...,t=...,p=...$SALT$HASH` (also argon2i, argon2d).
    Argon2(String),
    /// `$6$[rounds=N$]SALT$HASH` (SHA-512-crypt, as `openssl passwd -6` or `mkpasswd` make).
    Sha512Crypt(String),
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not the password, but there is no reason to print it either.
        f.write_str(match self {
            PasswordHash::Argon2(_) => "PasswordHash::Argon2(..)",
            PasswordHash::Sha512Crypt(_) => "PasswordHash::Sha512Crypt(..)",
        })
    }
}

impl PasswordHash {
    /// Recognise and check a hash string; the error says what is expected.
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        let s = s.trim();
        if s.starts_with("$argon2") {
            argon2::password_hash::phc::PasswordHash::new(s)
                .map_err(|e| format!("not a valid argon2 hash: {e}"))?;
            return Ok(PasswordHash::Argon2(s.to_owned()));
        }
        if s.starts_with("$6$") {
            // The parser takes a placeholder (`$6$...`) or a hash cut off when pasted; no
            // password could ever match one, and the device would be locked out with nothing
            // saying why. A whole hash ends in 86 characters of crypt's base64.
            let whole = s.rsplit('$').next().is_some_and(|h| {
                h.len() == 86
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
            });
            let parsed = sha_crypt::PasswordHashRef::new(s).map_err(|e| e.to_string());
            if let Err(why) = parsed.and_then(|_| {
                whole.then_some(()).ok_or_else(|| {
                    "the hash part is not 86 characters of [./0-9A-Za-z] (a placeholder or a hash \
                     cut off?)"
                        .to_owned()
                })
            }) {
                return Err(format!(
                    "not a valid SHA-512-crypt hash ({why}): make one with `openssl passwd -6`"
                ));
            }
            return Ok(PasswordHash::Sha512Crypt(s.to_owned()));
        }
        Err(
            "not a password hash m365send knows: give an argon2 hash ($argon2id$...) or a \
             SHA-512-crypt hash ($6$..., from `openssl passwd -6`), never the password itself"
                .into(),
        )
    }

    /// Whether `password` matches. Slow on purpose (argon2: tens of milliseconds): call it off
    /// the connection-handling thread.
    pub fn verify(&self, password: &Secret) -> bool {
        use argon2::password_hash::PasswordVerifier as _;
        let pw = password.expose().as_bytes();
        match self {
            PasswordHash::Argon2(h) => argon2::Argon2::default().verify_password(pw, h.as_str()),
            PasswordHash::Sha512Crypt(h) => {
                sha_crypt::ShaCrypt::default().verify_password(pw, h.as_str())
            }
        }
        .is_ok()
    }
}

/// One local user.
#[derive(Debug, Clone)]
pub struct User {
    pub hash: PasswordHash,
    pub senders: Vec<String>,
    pub profile: Option<String>,
}

impl User {
    pub fn may_send_as(&self, sender: &str) -> bool {
        self.senders.iter().any(|p| sender_matches(p, sender))
    }
}

/// The users of `[serve.users]`, with their hashes read (from `password_hash_file` too) and
/// checked. An unreadable file or a bad hash is a configuration error naming the key.
pub fn load_users(cfg: &ServeConfig) -> Result<BTreeMap<String, User>, Failure> {
    let mut users = BTreeMap::new();
    for (name, u) in &cfg.users {
        let (text, key) = match (&u.password_hash, &u.password_hash_file) {
            (Some(h), _) => (h.clone(), format!("serve.users.{name}.password_hash")),
            (None, Some(path)) => {
                // Whoever could write this file could log in as the user: the same trust
                // check as every other file that decides what m365send does.
                let raw = crate::trust::read_file(path, 64 * 1024).map_err(|e| {
                    Failure::config(format!(
                        "serve.users.{name}.password_hash_file: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                let raw = String::from_utf8_lossy(&raw);
                (
                    raw.lines().next().unwrap_or("").to_owned(),
                    format!("serve.users.{name}.password_hash_file {}", path.display()),
                )
            }
            (None, None) => {
                return Err(Failure::config(format!(
                    "serve.users.{name}: set password_hash or password_hash_file"
                )));
            }
        };
        let hash =
            PasswordHash::parse(&text).map_err(|e| Failure::config(format!("{key}: {e}")))?;
        users.insert(
            name.clone(),
            User {
                hash,
                senders: u.senders.clone(),
                profile: u.profile.clone(),
            },
        );
    }
    Ok(users)
}

/// Whether the From and Sender fields of a prepared message name only addresses the client
/// may use: one of its sender `patterns` (a user's `senders`, or `[serve] senders`), or the
/// message's envelope sender as prepared (the client's checked MAIL FROM, or the profile's
/// own sender when the profile rewrote it). The envelope alone is not enough: Microsoft 365
/// relays any From in an accepted domain, and recipients read the From. `who` names the rule
/// in the refusal ("user scanner"). Exit 77 (550 5.7.1 to the client) otherwise.
pub fn check_header_senders(
    patterns: &[String],
    envelope_sender: &str,
    header_block: &str,
    who: &str,
) -> Result<(), Failure> {
    for (field, addrs) in crate::message::sender_fields(header_block) {
        for addr in addrs {
            let allowed = addr.as_deref().is_some_and(|a| {
                a.eq_ignore_ascii_case(envelope_sender)
                    || patterns.iter().any(|p| sender_matches(p, a))
            });
            if !allowed {
                let shown = match &addr {
                    Some(a) => format!("<{}>", crate::printable::for_terminal(a, false)),
                    None => "an address that cannot be read".to_owned(),
                };
                return Err(Failure::new(
                    crate::exit::Exit::NoPerm,
                    format!("{field}: {shown} is not an address {who} may send as"),
                ));
            }
        }
    }
    Ok(())
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, from a dual-stack socket) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether a client at `ip` may connect.
pub fn network_allowed(networks: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    networks.iter().any(|n| n.contains(&ip))
}

/// Whether AUTH must wait for STARTTLS on a connection to our address `local`.
pub fn auth_needs_tls(policy: PlaintextAuth, local: IpAddr) -> bool {
    match policy {
        PlaintextAuth::Never => true,
        PlaintextAuth::Loopback => !canonical(local).is_loopback(),
    }
}

/// Per-client counters: open connections, messages in the last minute, AUTH attempts.
///
/// Lockout: every failed AUTH of an address counts for the lockout window, whatever logs in
/// from that address meanwhile (a success forgets nothing: otherwise one known password, a
/// printer's, lets its holder guess another user's password for ever). An attempt is
/// counted before its password is checked ([`Throttle::begin_auth`]), so AUTH sent at once
/// on many connections gets no more password checks than the limit allows.
#[derive(Debug, Default)]
pub struct Throttle {
    messages: HashMap<IpAddr, VecDeque<Instant>>,
    failures: HashMap<IpAddr, Failures>,
    connections: HashMap<IpAddr, usize>,
    /// The size of `failures`/`messages` at which stale entries are forgotten next.
    prune_at: usize,
}

#[derive(Debug, Default)]
struct Failures {
    /// Times of recent failures (within the lockout window).
    times: VecDeque<Instant>,
    /// Attempts whose password is being checked.
    pending: u32,
    locked_until: Option<Instant>,
}

/// Why an AUTH attempt is not even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefused {
    /// The address is locked out for this long.
    Locked(Duration),
    /// As many attempts as may still fail are being checked already.
    Busy,
}

const MINUTE: Duration = Duration::from_secs(60);
/// Table size below which nothing is pruned.
const PRUNE_FLOOR: usize = 10_000;

impl Throttle {
    /// Count a new connection from `ip` if it has fewer than `max` open; false otherwise
    /// (and not counted). Each counted one is given back with [`Throttle::connection_closed`].
    pub fn connection_opened(&mut self, ip: IpAddr, max: usize) -> bool {
        let n = self.connections.entry(ip).or_default();
        if *n >= max {
            if *n == 0 {
                self.connections.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    pub fn connection_closed(&mut self, ip: IpAddr) {
        if let Some(n) = self.connections.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.connections.remove(&ip);
            }
        }
    }

    /// Count a message from `ip` if fewer than `per_minute` came in the last minute; false
    /// (and not counted) otherwise. `per_minute` 0: no limit.
    pub fn allow_message(&mut self, ip: IpAddr, per_minute: u32, now: Instant) -> bool {
        if per_minute == 0 {
            return true;
        }
        self.prune(now, None);
        let times = self.messages.entry(ip).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            times.pop_front();
        }
        if times.len() >= per_minute as usize {
            return false;
        }
        times.push_back(now);
        true
    }

    /// How long `ip` stays locked out, if it is.
    pub fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        self.failures
            .get(&ip)
            .and_then(|f| f.locked_until)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Before checking a password from `ip`: refused when the address is locked out, or when
    /// its recent failures plus the attempts being checked reach `max` (this attempt could
    /// not fail without passing the limit). Otherwise the attempt is counted as pending; end
    /// it with [`Throttle::end_auth`].
    pub fn begin_auth(
        &mut self,
        ip: IpAddr,
        max: u32,
        window: Duration,
        now: Instant,
    ) -> Result<(), AuthRefused> {
        if let Some(left) = self.locked(ip, now) {
            return Err(AuthRefused::Locked(left));
        }
        self.prune(now, Some(window));
        let f = self.failures.entry(ip).or_default();
        while f
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            f.times.pop_front();
        }
        if f.times.len() + f.pending as usize >= max.max(1) as usize {
            return Err(AuthRefused::Busy);
        }
        f.pending += 1;
        Ok(())
    }

    /// The end of an attempt [`Throttle::begin_auth`] let through: a failure is recorded;
    /// true when `ip` is now locked out (`max` failures within `window`; the lockout lasts
    /// `window`). A success changes nothing else.
    pub fn end_auth(
        &mut self,
        ip: IpAddr,
        ok: bool,
        max: u32,
        window: Duration,
        now: Instant,
    ) -> bool {
        let f = self.failures.entry(ip).or_default();
        f.pending = f.pending.saturating_sub(1);
        if ok {
            return false;
        }
        f.times.push_back(now);
        if f.times.len() >= max.max(1) as usize {
            f.times.clear();
            f.locked_until = Some(now + window);
            return true;
        }
        false
    }

    /// Forget stale entries once the tables grow (a scan of many addresses must not grow
    /// them without bound). Amortised: after a pass, the next waits until the tables have
    /// doubled, so a table full of live entries is not scanned on every call.
    fn prune(&mut self, now: Instant, lockout_window: Option<Duration>) {
        let at = self.prune_at.max(PRUNE_FLOOR);
        if self.messages.len() <= at && self.failures.len() <= at {
            return;
        }
        self.messages
            .retain(|_, t| t.back().is_some_and(|t| now.duration_since(*t) < MINUTE));
        // The failures only with the lockout's window (a message rate's minute would forget
        // failures that still count).
        if let Some(window) = lockout_window {
            self.failures.retain(|_, f| {
                f.pending > 0
                    || f.locked_until.is_some_and(|u| u > now)
                    || f.times
                        .back()
                        .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        self.prune_at = 2 * self.messages.len().max(self.failures.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash file another user owns would let them choose the password: refused, as every
    /// other file that decides what m365send does (`trust`).
    #[test]
    fn a_hash_file_another_user_owns_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scanner.hash");
        std::fs::write(
            &file,
            "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1\n",
        )
        .unwrap();
        let mut cfg = ServeConfig::default();
        cfg.users.insert(
            "scanner".into(),
            crate::config::ServeUser {
                password_hash_file: Some(file.clone()),
                ..Default::default()
            },
        );
        assert!(load_users(&cfg).is_ok());
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        let e = load_users(&cfg).unwrap_err();
        assert!(
            e.message.contains("password_hash_file") && e.message.contains("65534"),
            "{}",
            e.message
        );
    }

    #[test]
    fn hashes_verify_and_bad_ones_are_refused() {
        // `openssl passwd -6 -salt saltsalt secret`
        let sha = PasswordHash::parse(
            "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
        )
        .unwrap();
        assert!(sha.verify(&Secret::new("secret")));
        assert!(!sha.verify(&Secret::new("Secret")));
        use argon2::password_hash::PasswordHasher as _;
        let salt = b"0123456789abcdef";
        let h = argon2::Argon2::default()
            .hash_password_with_salt(b"hunter2", salt)
            .unwrap()
            .to_string();
        let a = PasswordHash::parse(&h).unwrap();
        assert!(a.verify(&Secret::new("hunter2")));
        assert!(!a.verify(&Secret::new("hunter3")));
        for bad in ["hunter2", "$1$abc$def", "$argon2id$nonsense", ""] {
            let e = PasswordHash::parse(bad).unwrap_err();
            assert!(e.contains("hash"), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "the error quotes the value: {e}");
        }
    }

    #[test]
    fn from_and_sender_fields_must_be_allowed_addresses() {
        let mine = vec!["scanner@contoso.com".to_owned()];
        let check =
            |block: &str| check_header_senders(&mine, "scanner@contoso.com", block, "user scanner");
        for ok in [
            "From: Scanner <SCANNER@contoso.com>\r\nTo: a@b.c\r\n",
            "From: scanner@contoso.com\r\nSender: scanner@contoso.com\r\n",
            "To: a@b.c\r\nFrom: \"ceo@contoso.com\" <scanner@contoso.com>\r\n",
        ] {
            assert!(check(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "From: CEO <ceo@contoso.com>\r\n",
            "From: scanner@contoso.com\r\nSender: ceo@contoso.com\r\n",
            "From: scanner@contoso.com,\r\n ceo@contoso.com\r\n",
            "From: scanner@contoso.com\r\nFROM: ceo@contoso.com\r\n",
            "From: scanner@contoso.com <ceo@contoso.com>\r\n",
            "From: ceo@contoso.com (scanner@contoso.com)\r\n",
            "From: undisclosed:;\r\n",
            "From:\r\n",
        ] {
            let e = check(bad).unwrap_err();
            assert_eq!(e.exit, crate::exit::Exit::NoPerm, "{bad:?}");
            assert!(e.message.contains("user scanner"), "{bad:?}: {}", e.message);
        }
        // The envelope sender as prepared (a profile's own sender after rewriting) is fine.
        assert!(
            check_header_senders(
                &mine,
                "scans@contoso.com",
                "From: scans@contoso.com\r\n",
                "u"
            )
            .is_ok()
        );
    }

    #[test]
    fn networks_and_loopback() {
        let nets: Vec<ipnet::IpNet> = ["127.0.0.0/8", "192.168.10.0/24", "2001:db8::/32"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(network_allowed(&nets, "127.0.0.1".parse().unwrap()));
        assert!(network_allowed(&nets, "192.168.10.77".parse().unwrap()));
        assert!(network_allowed(
            &nets,
            "::ffff:192.168.10.77".parse().unwrap()
        ));
        assert!(network_allowed(&nets, "2001:db8::5".parse().unwrap()));
        assert!(!network_allowed(&nets, "192.168.11.1".parse().unwrap()));
        assert!(!network_allowed(&nets, "::1".parse().unwrap()));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lan: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!auth_needs_tls(PlaintextAuth::Loopback, lo));
        assert!(!auth_needs_tls(
            PlaintextAuth::Loopback,
            "::1".parse().unwrap()
        ));
        assert!(auth_needs_tls(PlaintextAuth::Loopback, lan));
        assert!(auth_needs_tls(PlaintextAuth::Never, lo));
    }

    #[test]
    fn rate_and_lockout() {
        let mut t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(t.allow_message(ip, 2, t0));
        assert!(t.allow_message(ip, 2, t0));
        assert!(!t.allow_message(ip, 2, t0 + Duration::from_secs(59)));
        assert!(t.allow_message(other, 2, t0));
        assert!(t.allow_message(ip, 2, t0 + Duration::from_secs(61)));
        assert!(t.allow_message(ip, 0, t0));

        let w = Duration::from_secs(600);
        let fail = |t: &mut Throttle, ip| {
            assert_eq!(t.begin_auth(ip, 3, w, t0), Ok(()));
            t.end_auth(ip, false, 3, w, t0)
        };
        assert!(!fail(&mut t, ip));
        assert!(!fail(&mut t, ip));
        assert_eq!(t.locked(ip, t0), None);
        assert!(fail(&mut t, ip));
        assert!(t.locked(ip, t0 + Duration::from_secs(1)).is_some());
        assert!(matches!(
            t.begin_auth(ip, 3, w, t0 + Duration::from_secs(1)),
            Err(AuthRefused::Locked(_))
        ));
        assert_eq!(t.locked(other, t0), None);
        assert_eq!(t.locked(ip, t0 + w), None);
        // A success forgets no failure: one known password does not buy more guesses.
        assert!(!fail(&mut t, other));
        assert_eq!(t.begin_auth(other, 3, w, t0), Ok(()));
        assert!(!t.end_auth(other, true, 3, w, t0));
        assert!(!fail(&mut t, other));
        assert!(fail(&mut t, other));
        // Failures older than the window are forgotten.
        let later = t0 + w + w;
        assert_eq!(t.begin_auth(other, 3, w, later), Ok(()));
        assert!(!t.end_auth(other, false, 3, w, later));
    }

    /// Attempts being checked count: with 2 failures allowed and 2 in progress, a third is
    /// refused unchecked (not counted), and a success gives its place back.
    #[test]
    fn pending_attempts_count_towards_the_limit() {
        let mut t = Throttle::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let w = Duration::from_secs(600);
        let t0 = Instant::now();
        assert_eq!(t.begin_auth(ip, 2, w, t0), Ok(()));
        assert_eq!(t.begin_auth(ip, 2, w, t0), Ok(()));
        assert_eq!(t.begin_auth(ip, 2, w, t0), Err(AuthRefused::Busy));
        assert!(!t.end_auth(ip, true, 2, w, t0));
        assert_eq!(t.begin_auth(ip, 2, w, t0), Ok(()));
        assert!(!t.end_auth(ip, false, 2, w, t0));
        assert!(t.end_auth(ip, false, 2, w, t0));
        assert!(t.locked(ip, t0).is_some());
    }

    #[test]
    fn connections_per_client() {
        let mut t = Throttle::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(t.connection_opened(a, 2));
        assert!(t.connection_opened(a, 2));
        assert!(!t.connection_opened(a, 2));
        assert!(t.connection_opened(b, 2));
        t.connection_closed(a);
        assert!(t.connection_opened(a, 2));
        assert!(!t.connection_opened(b, 0));
    }

    /// Pruning the message-rate table (past the prune floor) keeps AUTH failures that still
    /// count for the lockout: it used the rate's minute for both, and a flood of messages from
    /// many addresses gave a guesser back its guesses.
    #[test]
    fn a_flood_of_messages_does_not_forget_auth_failures() {
        let mut t = Throttle::default();
        let window = Duration::from_secs(900);
        let t0 = Instant::now();
        let guesser: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(t.begin_auth(guesser, 2, window, t0), Ok(()));
        t.end_auth(guesser, false, 2, window, t0);
        // Two minutes later, messages from more addresses than the prune floor.
        let later = t0 + Duration::from_secs(120);
        for i in 0..(PRUNE_FLOOR as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(t.allow_message(ip, 10, later));
        }
        // The first failure still counts: the second locks the address out.
        assert_eq!(t.begin_auth(guesser, 2, window, later), Ok(()));
        assert!(t.end_auth(guesser, false, 2, window, later));
    }

    /// Many addresses with one old failure each are forgotten once the table is large; a
    /// locked-out address is kept.
    #[test]
    fn stale_entries_are_pruned() {
        let mut t = Throttle::default();
        let w = Duration::from_secs(60);
        let t0 = Instant::now();
        let locked: IpAddr = "10.255.255.255".parse().unwrap();
        let long = Duration::from_secs(600);
        for _ in 0..2 {
            assert_eq!(t.begin_auth(locked, 2, long, t0), Ok(()));
            t.end_auth(locked, false, 2, long, t0);
        }
        for i in 0..(PRUNE_FLOOR as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(t.begin_auth(ip, 5, w, t0), Ok(()));
            t.end_auth(ip, false, 5, w, t0);
        }
        // Later, new addresses keep coming: the table is pruned before it doubles, and the
        // old entries go.
        let later = t0 + Duration::from_secs(61);
        for i in 0..(3 * PRUNE_FLOOR as u32) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert_eq!(t.begin_auth(ip, 5, w, later), Ok(()));
            t.end_auth(ip, false, 5, w, later);
        }
        // The new ones and the locked-out one; none of the stale ones.
        assert_eq!(t.failures.len(), 3 * PRUNE_FLOOR + 1);
        let old = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000));
        assert!(!t.failures.contains_key(&old));
        assert!(t.locked(locked, later).is_some());
    }
}
