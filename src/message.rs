//! The prepared message: envelope plus the exact bytes that will be transmitted.
//!
//! Owns: reading stdin as bytes (or composing with lettre for --subject/--body/--attach),
//! CRLF normalisation, -i/-oi dot handling, -t recipient extraction (mail-parser), aliases and
//! the default domain, duplicate recipients (without regard to case for Microsoft 365), Bcc
//! removal, From/envelope sender policy (what the null sender becomes
//! in each mode), Date and Message-ID, header injection checks, the size limit (a message over
//! it is read to its end, up to [`KEEP_MAX`], and handed back for the dead letter), and the
//! 8BITMIME/SMTPUTF8 flags. The body lives in a temporary spool file so a large message costs
//! bounded memory. Must not: connect anywhere.
//!
//! Memory bound for a message read from stdin: the header block (at most
//! [`MAX_HEADER_BLOCK`] = 1 MiB, held a few times while parsed and rewritten) plus fixed
//! 64 KiB buffers; the body is streamed twice through those buffers (stdin → normalised spool
//! → transmitted file), whatever its size or line lengths. Composed messages are built in
//! memory by lettre (body and attachments), up to `max_size`.
//!
//! Long lines: a single-part text body (no Content-Type, or text/*; no transfer encoding, or
//! 7bit/8bit) with a line over 998 octets is re-encoded as quoted-printable, so it decodes to
//! the exact original lines. Multipart and message/* bodies are transmitted as given: long
//! lines inside them are the caller's to encode.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use mail_parser::{HeaderValue, MessageParser};
use serde::{Deserialize, Serialize};

use crate::address::{self, LocalHost};
use crate::aliases::Aliases;
use crate::cli::SendArgs;
use crate::config::{Mode, Profile, RewriteFrom};
use crate::exit::{Exit, Failure};

/// DSN return type (RFC 3461 RET).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Hdrs,
}

/// DSN requests from -N / -R / -V, carried to delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dsn {
    /// RCPT NOTIFY= value in upper case: "NEVER" or a comma list of SUCCESS, FAILURE, DELAY.
    pub notify: Option<String>,
    pub ret: Option<Ret>,
    /// MAIL ENVID= value (xtext-encoded when sent).
    pub envid: Option<String>,
}

impl Dsn {
    pub fn is_requested(&self) -> bool {
        self.notify.is_some() || self.ret.is_some() || self.envid.is_some()
    }
}

/// SMTP envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// MAIL FROM address; empty for the null sender (bounces sent through a relay profile
    /// without `sender`: see `queue::bounce`). A message read from the caller never has it.
    pub sender: String,
    /// RCPT TO addresses, de-duplicated, aliases applied, fully qualified.
    pub recipients: Vec<String>,
    #[serde(default)]
    pub dsn: Dsn,
}

/// Where the transmitted bytes live: a file with CRLF line endings, not dot-stuffed.
#[derive(Debug)]
pub struct Body {
    path: PathBuf,
    /// Present when the file is ours to delete on drop.
    _temp: Option<tempfile::TempPath>,
}

impl Body {
    /// A body backed by a temporary file that is removed when the Body is dropped.
    pub fn temporary(temp: tempfile::TempPath) -> Body {
        Body {
            path: temp.to_path_buf(),
            _temp: Some(temp),
        }
    }
    /// A body backed by a file someone else owns (a queue entry).
    pub fn at(path: impl Into<PathBuf>) -> Body {
        Body {
            path: path.into(),
            _temp: None,
        }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn open(&self) -> io::Result<File> {
        File::open(&self.path)
    }
}

/// A message ready for delivery.
#[derive(Debug)]
pub struct Prepared {
    pub envelope: Envelope,
    pub body: Body,
    /// Size of the body file in bytes (CRLF, before dot-stuffing).
    pub size: u64,
    /// The body has bytes >= 0x80: ask for BODY=8BITMIME.
    pub eight_bit: bool,
    /// An address or header needs SMTPUTF8.
    pub smtputf8: bool,
    /// The final header block as transmitted (for --dry-run and logs), CRLF line endings.
    pub header_block: String,
}

/// Largest header block read from stdin (bytes, CRLF included). Beyond it: exit 65.
pub const MAX_HEADER_BLOCK: usize = 1024 * 1024;
/// The fixed buffer the body streams through.
const BUF_SIZE: usize = 64 * 1024;
/// How much of a message over `max_size` is read and kept for the dead letter (or `max_size`
/// when that is larger): enough for any real cron output, while a runaway producer
/// (`yes | sendmail root`) still ends.
pub const KEEP_MAX: u64 = 1024 * 1024 * 1024;
/// RFC 5322 line limit without CRLF.
const MAX_LINE: u64 = 998;

/// Read (or compose) the message, apply the profile's policies, and write the transmitted
/// bytes to a temporary spool file.
///
/// Memory: the header block (at most [`MAX_HEADER_BLOCK`], held a few times over while it is
/// parsed and rewritten) plus fixed 64 KiB buffers; the body only ever passes through those
/// buffers, whatever its size. Composed messages (`--subject`/`--body`/`--attach`) are built
/// in memory by lettre, attachments included.
pub fn prepare(
    args: &SendArgs,
    profile: &Profile,
    input: &mut dyn Read,
) -> Result<Prepared, Failure> {
    prepare_on(args, profile, input, &LocalHost::current())
}

/// A message refused while being prepared, with the caller's message when it had been read
/// whole (header block and body, CRLF), so that the caller can keep it in the dead letter.
#[derive(Debug)]
pub struct Refused {
    pub failure: Failure,
    pub input: Option<tempfile::NamedTempFile>,
}

impl From<Failure> for Refused {
    fn from(failure: Failure) -> Self {
        Refused {
            failure,
            input: None,
        }
    }
}

/// [`prepare`], handing back the message read so far when the envelope is refused (no
/// sender, an alias loop, a recipient without a domain...). Only that failure path writes
/// the extra copy.
pub fn prepare_keeping(
    args: &SendArgs,
    profile: &Profile,
    input: &mut dyn Read,
) -> Result<Prepared, Refused> {
    prepare_inner(args, profile, input, &LocalHost::current())
}

/// [`prepare`] for a given host name (tests, and callers that know better).
pub fn prepare_on(
    args: &SendArgs,
    profile: &Profile,
    input: &mut dyn Read,
    host: &LocalHost,
) -> Result<Prepared, Failure> {
    prepare_inner(args, profile, input, host).map_err(|r| r.failure)
}

fn prepare_inner(
    args: &SendArgs,
    profile: &Profile,
    input: &mut dyn Read,
    host: &LocalHost,
) -> Result<Prepared, Refused> {
    check_args(args)?;
    let aliases = Aliases::load(profile)?;
    let ctx = Ctx {
        args,
        profile,
        host,
        aliases: &aliases,
    };
    if args.composes() {
        let sender = ctx.envelope_sender(None)?;
        let bytes = compose(&ctx, &sender, input)?;
        ctx.process(&mut bytes.as_slice(), true, true)
    } else {
        ctx.process(input, args.ignore_dots, false)
    }
}

struct Ctx<'a> {
    args: &'a SendArgs,
    profile: &'a Profile,
    host: &'a LocalHost,
    aliases: &'a Aliases,
}

