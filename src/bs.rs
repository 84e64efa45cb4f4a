//! `sendmail -bs`: the server side of SMTP on stdin/stdout.
//!
//! Owns: the dialogue with a local client (symfony/mailer, swaks --pipe, …): greeting, EHLO/HELO,
//! MAIL, RCPT, DATA (un-dot-stuffed into a CRLF temporary file), RSET, NOOP, VRFY, HELP, QUIT,
//! the limits, and the reply to each command. Each accepted message goes to a handler (the
//! normal delivery path) whose outcome becomes the reply to the end of data. Must not: deliver,
//! parse the message's headers, or panic on any input.
//!
//! Decisions:
//! - EHLO advertises 8BITMIME, PIPELINING, SIZE n, ENHANCEDSTATUSCODES, SMTPUTF8 and HELP.
//!   Non-ASCII addresses are accepted only in a transaction whose MAIL carried SMTPUTF8
//!   (else `553 5.6.7`, RFC 6531); the delivery path sees them in the envelope. No AUTH, no
//!   STARTTLS, no CHUNKING, no DSN: those commands get `502 5.5.1` (not advertised, so not
//!   "temporarily unavailable" 454); unknown parameters get `555 5.5.4`.
//! - MAIL is accepted without a prior EHLO/HELO (as Postfix does by default); `MAIL FROM:addr`
//!   without angle brackets is accepted too. Sequence errors (RCPT before MAIL, DATA before RCPT,
//!   nested MAIL) get `503 5.5.1`; syntax errors `501 5.5.4`; unknown commands `500 5.5.2`.
//! - Command lines longer than `max_command_line` bytes (default 1000, RFC 5321's text line
//!   limit; its 512 for commands is too tight with parameters) get `500 5.5.2 Line too long`.
//! - Data lines of any length are accepted and streamed to the file in pieces (memory stays
//!   bounded): refusing a long line would lose the whole message, and the stdin path does not
//!   refuse them either. Bare LF in data becomes CRLF; bare CR is kept. The end of data is a
//!   line holding only "." ended by CRLF or by a bare LF (we are the last parser of these
//!   bytes and re-encode them, so there is nothing to smuggle past).
//! - A message over `max_size` (SIZE= in MAIL, or counted while reading) gets
//!   `552 5.3.4`; the data is read to its end so the dialogue stays in step.
//! - More than `max_recipients` RCPTs get `452 4.5.3` each (RFC 5321 §4.5.3.1.10).
//! - After `max_errors` error replies the session ends with `421 4.7.0`.
//! - Replies are flushed one by one: correct with and without client pipelining, since a reply
//!   is never held back waiting for more input.
//! - End of input without QUIT ends the session quietly; a message whose data was cut off is
//!   not handed over.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;

use crate::exit::Exit;
use crate::message::{Body, Envelope};
use crate::status::{EnhancedCode, Reply};

/// Limits for one `-bs` session.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Longest command line, CRLF included.
    pub max_command_line: usize,
    /// Largest message in bytes (CRLF, not dot-stuffed); advertised as SIZE.
    pub max_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Error replies before the session is closed with 421.
    pub max_errors: u32,
    /// Directory for the message's temporary file (default: the system's temp directory).
    pub temp_dir: Option<PathBuf>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hostname: "localhost".to_owned(),
            max_command_line: 1000,
            max_size: 35 * 1024 * 1024,
            max_recipients: 500,
            max_errors: 10,
            temp_dir: None,
        }
    }
}

impl Limits {
    /// The defaults, with this host's name and the profile's size limit.
    pub fn for_profile(profile: &crate::config::Profile) -> Limits {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        Limits {
            hostname: if host.is_empty() {
                "localhost".to_owned()
            } else {
                host
            },
            max_size: profile.max_size(),
            ..Limits::default()
        }
    }
}

/// What became of a message handed over at the end of data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BsOutcome {
    /// Delivered now: `250 2.0.0 Message accepted for delivery`.
    Delivered,
    /// Put in the queue: `250 2.0.0 Message queued for later delivery`.
    Queued,
    /// Not taken: this reply is given as is (use a 4xx reply when the client may retry).
    Failed(Reply),
}

impl BsOutcome {
    /// A failure from the delivery path as the reply to the end of data: a temporary failure
    /// becomes `451 4.3.0`, anything else `554 5.3.0`; the text is the message's first line.
    pub fn failure(exit: Exit, message: &str) -> BsOutcome {
        let first = message.lines().next().unwrap_or("delivery failed");
        let (code, enh) = if exit == Exit::TempFail {
            (451, EnhancedCode::new(4, 3, 0))
        } else {
            (554, EnhancedCode::new(5, 3, 0))
        };
        BsOutcome::Failed(Reply {
            code,
            enhanced: Some(enh),
            lines: vec![format!("{enh} {first}")],
        })
    }
}

