//! The command line: each argv real callers use parses to the right `Invocation`, and the
//! binary reports usage errors (exit 64) naming the option, before reading anything.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command as Process, Output, Stdio};

use m365send::cli::{Command, DeliveryMode, Invocation, SendArgs, parse};

fn argv(argv0: &str, rest: &[&str]) -> Vec<OsString> {
    std::iter::once(argv0)
        .chain(rest.iter().copied())
        .map(OsString::from)
        .collect()
}

fn send(inv: Invocation) -> SendArgs {
    match inv.command {
        Command::Send(a) => *a,
        other => panic!("expected Send, got {other:?}"),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn debian_cron() {
    let inv = parse(argv(
        "/usr/sbin/sendmail",
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
    ))
    .unwrap();
    assert_eq!(inv.ignored, strings(&["-B8BITMIME", "-oem"]));
    assert_eq!(
        send(inv),
        SendArgs {
            recipients: strings(&["root"]),
            ignore_dots: true,
            full_name: Some("CronDaemon".into()),
            ..SendArgs::default()
        }
    );
}

#[test]
fn cronie() {
    let inv = parse(argv(
        "sendmail",
        &[
            "-FCronDaemon",
            "-i",
            "-odi",
            "-oem",
            "-oi",
            "-t",
            "-f",
            "root",
        ],
    ))
    .unwrap();
    assert_eq!(inv.ignored, strings(&["-odi", "-oem"]));
    assert_eq!(
        send(inv),
        SendArgs {
            extract_recipients: true,
            ignore_dots: true,
            envelope_from: Some("root".into()),
            full_name: Some("CronDaemon".into()),
            delivery: DeliveryMode::Now,
            ..SendArgs::default()
        }
    );
}

#[test]
fn php_mail() {
    let a = send(parse(argv("/usr/sbin/sendmail", &["-t", "-i"])).unwrap());
    assert_eq!(
        a,
        SendArgs {
            extract_recipients: true,
            ignore_dots: true,
            ..SendArgs::default()
        }
    );
}

#[test]
fn mailx() {
    let a = send(parse(argv("sendmail", &["-i", "--", "a@x", "b@y"])).unwrap());
    assert_eq!(
        a,
        SendArgs {
            recipients: strings(&["a@x", "b@y"]),
            ignore_dots: true,
            ..SendArgs::default()
        }
    );
}

#[test]
fn after_double_dash_option_looking_words_are_recipients() {
    let a = send(parse(argv("sendmail", &["--", "-odd", "-t"])).unwrap());
    assert_eq!(a.recipients, strings(&["-odd", "-t"]));
    assert!(!a.extract_recipients);
}

#[test]
fn lettre() {
    let a = send(parse(argv("sendmail", &["-i", "-f", "a@x", "--", "b@y"])).unwrap());
    assert_eq!(
        a,
        SendArgs {
            recipients: strings(&["b@y"]),
            ignore_dots: true,
            envelope_from: Some("a@x".into()),
            ..SendArgs::default()
        }
    );
}

#[test]
fn git_send_email_and_symfony() {
    let a = send(parse(argv("sendmail", &["-i", "dev@x", "list@y"])).unwrap());
    assert_eq!(a.recipients, strings(&["dev@x", "list@y"]));
    let inv = parse(argv("sendmail", &["-bs"])).unwrap();
    assert!(matches!(inv.command, Command::SmtpStdio(_)));
}

#[test]
fn names() {
    assert_eq!(
        parse(argv("/usr/bin/mailq", &[])).unwrap().command,
        Command::QueueList { json: false }
    );
    assert_eq!(
        parse(argv("/usr/bin/newaliases", &[])).unwrap().command,
        Command::Newaliases
    );
    // `sendmail queue` mails the local user "queue"; `m365send queue` lists the queue.
    assert_eq!(
        send(parse(argv("sendmail", &["queue"])).unwrap()).recipients,
        strings(&["queue"])
    );
    assert_eq!(
        parse(argv("m365send", &["queue"])).unwrap().command,
        Command::QueueList { json: false }
    );
    // Likewise `serve`: a subcommand of m365send only.
    assert_eq!(
        parse(argv("m365send", &["serve"])).unwrap().command,
        Command::Serve
    );
    assert_eq!(
        send(parse(argv("sendmail", &["serve"])).unwrap()).recipients,
        strings(&["serve"])
    );
}

// --- the binary -------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_m365send");

/// Run the binary (as `name`, through a symlink, when given) with no configuration anywhere.
fn run_as(name: Option<&str>, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let program = match name {
        Some(n) => {
            let link = dir.path().join(n);
            std::os::unix::fs::symlink(BIN, &link).unwrap();
            link
        }
        None => Path::new(BIN).to_owned(),
    };
    Process::new(program)
        .args(args)
        .env_remove("M365SEND_CONFIG")
        .env_remove("M365SEND_LOG")
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_option_is_a_usage_error_naming_it() {
    for (args, name) in [
        (&["-x", "root"][..], "-x"),
        (&["--frobnicate", "root"], "--frobnicate"),
        (&["-bd"], "-bd"),
    ] {
        let o = run_as(Some("sendmail"), args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.starts_with("m365send: "), "{e}");
        assert!(e.contains(name), "{e}");
    }
}

/// `sendmail -bd` (an init script starting "the MTA daemon"): m365send has a listener now,
/// and the refusal says which command it is, rather than that there is none.
#[test]
fn daemon_mode_points_at_serve() {
    for flag in ["-bd", "-bD"] {
        let o = run_as(Some("sendmail"), &[flag]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{flag}: {e}");
        assert!(e.contains("m365send serve") && e.contains("[serve]"), "{e}");
        assert!(!e.contains("not a daemon"), "{e}");
    }
}

#[test]
fn bad_dsn_values_are_usage_errors() {
    for args in [&["-N", "always", "root"][..], &["-R", "body", "root"]] {
        let o = run_as(None, args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn help_and_version() {
    let o = run_as(None, &["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "--dry-run",
        "-oi",
        "Sendmail options",
        "queue",
        "config.example.toml",
    ] {
        assert!(out.contains(needle), "help lacks {needle}");
    }
    let o = run_as(None, &["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn mailq_and_newaliases() {
    let o = run_as(Some("mailq"), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("queue is empty"));
    let o = run_as(Some("newaliases"), &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("nothing to do"));
    let o = run_as(Some("sendmail"), &["-bp"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn no_configuration_is_exit_78_with_a_pointer() {
    if Path::new("/etc/m365send/config.toml").exists() {
        return; // a real system configuration would be found
    }
    for args in [&["root"][..], &["-t", "-i"], &["--dry-run", "root"]] {
        let o = run_as(Some("sendmail"), args);
        assert_eq!(o.status.code(), Some(78), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("config.example.toml"), "{}", stderr(&o));
    }
}

/// A message refused before delivery (no configuration, an alias loop) is not lost: cron and
/// PHP keep no copy, so it goes to the dead letter, and stderr says where.
#[test]
fn message_refused_before_delivery_is_kept_in_the_dead_letter() {
    use std::io::Write;
    // Invoked as sendmail, the configuration is named by the environment (`-C` is refused
    // to a sendmail caller).
    let run = |dir: &Path, args: &[&str], stdin: &[u8]| {
        let (config, args) = match args {
            ["-C", file, rest @ ..] => (Some(*file), rest),
            _ => (None, args),
        };
        let mut child = Process::new(dir.join("sendmail"));
        match config {
            Some(file) => child.env("M365SEND_CONFIG", file),
            None => child.env_remove("M365SEND_CONFIG"),
        };
        let mut child = child
            .args(args)
            .env("HOME", dir)
            .env("XDG_CONFIG_HOME", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(BIN, dir.path().join("sendmail")).unwrap();
    let dead = dir.path().join("dead.letter");
    let cfg = dir.path().join("loop.toml");
    std::fs::write(
        &cfg,
        "[profiles.a]\nmode = \"relay\"\nsender = \"alerts@contoso.com\"\n\
         aliases = { root = \"admins\", admins = \"root, x@contoso.com\" }\n\
         endpoint = { mx_host = \"127.0.0.1\", port = 9 }\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();

    let o = run(
        dir.path(),
        &["-C", cfg, "-FCronDaemon", "-i", "root"],
        b"Subject: backup\n\nbackup of /srv failed\n",
    );
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(stderr(&o).contains("alias loop"), "{}", stderr(&o));
    // The same words as after a failed delivery, on the report's last line.
    assert!(
        stderr(&o).ends_with(&format!(
            "\n  not sent; message saved to {}\n",
            dead.display()
        )),
        "{}",
        stderr(&o)
    );
    let kept = std::fs::read_to_string(&dead).unwrap();
    assert!(kept.contains("Subject: backup\n"), "{kept}");
    assert!(kept.contains("backup of /srv failed"), "{kept}");

    // No configuration at all: kept too (only when stdin is given; /etc must not exist).
    if !Path::new("/etc/m365send/config.toml").exists() {
        let o = run(dir.path(), &["-i", "root"], b"Subject: first\n\nhello\n");
        assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
        assert!(stderr(&o).contains("saved to"), "{}", stderr(&o));
        assert!(
            std::fs::read_to_string(&dead)
                .unwrap()
                .contains("Subject: first")
        );
    }

    // Refused by the route before connecting (direct send to an outside address): kept too.
    let direct = dir.path().join("direct.toml");
    std::fs::write(
        &direct,
        "[profiles.lab]\nmode = \"direct\"\nsender = \"scanner@contoso.com\"\n\
         accepted_domains = [\"contoso.com\"]\n\
         endpoint = { mx_host = \"127.0.0.1\", port = 9 }\n",
    )
    .unwrap();
    let o = run(
        dir.path(),
        &["-C", direct.to_str().unwrap(), "-i", "someone@fabrikam.com"],
        b"Subject: scan\n\nscanned page\n",
    );
    assert_eq!(o.status.code(), Some(67), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("outside the organisation"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("saved to"), "{}", stderr(&o));
    assert!(
        std::fs::read_to_string(&dead)
            .unwrap()
            .contains("scanned page")
    );

    // A dry run keeps nothing.
    let before = std::fs::read(&dead).unwrap();
    let o = run(
        dir.path(),
        &["-C", cfg, "--dry-run", "root"],
        b"Subject: dry\n\nx\n",
    );
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert_eq!(std::fs::read(&dead).unwrap(), before);
}

// --- --dry-run end to end ----------------------------------------------------------------------
// No network: submit needs no DNS, relay and direct use a fixed `endpoint.mx_host`.

const DRY_RUN_CONFIG: &str = r#"
default_profile = "cron"

[profiles.cron]
mode = "relay"
sender = "alerts@contoso.com"
accepted_domains = ["contoso.com"]
aliases = { root = "ops@contoso.com" }
endpoint = { mx_host = "contoso-com.mail.protection.outlook.com" }
tls = { client_cert = "/etc/m365send/relay.crt", client_key = "/etc/m365send/relay.key" }

[profiles.lab]
mode = "direct"
sender = "scanner@contoso.com"
accepted_domains = ["contoso.com"]
endpoint = { mx_host = "contoso-com.mail.protection.outlook.com" }

[profiles.app]
mode = "submit"
mailbox = "app@contoso.com"
sender = "app@contoso.com"
auth = { client_id = "x", client_secret = { env = "UNUSED_IN_DRY_RUN" } }
"#;

fn dry_run(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, DRY_RUN_CONFIG).unwrap();
    let mut child = Process::new(BIN)
        .arg("-C")
        .arg(&cfg)
        .args(args)
        .env_remove("M365SEND_CONFIG")
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn assert_report(o: &Output, needles: &[&str]) {
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}\nstdout: {out}",
        stderr(o)
    );
    for n in needles {
        assert!(out.contains(n), "dry-run report lacks {n:?}:\n{out}");
    }
}

#[test]
fn dry_run_relay_from_cron() {
    let o = dry_run(
        &[
            "--dry-run",
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "root",
        ],
        b"Subject: backup\n\nok\n",
    );
    assert_report(
        &o,
        &[
            "cron (from ",
            "relay",
            "contoso-com.mail.protection.outlook.com:25",
            "STARTTLS required",
            "/etc/m365send/relay.crt",
            "alerts@contoso.com",
            "ops@contoso.com",
            "Subject: backup",
        ],
    );
}

#[test]
fn dry_run_direct_and_submit() {
    let o = dry_run(
        &["--dry-run", "--profile", "lab", "-t", "-i"],
        b"To: desk@contoso.com\nSubject: scan\n\nscan\n",
    );
    assert_report(
        &o,
        &[
            "direct",
            "contoso-com.mail.protection.outlook.com:25",
            "desk@contoso.com",
        ],
    );
    let o = dry_run(
        &[
            "--dry-run",
            "-f",
            "app@contoso.com",
            "--to",
            "a@contoso.com",
            "--subject",
            "hi",
            "--body",
            "x",
        ],
        b"",
    );
    assert_report(
        &o,
        &[
            "app (from ",
            "smtp.office365.com:587",
            "XOAUTH2 (app-only) as app@contoso.com",
            "Subject: hi",
        ],
    );
}

#[test]
fn dry_run_without_configuration_given_a_mode() {
    let dir = tempfile::tempdir().unwrap();
    let o = Process::new(BIN)
        .args([
            "--dry-run",
            "--mode",
            "submit",
            "--from",
            "me@example.com",
            "--to",
            "you@example.com",
            "--subject",
            "test",
            "--body",
            "hello",
        ])
        .env_remove("M365SEND_CONFIG")
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_report(
        &o,
        &[
            "no configuration file",
            "smtp.office365.com:587",
            "as me@example.com",
            "you@example.com",
        ],
    );
}

// --- arguments a sendmail caller may not give -------------------------------------------------

/// Invoked as sendmail, `-C`, `--config` and `--server` are refused (exit 77) unless the
/// configuration found without them lists the caller in `trusted_users`; the real callers'
/// argv (PHP's `-t -i -f`, cron's `-FCronDaemon -i -B8BITMIME -oem`) is untouched.
#[test]
fn sendmail_callers_may_not_name_a_configuration_or_server() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(BIN, dir.path().join("sendmail")).unwrap();
    let theirs = dir.path().join("theirs.toml");
    std::fs::write(
        &theirs,
        "[profiles.x]\nmode = \"relay\"\nsender = \"x@contoso.com\"\nendpoint = { mx_host = \"127.0.0.1\" }\n",
    )
    .unwrap();
    let ours = dir.path().join("config.toml");
    let write_ours = |trusted: &str| std::fs::write(&ours, relay_config(trusted)).unwrap();
    write_ours("");
    let run = |name: &str, args: &[&str]| {
        Process::new(dir.path().join(name))
            .args(args)
            .env("M365SEND_CONFIG", &ours)
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let theirs = theirs.to_str().unwrap();
    for args in [
        &["-C", theirs, "--dry-run", "root"][..],
        &["--config", theirs, "--dry-run", "root"],
        &["--server", "evil.example:25", "--dry-run", "root"],
        &["-t", "-i", "-f", "a@contoso.com", "-C", theirs],
        &["-bs", "--server", "evil.example"],
        &["-q", "-C", theirs],
    ] {
        let o = run("sendmail", args);
        assert_eq!(o.status.code(), Some(77), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("refused when m365send is invoked as sendmail"),
            "{e}"
        );
        assert!(e.contains("trusted_users"), "{e}");
    }
    // As sendmail with a message on stdin.
    let send = |args: &[&str], subject: &str| {
        Process::new(dir.path().join("sendmail"))
            .args(args)
            .env("M365SEND_CONFIG", &ours)
            .env("HOME", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                let text = format!("To: ops@contoso.com\nSubject: {subject}\n\nbody\n");
                c.stdin.take().unwrap().write_all(text.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap()
    };
    // The refused message is not lost: it is kept in the caller's dead letter.
    let o = send(&["-t", "-i", "-C", theirs], "injected");
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
    assert!(stderr(&o).contains("saved to"), "{}", stderr(&o));
    let dead = std::fs::read_to_string(dir.path().join("dead.letter")).unwrap();
    assert!(dead.contains("Subject: injected"), "{dead}");
    // The real callers' argv goes through (the dry run shows the route).
    for args in [
        &["-t", "-i", "-f", "alerts@contoso.com", "--dry-run"][..],
        &[
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "--dry-run",
            "root@contoso.com",
        ],
    ] {
        let o = send(args, "x");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    // Invoked as m365send by root (who owns the configuration): allowed.
    let o = run_as(
        None,
        &[
            "-C",
            theirs,
            "--server",
            "127.0.0.1:2525",
            "--dry-run",
            "root@contoso.com",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Listed in trusted_users (root here, by name): allowed as sendmail too.
    write_ours("trusted_users = [\"root\"]");
    let o = run(
        "sendmail",
        &[
            "--server",
            "127.0.0.1:2525",
            "--dry-run",
            "root@contoso.com",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("127.0.0.1:2525"));
}

/// A user who does not own the configuration (nobody, through setpriv, with root's file) may
/// not redirect it with --server even as m365send, unless listed in trusted_users.
#[test]
fn a_user_may_not_redirect_roots_configuration() {
    if !Path::new("/usr/bin/setpriv").exists() || unsafe_geteuid() != 0 {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ours = dir.path().join("config.toml");
    let write_ours = |trusted: &str| {
        std::fs::write(&ours, relay_config(trusted)).unwrap();
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    let run = || {
        Process::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args([
                "--server",
                "127.0.0.1:2525",
                "--dry-run",
                "root@contoso.com",
            ])
            .env("M365SEND_CONFIG", &ours)
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    write_ours("");
    let o = run();
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--server is refused: uid 65534 (nobody) does not own"),
        "{}",
        stderr(&o)
    );
    write_ours("trusted_users = [\"nobody\"]");
    let o = run();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// A relay profile "cron" with no network needed for a dry run; `top` goes above it
/// (`trusted_users = [...]`).
fn relay_config(top: &str) -> String {
    format!(
        "{top}\n[profiles.cron]\nmode = \"relay\"\nsender = \"alerts@contoso.com\"\n\
         endpoint = {{ mx_host = \"contoso-com.mail.protection.outlook.com\" }}\n"
    )
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}
