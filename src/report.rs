//! Reports that outlive the process: the dead letter and the per-message log line.
//!
//! Owns: appending a finally-failed message to the dead-letter mbox file, and writing one log
//! line per message (syslog, a log file, or stderr at -v). Must not: decide whether a message
//! failed (deliver does), word explanations (explain does), or write a secret anywhere.
//!
//! # Dead letter
//!
//! The file is `profile.dead_letter`, else `config.dead_letter`, else `$HOME/dead.letter`
//! (a leading `~/` in a configured path is expanded with `$HOME`; without HOME, as for
//! daemons, the home directory of the password database: `trust::home_dir`). Messages are appended in
//! mboxrd format: a `From SENDER DATE` separator line, then `X-M365send-Failure: REASON` and
//! `X-M365send-Envelope-To: RCPT, …` header lines (so the message can be re-sent; these may
//! name Bcc recipients, which is why the file is private), then the message with CRLF turned
//! into LF and every line matching `>*From ` quoted with one more `>`, then a blank line.
//! The body is streamed from its spool file in chunks, never loaded whole.
//!
//! The file is opened with `fsutil::open_private_append`, wherever it is (root may write into a
//! home directory that another user controls): never through a symbolic link, never a FIFO or
//! other non-regular file, never a file with a second hard link or owned by another uid; a new
//! file is created 0600, and an existing one that group or others could read is set to 0600
//! with a note on stderr (it names Bcc recipients). It is written under an exclusive
//! `flock(2)` so concurrent m365send processes do not interleave their messages.
//!
//! Fallback: only when no path is configured and `$HOME/dead.letter` cannot be written (HOME
//! unset, as for some daemons, or not writable, as for `nobody`), the message goes to
//! `/var/tmp/m365send-dead.letter.<uid>` (same checks). The queue runner uses
//! [`dead_letter_no_fallback`] instead: under a service with a private /var/tmp that file would
//! vanish with the service, so the runner keeps the entry in `SPOOL/failed/`. A configured path
//! that cannot be written is an error (exit 73): the administrator chose it and must hear
//! about it.
//!
//! # Log line
//!
//! One line per message in the spirit of msmtp's:
//! `profile=cron mode=relay host=… tls=on auth=off from=… recipients=a,b mailsize=…
//! smtpstatus=250 smtpmsg='250 2.0.0 OK …' exitcode=EX_OK duration=1.234s`. A `LogRecord`
//! holds only the envelope, sizes, the host, the server's final reply and an error message:
//! never credentials (AUTH lines are not replies, and Microsoft's AUTH replies do not echo
//! tokens). Each value is bare when it is only letters, digits and `@._+-/:=%`, else in
//! single quotes with `\`, `'` and control characters escaped (`\n`, `\x1b`): a record is one
//! line, and an address holding spaces, quotes, backticks or `${IFS}` stays one field.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, Mode, Profile};
use crate::exit::{Exit, Failure};
use crate::explain::sysexits_name;
use crate::fsutil::open_private_append;
use crate::message::Prepared;
use crate::printable;
use crate::status::Reply;

// ---------------------------------------------------------------------------------------------
// Dead letter
// ---------------------------------------------------------------------------------------------

fn expand_home(path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = crate::trust::home_dir()
    {
        return home.join(rest);
    }
    path.to_path_buf()
}

/// The configured dead-letter path, or the default `$HOME/dead.letter` (None when no path is
/// configured and the user has no home: HOME unset and none in the password database).
pub fn dead_letter_path(config: &Config, profile: &Profile) -> Option<PathBuf> {
    if let Some(p) = profile
        .dead_letter
        .as_deref()
        .or(config.dead_letter.as_deref())
    {
        return Some(expand_home(p));
    }
    crate::trust::home_dir().map(|h| h.join("dead.letter"))
}

/// The shared-directory fallback used when `$HOME/dead.letter` cannot be written.
pub fn fallback_dead_letter_path() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    PathBuf::from(format!("/var/tmp/m365send-dead.letter.{uid}"))
}