/// The handler the lead wires to the delivery path.
pub type Handler<'h> = dyn FnMut(Envelope, Body) -> BsOutcome + 'h;

/// Run one SMTP session: greeting, commands until QUIT, end of input or too many errors.
/// Errors are I/O errors of `output` (or of `input` other than its end).
pub fn serve<R: BufRead, W: Write>(
    input: R,
    output: W,
    limits: &Limits,
    handler: &mut Handler<'_>,
) -> io::Result<()> {
    let mut s = Session {
        input,
        output,
        limits,
        errors: 0,
        greeted: false,
        sender: None,
        recipients: Vec::new(),
        utf8: false,
        line: Vec::with_capacity(1024),
    };
    s.run(handler)
}

struct Session<'l, R, W> {
    input: R,
    output: W,
    limits: &'l Limits,
    errors: u32,
    greeted: bool,
    /// Some during a transaction (after MAIL).
    sender: Option<String>,
    recipients: Vec<String>,
    /// The transaction's MAIL carried SMTPUTF8.
    utf8: bool,
    line: Vec<u8>,
}

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

/// Read up to `max` bytes, stopping after an LF. Returns false at end of input with nothing
/// read. The caller sees a complete line when `buf` ends with LF.
fn read_piece<R: BufRead>(input: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<bool> {
    buf.clear();
    loop {
        let avail = match input.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(!buf.is_empty());
        }
        let room = max.saturating_sub(buf.len()).max(1);
        let take = avail.len().min(room);
        if let Some(i) = avail[..take].iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&avail[..=i]);
            input.consume(i + 1);
            return Ok(true);
        }
        buf.extend_from_slice(&avail[..take]);
        input.consume(take);
        if buf.len() >= max {
            return Ok(true);
        }
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Split "FROM:<a@b> SIZE=10" after the keyword: Some((address, params)).
fn parse_path_arg<'a>(arg: &'a str, keyword: &str) -> Option<(String, Vec<&'a str>)> {
    let kw_len = keyword.len();
    if arg.len() < kw_len || !arg.is_char_boundary(kw_len) {
        return None;
    }
    let (kw, rest) = arg.split_at(kw_len);
    if !kw.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest.trim_start();
    let (path, params) = if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        (&inner[..end], &inner[end + 1..])
    } else {
        match rest.find(' ') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    };
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    // A source route (@a,@b:user@c) is ignored (RFC 5321 §4.1.2).
    let addr = match path.strip_prefix('@') {
        Some(_) => path.split_once(':').map(|(_, a)| a)?,
        None => path,
    };
    if addr
        .chars()
        .any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
    {
        return None;
    }
    if !addr.is_empty() {
        // local@domain, or a bare local name (postmaster, root): no empty parts.
        if let Some((local, domain)) = addr.rsplit_once('@')
            && (local.is_empty() || domain.is_empty())
        {
            return None;
        }
    }
    Some((addr.to_owned(), params.split_whitespace().collect()))
}