/// One header field: its name and its raw bytes (all lines, each ending in CRLF).
#[derive(Debug, Clone)]
struct Field {
    name: String,
    raw: Vec<u8>,
}

impl Field {
    fn new(name: &str, value: &str) -> Field {
        Field {
            name: name.to_owned(),
            raw: format!("{name}: {value}\r\n").into_bytes(),
        }
    }
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
    /// The unfolded value, decoded lossily, for simple fields.
    fn value(&self) -> String {
        let s = String::from_utf8_lossy(&self.raw);
        let v = s.split_once(':').map(|(_, v)| v).unwrap_or("");
        v.replace("\r\n", "").trim().to_owned()
    }
}

/// What we learnt about the body while spooling it.
#[derive(Debug, Default, Clone, Copy)]
struct BodyStats {
    size: u64,
    longest_line: u64,
    eight_bit: bool,
    /// Some byte sequence is not UTF-8.
    not_utf8: bool,
}

/// The first control character of `s` other than TAB and the line breaks (which have their
/// own message): ESC, BEL, VT, FF, NUL, DEL, C1… would reach the recipient's terminal or
/// mail reader.
fn control_char(s: &str) -> Option<char> {
    s.chars()
        .find(|&c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
}

fn check_args(args: &SendArgs) -> Result<(), Failure> {
    let crlf = |s: &str| s.contains(['\r', '\n']);
    if args.subject.as_deref().is_some_and(crlf) {
        return Err(Failure::data(
            "--subject contains a line break (CR or LF): refused, it could inject a header",
        ));
    }
    if let Some(c) = args.subject.as_deref().and_then(control_char) {
        return Err(Failure::data(format!(
            "--subject contains the control character {c:?}: refused (only TAB is allowed)"
        )));
    }
    for h in &args.headers {
        validate_header_arg(h)?;
    }
    for (opt, list) in [
        ("recipient", &args.recipients),
        ("--to", &args.to),
        ("--cc", &args.cc),
        ("--bcc", &args.bcc),
    ] {
        if let Some(a) = list.iter().find(|a| crlf(a)) {
            return Err(Failure::usage(format!(
                "{opt} {:?} contains a line break: refused",
                a
            )));
        }
    }
    for (opt, v) in [
        ("-f", &args.envelope_from),
        ("--from", &args.from),
        ("-F", &args.full_name),
    ] {
        if v.as_deref().is_some_and(crlf) {
            return Err(Failure::usage(format!(
                "{opt} contains a line break: refused"
            )));
        }
    }
    Ok(())
}

/// `Name: value` from --header: a valid field name, no CR/LF anywhere.
fn validate_header_arg(h: &str) -> Result<(String, String), Failure> {
    if h.contains(['\r', '\n']) {
        return Err(Failure::data(format!(
            "--header {:?} contains a line break (CR or LF): refused, it could inject a header",
            h
        )));
    }
    if let Some(c) = control_char(h) {
        return Err(Failure::data(format!(
            "--header {h:?} contains the control character {c:?}: refused (only TAB is allowed)"
        )));
    }
    let Some((name, value)) = h.split_once(':') else {
        return Err(Failure::data(format!(
            "--header {h:?} is not of the form 'Name: value'"
        )));
    };
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(Failure::data(format!(
            "--header {h:?}: {name:?} is not a valid header field name"
        )));
    }
    if name.eq_ignore_ascii_case("bcc") {
        return Err(Failure::data(
            "--header Bcc: use --bcc (a Bcc header is never transmitted)",
        ));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

impl Ctx<'_> {
    fn accepted(&self) -> &[String] {
        &self.profile.accepted_domains
    }

    /// A sender that should be replaced by the profile's address under `when-local`: no
    /// domain, the host's own domain, or (when accepted domains are configured) outside them.
    fn is_local(&self, addr: &str) -> bool {
        match address::domain_of(addr) {
            None => true,
            Some(d) => {
                self.host.is_own_domain(d, self.accepted())
                    || (!self.accepted().is_empty() && !address::is_accepted(d, self.accepted()))
            }
        }
    }

    fn profile_sender(&self) -> Option<&str> {
        self.profile
            .sender
            .as_deref()
            .or(self.profile.mailbox.as_deref())
            .filter(|s| !s.trim().is_empty())
    }

    /// The envelope sender after the sender policy. `from_header` is the From address of a
    /// message read from stdin (used only when nothing else names a sender).
    fn envelope_sender(&self, from_header: Option<&str>) -> Result<String, Failure> {
        let p = self.profile;
        if let Some(f) = &self.args.envelope_from {
            let t = f.trim();
            if t.is_empty() || t == "<>" {
                return self.instead_of_null_sender(f);
            }
        }
        let given = self
            .args
            .envelope_from
            .as_deref()
            .and_then(address::from_arg)
            .or_else(|| self.args.from.as_deref().and_then(address::from_arg));
        let base = given
            .or_else(|| self.profile_sender().map(str::to_owned))
            .or_else(|| from_header.map(str::to_owned));
        let Some(mut sender) = base else {
            return Err(Failure::config(format!(
                "no envelope sender: set `sender` (or `mailbox`) in profile \"{}\", or give -f ADDR",
                p.name
            )));
        };
        let rewrite = match p.rewrite_from {
            RewriteFrom::Always => true,
            RewriteFrom::WhenLocal => self.is_local(&sender),
            RewriteFrom::Never => false,
        };
        if rewrite && let Some(s) = self.profile_sender() {
            sender = s.to_owned();
        }
        let sender = address::qualify(&sender, p.default_domain.as_deref());
        if address::domain_of(&sender).is_none() {
            return Err(Failure::config(format!(
                "envelope sender {sender:?} has no domain: set `sender` or `default_domain` in \
                 profile \"{}\", or give -f with a full address",
                p.name
            )));
        }
        if let Some(why) = address::path_problem(&sender) {
            return Err(Failure::usage(format!(
                "envelope sender {sender:?} {why}: refused before connecting"
            )));
        }
        Ok(sender)
    }

    /// `-f '<>'` or an empty `-f`: the null sender, which no mode of Microsoft 365 takes as
    /// it is. A mailbox login (submit, hve, acs, graph) may send only as the mailbox or an address it
    /// has Send As on (else 5.7.60): refused, saying why. Relay and direct send are attributed
    /// by the sender's domain (a null sender through a connector is 5.7.64) and direct send
    /// takes only accepted-domain senders: the profile's `sender` stands in for it, and
    /// without one the message is refused. Decided here, before anything connects.
    fn instead_of_null_sender(&self, given: &str) -> Result<String, Failure> {
        let p = self.profile;
        let shown = if given.trim().is_empty() {
            "an empty -f".to_owned()
        } else {
            format!("-f {:?}", given.trim())
        };
        let sender = p.sender.as_deref().map(str::trim).filter(|s| !s.is_empty());
        match p.mode {
            m if m.sends_as_mailbox() => {
                let who = p
                    .login_user()
                    .map(|m| format!("the mailbox {m}"))
                    .unwrap_or_else(|| "the mailbox".to_owned());
                Err(Failure::usage(format!(
                    "{shown} asks for the null sender (no return address), which Microsoft 365 \
                     refuses for a mailbox login (mode \"{}\" of profile \"{}\"): it sends only \
                     as {who} or an address it may send as (550 5.7.60). Leave -f out, or give \
                     -f with that address. Refused before connecting.",
                    p.mode.as_str(),
                    p.name
                )))
            }
            _ => match sender {
                Some(s) => {
                    tracing::debug!(
                        sender = s,
                        "null sender replaced by the profile's sender (Microsoft 365 attributes \
                         relay and direct send by the sender's domain)"
                    );
                    Ok(address::qualify(s, p.default_domain.as_deref()))
                }
                None => Err(Failure::config(format!(
                    "{shown} asks for the null sender (no return address), which Microsoft 365 \
                     refuses for {}: it attributes the message to the tenant by the sender's \
                     domain (550 5.7.64). Set `sender` in profile \"{}\" to an address in an \
                     accepted domain (m365send then sends from it instead), or give -f with one. \
                     Refused before connecting.",
                    if p.mode == Mode::Relay {
                        "relay"
                    } else {
                        "direct send"
                    },
                    p.name
                ))),
            },
        }
    }

    /// Recipients: arguments, --to/--cc/--bcc, and (-t) the header's To/Cc/Bcc; then aliases,
    /// the default domain, duplicates removed.
    fn recipients(&self, header_rcpts: &[String]) -> Result<Vec<String>, Failure> {
        let a = self.args;
        let mut raw: Vec<String> = Vec::new();
        for arg in a.recipients.iter().chain(&a.to).chain(&a.cc).chain(&a.bcc) {
            if arg.contains([',', '<', '(', ':', '"']) {
                raw.extend(address::parse_list(arg));
            } else if !arg.trim().is_empty() {
                raw.push(arg.trim().to_owned());
            }
        }
        raw.extend(header_rcpts.iter().cloned());
        // One recipient per mailbox: Microsoft 365 compares addresses without case, so
        // `Bob@contoso.com` and `bob@contoso.com` are sent once (the first spelling); another
        // server keeps RFC 5321's case-sensitive local parts (see route::goes_to_microsoft).
        let fold_case = crate::route::goes_to_microsoft(self.profile, a.server.as_deref());
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for r in raw {
            for e in self.aliases.expand(&r, self.host, self.accepted())? {
                // `bob@localhost`, `root@web1.localdomain` without an alias: no server outside
                // this host can deliver that; the default domain stands for this host.
                let e = match (address::split(&e), &self.profile.default_domain) {
                    ((local, Some(d)), Some(_))
                        if self.host.is_own_host(d)
                            && !address::is_accepted(d, self.accepted()) =>
                    {
                        local.to_owned()
                    }
                    _ => e,
                };
                let q = address::qualify(&e, self.profile.default_domain.as_deref());
                if address::domain_of(&q).is_none() {
                    return Err(Failure::new(
                        Exit::NoUser,
                        format!(
                            "recipient {q:?} has no domain and no alias: add an alias for it, or \
                             set `default_domain` (or a `default` alias) in profile \"{}\"",
                            self.profile.name
                        ),
                    ));
                }
                if let Some(why) = address::path_problem(&q) {
                    return Err(Failure::new(
                        Exit::NoUser,
                        format!("recipient {q:?} {why}: refused before connecting"),
                    ));
                }
                if seen.insert(address::dedup_key(&q, fold_case)) {
                    out.push(q);
                }
            }
        }
        if out.is_empty() {
            return Err(Failure::usage(if a.extract_recipients {
                "no recipients: -t takes them from the To, Cc and Bcc headers, and the message \
                 has no address in any of them (nor were any given as arguments or with \
                 --to/--cc/--bcc)"
            } else {
                "no recipients: give them as arguments, with --to/--cc/--bcc, or use -t to take \
                 them from the To, Cc and Bcc headers"
            }));
        }
        Ok(out)
    }

    fn process(
        &self,
        input: &mut dyn Read,
        ignore_dots: bool,
        composed: bool,
    ) -> Result<Prepared, Refused> {
        let max = self.profile.max_size();
        let mut reader = BufReader::with_capacity(BUF_SIZE, Normalizer::new(input, ignore_dots));
        let (mut fields, body_prefix) = read_header_block(&mut reader)?;

        // Spool the body (normalised) while measuring it. Past `max_size` the message will be
        // refused, but reading goes on (streamed, up to KEEP_MAX) so that the caller's message
        // ends in the dead letter whole: large cron output is not lost.
        let mut spool = temp_file()?;
        let keep_max = KEEP_MAX.max(max);
        let mut over = false;
        let mut cut = false;
        let stats = {
            let mut w = StatsWriter::new(BufWriter::with_capacity(BUF_SIZE, spool.as_file_mut()));
            w.write_all(&body_prefix).map_err(spool_err)?;
            let mut buf = vec![0u8; BUF_SIZE];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(Failure::io(format!("cannot read the message: {e}")).into());
                    }
                };
                w.write_all(&buf[..n]).map_err(spool_err)?;
                over |= w.stats.size > max;
                if over && w.stats.size >= keep_max {
                    cut = true;
                    break;
                }
            }
            w.inner.flush().map_err(spool_err)?;
            w.finish()
        };
        if over {
            let block: Vec<u8> = fields.iter().flat_map(|f| f.raw.iter().copied()).collect();
            let read = block.len() as u64 + 2 + stats.size;
            return Err(Refused {
                failure: too_large(
                    if cut {
                        Over::MoreThan(read)
                    } else {
                        Over::Exactly(read)
                    },
                    max,
                    &self.profile.name,
                ),
                input: keep_input(&block, spool.as_file()),
            });
        }

        // --header fields replace the message's own before anything reads them, so that a
        // From given this way goes through the sender policy like any other.
        for h in &self.args.headers {
            let (name, value) = validate_header_arg(h)?;
            // Non-ASCII text in a header needs SMTPUTF8; encode it as --subject is encoded.
            // Address fields are left alone (an encoded word cannot hold an address).
            let address_field = ["from", "to", "cc", "reply-to", "sender"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n));
            let value = if value.is_ascii() || address_field {
                value
            } else {
                encoded_words(&value)
            };
            let new = Field::new(&name, &value);
            match fields.iter().position(|f| f.is(&name)) {
                Some(i) => {
                    fields.retain(|f| !f.is(&name));
                    fields.insert(i.min(fields.len()), new);
                }
                None => fields.push(new),
            }
        }

        // Parse what we need from the header block.
        let block: Vec<u8> = fields.iter().flat_map(|f| f.raw.iter().copied()).collect();
        let info = HeaderInfo::parse(&block);
        let header_rcpts = if self.args.extract_recipients {
            info.recipients.clone()
        } else {
            Vec::new()
        };
        // The envelope can be refused now, with the whole message read: hand it back.
        let keep = |failure: Failure| Refused {
            input: keep_input(&block, spool.as_file()),
            failure,
        };
        let sender = if composed {
            self.envelope_sender(None)
        } else {
            self.envelope_sender(info.from.as_ref().map(|(_, a)| a.as_str()))
        }
        .map_err(keep)?;
        let recipients = self.recipients(&header_rcpts).map_err(keep)?;

        // The transmitted header block.
        // Bcc is never transmitted; Return-Path is the final server's to add (RFC 5321 4.4:
        // an originating system SHOULD NOT send one; PHP applications often write it).
        fields.retain(|f| !f.is("bcc") && !f.is("resent-bcc") && !f.is("return-path"));
        self.apply_from(&mut fields, &info, &sender);
        self.qualify_address_fields(&mut fields);
        if composed {
            for (name, list) in [("To", &self.args.to), ("Cc", &self.args.cc)] {
                if !list.is_empty() && !fields.iter().any(|f| f.is(name)) {
                    // Each argument may be `a@x`, `Ops <ops>` or `a, b`: qualify the
                    // addresses, not the whole text, and keep the display names.
                    let domain = self.profile.default_domain.as_deref();
                    let v: Vec<String> = list
                        .iter()
                        .flat_map(|a| address::parse_mailboxes(a.trim()))
                        .map(|(n, a)| mailbox_display(n.as_deref(), &address::qualify(&a, domain)))
                        .collect();
                    fields.push(Field::new(name, &v.join(", ")));
                }
            }
        }
        if !fields.iter().any(|f| f.is("date")) {
            fields.push(Field::new("Date", &chrono::Local::now().to_rfc2822()));
        }
        if !fields.iter().any(|f| f.is("message-id")) {
            let from_domain = fields
                .iter()
                .find(|f| f.is("from"))
                .and_then(|f| address::parse_mailbox(&f.value()))
                .and_then(|(_, a)| address::domain_of(&a).map(str::to_owned));
            let domain = from_domain
                .filter(|d| !self.host.is_own_host(d))
                .or_else(|| address::domain_of(&sender).map(str::to_owned))
                .unwrap_or_else(|| "m365send.invalid".to_owned());
            let id: u128 = rand::random();
            fields.push(Field::new(
                "Message-ID",
                &format!("<{id:032x}.{}@{domain}>", chrono::Utc::now().timestamp()),
            ));
        }

        // Long lines in a plain single-part body: re-encode as quoted-printable.
        let recode = !composed && stats.longest_line > MAX_LINE && info.plain_single_part;
        if recode {
            fields.retain(|f| !f.is("content-transfer-encoding"));
            if !fields.iter().any(|f| f.is("mime-version")) {
                fields.push(Field::new("MIME-Version", "1.0"));
            }
            if !fields.iter().any(|f| f.is("content-type")) {
                // RFC 1428's unknown-8bit when the bytes are not UTF-8 (e.g. Latin-1 output).
                let charset = if stats.not_utf8 {
                    "unknown-8bit"
                } else {
                    "utf-8"
                };
                fields.push(Field::new(
                    "Content-Type",
                    &format!("text/plain; charset={charset}"),
                ));
            }
            fields.push(Field::new("Content-Transfer-Encoding", "quoted-printable"));
        }

        // Write headers + body to the file that is transmitted.
        for f in &mut fields {
            fold_long_lines(&mut f.raw);
        }
        let header_bytes: Vec<u8> = fields.iter().flat_map(|f| f.raw.iter().copied()).collect();
        let mut out = temp_file()?;
        {
            let mut w = BufWriter::with_capacity(BUF_SIZE, out.as_file_mut());
            w.write_all(&header_bytes).map_err(spool_err)?;
            w.write_all(b"\r\n").map_err(spool_err)?;
            spool
                .as_file_mut()
                .seek(SeekFrom::Start(0))
                .map_err(spool_err)?;
            let r = BufReader::with_capacity(BUF_SIZE, spool.as_file_mut());
            if recode {
                qp_encode(r, &mut w).map_err(spool_err)?;
            } else {
                let mut r = r;
                io::copy(&mut r, &mut w).map_err(spool_err)?;
            }
            w.flush().map_err(spool_err)?;
        }
        drop(spool);
        let size = out.as_file().metadata().map_err(spool_err)?.len();
        if size > max {
            // Over the limit with the header fields added: the message as it would have gone
            // out is kept.
            return Err(Refused {
                failure: too_large(Over::Exactly(size), max, &self.profile.name),
                input: Some(out),
            });
        }
        let eight_bit = header_bytes.iter().any(|b| *b >= 0x80) || (stats.eight_bit && !recode);
        let smtputf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        Ok(Prepared {
            envelope: Envelope {
                sender,
                recipients,
                dsn: self.args.dsn.clone(),
            },
            body: Body::temporary(out.into_temp_path()),
            size,
            eight_bit,
            smtputf8,
            header_block: String::from_utf8_lossy(&header_bytes).into_owned(),
        })
    }

    /// `To: root` (cron writes it) is no address anywhere but on this host: with a default
    /// domain, a To, Cc or Reply-To field holding a bare local name is written again with every
    /// address qualified, as Postfix does for local submissions. Fields without one are left
    /// exactly as they are.
    fn qualify_address_fields(&self, fields: &mut [Field]) {
        let Some(domain) = self.profile.default_domain.as_deref() else {
            return;
        };
        for f in fields.iter_mut() {
            if !(f.is("to") || f.is("cc") || f.is("reply-to")) {
                continue;
            }
            let boxes = address::parse_mailboxes(&f.value());
            if boxes.is_empty() || boxes.iter().all(|(_, a)| address::domain_of(a).is_some()) {
                continue;
            }
            let list: Vec<String> = boxes
                .iter()
                .map(|(n, a)| mailbox_display(n.as_deref(), &address::qualify(a, Some(domain))))
                .collect();
            let name = f.name.clone();
            *f = Field::new(&name, &list.join(", "));
        }
    }

    /// Add a From header when missing, rewrite it per `rewrite_from`, keeping the display name.
    fn apply_from(&self, fields: &mut Vec<Field>, info: &HeaderInfo, sender: &str) {
        let name = self
            .args
            .full_name
            .as_deref()
            .filter(|n| !n.trim().is_empty());
        let Some(pos) = fields.iter().position(|f| f.is("from")) else {
            let addr = if sender.is_empty() {
                self.profile_sender().unwrap_or("MAILER-DAEMON")
            } else {
                sender
            };
            fields.insert(0, Field::new("From", &mailbox_display(name, addr)));
            return;
        };
        let Some((old_name, old_addr)) = &info.from else {
            return;
        };
        let rewrite = match self.profile.rewrite_from {
            RewriteFrom::Always => true,
            RewriteFrom::WhenLocal => self.is_local(old_addr),
            RewriteFrom::Never => false,
        };
        let target = if rewrite {
            self.profile_sender().map(str::to_owned)
        } else if address::domain_of(old_addr).is_none() {
            // `From: root` is not deliverable anywhere: qualify it at least.
            self.profile
                .default_domain
                .as_deref()
                .map(|d| address::qualify(old_addr, Some(d)))
        } else {
            None
        };
        if let Some(t) = target
            && !t.eq_ignore_ascii_case(old_addr)
        {
            let display = old_name.as_deref().or(name);
            fields[pos] = Field::new("From", &mailbox_display(display, &t));
        }
    }
}

