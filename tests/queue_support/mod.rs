//! Shared helpers for tests/queue.rs and tests/queue_faults.rs: a scripted fake Deliverer
//! that records what it saw, and builders for configs and prepared messages.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use m365send::config::{Config, Mode, Profile};
use m365send::message::{Body, Envelope, Prepared};
use m365send::queue::{BoxFuture, Deliverer, MessageOutcome, Problem};
use m365send::smtp::Reply;

/// What the fake saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Open(String),
    Send {
        sender: String,
        recipients: Vec<String>,
        subject: String,
    },
    Reset,
    Close,
}

pub type Script = Box<dyn FnMut(&Prepared, &[u8]) -> MessageOutcome>;

/// A fake delivery engine: `script` decides each message's outcome (default: delivered).
pub struct Fake {
    pub events: Vec<Event>,
    pub sent_at: Vec<Instant>,
    pub bodies: Vec<Vec<u8>>,
    pub script: Option<Script>,
    pub open_error: Option<Problem>,
    pub reset_error: bool,
    pub send_delay: Duration,
    /// Append the subject of each accepted message to this file (flushed), before returning.
    pub log: Option<PathBuf>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            events: Vec::new(),
            sent_at: Vec::new(),
            bodies: Vec::new(),
            script: None,
            open_error: None,
            reset_error: false,
            send_delay: Duration::ZERO,
            log: None,
        }
    }
}

impl Fake {
    pub fn scripted(f: impl FnMut(&Prepared, &[u8]) -> MessageOutcome + 'static) -> Fake {
        Fake {
            script: Some(Box::new(f)),
            ..Fake::default()
        }
    }
    pub fn sends(&self) -> Vec<(String, Vec<String>, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Send {
                    sender,
                    recipients,
                    subject,
                } => Some((sender.clone(), recipients.clone(), subject.clone())),
                _ => None,
            })
            .collect()
    }
    pub fn subjects(&self) -> Vec<String> {
        self.sends().into_iter().map(|s| s.2).collect()
    }
}

pub fn subject_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .trim()
        .to_owned()
}

impl Deliverer for Fake {
    fn open<'a>(
        &'a mut self,
        _config: &'a Config,
        profile: &'a Profile,
        _envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), Problem>> {
        Box::pin(async move {
            self.events.push(Event::Open(profile.name.clone()));
            match &self.open_error {
                Some(p) => Err(p.clone()),
                None => Ok(()),
            }
        })
    }

    fn send<'a>(&'a mut self, message: &'a Prepared) -> BoxFuture<'a, MessageOutcome> {
        Box::pin(async move {
            let body = std::fs::read(message.body.path()).unwrap();
            assert_eq!(body.len() as u64, message.size, "body size matches");
            let subject = subject_of(&body);
            self.sent_at.push(Instant::now());
            self.events.push(Event::Send {
                sender: message.envelope.sender.clone(),
                recipients: message.envelope.recipients.clone(),
                subject: subject.clone(),
            });
            if !self.send_delay.is_zero() {
                std::thread::sleep(self.send_delay);
            }
            let outcome = match &mut self.script {
                Some(f) => f(message, &body),
                None => MessageOutcome::Delivered,
            };
            if let (Some(log), MessageOutcome::Delivered) = (&self.log, &outcome) {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap();
                writeln!(f, "{subject}").unwrap();
                f.sync_all().unwrap();
            }
            self.bodies.push(body);
            outcome
        })
    }

    fn reset(&mut self) -> BoxFuture<'_, Result<(), Problem>> {
        Box::pin(async move {
            self.events.push(Event::Reset);
            if self.reset_error {
                Err(Problem::error("connection lost"))
            } else {
                Ok(())
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.events.push(Event::Close);
        })
    }
}

pub fn reply(code: u16, text: &str) -> Reply {
    Reply {
        code,
        enhanced: text.split(' ').next().and_then(|c| c.parse().ok()),
        lines: vec![text.to_owned()],
    }
}

pub fn profile(mode: Mode) -> Profile {
    Profile {
        mode,
        ..Profile::default()
    }
}

/// A config with profile "relay" (relay mode, no pacing) and "submit" (submit, rate from arg).
pub fn config(spool: &Path) -> Config {
    let mut profiles = BTreeMap::new();
    let mut relay = profile(Mode::Relay);
    relay.name = "relay".into();
    relay.endpoint.mx_host = Some("contoso-com.mail.protection.outlook.com".into());
    profiles.insert("relay".to_owned(), relay);
    let mut submit = profile(Mode::Submit);
    submit.name = "submit".into();
    submit.mailbox = Some("app@contoso.com".into());
    submit.rate_per_minute = Some(0);
    profiles.insert("submit".to_owned(), submit);
    Config {
        spool_dir: Some(spool.to_path_buf()),
        profiles,
        ..Config::default()
    }
}

pub fn message_bytes(subject: &str) -> Vec<u8> {
    format!(
        "From: alerts@contoso.com\r\nTo: ops@contoso.com\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@test>\r\nMIME-Version: 1.0\r\n\r\nBody of {subject}\r\n\
         second line\r\n"
    )
    .into_bytes()
}

/// A prepared message with its body in a temporary file.
pub fn prepared(sender: &str, recipients: &[&str], subject: &str) -> Prepared {
    let bytes = message_bytes(subject);
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(&bytes).unwrap();
    let header_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
    Prepared {
        envelope: Envelope {
            sender: sender.to_owned(),
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
            dsn: Default::default(),
        },
        body: Body::temporary(tmp.into_temp_path()),
        size: bytes.len() as u64,
        eight_bit: false,
        smtputf8: false,
        header_block: String::from_utf8_lossy(&bytes[..header_end]).into_owned(),
    }
}

/// Records dead-letter calls: (sender, recipients, reason, body).
#[derive(Clone, Default)]
pub struct DeadLetters(pub Arc<Mutex<Vec<DeadLetter>>>);

/// (envelope sender, recipients, reason, body)
pub type DeadLetter = (String, Vec<String>, String, Vec<u8>);

impl DeadLetters {
    pub fn writer(
        &self,
    ) -> impl Fn(&Config, &Profile, &Prepared, &str) -> Result<PathBuf, m365send::exit::Failure> + use<>
    {
        let store = self.0.clone();
        move |_c, _p, m, reason| {
            let body = std::fs::read(m.body.path()).unwrap();
            store.lock().unwrap().push((
                m.envelope.sender.clone(),
                m.envelope.recipients.clone(),
                reason.to_owned(),
                body,
            ));
            Ok(PathBuf::from("/dev/null"))
        }
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Overwrite fields of an entry's metadata JSON (tests only).
pub fn edit_meta(spool: &Path, id: &str, f: impl FnOnce(&mut serde_json::Value)) {
    let path = spool.join("meta").join(format!("{id}.json"));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