/// Append the message to the dead-letter file and return its path. See the module comment for
/// the path, the format and the fallback. Errors are `Exit::CantCreat` (73).
pub fn dead_letter(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    reason: &str,
) -> Result<PathBuf, Failure> {
    write_dead_letter(config, profile, message, reason, true)
}

/// Keep a message that was not sent in the dead letter and say so in the words every report
/// uses: Ok(`message saved to PATH`), or Err(`could not save the message: WHY`).
pub fn keep(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    reason: &str,
) -> Result<String, String> {
    match dead_letter(config, profile, message, reason) {
        Ok(path) => Ok(format!("message saved to {}", path.display())),
        Err(e) => Err(format!("could not save the message: {}", e.message)),
    }
}

/// A message refused before any delivery attempt, kept: the failure's first line is the
/// reason written with it, and its last line says `not sent; message saved to PATH` (or why
/// it could not be saved).
pub fn keep_refused(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    mut f: Failure,
) -> Failure {
    let reason = f.message.lines().next().unwrap_or("not sent").to_owned();
    let note = keep(config, profile, message, &reason).unwrap_or_else(|e| e);
    f.message = format!("{}\n  not sent; {note}", f.message);
    f
}

/// [`dead_letter`] without the `/var/tmp` fallback, for the queue runner: when the configured
/// or default (`$HOME/dead.letter`) file cannot be written, the error says why and the caller
/// keeps the message itself (the runner: in `SPOOL/failed/`).
pub fn dead_letter_no_fallback(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    reason: &str,
) -> Result<PathBuf, Failure> {
    write_dead_letter(config, profile, message, reason, false)
}

fn write_dead_letter(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    reason: &str,
    fallback_allowed: bool,
) -> Result<PathBuf, Failure> {
    let configured = profile.dead_letter.is_some() || config.dead_letter.is_some();
    let primary = dead_letter_path(config, profile);
    if let Some(path) = &primary {
        match append_and_note(path, message, reason) {
            Ok(()) => return Ok(path.clone()),
            Err(e) if configured || !fallback_allowed => return Err(e),
            Err(_) => {}
        }
    }
    if !fallback_allowed {
        return Err(Failure::new(
            Exit::CantCreat,
            "no dead-letter file: HOME is not set and `dead_letter` is not configured",
        ));
    }
    let fallback = fallback_dead_letter_path();
    match append_and_note(&fallback, message, reason) {
        Ok(()) => Ok(fallback),
        Err(e) => Err(match primary {
            Some(p) => Failure::new(
                Exit::CantCreat,
                format!(
                    "cannot write the dead letter to {} nor to {}: {}",
                    p.display(),
                    fallback.display(),
                    e.message
                ),
            ),
            None => e,
        }),
    }
}

/// [`append_dead_letter`], with its note (if any) on stderr.
fn append_and_note(path: &Path, message: &Prepared, reason: &str) -> Result<(), Failure> {
    if let Some(note) = append_dead_letter(path, message, reason)? {
        crate::console::err_line(&format!("m365send: note: {note}"));
    }
    Ok(())
}

/// Append one message to the mbox file at `path` (opened and created as the module comment
/// says), under an exclusive lock. Ok(Some(note)) when the file's mode was tightened.
pub fn append_dead_letter(
    path: &Path,
    message: &Prepared,
    reason: &str,
) -> Result<Option<String>, Failure> {
    let fail = |e: io::Error| {
        Failure::new(
            Exit::CantCreat,
            format!("cannot write the dead letter {}: {e}", path.display()),
        )
    };
    let opened = open_private_append(path, true).map_err(fail)?;
    let file = opened.file;
    let _lock = Flock::exclusive(&file).map_err(fail)?;
    let mut body = message.body.open().map_err(fail)?;
    write_mbox_entry(&file, message, reason, &mut body).map_err(fail)?;
    // The entry is fsynced (write_mbox_entry); a new file's name must survive a crash too.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::sync_dir(dir).map_err(fail)?;
    }
    Ok(opened.tightened.then(|| {
        format!(
            "the dead letter {} could be read by other users (it names Bcc recipients); \
             its mode is now 0600",
            path.display()
        )
    }))
}