/// `"Cron Daemon" <alerts@contoso.com>`, with the name quoted or RFC 2047-encoded as needed.
/// (lettre's `Mailbox` Display writes a non-ASCII name as raw UTF-8, which a header without
/// SMTPUTF8 must not carry: such a name is encoded here.)
fn mailbox_display(name: Option<&str>, addr: &str) -> String {
    match name {
        Some(n) if !n.is_ascii() => format!("{} <{addr}>", encoded_words(n)),
        _ => {
            if let Ok(a) = addr.parse::<lettre::Address>() {
                return lettre::message::Mailbox::new(name.map(str::to_owned), a).to_string();
            }
            match name {
                Some(n) => format!(
                    "\"{}\" <{addr}>",
                    n.replace('\\', "\\\\").replace('"', "\\\"")
                ),
                None => addr.to_owned(),
            }
        }
    }
}

/// RFC 2047 `=?utf-8?b?...?=` words, each at most 75 characters, split on character
/// boundaries and separated by a folding space.
fn encoded_words(text: &str) -> String {
    use base64::Engine as _;
    // 45 bytes of UTF-8 → 60 base64 characters + 12 for `=?utf-8?b??=` = 72.
    const CHUNK: usize = 45;
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + CHUNK).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let enc = base64::engine::general_purpose::STANDARD.encode(&text.as_bytes()[start..end]);
        words.push(format!("=?utf-8?b?{enc}?="));
        start = end;
    }
    words.join("\r\n ")
}

