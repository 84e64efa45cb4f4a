//! Real deployments: README's /etc/m365send layout (root:root 0644 configuration, secrets
//! shared through a group) used by the users a host has besides root: www-data running PHP's
//! mail(), whose home (/var/www) belongs to root, and users whose crontabs send mail. The real
//! binary runs as another user (uid 65534, nobody, through setpriv) against the fake Microsoft
//! 365 server and token endpoint on 127.0.0.1. What is asserted is what that user meets: the
//! exit code, the fix on stderr (the exact command, which the test then runs), the message kept
//! in the dead letter, and the mail that arrives once the fix is applied.

#[path = "support/dns.rs"]
mod dns;
#[path = "support/fake_m365.rs"]
mod fake_m365;
#[path = "support/http.rs"]
mod http;
#[path = "support/token_server.rs"]
mod token_server;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use fake_m365::{FakeConfig, FakeM365};
use token_server::{Reply, TokenServer};
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_m365send");
const SETPRIV: &str = "/usr/bin/setpriv";
const NOBODY: u32 = 65534;
const TOKEN: &str = "deployment-access-token-3f9a";
const MAILBOX: &str = "app@contoso.com";

/// Root, with setpriv: these tests change users.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    euid == 0 && Path::new(SETPRIV).exists()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The gid of the group `name`, if the host has it.
fn gid_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: getgrnam returns a pointer into static storage or null; read at once.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: checked for null.
    (!gr.is_null()).then(|| unsafe { (*gr).gr_gid })
}

/// A host laid out as README.md says: `etc` (root 0755) holds the configuration (root 0644)
/// and the files it names; `home` is the user's home, owned by root as www-data's /var/www
/// is; `dead` is the user's, for the dead letter (configured, so that nothing goes to
/// /var/tmp).
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        for d in ["etc", "home"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
            chmod(&dir.path().join(d), 0o755);
        }
        let dead = dir.path().join("dead");
        std::fs::create_dir(&dead).unwrap();
        std::os::unix::fs::chown(&dead, Some(NOBODY), Some(NOBODY)).unwrap();
        chmod(&dead, 0o700);
        Host { dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn home(&self) -> PathBuf {
        self.path("home")
    }
    /// Write `etc/NAME` owned by root and group `gid` with `mode`; returns its path.
    fn etc_file(&self, name: &str, contents: &[u8], gid: u32, mode: u32) -> PathBuf {
        let p = self.path(&format!("etc/{name}"));
        std::fs::write(&p, contents).unwrap();
        std::os::unix::fs::chown(&p, Some(0), Some(gid)).unwrap();
        chmod(&p, mode);
        p
    }
    /// The configuration: `profile` is the body of `[profiles.p]` and its sub-tables.
    fn configure(&self, profile: &str) {
        let text = format!(
            "dead_letter = \"{}\"\n\n[profiles.p]\n{profile}\n\
             [profiles.p.timeouts]\nconnect = 5\ncommand = 5\ndata_end = 5\n\n\
             [profiles.p.retry]\nattempts = 1\ninitial_delay_ms = 10\n",
            self.path("dead/dead.letter").display()
        );
        self.etc_file("config.toml", text.as_bytes(), 0, 0o644);
    }
    fn dead_letter(&self) -> String {
        std::fs::read_to_string(self.path("dead/dead.letter")).unwrap_or_default()
    }

    /// Run m365send as nobody (and the supplementary `groups`), as PHP's mail() runs it as
    /// www-data: the configuration found through $M365SEND_CONFIG, HOME the root-owned home.
    async fn run_as_nobody(&self, groups: &[u32], args: &[&str], input: &[u8]) -> Output {
        self.run_as_nobody_home(groups, Some(&self.home()), args, input)
            .await
    }

    /// `run_as_nobody` with HOME set to `home`, or unset (a web server's environment).
    async fn run_as_nobody_home(
        &self,
        groups: &[u32],
        home: Option<&Path>,
        args: &[&str],
        input: &[u8],
    ) -> Output {
        let mut c = tokio::process::Command::new(SETPRIV);
        c.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"));
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            c.arg(format!("--groups={}", list.join(",")));
        }
        c.arg(BIN)
            .args(args)
            .current_dir("/")
            .env("M365SEND_CONFIG", self.path("etc/config.toml"))
            .env_remove("HOME")
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("M365SEND_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(h) = home {
            c.env("HOME", h);
        }
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input).await;
        drop(stdin);
        child.wait_with_output().await.unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command quoted in backticks on the line of `err` that holds `needle`.
