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

// --- who may have written the files root reads ---------------------------------------------

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root (the tests run as root) refuses a configuration another user owns, however it is
/// found: XDG (as under `sudo -E`), $M365SEND_CONFIG, -C. The reason and the fix are given.
#[test]
fn root_refuses_a_configuration_another_user_owns() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("m365send")).unwrap();
    let file = write(
        dir.path(),
        "m365send/config.toml",
        "[profiles.only]\nmode = \"direct\"\n\
         auth = { password = { command = \"touch /tmp/m365send-pwned\" } }\n",
        0o644,
    );
    std::os::unix::fs::chown(&file, Some(NOBODY), None).unwrap();
    let env_xdg = {
        let d = dir.path().to_owned();
        move |name: &str| (name == "XDG_CONFIG_HOME").then(|| d.clone().into_os_string())
    };
    let e = config::load_with_env(None, &env_xdg).unwrap_err();
    assert_eq!(e.exit.code(), 78);
    assert!(
        e.message.starts_with(&format!(
            "configuration refused: {} is owned by uid 65534",
            file.display()
        )),
        "{}",
        e.message
    );
    assert!(e.message.contains("sudo -E"), "{}", e.message);
    assert!(
        e.message
            .contains(&format!("`chown root {}`", file.display()))
    );

    // Through the binary: $XDG_CONFIG_HOME, $M365SEND_CONFIG, -C.
    for (args, env) in [
        (vec!["--profile", "only", "root"], vec![]),
        (vec!["root"], vec![("M365SEND_CONFIG", file.as_path())]),
        (vec!["-C", file.to_str().unwrap(), "root"], vec![]),
    ] {
        let o = run(dir.path(), &args, &env);
        assert_eq!(o.status.code(), Some(78), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("configuration refused") && stderr(&o).contains("uid 65534"),
            "{}",
            stderr(&o)
        );
    }

    // Root's own file, but group-writable, or below a directory others may write: refused.
    std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
    let e = config::load(Some(&file)).unwrap_err();
    assert!(e.message.contains("writable by its group"), "{}", e.message);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let parent = file.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = config::load(Some(&file)).unwrap_err();
    assert!(
        e.message
            .contains(&format!("directory {} is writable by", parent.display())),
        "{}",
        e.message
    );
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(config::load(Some(&file)).unwrap().is_some());
}

/// A secret file and an aliases file used by root follow the same rule.
#[test]
fn root_refuses_secret_and_aliases_files_another_user_owns() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "app.secret", "s3cr3t\n", 0o600);
    let aliases = write(dir.path(), "aliases", "root: ops@contoso.com\n", 0o644);
    let source = config::SecretSource {
        file: Some(secret.clone()),
        ..Default::default()
    };
    assert_eq!(source.resolve("auth.password").unwrap().expose(), "s3cr3t");
    let mut profile = config::Profile {
        aliases_file: Some(aliases.clone()),
        ..Default::default()
    };
    assert!(m365send::aliases::Aliases::load(&profile).is_ok());

    std::os::unix::fs::chown(&secret, Some(NOBODY), None).unwrap();
    let e = source.resolve("auth.password").unwrap_err();
    assert_eq!(e.exit.code(), 78);
    assert!(
        e.message.starts_with("auth.password: cannot read")
            && e.message.contains("refused")
            && e.message.contains("owned by uid 65534"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("s3cr3t"));

    std::fs::set_permissions(&aliases, std::fs::Permissions::from_mode(0o646)).unwrap();
    let e = m365send::aliases::Aliases::load(&profile).unwrap_err();
    assert_eq!(e.exit.code(), 78);
    assert!(e.message.contains("writable by others"), "{}", e.message);
    profile.aliases_file = None;
    assert!(m365send::aliases::Aliases::load(&profile).is_ok());
}

/// Another user (nobody, through setpriv) reads root's 0644 configuration, but not a file
/// owned by yet another user.
#[test]
fn a_user_reads_roots_configuration_but_not_a_strangers() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = write(
        dir.path(),
        "config.toml",
        "[profiles.only]\nmode = \"direct\"\n",
        0o644,
    );
    let as_nobody = |file: &Path| {
        Process::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(["-C", file.to_str().unwrap(), "--profile", "nope", "root"])
            .env_remove("M365SEND_CONFIG")
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = as_nobody(&file);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(stderr(&o).contains("\"only\""), "{}", stderr(&o));
    std::os::unix::fs::chown(&file, Some(4321), None).unwrap();
    let o = as_nobody(&file);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not by uid 65534 (nobody) or root"),
        "{}",
        stderr(&o)
    );
}

/// Every TOML example README.md shows is accepted as written, and so is each commented-out
/// alternative in it once uncommented (`# graph_host = ...`): a reader copies them. The
/// `[serve]` example names the profiles "cron" and "lab", which come before it.
#[test]
fn the_readme_configuration_examples_are_accepted() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 5, "{}", blocks.len());
    let profiles = "[profiles.cron]\nmode = \"relay\"\nsender = \"alerts@contoso.com\"\n\n\
                    [profiles.lab]\nmode = \"direct\"\nsender = \"scanner@contoso.com\"\n";
    for block in blocks {
        let mut variants = vec![block.to_owned()];
        // Each commented key alone, uncommented (alternatives of one key exclude each other).
        for (i, line) in block.lines().enumerate() {
            let Some(rest) = line.strip_prefix("# ") else {
                continue;
            };
            if !rest.contains(" = ") || rest.starts_with(char::is_uppercase) {
                continue;
            }
            let key = rest.split(" = ").next().unwrap().trim();
            let text: Vec<&str> = block
                .lines()
                .enumerate()
                .filter(|(j, l)| *j == i || !l.trim_start().starts_with(&format!("{key} =")))
                .map(|(j, l)| if j == i { rest } else { l })
                .collect();
            variants.push(text.join("\n"));
        }
        for text in variants {
            let full = if text.contains("[serve]") && !text.contains("[profiles.cron]") {
                format!("{profiles}\n{text}")
            } else {
                text.clone()
            };
            if let Err(f) = Config::parse(&full, Path::new("README.md")) {
                panic!("README example refused: {}\n{full}", f.message);
            }
        }
    }
}
