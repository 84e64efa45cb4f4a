//! Configuration through the loader and the binary: errors name file, line and key; a file
//! holding an inline secret must be private; the profile follows --profile, then -f.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};

use m365send::config::{self, Config, Mode};

const BIN: &str = env!("CARGO_BIN_EXE_m365send");

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut p = Process::new(BIN);
    p.args(args)
        .env_remove("M365SEND_CONFIG")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .stdin(Stdio::null());
    for (k, v) in env {
        p.env(k, v);
    }
    p.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn example_loads_through_the_loader() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let c = config::load(Some(&path)).unwrap().unwrap();
    assert_eq!(c.path.as_deref(), Some(path.as_path()));
    assert_eq!(c.select_profile(None, None).unwrap().name, "cron");
    for name in ["cron", "app", "me", "lab", "legacy"] {
        assert!(
            c.profiles.contains_key(name),
            "example lacks profile {name}"
        );
    }
}

#[test]
fn inline_secret_in_a_readable_file_is_refused_with_the_chmod() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "config.toml",
        "[profiles.app]\nmailbox = \"app@contoso.com\"\n\
         auth = { client_id = \"x\", client_secret = { value = \"s3cr3t-value\" } }\n",
        0o640,
    );
    let o = run(dir.path(), &["-C", file.to_str().unwrap(), "root"], &[]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("`chmod 600 {}`", file.display())),
        "{e}"
    );
    assert!(e.contains("profiles.app.auth.client_secret.value"), "{e}");
    assert!(!e.contains("s3cr3t"), "the secret leaked: {e}");

    // Found through $M365SEND_CONFIG: same rule.
    let o = run(dir.path(), &["root"], &[("M365SEND_CONFIG", &file)]);
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("chmod 600"));

    // Once private, the file is accepted (the run then fails later, not on the config).
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(config::load(Some(&file)).unwrap().is_some());
}

#[test]
fn parse_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        "default_profile = \"cron\"\n\n[profiles.cron]\nmode = \"relay\"\n\n[profiles.cron.tls]\nmin_version = \"1.2\"\nclient_crt = \"/x\"\n",
        0o644,
    );
    let o = run(dir.path(), &["-C", file.to_str().unwrap(), "root"], &[]);
    assert_eq!(o.status.code(), Some(78));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "{}:8:1: profiles.cron.tls.client_crt: unknown field",
            file.display()
        )),
        "{e}"
    );

    let file = write(
        dir.path(),
        "v.toml",
        "[profiles.cron]\nmode = \"relay\"\nsender = \"root\"\n",
        0o644,
    );
    let e = config::load(Some(&file)).unwrap_err();
    assert_eq!(e.exit.code(), 78);
    assert!(
        e.message.contains("v.toml:3: profiles.cron.sender:"),
        "{}",
        e.message
    );
}

#[test]
fn missing_named_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let o = run(
        dir.path(),
        &["--config", missing.to_str().unwrap(), "root"],
        &[],
    );
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("missing.toml"));
    let o = run(dir.path(), &["root"], &[("M365SEND_CONFIG", &missing)]);
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("M365SEND_CONFIG"), "{}", stderr(&o));
}

#[test]
fn xdg_file_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("m365send")).unwrap();
    write(
        dir.path(),
        "m365send/config.toml",
        "[profiles.only]\nmode = \"direct\"\n",
        0o644,
    );
    // An unknown --profile is reported with the ones that exist: proof the file was read.
    let o = run(dir.path(), &["--profile", "nope", "root"], &[]);
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("\"only\""), "{}", stderr(&o));
}

const PROFILES: &str = r#"
default_profile = "cron"

[profiles.cron]
mode = "relay"
sender = "alerts@contoso.com"
addresses = ["root"]

[profiles.app]
mailbox = "app@contoso.com"

[profiles.billing]
mode = "submit"
sender = "billing@contoso.com"
addresses = ["*@billing.contoso.com"]
"#;

#[test]
fn profile_by_flag_then_sender_then_default() {
    let c = Config::parse(PROFILES, Path::new("test.toml")).unwrap();
    let pick = |name, from| c.select_profile(name, from).unwrap();
    assert_eq!(pick(Some("app"), Some("root")).name, "app");
    assert_eq!(pick(None, Some("APP@contoso.com")).name, "app");
    assert_eq!(
        pick(None, Some("Billing <billing@contoso.com>")).name,
        "billing"
    );
    assert_eq!(
        pick(None, Some("invoices@billing.contoso.com")).name,
        "billing"
    );
    assert_eq!(pick(None, Some("root")).name, "cron");
    assert_eq!(pick(None, Some("someone@else.org")).name, "cron");
    assert_eq!(pick(None, None).name, "cron");
    // --mode applies over the chosen profile.
    assert_eq!(pick(None, Some("app@contoso.com")).mode, Mode::Submit);
    assert_eq!(
        pick(None, Some("app@contoso.com"))
            .with_mode(Some(Mode::Direct))
            .mode,
        Mode::Direct
    );
    let e = c.select_profile(Some("ghost"), None).unwrap_err();
    assert_eq!(e.exit.code(), 78);
    assert!(
        e.message.contains("\"app\", \"billing\", \"cron\""),
        "{}",
        e.message
    );
}