/// An exclusive lock on the file (flock(2) on Linux), released on drop.
struct Flock<'f> {
    file: &'f File,
}

impl<'f> Flock<'f> {
    fn exclusive(file: &'f File) -> io::Result<Self> {
        file.lock()?;
        Ok(Flock { file })
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // Closing the file unlocks anyway; an error here changes nothing.
        let _ = self.file.unlock();
    }
}

/// One header value on one line: control characters become spaces, at most `max` bytes.
fn header_value(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.trim().to_owned()
}

fn write_mbox_entry(
    mut out: &File,
    message: &Prepared,
    reason: &str,
    body: &mut dyn Read,
) -> io::Result<()> {
    let sender = if message.envelope.sender.is_empty() {
        "MAILER-DAEMON".to_owned()
    } else {
        message
            .envelope
            .sender
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    let date = chrono::Local::now().format("%a %b %e %H:%M:%S %Y");
    let mut head = format!(
        "From {sender} {date}\nX-M365send-Failure: {}\n",
        header_value(reason, 900)
    );
    if !message.envelope.recipients.is_empty() {
        head.push_str(&format!(
            "X-M365send-Envelope-To: {}\n",
            header_value(&message.envelope.recipients.join(", "), 4000)
        ));
    }
    // Built in memory and written in large pieces; the lock keeps other writers out.
    let mut w = io::BufWriter::with_capacity(64 * 1024, &mut out);
    w.write_all(head.as_bytes())?;
    let mut quoter = Quoter::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut chunk = Vec::with_capacity(buf.len() + 64);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        chunk.clear();
        quoter.feed(&buf[..n], &mut chunk);
        w.write_all(&chunk)?;
    }
    chunk.clear();
    quoter.finish(&mut chunk);
    w.write_all(&chunk)?;
    w.flush()?;
    drop(w);
    out.sync_data()
}

/// Streaming mboxrd conversion: CRLF → LF, `>*From ` at a line start gets one more `>`,
/// and the entry ends with a newline and a blank line.
struct Quoter {
    at_start: bool,
    /// '>' characters seen at the start of the current line, not yet written.
    gt: u64,
    /// Bytes of "From " matched after them.
    matched: usize,
    /// A CR not yet written (dropped if an LF follows).
    cr: bool,
    last: Option<u8>,
}

const FROM_: &[u8] = b"From ";

impl Quoter {
    fn new() -> Self {
        Quoter {
            at_start: true,
            gt: 0,
            matched: 0,
            cr: false,
            last: None,
        }
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        for &b in data {
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    self.byte(b'\r', out);
                }
            }
            if b == b'\r' {
                self.cr = true;
                continue;
            }
            self.byte(b, out);
        }
    }

    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        for _ in 0..self.gt {
            out.push(b'>');
        }
        out.extend_from_slice(&FROM_[..self.matched]);
        if self.gt > 0 || self.matched > 0 {
            self.last = Some(*out.last().unwrap_or(&b'>'));
        }
        self.gt = 0;
        self.matched = 0;
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.at_start {
            if self.matched == 0 && b == b'>' {
                self.gt += 1;
                return;
            }
            if b == FROM_[self.matched] {
                self.matched += 1;
                if self.matched == FROM_.len() {
                    out.push(b'>');
                    self.flush_pending(out);
                    self.at_start = false;
                }
                return;
            }
            self.flush_pending(out);
            self.at_start = false;
        }
        out.push(b);
        self.last = Some(b);
        if b == b'\n' {
            self.at_start = true;
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.cr {
            self.cr = false;
            self.byte(b'\r', out);
        }
        self.flush_pending(out);
        if self.last != Some(b'\n') && self.last.is_some() {
            out.push(b'\n');
        }
        out.push(b'\n');
    }
}