/// What the header block says, read with mail-parser.
#[derive(Debug, Default)]
struct HeaderInfo {
    /// To, Cc and Bcc addresses (every occurrence; groups flattened).
    recipients: Vec<String>,
    /// The first From mailbox: (display name, address).
    from: Option<(Option<String>, String)>,
    /// Neither multipart nor message/*, and no transfer encoding other than 7bit/8bit: the
    /// body can be re-encoded as quoted-printable without changing its meaning.
    plain_single_part: bool,
}

impl HeaderInfo {
    fn parse(block: &[u8]) -> HeaderInfo {
        let mut raw = block.to_vec();
        raw.extend_from_slice(b"\r\n");
        let mut info = HeaderInfo {
            plain_single_part: true,
            ..HeaderInfo::default()
        };
        let Some(msg) = MessageParser::default().parse_headers(&raw) else {
            return info;
        };
        for h in msg.headers() {
            let name = h.name.as_str();
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is("to") || is("cc") || is("bcc") {
                if let HeaderValue::Address(list) = &h.value {
                    info.recipients
                        .extend(list.iter().filter_map(address::addr_of));
                }
            } else if is("from") && info.from.is_none() {
                if let HeaderValue::Address(list) = &h.value
                    && let Some(a) = list.first()
                    && let Some(addr) = address::addr_of(a)
                {
                    info.from = Some((address::display_name_of(a), addr));
                }
            } else if is("content-type") {
                if let HeaderValue::ContentType(ct) = &h.value {
                    let t = ct.ctype();
                    if !t.eq_ignore_ascii_case("text") {
                        info.plain_single_part = false;
                    }
                }
            } else if is("content-transfer-encoding") {
                let v = h.value.as_text().unwrap_or("").trim().to_ascii_lowercase();
                if v != "7bit" && v != "8bit" {
                    info.plain_single_part = false;
                }
            }
        }
        info
    }
}