impl<R: BufRead, W: Write> Session<'_, R, W> {
    fn reply(&mut self, code: u16, text: &str) -> io::Result<()> {
        write!(self.output, "{code} {text}\r\n")?;
        self.output.flush()
    }

    /// An error reply; counts towards the cut-off. Returns Close when the cut-off is reached.
    fn error(&mut self, code: u16, text: &str) -> io::Result<Next> {
        self.reply(code, text)?;
        self.errors += 1;
        if self.errors >= self.limits.max_errors {
            self.reply(421, "4.7.0 Too many errors, closing connection")?;
            return Ok(Next::Close);
        }
        Ok(Next::Continue)
    }

    fn reset(&mut self) {
        self.utf8 = false;
        self.sender = None;
        self.recipients.clear();
    }

    fn run(&mut self, handler: &mut Handler<'_>) -> io::Result<()> {
        let greeting = format!(
            "{} ESMTP m365send (sendmail -bs) ready",
            clean(&self.limits.hostname)
        );
        self.reply(220, &greeting)?;
        let max = self.limits.max_command_line.max(16);
        loop {
            let mut line = std::mem::take(&mut self.line);
            let got = read_piece(&mut self.input, &mut line, max)?;
            if !got {
                self.line = line;
                return Ok(());
            }
            if !line.ends_with(b"\n") && line.len() >= max {
                // Too long: skip to the end of the line.
                let mut rest = Vec::new();
                loop {
                    if !read_piece(&mut self.input, &mut rest, 64 * 1024)? {
                        break;
                    }
                    if rest.ends_with(b"\n") {
                        break;
                    }
                }
                self.line = line;
                if let Next::Close = self.error(500, "5.5.2 Line too long")? {
                    return Ok(());
                }
                continue;
            }
            let text = String::from_utf8_lossy(strip_eol(&line)).into_owned();
            self.line = line;
            if let Next::Close = self.command(&text, handler)? {
                return Ok(());
            }
        }
    }

    fn command(&mut self, text: &str, handler: &mut Handler<'_>) -> io::Result<Next> {
        let (verb, arg) = match text.find(' ') {
            Some(i) => (&text[..i], text[i + 1..].trim()),
            None => (text, ""),
        };
        let verb = verb.to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => {
                if arg.is_empty() || arg.contains(char::is_whitespace) {
                    return self.error(501, &format!("5.5.4 Syntax: {verb} hostname"));
                }
                self.reset();
                self.greeted = true;
                let host = clean(&self.limits.hostname);
                if verb == "HELO" {
                    self.reply(250, &host)?;
                } else {
                    let arg = clean(arg);
                    write!(
                        self.output,
                        "250-{host} greets {arg}\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 HELP\r\n",
                        self.limits.max_size
                    )?;
                    self.output.flush()?;
                }
                Ok(Next::Continue)
            }
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg),
            "DATA" => {
                if !arg.is_empty() {
                    return self.error(501, "5.5.4 Syntax: DATA");
                }
                if self.sender.is_none() {
                    return self.error(503, "5.5.1 Error: need MAIL command");
                }
                if self.recipients.is_empty() {
                    return self.error(503, "5.5.1 Error: need RCPT command");
                }
                self.data(handler)
            }
            "RSET" => {
                if !arg.is_empty() {
                    return self.error(501, "5.5.4 Syntax: RSET");
                }
                self.reset();
                self.reply(250, "2.0.0 OK")?;
                Ok(Next::Continue)
            }
            "NOOP" => {
                self.reply(250, "2.0.0 OK")?;
                Ok(Next::Continue)
            }
            "QUIT" => {
                self.reply(221, "2.0.0 Bye")?;
                Ok(Next::Close)
            }
            "VRFY" => {
                if arg.is_empty() {
                    return self.error(501, "5.5.4 Syntax: VRFY address");
                }
                self.reply(252, "2.5.0 Cannot VRFY user, but will accept message")?;
                Ok(Next::Continue)
            }
            "HELP" => {
                self.reply(
                    214,
                    "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
                )?;
                Ok(Next::Continue)
            }
            "AUTH" | "STARTTLS" | "BDAT" | "EXPN" | "ETRN" | "TURN" | "ATRN" | "SAML" | "SOML"
            | "SEND" => self.error(502, "5.5.1 Command not implemented"),
            "" => self.error(500, "5.5.2 Error: bad syntax"),
            _ => self.error(500, "5.5.2 Error: command not recognized"),
        }
    }

    fn mail(&mut self, arg: &str) -> io::Result<Next> {
        if self.sender.is_some() {
            return self.error(503, "5.5.1 Error: nested MAIL command");
        }
        let Some((addr, params)) = parse_path_arg(arg, "FROM:") else {
            return self.error(501, "5.5.4 Syntax: MAIL FROM:<address>");
        };
        let mut utf8 = false;
        for p in params {
            let (key, value) = p.split_once('=').unwrap_or((p, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(n) if n > self.limits.max_size => {
                        return self
                            .error(552, "5.3.4 Message size exceeds fixed maximum message size");
                    }
                    Ok(_) => {}
                    Err(_) => return self.error(501, "5.5.4 Bad SIZE parameter"),
                },
                "BODY" => {
                    if !value.eq_ignore_ascii_case("7BIT")
                        && !value.eq_ignore_ascii_case("8BITMIME")
                    {
                        return self.error(501, "5.5.4 Bad BODY parameter");
                    }
                }
                "SMTPUTF8" if value.is_empty() && !p.contains('=') => utf8 = true,
                _ => return self.error(555, "5.5.4 Unsupported parameter"),
            }
        }
        if !utf8 && !addr.is_ascii() {
            return self.error(553, "5.6.7 Non-ASCII address needs SMTPUTF8");
        }
        self.utf8 = utf8;
        self.sender = Some(addr);
        self.recipients.clear();
        self.reply(250, "2.1.0 Sender OK")?;
        Ok(Next::Continue)
    }

    fn rcpt(&mut self, arg: &str) -> io::Result<Next> {
        if self.sender.is_none() {
            return self.error(503, "5.5.1 Error: need MAIL command");
        }
        let Some((addr, params)) = parse_path_arg(arg, "TO:") else {
            return self.error(501, "5.5.4 Syntax: RCPT TO:<address>");
        };
        if addr.is_empty() {
            return self.error(501, "5.1.3 Bad recipient address syntax");
        }
        if !params.is_empty() {
            return self.error(555, "5.5.4 Unsupported parameter");
        }
        if !self.utf8 && !addr.is_ascii() {
            return self.error(553, "5.6.7 Non-ASCII address needs SMTPUTF8");
        }
        if self.recipients.len() >= self.limits.max_recipients {
            // Not counted as an error: the client is to send the rest in another message.
            self.reply(452, "4.5.3 Too many recipients")?;
            return Ok(Next::Continue);
        }
        if !self.recipients.contains(&addr) {
            self.recipients.push(addr);
        }
        self.reply(250, "2.1.5 Recipient OK")?;
        Ok(Next::Continue)
    }

    fn data(&mut self, handler: &mut Handler<'_>) -> io::Result<Next> {
        let temp = match &self.limits.temp_dir {
            Some(dir) => tempfile::NamedTempFile::new_in(dir),
            None => tempfile::NamedTempFile::new(),
        };
        let temp = temp.ok();
        let mut writer = temp
            .as_ref()
            .map(|t| io::BufWriter::with_capacity(64 * 1024, t.as_file()));
        self.reply(354, "End data with <CR><LF>.<CR><LF>")?;

        let mut size: u64 = 0;
        let mut too_big = false;
        let mut write_failed = temp.is_none();
        let mut at_line_start = true;
        let mut prev_cr = false;
        let mut piece = Vec::with_capacity(64 * 1024);
        let mut out = Vec::with_capacity(64 * 1024 + 2);
        let complete = loop {
            if !read_piece(&mut self.input, &mut piece, 64 * 1024)? {
                break false;
            }
            let mut data: &[u8] = &piece;
            if at_line_start {
                if data == b".\r\n" || data == b".\n" {
                    break true;
                }
                if data.first() == Some(&b'.') {
                    data = &data[1..];
                }
            }
            out.clear();
            if let Some(body) = data.strip_suffix(b"\n") {
                let cr_before = match body.last() {
                    Some(&b) => b == b'\r',
                    None => prev_cr,
                };
                out.extend_from_slice(body);
                if !cr_before {
                    out.push(b'\r');
                }
                out.push(b'\n');
                at_line_start = true;
                prev_cr = false;
            } else {
                out.extend_from_slice(data);
                at_line_start = false;
                prev_cr = match data.last() {
                    Some(&b) => b == b'\r',
                    None => prev_cr,
                };
            }
            size += out.len() as u64;
            if size > self.limits.max_size {
                too_big = true;
            }
            if !too_big
                && !write_failed
                && let Some(w) = writer.as_mut()
                && w.write_all(&out).is_err()
            {
                write_failed = true;
            }
        };
        if let Some(mut w) = writer.take()
            && w.flush().is_err()
        {
            write_failed = true;
        }
        drop(writer);
        if !complete {
            // End of input in the middle of the data: nothing to hand over, nobody to tell.
            return Ok(Next::Close);
        }
        let sender = self.sender.take().unwrap_or_default();
        let recipients = std::mem::take(&mut self.recipients);
        if too_big {
            self.reply(552, "5.3.4 Message size exceeds fixed maximum message size")?;
            return Ok(Next::Continue);
        }
        let body = match temp {
            Some(t) if !write_failed => Body::temporary(t.into_temp_path()),
            _ => {
                self.reply(451, "4.3.0 Local error: cannot store the message")?;
                return Ok(Next::Continue);
            }
        };
        let envelope = Envelope {
            sender,
            recipients,
            ..Envelope::default()
        };
        match handler(envelope, body) {
            BsOutcome::Delivered => self.reply(250, "2.0.0 Message accepted for delivery")?,
            BsOutcome::Queued => self.reply(250, "2.0.0 Message queued for later delivery")?,
            BsOutcome::Failed(r) => self.write_reply(&r)?,
        }
        Ok(Next::Continue)
    }

    fn write_reply(&mut self, r: &Reply) -> io::Result<()> {
        let code = if (200..600).contains(&r.code) {
            r.code
        } else {
            554
        };
        let lines: Vec<String> = if r.lines.is_empty() {
            vec!["Delivery failed".to_owned()]
        } else {
            r.lines.iter().map(|l| clean(l)).collect()
        };
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            write!(self.output, "{code}{sep}{l}\r\n")?;
        }
        self.output.flush()
    }
}

/// Text safe inside one reply line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