// ---------------------------------------------------------------------------------------------
// Log line
// ---------------------------------------------------------------------------------------------

/// What the log line says about one message. Holds no secret by construction.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub time: chrono::DateTime<chrono::Local>,
    pub profile: String,
    pub mode: Mode,
    /// The host that gave the final reply (or the last one tried).
    pub host: Option<String>,
    /// The session used TLS.
    pub tls: bool,
    /// The AUTH mechanism used ("XOAUTH2", "LOGIN", …), None without AUTH.
    pub auth: Option<String>,
    /// Envelope sender ("" for the null sender).
    pub from: String,
    pub recipients: Vec<String>,
    /// Message size in bytes.
    pub size: u64,
    /// The server's final reply (end of data, or the reply that ended the attempt).
    pub reply: Option<Reply>,
    /// What went wrong when there is no reply (connection refused, timeout, …).
    pub error: Option<String>,
    pub duration: Duration,
    pub exit: Exit,
}

/// One field value: bare, `<>` when empty, or quoted (see [`printable::log_field`]).
fn word(s: &str) -> String {
    printable::log_field(s)
}

/// Free text (a reply, an error) in single quotes (see [`printable::log_quoted`]).
fn quoted(s: &str) -> String {
    printable::log_quoted(s)
}

/// The log line without the time (syslog adds its own).
pub fn format_log_line(rec: &LogRecord) -> String {
    let mut line = format!("profile={} mode={}", word(&rec.profile), rec.mode.as_str());
    if let Some(h) = &rec.host {
        line.push_str(&format!(" host={}", word(h)));
    }
    line.push_str(if rec.tls { " tls=on" } else { " tls=off" });
    match &rec.auth {
        Some(a) => line.push_str(&format!(" auth={}", word(a))),
        None => line.push_str(" auth=off"),
    }
    line.push_str(&format!(" from={}", word(&rec.from)));
    let rcpts: Vec<String> = rec.recipients.iter().map(|r| word(r)).collect();
    line.push_str(&format!(" recipients={}", rcpts.join(",")));
    line.push_str(&format!(" mailsize={}", rec.size));
    if let Some(r) = &rec.reply {
        line.push_str(&format!(
            " smtpstatus={} smtpmsg={}",
            r.code,
            quoted(&r.to_string())
        ));
    }
    if let Some(e) = &rec.error {
        line.push_str(&format!(" errormsg={}", quoted(e)));
    }
    line.push_str(&format!(
        " exitcode={} duration={:.3}s",
        sysexits_name(rec.exit),
        rec.duration.as_secs_f64()
    ));
    line
}

/// Write the message's log line: to syslog (facility mail) when `log.syslog` is set, to
/// `log.file` when set (both when both are set), else to stderr when `verbose`. A log that
/// cannot be written gives a warning on stderr, never a failure of the delivery.
pub fn log_line(config: &Config, verbose: bool, rec: &LogRecord) {
    let line = format_log_line(rec);
    if config.log.syslog {
        syslog(&line, rec.exit == Exit::Ok);
    }
    if let Some(path) = &config.log.file {
        let path = expand_home(path);
        let stamped = format!("{} {line}\n", rec.time.format("%Y-%m-%dT%H:%M:%S%:z"));
        // Same checks as the dead letter; an existing file keeps its mode (an administrator
        // may have given it to a log-reading group on purpose).
        let res = open_private_append(&path, false)
            .and_then(|mut f| f.file.write_all(stamped.as_bytes()));
        if let Err(e) = res {
            crate::console::err_line(&format!(
                "m365send: cannot write the log file {}: {e}",
                path.display()
            ));
        }
    }
    if !config.log.syslog && config.log.file.is_none() && verbose {
        crate::console::err_line(&format!("m365send: {line}"));
    }
}