/// Who a header block says the message is from: each From and Sender field in order, with
/// its addresses (None for a mailbox whose address cannot be read, and a field that holds no
/// address at all gives one None). For checking a client's claim (`serve`'s senders), so
/// nothing unreadable is taken as harmless.
pub fn sender_fields(header_block: &str) -> Vec<(String, Vec<Option<String>>)> {
    let mut raw = header_block.as_bytes().to_vec();
    raw.extend_from_slice(b"\r\n");
    let Some(msg) = MessageParser::default().parse_headers(&raw) else {
        return vec![("From".to_owned(), vec![None])];
    };
    let mut out = Vec::new();
    for h in msg.headers() {
        let name = h.name.as_str().trim();
        if !name.eq_ignore_ascii_case("from") && !name.eq_ignore_ascii_case("sender") {
            continue;
        }
        let addrs: Vec<Option<String>> = match &h.value {
            HeaderValue::Address(list) => list.iter().map(address::addr_of).collect(),
            _ => Vec::new(),
        };
        let addrs = if addrs.is_empty() { vec![None] } else { addrs };
        out.push((name.to_owned(), addrs));
    }
    out
}

/// Read header fields until the empty line. A line that is not a header field ends the block
/// and is returned as the start of the body. A leading mbox `From ` line is dropped.
fn read_header_block(r: &mut dyn BufRead) -> Result<(Vec<Field>, Vec<u8>), Failure> {
    let mut fields: Vec<Field> = Vec::new();
    let mut total = 0usize;
    let mut first = true;
    loop {
        let mut line = Vec::new();
        let limit = (MAX_HEADER_BLOCK - total) as u64 + 1;
        let n = r
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| Failure::io(format!("cannot read the message: {e}")))?;
        if n == 0 {
            return Ok((fields, Vec::new()));
        }
        total += n;
        if total > MAX_HEADER_BLOCK {
            // A long first line that is no header field (`base64 -w0 file | sendmail root`)
            // is the start of the body; the rest of it follows from the reader.
            if !line.starts_with(b" ") && !line.starts_with(b"\t") && field_name(&line).is_none() {
                return Ok((fields, line));
            }
            return Err(Failure::data(format!(
                "the message's header block is larger than {} bytes: refused (is the input a \
                 mail message?)",
                MAX_HEADER_BLOCK
            )));
        }
        if line == b"\r\n" {
            return Ok((fields, Vec::new()));
        }
        if first && line.starts_with(b"From ") {
            first = false;
            continue;
        }
        first = false;
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(f) = fields.last_mut() {
                f.raw.extend_from_slice(&line);
                continue;
            }
            return Ok((fields, line));
        }
        match field_name(&line) {
            Some(name) => fields.push(Field { name, raw: line }),
            None => {
                // Not a header: the header block is over (no empty line separated it).
                return Ok((fields, line));
            }
        }
    }
}