fn quoted_command(err: &str, needle: &str) -> String {
    let line = err
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{err}"));
    let start = line.find('`').unwrap() + 1;
    let end = start + line[start..].find('`').unwrap();
    line[start..end].to_owned()
}

/// Run a fix the way the administrator would, as root.
fn run_as_root(command: &str) {
    let o = std::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .unwrap();
    assert!(o.status.success(), "{command}: {}", stderr(&o));
}

/// A submission profile with app-only OAuth against the fake server and token endpoint, its
/// client secret in `secret` (a file), the CA copied where every user may read it.
fn submit_profile(host: &Host, smtp: &FakeM365, tokens: &TokenServer, secret: &Path) -> String {
    let ca = host.etc_file("ca.pem", &std::fs::read(smtp.ca_file()).unwrap(), 0, 0o644);
    format!(
        "mode = \"submit\"\nmailbox = \"{MAILBOX}\"\ntenant = \"contoso.onmicrosoft.com\"\n\
         auth = {{ client_id = \"c1\", client_secret = {{ file = \"{}\" }}, authority = \"{}\" }}\n\
         endpoint = {{ host = \"127.0.0.1\", port = {} }}\n\
         tls = {{ ca_file = \"{}\" }}\n",
        secret.display(),
        tokens.authority(),
        smtp.port(),
        ca.display()
    )
}

const MESSAGE: &[u8] = b"To: ops@contoso.com\nSubject: order 1042\n\nThank you for your order.\n";

/// www-data's home belongs to root: its token cache (~/.cache/m365send) cannot be created. The
/// user hears the one command that fixes it, the message is kept, and after that command the
/// mail goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_home_root_owns_is_told_how_to_make_its_token_cache() {
    if !can_run() {
        return;
    }
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, TOKEN)).await;
    let tokens = TokenServer::scripted(vec![Reply::token(TOKEN, 3600, None)]);
    let host = Host::new();
    let secret = host.etc_file("app.secret", b"s3cret\n", NOBODY, 0o640);
    host.configure(&submit_profile(&host, &smtp, &tokens, &secret));

    let o = host.run_as_nobody(&[], &["-t", "-i"], MESSAGE).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(77), "{err}");
    let cache = host.home().join(".cache/m365send");
    let fix = format!("install -d -o nobody -m 0700 {}", cache.display());
    assert_eq!(quoted_command(&err, "install -d"), fix, "{err}");
    assert!(host.dead_letter().contains("order 1042"), "{err}");
    assert!(smtp.accepted().is_empty());

    run_as_root(&fix);
    let o = host.run_as_nobody(&[], &["-t", "-i"], MESSAGE).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = smtp.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].recipients, vec!["ops@contoso.com"]);
}

/// The same user's spool (~/.local/state/m365send/spool) cannot be created either: a message
/// that must wait (-odq, or a temporary failure) is kept in the dead letter with the command
/// that makes the spool, and after it the message is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_home_root_owns_is_told_how_to_make_its_spool() {
    if !can_run() {
        return;
    }
    let host = Host::new();
    host.configure(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\n\
         endpoint = { host = \"127.0.0.1\", port = 9 }\n",
    );
    let o = host
        .run_as_nobody(&[], &["-odq", "-t", "-i"], MESSAGE)
        .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(73), "{err}");
    let spool = host.home().join(".local/state/m365send/spool");
    let fix = format!("install -d -o nobody -m 0700 {}", spool.display());
    assert_eq!(quoted_command(&err, "install -d"), fix, "{err}");
    assert!(host.dead_letter().contains("order 1042"), "{err}");

    run_as_root(&fix);
    let o = host
        .run_as_nobody(&[], &["-odq", "-t", "-i"], MESSAGE)
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = host
        .run_as_nobody(&[], &["queue", "list", "--json"], b"")
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["count"], 1, "{v}");
}