fn syslog(line: &str, ok: bool) {
    // `line` has no control characters (format_log_line replaced them), so no NUL either.
    let Ok(msg) = std::ffi::CString::new(line) else {
        return;
    };
    let priority = if ok { libc::LOG_INFO } else { libc::LOG_ERR };
    // SAFETY: the ident is a static NUL-terminated string (openlog keeps the pointer); the
    // format is a literal "%s" with one C string argument that outlives the call.
    unsafe {
        libc::openlog(c"m365send".as_ptr(), libc::LOG_PID, libc::LOG_MAIL);
        libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(input: &[u8], split: usize) -> Vec<u8> {
        let mut q = Quoter::new();
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            q.feed(piece, &mut out);
        }
        q.finish(&mut out);
        out
    }

    #[test]
    fn quoting_and_crlf() {
        let input = b"Subject: x\r\n\r\nFrom here\r\n>From there\r\n>>From x\r\nFromage\r\n>Fro\r\nbare\rcr\r\n";
        let want =
            b"Subject: x\n\n>From here\n>>From there\n>>>From x\nFromage\n>Fro\nbare\rcr\n\n";
        for split in 1..input.len() + 1 {
            assert_eq!(convert(input, split), want.to_vec(), "split {split}");
        }
    }

    #[test]
    fn random_lines_round_trip() {
        // xorshift64*: deterministic, no extra crate.
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let alphabet: &[&[u8]] = &[b">", b"From ", b"From", b"F", b" ", b"x", b"\r\n", b"\r"];
        for _ in 0..2000 {
            let mut input = Vec::new();
            for _ in 0..next() % 40 {
                input.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            input.extend_from_slice(b"\r\n");
            let split = (next() % 7 + 1) as usize;
            let out = convert(&input, split);
            // Un-quote: drop the final blank line, remove one '>' from >+From lines, LF → CRLF.
            let body = out.strip_suffix(b"\n").unwrap();
            let mut back = Vec::new();
            for line in body.split_inclusive(|&b| b == b'\n') {
                let gts = line.iter().take_while(|&&b| b == b'>').count();
                let line = if gts > 0 && line[gts..].starts_with(b"From ") {
                    &line[1..]
                } else {
                    line
                };
                let line = line.strip_suffix(b"\n").unwrap();
                back.extend_from_slice(line);
                back.extend_from_slice(b"\r\n");
            }
            assert_eq!(back, input, "{:?}", String::from_utf8_lossy(&input));
        }
    }

    #[test]
    fn missing_final_newline_is_added() {
        assert_eq!(convert(b"a\r\nFrom", 3), b"a\nFrom\n\n".to_vec());
        assert_eq!(convert(b"a\r", 1), b"a\r\n\n".to_vec());
        assert_eq!(convert(b"", 1), b"\n".to_vec());
    }

    #[test]
    fn word_and_quoted_keep_one_record_on_one_line() {
        assert_eq!(word("a b\nc"), "'a b\\nc'");
        assert_eq!(word(""), "<>");
        assert_eq!(quoted("it's\r\nok"), "'it\\'s\\r\\nok'");
    }

    #[test]
    fn hostile_addresses_stay_in_their_fields() {
        let mut r = record();
        r.from = "`reboot`@x".into();
        r.recipients = vec![
            "a${IFS}b@contoso.com".into(),
            "\"x y\"@contoso.com".into(),
            "c' exitcode=EX_OK '@x".into(),
            "d\n2025-01-01T00:00:00+00:00 profile=forged@x".into(),
            "ok@contoso.com".into(),
        ];
        let line = format_log_line(&r);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(" from='`reboot`@x' "), "{line}");
        assert!(
            line.contains(
                " recipients='a${IFS}b@contoso.com','\"x y\"@contoso.com',\
'c\\' exitcode=EX_OK \\'@x','d\\n2025-01-01T00:00:00+00:00 profile=forged@x',\
ok@contoso.com mailsize="
            ),
            "{line}"
        );
        // Split on spaces outside quotes: exactly the fields written, none forged.
        let (mut keys, mut field, mut quote, mut escape) =
            (Vec::new(), String::new(), false, false);
        for c in line.chars().chain([' ']) {
            match c {
                _ if escape => escape = false,
                '\\' if quote => escape = true,
                '\'' => quote = !quote,
                ' ' if !quote => {
                    keys.push(field.split('=').next().unwrap().to_owned());
                    field.clear();
                    continue;
                }
                _ => {}
            }
            field.push(c);
        }
        assert_eq!(
            keys,
            [
                "profile",
                "mode",
                "host",
                "tls",
                "auth",
                "from",
                "recipients",
                "mailsize",
                "smtpstatus",
                "smtpmsg",
                "exitcode",
                "duration"
            ]
        );
    }

    use crate::message::{Body, Envelope};
    use std::os::unix::fs::PermissionsExt;

    fn prepared(dir: &Path, name: &str, sender: &str, bytes: &[u8]) -> Prepared {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        Prepared {
            envelope: Envelope {
                sender: sender.to_owned(),
                recipients: vec!["a@contoso.com".into(), "b@contoso.com".into()],
                ..Envelope::default()
            },
            body: Body::at(path),
            size: bytes.len() as u64,
            eight_bit: false,
            smtputf8: false,
            header_block: String::new(),
        }
    }

    /// Parse an mboxrd file back: (separator line, header lines we added, original bytes).
    fn parse_mbox(data: &[u8]) -> Vec<(String, Vec<String>, Vec<u8>)> {
        let text = data.to_vec();
        let mut entries = Vec::new();
        let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        assert_eq!(lines.pop(), Some(&b""[..]), "file ends with a newline");
        let mut i = 0;
        while i < lines.len() {
            let sep = String::from_utf8(lines[i].to_vec()).unwrap();
            assert!(sep.starts_with("From "), "separator: {sep}");
            i += 1;
            let mut ours = Vec::new();
            while lines[i].starts_with(b"X-M365send-") {
                ours.push(String::from_utf8(lines[i].to_vec()).unwrap());
                i += 1;
            }
            let mut body = Vec::new();
            // Up to the blank line before the next separator (or the end).
            while i < lines.len() {
                let next_is_sep = lines[i].is_empty()
                    && (i + 1 == lines.len() || lines[i + 1].starts_with(b"From "));
                if next_is_sep {
                    i += 1;
                    break;
                }
                let l = lines[i];
                let gts = l.iter().take_while(|&&b| b == b'>').count();
                let unquoted = if gts > 0 && l[gts..].starts_with(b"From ") {
                    &l[1..]
                } else {
                    l
                };
                body.extend_from_slice(unquoted);
                body.extend_from_slice(b"\r\n");
                i += 1;
            }
            entries.push((sep, ours, body));
        }
        entries
    }

    #[test]
    fn dead_letter_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("dead.letter");
        let one = b"From: a@contoso.com\r\nSubject: one\r\n\r\nFrom the start\r\n>From quoted\r\n\r\nFrom \r\n.\r\nend\r\n".to_vec();
        let mut two = b"Subject: two\r\n\r\n".to_vec();
        for i in 0..20000 {
            two.extend_from_slice(format!(">>From line {i} é\r\n").as_bytes());
            two.push(0xff);
            two.extend_from_slice(b"\r\n");
        }
        let config = Config {
            dead_letter: Some(mbox.clone()),
            ..Config::default()
        };
        let profile = Profile::default();
        let m1 = prepared(dir.path(), "1", "alerts@contoso.com", &one);
        let m2 = prepared(dir.path(), "2", "", &two);
        let p = dead_letter(
            &config,
            &profile,
            &m1,
            "550 5.7.60 refused\r\nX-Injected: yes",
        )
        .unwrap();
        assert_eq!(p, mbox);
        dead_letter(&config, &profile, &m2, "timeout").unwrap();
        let mode = std::fs::metadata(&mbox).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let data = std::fs::read(&mbox).unwrap();
        let entries = parse_mbox(&data);
        assert_eq!(entries.len(), 2);
        assert!(entries[0].0.starts_with("From alerts@contoso.com "));
        assert!(entries[1].0.starts_with("From MAILER-DAEMON "));
        assert_eq!(
            entries[0].1,
            vec![
                "X-M365send-Failure: 550 5.7.60 refused  X-Injected: yes".to_owned(),
                "X-M365send-Envelope-To: a@contoso.com, b@contoso.com".to_owned()
            ]
        );
        assert_eq!(entries[0].2, one);
        assert_eq!(entries[1].2, two);
    }

    #[test]
    fn profile_path_wins_and_unwritable_configured_path_is_73() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            dead_letter: Some(dir.path().join("no/such/dir/dead.letter")),
            ..Config::default()
        };
        let m = prepared(dir.path(), "m", "a@b", b"x\r\n");
        let err = dead_letter(&config, &Profile::default(), &m, "r").unwrap_err();
        assert_eq!(err.exit, Exit::CantCreat);
        let profile = Profile {
            dead_letter: Some(dir.path().join("p.mbox")),
            ..Profile::default()
        };
        assert_eq!(
            dead_letter(&config, &profile, &m, "r").unwrap(),
            dir.path().join("p.mbox")
        );
    }

    #[test]
    fn concurrent_writers_do_not_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("dead.letter");
        let mut body = b"Subject: big\r\n\r\n".to_vec();
        for _ in 0..5000 {
            body.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mbox = mbox.clone();
                let dir = dir.path().to_path_buf();
                let body = body.clone();
                std::thread::spawn(move || {
                    let m = prepared(&dir, &format!("t{t}"), &format!("t{t}@x"), &body);
                    for _ in 0..3 {
                        append_dead_letter(&mbox, &m, "r").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let entries = parse_mbox(&std::fs::read(&mbox).unwrap());
        assert_eq!(entries.len(), 12);
        for e in entries {
            assert_eq!(e.2, body);
        }
    }

    /// Paths another user could have prepared for root: (name, path, the file an attack
    /// would reach, why it is refused). Each is set up in `dir`.
    fn traps(dir: &Path) -> Vec<(&'static str, PathBuf, PathBuf, &'static str)> {
        let mut out = Vec::new();
        let target = dir.join("target-symlink");
        std::fs::write(&target, b"precious\n").unwrap();
        let link = dir.join("symlink");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        out.push(("symlink", link, target, "symbolic link"));

        let target = dir.join("target-hardlink");
        std::fs::write(&target, b"precious\n").unwrap();
        let hard = dir.join("hardlink");
        std::fs::hard_link(&target, &hard).unwrap();
        out.push(("hard link", hard, target, "hard links"));

        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        out.push(("FIFO", fifo.clone(), fifo, "FIFO"));

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let other = dir.join("other-user");
            std::fs::write(&other, b"precious\n").unwrap();
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
            out.push(("another uid", other.clone(), other, "belongs to uid 65534"));
        } else {
            crate::console::err_line(
                "not root: the file-of-another-uid case needs chown (CI runs as root)",
            );
        }
        out
    }

    #[test]
    fn dead_letter_refuses_symlinks_hard_links_fifos_and_other_users_files() {
        let dir = tempfile::tempdir().unwrap();
        let m = prepared(dir.path(), "m", "a@b", b"Subject: secret\r\n\r\nx\r\n");
        for (name, path, target, why) in traps(dir.path()) {
            let config = Config {
                dead_letter: Some(path.clone()),
                ..Config::default()
            };
            let started = std::time::Instant::now();
            let err = dead_letter(&config, &Profile::default(), &m, "r").unwrap_err();
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{name}: blocked"
            );
            assert_eq!(err.exit, Exit::CantCreat, "{name}");
            assert!(err.message.contains(why), "{name}: {}", err.message);
            assert!(
                err.message.contains(&path.display().to_string()),
                "{name}: {}",
                err.message
            );
            if name != "FIFO" {
                assert_eq!(std::fs::read(&target).unwrap(), b"precious\n", "{name}");
            }
        }
    }

    #[test]
    fn dead_letter_readable_by_others_is_tightened_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("dead.letter");
        std::fs::write(&mbox, b"").unwrap();
        std::fs::set_permissions(&mbox, std::fs::Permissions::from_mode(0o644)).unwrap();
        let m = prepared(dir.path(), "m", "a@b", b"x\r\n");
        let note = append_dead_letter(&mbox, &m, "r").unwrap();
        let note = note.expect("a note about the mode");
        assert!(note.contains("now 0600"), "{note}");
        let mode = std::fs::metadata(&mbox).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Already private: no note the second time.
        assert_eq!(append_dead_letter(&mbox, &m, "r").unwrap(), None);
        assert_eq!(parse_mbox(&std::fs::read(&mbox).unwrap()).len(), 2);
    }

    fn record() -> LogRecord {
        LogRecord {
            time: chrono::Local::now(),
            profile: "cron".into(),
            mode: Mode::Relay,
            host: Some("contoso-com.mail.protection.outlook.com".into()),
            tls: true,
            auth: None,
            from: "alerts@contoso.com".into(),
            recipients: vec!["ops@contoso.com".into(), "bob@contoso.com".into()],
            size: 1234,
            reply: Some(Reply {
                code: 250,
                enhanced: "2.6.0".parse().ok(),
                lines: vec!["2.6.0 <id@host> [InternalId=1] Queued mail for delivery".into()],
            }),
            error: None,
            duration: Duration::from_millis(1500),
            exit: Exit::Ok,
        }
    }

    #[test]
    fn log_line_format() {
        assert_eq!(
            format_log_line(&record()),
            "profile=cron mode=relay host=contoso-com.mail.protection.outlook.com tls=on auth=off \
from=alerts@contoso.com recipients=ops@contoso.com,bob@contoso.com mailsize=1234 smtpstatus=250 \
smtpmsg='250 2.6.0 <id@host> [InternalId=1] Queued mail for delivery' exitcode=EX_OK duration=1.500s"
        );
        let mut r = record();
        r.reply = None;
        r.error = Some("connection timed out\nfake=line".into());
        r.exit = Exit::TempFail;
        r.auth = Some("XOAUTH2".into());
        r.from = String::new();
        let line = format_log_line(&r);
        assert!(line.contains(" auth=XOAUTH2 from=<> "), "{line}");
        assert!(
            line.ends_with(
                "errormsg='connection timed out\\nfake=line' exitcode=EX_TEMPFAIL duration=1.500s"
            ),
            "{line}"
        );
    }

    /// A configuration that logs to `file` only.
    fn log_to(file: PathBuf) -> Config {
        Config {
            log: crate::config::LogConfig {
                syslog: false,
                file: Some(file),
            },
            ..Config::default()
        }
    }

    #[test]
    fn log_line_to_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m365send.log");
        let config = log_to(path.clone());
        log_line(&config, false, &record());
        log_line(&config, false, &record());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for l in lines {
            let (time, rest) = l.split_once(' ').unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
            assert_eq!(rest, format_log_line(&record()));
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn log_file_refuses_symlinks_hard_links_fifos_and_other_users_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, path, target, _) in traps(dir.path()) {
            let config = log_to(path.clone());
            let started = std::time::Instant::now();
            log_line(&config, false, &record());
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{name}: blocked"
            );
            if name != "FIFO" {
                assert_eq!(std::fs::read(&target).unwrap(), b"precious\n", "{name}");
            }
        }
        // A log file the administrator made group-readable keeps its mode.
        let shared = dir.path().join("shared.log");
        std::fs::write(&shared, b"").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
        let config = log_to(shared.clone());
        log_line(&config, false, &record());
        assert_eq!(std::fs::read_to_string(&shared).unwrap().lines().count(), 1);
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