/// Fold header lines longer than 998 octets (RFC 5322 2.1.1; cron's Subject holds the whole
/// command line) before a space or tab, which stays as the continuation's first character.
/// A line with no white space to fold at is left as it is.
fn fold_long_lines(raw: &mut Vec<u8>) {
    let max = MAX_LINE as usize;
    if raw.split(|b| *b == b'\n').all(|l| l.len() <= max + 1) {
        return;
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / max * 2 + 2);
    for line in raw.split_inclusive(|b| *b == b'\n') {
        let mut rest = line;
        // Never fold inside the field name: start looking after the first colon.
        let mut floor = rest.iter().position(|b| *b == b':').map_or(1, |c| c + 2);
        while rest.len() > max + 2 {
            let window = &rest[..=max.min(rest.len() - 1)];
            match window
                .iter()
                .rposition(|b| *b == b' ' || *b == b'\t')
                .filter(|i| *i >= floor)
            {
                Some(i) => {
                    out.extend_from_slice(&rest[..i]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[i..];
                    floor = 1;
                }
                None => break,
            }
        }
        out.extend_from_slice(rest);
    }
    *raw = out;
}

fn field_name(line: &[u8]) -> Option<String> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = &line[..colon];
    let name = name.strip_suffix(b" ").unwrap_or(name);
    if name.is_empty() || !name.iter().all(|b| (33..=126).contains(b)) {
        return None;
    }
    Some(String::from_utf8_lossy(name).into_owned())
}