/// PHP's mail() under Apache or PHP-FPM runs without HOME: the user's home is then the one of
/// the password database (www-data: /var/www; nobody: /nonexistent), and the user hears the
/// same command for it, not "set spool_dir" (which in a configuration root shares would give
/// every user root's spool, refused to them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_home_the_password_database_names_the_users_spool() {
    if !can_run() {
        return;
    }
    let host = Host::new();
    host.configure(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\n\
         endpoint = { host = \"127.0.0.1\", port = 9 }\n",
    );
    let o = host
        .run_as_nobody_home(&[], None, &["-odq", "-t", "-i"], MESSAGE)
        .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(73), "{err}");
    // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
    let pw = unsafe { libc::getpwuid(NOBODY) };
    assert!(!pw.is_null());
    // SAFETY: checked for null; pw_dir is a C string.
    let home = unsafe { std::ffi::CStr::from_ptr((*pw).pw_dir) }
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        quoted_command(&err, "install -d"),
        format!("install -d -o nobody -m 0700 {home}/.local/state/m365send/spool"),
        "{err}"
    );
    assert!(!err.contains("spool_dir"), "{err}");
    assert!(host.dead_letter().contains("order 1042"), "{err}");
}

/// doctor, run by that user, finds both before any mail fails, with the same commands (it
/// used to pass the token cache and tell to create a spool root would own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_tells_a_user_whose_home_root_owns_how_to_make_its_spool_and_cache() {
    if !can_run() {
        return;
    }
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, TOKEN)).await;
    let tokens = TokenServer::scripted(vec![Reply::token(TOKEN, 3600, None)]);
    let dns = dns::start_stub_dns(vec![]);
    let host = Host::new();
    let secret = host.etc_file("app.secret", b"s3cret\n", NOBODY, 0o640);
    host.configure(&submit_profile(&host, &smtp, &tokens, &secret).replace(
        "endpoint = {",
        &format!("endpoint = {{ dns_server = \"{dns}\","),
    ));

    let o = host.run_as_nobody(&[], &["doctor", "--json"], b"").await;
    let doc: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)));
    let check = |name: &str| -> &serde_json::Value {
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {doc:#}"))
    };
    let cache = check("files.token_cache");
    assert_eq!(cache["status"], "failed", "{cache:#}");
    assert!(
        cache["fix"].as_str().unwrap().contains(&format!(
            "`install -d -o nobody -m 0700 {}`",
            host.home().join(".cache/m365send").display()
        )),
        "{cache:#}"
    );
    let spool = check("files.spool");
    assert_eq!(spool["status"], "failed", "{spool:#}");
    assert!(
        spool["fix"].as_str().unwrap().contains(&format!(
            "`install -d -o nobody -m 0700 {}`",
            host.home().join(".local/state/m365send/spool").display()
        )),
        "{spool:#}"
    );
    assert!(smtp.accepted().is_empty());
}

