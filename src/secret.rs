//! A string that must never be printed: passwords, tokens, client secrets, assertions.
//!
//! Owns: the `Secret` wrapper. Its Debug and Display print `<redacted>`; the only way to the
//! value is `expose()`, which call sites use at the last moment (building an AUTH line, an
//! HTTP form). Also running a secret `command` (`run_command`): in a process group of its own,
//! stopped whole at its timeout even when a child keeps its output open, its output bounded,
//! and named in messages by its program only (`command_name`: the command line often holds a
//! vault token). Must not: implement Serialize, or anything that writes the value out
//! implicitly.

use std::fmt;
use std::io::Read;
use std::process::ExitStatus;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value. Never pass the result to a log, a transcript or an error message.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Most bytes a secret command may write: a secret is a line, a token a few KiB. More is
/// refused (a runaway command must not fill memory).
pub const COMMAND_OUTPUT_MAX: usize = 64 * 1024;

/// Why a secret command gave no output to use.
#[derive(Debug)]
pub enum CommandError {
    /// It could not be started.
    Spawn(std::io::Error),
    /// It (or a child keeping its output open) ran past the timeout; the whole process
    /// group was killed.
    TimedOut,
    /// It wrote more than [`COMMAND_OUTPUT_MAX`] bytes; the whole process group was killed.
    TooLong,
}

/// The program a command line runs, for messages: `VAULT_TOKEN=s.xyz /usr/bin/vault kv get
/// -field=pw secret/m365` is `vault`. Never the arguments or variable assignments, which often
/// hold a token. "the command" when no plain program name can be found.
pub fn command_name(cmd: &str) -> String {
    let assignment = |w: &str| {
        w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let word = cmd
        .split_whitespace()
        .find(|w| !assignment(w))
        .unwrap_or("")
        .trim_matches(['"', '\'']);
    let base = word.rsplit('/').next().unwrap_or("");
    let plain = !base.is_empty()
        && base.len() <= 64
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
    if plain {
        base.to_owned()
    } else {
        "the command".to_owned()
    }
}

/// Run `sh -c cmd` in a process group of its own with stdin and stderr closed (stderr could
/// echo the secret) and return its exit status and stdout. At `timeout` the whole group is
/// killed and the wait ends, even when a child of the shell still holds stdout open; output
/// beyond [`COMMAND_OUTPUT_MAX`] kills the group too.
pub fn run_command(cmd: &str, timeout: Duration) -> Result<(ExitStatus, Vec<u8>), CommandError> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(CommandError::Spawn)?;
    // The group id is the child's pid (process_group(0)).
    let group = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: killpg has no memory preconditions; a group that is gone gives ESRCH.
        unsafe {
            libc::killpg(group, libc::SIGKILL);
        }
    };
    // Read stdout on a thread, at most one byte past the limit. The thread ends at end of
    // file, which a killed group brings; it is not joined, so a process that escaped the
    // group cannot hold us.
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let read = out
                .take(COMMAND_OUTPUT_MAX as u64 + 1)
                .read_to_end(&mut buf);
            let _ = tx.send(match read {
                Ok(_) if buf.len() <= COMMAND_OUTPUT_MAX => Some(buf),
                Ok(_) => None,
                // A read error: what was read is all there is.
                Err(_) => Some(buf),
            });
        });
    } else {
        let _ = tx.send(Some(Vec::new()));
    }
    let deadline = Instant::now() + timeout;
    let mut status = None;
    let mut output = None;
    loop {
        if status.is_none() {
            match child.try_wait() {
                Ok(s) => status = s,
                Err(e) => {
                    kill_group();
                    let _ = child.wait();
                    return Err(CommandError::Spawn(e));
                }
            }
        }
        if output.is_none() {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Some(buf)) => output = Some(buf),
                Ok(None) => {
                    kill_group();
                    let _ = child.wait();
                    return Err(CommandError::TooLong);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => output = Some(Vec::new()),
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let (Some(status), Some(_)) = (status, &output) {
            return Ok((status, output.unwrap_or_default()));
        }
        if Instant::now() >= deadline {
            kill_group();
            let _ = child.wait();
            return Err(CommandError::TimedOut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn command_named_by_its_program_only() {
        for (cmd, name) in [
            ("vault kv get -field=pw secret/m365", "vault"),
            ("VAULT_TOKEN=s.abc123 /usr/local/bin/vault read x", "vault"),
            ("  'pass' show m365/app", "pass"),
            ("cat /etc/m365send/app.secret", "cat"),
            ("echo s3cr3t", "echo"),
            ("$(echo s3cr3t)", "the command"),
            ("", "the command"),
        ] {
            assert_eq!(command_name(cmd), name, "{cmd}");
        }
    }

    #[test]
    fn command_output_and_exit_status() {
        let (status, out) =
            run_command("printf 's3cret\\n'; echo noise >&2", Duration::from_secs(5)).unwrap();
        assert!(status.success());
        assert_eq!(out, b"s3cret\n");
        let (status, _) = run_command("exit 3", Duration::from_secs(5)).unwrap();
        assert_eq!(status.code(), Some(3));
    }

    /// The shell exits but a child keeps stdout open: the wait ends at the timeout and the
    /// child, in the same process group, is killed.
    #[test]
    fn timeout_kills_the_group_even_when_a_child_holds_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!("sleep 600 & echo $! > {}; echo partial", pidfile.display());
        let started = Instant::now();
        let r = run_command(&cmd, Duration::from_millis(500));
        assert!(matches!(r, Err(CommandError::TimedOut)), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited {:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(gone(pid), "the child {pid} survived the timeout");

        let started = Instant::now();
        let r = run_command("sleep 20", Duration::from_millis(300));
        assert!(matches!(r, Err(CommandError::TimedOut)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A process is gone when /proc has no entry for it or it is a zombie (its parent, the
    /// shell, exited, and the zombie waits for init to reap it).
    pub(crate) fn gone(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().chars().next())
                })
                .flatten();
            if matches!(state, None | Some('Z') | Some('X')) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn output_beyond_the_limit_is_refused() {
        let started = Instant::now();
        let r = run_command("head -c 300000000 /dev/zero", Duration::from_secs(20));
        assert!(matches!(r, Err(CommandError::TooLong)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let exact = format!("head -c {COMMAND_OUTPUT_MAX} /dev/zero");
        let (_, out) = run_command(&exact, Duration::from_secs(5)).unwrap();
        assert_eq!(out.len(), COMMAND_OUTPUT_MAX);
    }
}