/// The caller's message as read (header block, blank line, normalised body) in a new
/// temporary file; None when it cannot be written (the refusal is reported all the same).
fn keep_input(header_block: &[u8], body: &File) -> Option<tempfile::NamedTempFile> {
    // Nothing was read (`m365send -t </dev/null`): nothing to keep.
    if header_block.is_empty() && body.metadata().ok()?.len() == 0 {
        return None;
    }
    let mut out = temp_file().ok()?;
    let mut body = body.try_clone().ok()?;
    body.seek(io::SeekFrom::Start(0)).ok()?;
    let mut w = BufWriter::with_capacity(BUF_SIZE, out.as_file_mut());
    w.write_all(header_block).ok()?;
    w.write_all(b"\r\n").ok()?;
    io::copy(&mut body, &mut w).ok()?;
    w.flush().ok()?;
    drop(w);
    Some(out)
}

fn temp_file() -> Result<tempfile::NamedTempFile, Failure> {
    tempfile::Builder::new()
        .prefix("m365send-")
        .tempfile()
        .map_err(|e| {
            Failure::new(
                Exit::CantCreat,
                format!(
                    "cannot create a temporary file in {}: {e}",
                    std::env::temp_dir().display()
                ),
            )
        })
}

fn spool_err(e: io::Error) -> Failure {
    Failure::new(
        Exit::IoErr,
        format!("cannot write the message to a temporary file: {e}"),
    )
}

/// How much larger than the limit a message is known to be.
#[derive(Debug, Clone, Copy)]
enum Over {
    /// Read whole: this many bytes.
    Exactly(u64),
    /// Reading stopped after this many bytes (at [`KEEP_MAX`]).
    MoreThan(u64),
    /// Not read further than the limit.
    Unknown,
}

/// The refusal of a message larger than `max` bytes (`max_size` of `profile`).
fn too_large(over: Over, max: u64, profile: &str) -> Failure {
    let what = match over {
        Over::Exactly(n) => format!("it is {n} bytes, and the limit is {max} bytes"),
        Over::MoreThan(n) => format!(
            "it is more than {n} bytes (reading stopped there), and the limit is {max} bytes"
        ),
        Over::Unknown => format!("it is larger than the limit of {max} bytes"),
    };
    Failure::data(format!(
        "message too large: {what} (`max_size` of profile \"{profile}\"; Microsoft 365 allows \
         35 MB by default, 150 MB at most)"
    ))
}

/// A reader that turns any line ending (CRLF, bare LF, bare CR) into CRLF, ends the message at
/// a line holding a single dot (unless `ignore_dots`), and makes sure the last line ends in
/// CRLF. Memory: one fixed input buffer and an output buffer of at most three times it.
pub struct Normalizer<'a> {
    inner: &'a mut dyn Read,
    ignore_dots: bool,
    inbuf: Box<[u8]>,
    out: Vec<u8>,
    out_pos: usize,
    at_line_start: bool,
    held_dot: bool,
    pending_cr: bool,
    done: bool,
}

impl<'a> Normalizer<'a> {
    pub fn new(inner: &'a mut dyn Read, ignore_dots: bool) -> Self {
        Normalizer {
            inner,
            ignore_dots,
            inbuf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            out: Vec::with_capacity(BUF_SIZE * 3),
            out_pos: 0,
            at_line_start: true,
            held_dot: false,
            pending_cr: false,
            done: false,
        }
    }

    fn end_line(&mut self) {
        if self.held_dot && !self.ignore_dots {
            self.done = true;
            return;
        }
        if self.held_dot {
            self.out.push(b'.');
        }
        self.held_dot = false;
        self.out.extend_from_slice(b"\r\n");
        self.at_line_start = true;
    }

