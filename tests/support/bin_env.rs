//! Running the real `m365send` binary against a configuration in a temporary directory.
//!
//! Use from a test file with `#[path = "support/bin_env.rs"] mod bin_env;`:
//!
//! ```ignore
//! let env = BinEnv::new();
//! env.write_profile(&format!("mode = \"relay\"\n{}", BinEnv::endpoint(port, Some(ca))));
//! let out = env.run(&["-f", "a@contoso.com", "b@contoso.com"], b"Subject: x\n\nbody\n").await;
//! ```
//!
//! The profile is always called `p`; the spool, the dead letter and HOME are in the directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_m365send");

pub struct BinEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub spool: PathBuf,
    pub dead: PathBuf,
}

impl BinEnv {
    pub fn new() -> BinEnv {
        let dir = tempfile::tempdir().unwrap();
        BinEnv {
            config: dir.path().join("config.toml"),
            spool: dir.path().join("spool"),
            dead: dir.path().join("dead.letter"),
            dir,
        }
    }

    /// Write the configuration: one profile `p` whose keys (and sub-tables, written as
    /// `[profiles.p.x]`) are `body`. Fast timeouts and a single attempt unless `body` sets them.
    pub fn write_profile(&self, body: &str) {
        let mut text = format!(
            "default_profile = \"p\"\nspool_dir = \"{}\"\ndead_letter = \"{}\"\n\n[profiles.p]\nrate_per_minute = 0\n",
            self.spool.display(),
            self.dead.display()
        );
        text.push_str(body);
        if !body.contains("[profiles.p.timeouts]") {
            text.push_str("\n[profiles.p.timeouts]\nconnect = 5\ncommand = 5\ndata_end = 5\n");
        }
        if !body.contains("[profiles.p.retry]") {
            text.push_str("\n[profiles.p.retry]\nattempts = 1\ninitial_delay_ms = 10\n");
        }
        std::fs::write(&self.config, text).unwrap();
    }

    /// A directory whose relay profile points at a test server on 127.0.0.1 (`ca`: its CA).
    pub fn relay(port: u16, ca: Option<&Path>) -> BinEnv {
        let env = BinEnv::new();
        env.write_relay(port, ca, "");
        env
    }

    /// (Re)write the configuration: a relay profile pointing at a test server on 127.0.0.1
    /// (`ca`: its CA), with `keys` as more keys of the profile.
    pub fn write_relay(&self, port: u16, ca: Option<&Path>, keys: &str) {
        self.write_profile(&format!(
            "mode = \"relay\"\n{keys}\n{}",
            BinEnv::endpoint(port, ca)
        ));
    }

    /// The endpoint and CA lines pointing a profile at a test server on 127.0.0.1.
    pub fn endpoint(port: u16, ca: Option<&Path>) -> String {
        let mut s = format!("\n[profiles.p.endpoint]\nhost = \"127.0.0.1\"\nport = {port}\n");
        if let Some(ca) = ca {
            s.push_str(&format!(
                "\n[profiles.p.tls]\nca_file = \"{}\"\n",
                ca.display()
            ));
        }
        s
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("M365SEND_CONFIG", &self.config)
            .env("HOME", self.dir.path())
            .env_remove("M365SEND_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Run with `input` on stdin; stdout and stderr captured.
    pub async fn run(&self, args: &[&str], input: &[u8]) -> Output {
        self.run_with(self.command(args), input).await
    }

    /// Run a prepared command (e.g. with stderr replaced) with `input` on stdin.
    pub async fn run_with(&self, mut c: Command, input: &[u8]) -> Output {
        let mut child = c.stdin(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // A process that exits before reading everything closes the pipe: not our failure.
        let _ = stdin.write_all(input).await;
        drop(stdin);
        child.wait_with_output().await.unwrap()
    }

    /// What `queue list --json` shows.
    pub async fn queue_list(&self) -> serde_json::Value {
        let o = self.run(&["queue", "list", "--json"], b"").await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// How many entries `queue list --json` shows.
    pub async fn queue_count(&self) -> u64 {
        self.queue_list().await["count"].as_u64().unwrap()
    }

    /// Time travel: make every queued entry due now (the first retry waits a minute).
    pub fn make_due(&self) {
        make_due(&self.spool);
    }

    pub fn dead_letter(&self) -> String {
        std::fs::read_to_string(&self.dead).unwrap_or_default()
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Make every entry of the spool at `spool` due now.
pub fn make_due(spool: &Path) {
    for de in std::fs::read_dir(spool.join("meta")).unwrap() {
        let p = de.unwrap().path();
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["next_attempt"] = 0.into();
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }
}

/// A pipe whose reading end is already closed: writing to it fails with EPIPE, as for a
/// caller whose reader went away.
pub fn closed_pipe() -> Stdio {
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    Stdio::from(w)
}