/// A client secret shared through a group (README: root:m365send 0640) that the user is not
/// in: the user hears which group to join (not "create the file"); doctor says the same; in
/// the group, the mail goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_outside_the_secrets_group_is_told_which_group_to_join() {
    if !can_run() {
        return;
    }
    let Some(mail_gid) = gid_of("mail") else {
        return;
    };
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, TOKEN)).await;
    let tokens = TokenServer::scripted(vec![Reply::token(TOKEN, 3600, None)]);
    let host = Host::new();
    let secret = host.etc_file("app.secret", b"s3cret\n", mail_gid, 0o640);
    host.configure(&submit_profile(&host, &smtp, &tokens, &secret));
    // Its own token cache, so that only the secret is in the way.
    let cache = host.home().join(".cache/m365send");
    run_as_root(&format!("install -d -o nobody -m 0700 {}", cache.display()));

    let o = host.run_as_nobody(&[], &["-t", "-i"], MESSAGE).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    let mut lines = err.lines();
    assert!(
        lines.next().unwrap().contains(&format!(
            "auth.client_secret: cannot read {}: Permission denied",
            secret.display()
        )),
        "{err}"
    );
    let fix = lines.next().unwrap();
    assert!(
        fix.contains("readable by group mail (mode 0640), and nobody is not in that group")
            && fix.contains("`usermod -aG mail nobody`"),
        "{err}"
    );
    assert!(host.dead_letter().contains("order 1042"), "{err}");

    let o = host.run_as_nobody(&[], &["doctor", "--json"], b"").await;
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let secrets = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "config.secrets")
        .unwrap();
    assert_eq!(secrets["status"], "failed", "{secrets:#}");
    let fix = secrets["fix"].as_str().unwrap();
    assert!(
        fix.contains("`usermod -aG mail nobody`") && !fix.contains("Create "),
        "{secrets:#}"
    );

    // In the group (as `usermod -aG` makes it on the next login), the mail goes out.
    let o = host
        .run_as_nobody(&[mail_gid], &["-t", "-i"], MESSAGE)
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(smtp.accepted().len(), 1);
}

/// A relay key kept root's alone (README: relay.key root:root 0600) and a user's crontab whose
/// mail goes through that profile: the user hears how to share it (group, chgrp, chmod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_cron_mail_through_roots_relay_key_says_how_to_share_it() {
    if !can_run() {
        return;
    }
    let server = FakeM365::start(FakeConfig::mx()).await;
    let (cert, key) = server.client_cert_files("relay.contoso.com");
    let host = Host::new();
    let cert = host.etc_file("relay.crt", &std::fs::read(cert).unwrap(), 0, 0o644);
    let key = host.etc_file("relay.key", &std::fs::read(key).unwrap(), 0, 0o600);
    let ca = host.etc_file(
        "ca.pem",
        &std::fs::read(server.ca_file()).unwrap(),
        0,
        0o644,
    );
    host.configure(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\ndefault_domain = \"contoso.com\"\n\
         endpoint = {{ host = \"127.0.0.1\", port = {} }}\n\
         tls = {{ ca_file = \"{}\", client_cert = \"{}\", client_key = \"{}\" }}\n",
        server.port(),
        ca.display(),
        cert.display(),
        key.display()
    ));
    // Debian cron's argv.
    let o = host
        .run_as_nobody(
            &[],
            &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "nobody"],
            b"Subject: Cron <nobody@web1> backup\n\nbackup done\n",
        )
        .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    let fix = err.lines().nth(1).unwrap_or_default();
    assert!(
        fix.contains("only root may read it (mode 0600)")
            && fix.contains("usermod -aG m365send nobody")
            && fix.contains(&format!(
                "chgrp m365send {0} && chmod 640 {0}",
                key.display()
            )),
        "{err}"
    );
    assert!(host.dead_letter().contains("backup done"), "{err}");
    assert!(server.accepted().is_empty());
}

/// A configuration only root may read (or in a directory others may not enter): the user
/// hears the chmod that README's layout asks for, not `--config`, which they may not use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_a_user_may_not_read_says_the_chmod() {
    if !can_run() {
        return;
    }
    let host = Host::new();
    host.configure("mode = \"relay\"\nsender = \"alerts@contoso.com\"\n");
    let config = host.path("etc/config.toml");
    chmod(&config, 0o600);
    let o = host.run_as_nobody(&[], &["ops@contoso.com"], MESSAGE).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert_eq!(
        quoted_command(&err, "chmod"),
        format!("chmod 644 {}", config.display()),
        "{err}"
    );
    assert!(!err.contains("--config"), "{err}");

    chmod(&config, 0o644);
    chmod(&host.path("etc"), 0o700);
    let o = host.run_as_nobody(&[], &["ops@contoso.com"], MESSAGE).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&format!(
            "nobody may not enter directory {} (mode 0700, owner root): `chmod 755 {}`",
            host.path("etc").display(),
            host.path("etc").display()
        )),
        "{err}"
    );
}