    fn byte(&mut self, b: u8) {
        if self.pending_cr {
            self.pending_cr = false;
            self.end_line();
            if self.done || b == b'\n' {
                return;
            }
        }
        match b {
            b'\r' => self.pending_cr = true,
            b'\n' => self.end_line(),
            _ => {
                if self.held_dot {
                    self.out.push(b'.');
                    self.held_dot = false;
                } else if self.at_line_start && b == b'.' && !self.ignore_dots {
                    self.held_dot = true;
                    self.at_line_start = false;
                    return;
                }
                self.at_line_start = false;
                self.out.push(b);
            }
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.out_pos = 0;
        while self.out.is_empty() && !self.done {
            let n = loop {
                match self.inner.read(&mut self.inbuf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                // End of input: finish the last line.
                if self.pending_cr {
                    self.pending_cr = false;
                    self.end_line();
                } else if self.held_dot {
                    // A lone "." as the very last line ends the message too.
                    if self.ignore_dots {
                        self.end_line();
                    }
                } else if !self.at_line_start {
                    self.end_line();
                }
                self.done = true;
                break;
            }
            for i in 0..n {
                let b = self.inbuf[i];
                self.byte(b);
                if self.done {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Read for Normalizer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.out_pos >= self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = (self.out.len() - self.out_pos).min(buf.len());
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// A writer that measures what passes: size, longest line, 8-bit bytes.
struct StatsWriter<W: Write> {
    inner: W,
    stats: BodyStats,
    line: u64,
    /// The start of a UTF-8 sequence cut by a write boundary (at most 3 bytes).
    utf8_carry: Vec<u8>,
}

impl<W: Write> StatsWriter<W> {
    fn new(inner: W) -> Self {
        StatsWriter {
            inner,
            stats: BodyStats::default(),
            line: 0,
            utf8_carry: Vec::new(),
        }
    }
    fn finish(mut self) -> BodyStats {
        self.stats.longest_line = self.stats.longest_line.max(self.line);
        if !self.utf8_carry.is_empty() {
            self.stats.not_utf8 = true;
        }
        self.stats
    }
    /// Streaming UTF-8 check of the 8-bit parts.
    fn check_utf8(&mut self, chunk: &[u8]) {
        if self.stats.not_utf8 {
            return;
        }
        let mut data = std::mem::take(&mut self.utf8_carry);
        data.extend_from_slice(chunk);
        if let Err(e) = std::str::from_utf8(&data) {
            match e.error_len() {
                Some(_) => self.stats.not_utf8 = true,
                None => self.utf8_carry = data[e.valid_up_to()..].to_vec(),
            }
        }
    }
}

impl<W: Write> Write for StatsWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        for &b in &buf[..n] {
            match b {
                b'\n' => {
                    // The CR before it was counted: the line is one shorter.
                    self.stats.longest_line =
                        self.stats.longest_line.max(self.line.saturating_sub(1));
                    self.line = 0;
                }
                _ => self.line += 1,
            }
            if b >= 0x80 {
                self.stats.eight_bit = true;
            }
        }
        if self.stats.eight_bit {
            self.check_utf8(&buf[..n]);
        }
        self.stats.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Quoted-printable (RFC 2045) for CRLF text: hard line breaks stay CRLF, soft breaks keep
/// lines at 76 octets, `=`, control and 8-bit bytes and white space before a line end are
/// encoded. Streams: a fixed buffer, whatever the line length.
fn qp_encode(mut r: impl BufRead, w: &mut impl Write) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut col = 0usize;
    let mut pending_ws: Option<u8> = None;
    let emit = |w: &mut dyn Write, tok: &[u8], col: &mut usize| -> io::Result<()> {
        if *col + tok.len() > 75 {
            w.write_all(b"=\r\n")?;
            *col = 0;
        }
        w.write_all(tok)?;
        *col += tok.len();
        Ok(())
    };
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        for &b in buf {
            match b {
                b'\r' => {}
                b'\n' => {
                    if let Some(ws) = pending_ws.take() {
                        emit(
                            w,
                            &[b'=', HEX[(ws >> 4) as usize], HEX[(ws & 15) as usize]],
                            &mut col,
                        )?;
                    }
                    w.write_all(b"\r\n")?;
                    col = 0;
                }
                _ => {
                    if let Some(ws) = pending_ws.take() {
                        emit(w, &[ws], &mut col)?;
                    }
                    if b == b' ' || b == b'\t' {
                        pending_ws = Some(b);
                    } else if (33..=126).contains(&b) && b != b'=' {
                        emit(w, &[b], &mut col)?;
                    } else {
                        emit(
                            w,
                            &[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]],
                            &mut col,
                        )?;
                    }
                }
            }
        }
        r.consume(n);
    }
    if let Some(ws) = pending_ws.take() {
        emit(
            w,
            &[b'=', HEX[(ws >> 4) as usize], HEX[(ws & 15) as usize]],
            &mut col,
        )?;
    }
    Ok(())
}

/// Build the message for --subject/--body/--attach with lettre. To and Cc headers are added
/// by `process` (so bare local names may be used); Bcc never appears.
fn compose(ctx: &Ctx<'_>, sender: &str, input: &mut dyn Read) -> Result<Vec<u8>, Failure> {
    use lettre::message::header::ContentType;
    use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};

    let args = ctx.args;
    let max = ctx.profile.max_size();
    let from: Mailbox = match &args.from {
        Some(f) => {
            // `Backup <root>`: qualify the address, not the whole argument.
            let bad =
                |e: String| Failure::usage(format!("--from {f:?} is not a valid address: {e}"));
            let (name, addr) =
                address::parse_mailbox(f.trim()).ok_or_else(|| bad("no address in it".into()))?;
            let q = address::qualify(&addr, ctx.profile.default_domain.as_deref());
            let a: lettre::Address = q.parse().map_err(|e| bad(format!("{e}")))?;
            Mailbox::new(name.or_else(|| args.full_name.clone()), a)
        }
        None => {
            let a: lettre::Address = sender.parse().map_err(|e| {
                Failure::config(format!("sender {sender:?} is not a valid address: {e}"))
            })?;
            Mailbox::new(args.full_name.clone(), a)
        }
    };
    let env_addr = from.email.clone();
    let envelope = lettre::address::Envelope::new(Some(env_addr.clone()), vec![env_addr])
        .map_err(|e| Failure::new(Exit::Software, format!("cannot build the envelope: {e}")))?;
    let mut b = lettre::Message::builder().from(from).envelope(envelope);
    if let Some(s) = &args.subject {
        b = b.subject(s.clone());
    }
    let text: Vec<u8> = match &args.body {
        Some(t) => t.clone().into_bytes(),
        None => {
            let mut v = Vec::new();
            input
                .take(max + 1)
                .read_to_end(&mut v)
                .map_err(|e| Failure::io(format!("cannot read the body from stdin: {e}")))?;
            if v.len() as u64 > max {
                return Err(too_large(Over::Unknown, max, &ctx.profile.name));
            }
            v
        }
    };
    let text_part = match String::from_utf8(text) {
        Ok(s) => SinglePart::plain(s),
        // Not UTF-8 (Latin-1 output, say): labelled utf-8 it could only show as U+FFFD;
        // RFC 1428's unknown-8bit lets the reader fall back to its own charset, as for a
        // message read from stdin.
        Err(e) => SinglePart::builder()
            .header(
                ContentType::parse("text/plain; charset=unknown-8bit")
                    .unwrap_or(ContentType::TEXT_PLAIN),
            )
            .body(e.into_bytes()),
    };
    let built = if args.attach.is_empty() {
        b.singlepart(text_part)
    } else {
        let mut mp = MultiPart::mixed().singlepart(text_part);
        let mut total = 0u64;
        for path in &args.attach {
            let data = std::fs::read(path).map_err(|e| {
                Failure::new(
                    Exit::NoInput,
                    format!("cannot read attachment {}: {e}", path.display()),
                )
            })?;
            total += data.len() as u64;
            if total > max {
                return Err(too_large(Over::Unknown, max, &ctx.profile.name));
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "attachment".into());
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            let ct = ContentType::parse(mime.essence_str()).unwrap_or(
                ContentType::parse("application/octet-stream")
                    .map_err(|e| Failure::new(Exit::Software, format!("content type: {e}")))?,
            );
            mp = mp.singlepart(Attachment::new(name).body(data, ct));
        }
        b.multipart(mp)
    };
    let msg = built.map_err(|e| Failure::usage(format!("cannot compose the message: {e}")))?;
    Ok(msg.formatted())
}