/// A broken inline secret: neither stderr nor the dead letter's failure header shows any part
/// of it (the parser's own message quotes the line, and reads fragments of the broken string
/// as keys).
#[test]
fn a_config_syntax_error_shows_no_part_of_a_secret() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "config.toml",
        "[profiles.app]\nmailbox = \"app@contoso.com\"\n\
         auth = { client_id = \"x\", client_secret = { value = \"s3cr3t-9f2\"tail-7c1d\" } }\n",
        0o600,
    );
    let mut child = Process::new(BIN)
        .args(["-C", file.to_str().unwrap(), "-i", "ops@contoso.com"])
        .env_remove("M365SEND_CONFIG")
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: nightly\n\nbody\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("{}:3:", file.display())) && e.contains("profiles.app.auth"),
        "{e}"
    );
    let dead = std::fs::read_to_string(dir.path().join("dead.letter")).unwrap();
    let failure = dead
        .lines()
        .find(|l| l.starts_with("X-M365send-Failure:"))
        .unwrap_or_default();
    assert!(failure.contains("config.toml:3:"), "{dead}");
    for part in ["s3cr3t", "9f2", "tail", "7c1d"] {
        assert!(!e.contains(part), "{part} on stderr: {e}");
        assert!(
            !failure.contains(part),
            "{part} in the dead letter: {failure}"
        );
    }
}

/// A profile whose password comes from `command`, sending to a closed local port (the secret
/// is resolved before connecting), never queueing: the run ends on the secret.
fn secret_command_config(dir: &Path, command: &str) -> PathBuf {
    let toml = format!(
        "dead_letter = \"{dead}\"\n\
         [profiles.app]\nmode = \"submit\"\nmailbox = \"app@contoso.com\"\nqueue = \"never\"\n\
         endpoint = {{ host = \"127.0.0.1\", port = 9 }}\n\
         retry = {{ attempts = 1 }}\n\
         auth = {{ method = \"password\", password = {{ command = {command:?}, timeout_secs = 1 }} }}\n",
        dead = dir.join("dead.letter").display(),
    );
    write(dir, "config.toml", &toml, 0o600)
}

/// Run the binary on `config` with a message on stdin; the exit status, stderr, the wall time
/// and the peak RSS of the process in KiB (wait4's rusage).
#[allow(clippy::zombie_processes)] // reaped by wait4, which std's Child cannot do
fn run_measured(dir: &Path, config: &Path) -> (Option<i32>, String, std::time::Duration, i64) {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let mut child = Process::new(BIN)
        .args(["-C", config.to_str().unwrap(), "-i", "ops@contoso.com"])
        .env_remove("M365SEND_CONFIG")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: t\n\nbody\n")
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data; the pid is our own unwaited child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, err, started.elapsed(), usage.ru_maxrss)
}

/// The shell exits at once but its child keeps stdout open: m365send stops waiting at the
/// timeout (1 s here), kills the child with its process group, exits 75 and keeps the message.
#[test]
fn secret_command_whose_child_holds_stdout_is_stopped_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let config = secret_command_config(
        dir.path(),
        &format!(
            "sleep 600 & echo $! > {}; echo half-a-secret",
            pidfile.display()
        ),
    );
    let (code, err, took, _) = run_measured(dir.path(), &config);
    assert_eq!(code, Some(75), "{err}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "took {took:?}: {err}"
    );
    assert!(
        err.contains("auth.password: command `sleep` did not finish within 1 s"),
        "{err}"
    );
    assert!(
        !err.contains("half-a-secret") && !err.contains("child.pid"),
        "{err}"
    );
    let dead = std::fs::read_to_string(dir.path().join("dead.letter")).unwrap();
    assert!(dead.contains("Subject: t"), "{dead}");
    assert!(
        !dead.contains("child.pid"),
        "the command line reached the dead letter"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.trim_start().chars().next())
            });
        if matches!(state, None | Some('Z') | Some('X')) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the command's child {pid} is still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// 300 MB of output is refused after 64 KiB: exit 78, and the process stays small.
#[test]
fn secret_command_output_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = secret_command_config(dir.path(), "head -c 300000000 /dev/zero");
    let (code, err, took, max_rss_kib) = run_measured(dir.path(), &config);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("wrote more than 64 KiB"), "{err}");
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    assert!(
        max_rss_kib < 64 * 1024,
        "peak RSS {max_rss_kib} KiB for a refused secret"
    );
}
