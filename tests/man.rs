//! The manual pages and completion scripts the binary prints (`m365send man`, `m365send
//! completions`) against their sources: every option and command `--help` shows is in
//! m365send(8), and every key config.example.toml shows is an entry of m365send.toml(5).

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn m365send(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_m365send"))
        .args(args)
        .env("HOME", "/nonexistent")
        .env_remove("M365SEND_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run m365send");
    assert!(
        out.status.success(),
        "m365send {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(args: &[&str]) -> String {
    String::from_utf8(m365send(args).stdout).expect("UTF-8 output")
}

/// Roff source to the words a reader sees (fonts and escapes removed).
fn deroff(roff: &str) -> String {
    roff.replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
        .replace("\\-", "-")
        .replace("\\*(Aq", "'")
        .replace("\\(bu", "*")
        .replace("\\&", "")
        .replace("\\\\", "\\")
}

/// Option words in a help text: `-t`, `--dry-run`, `-oi`, `-q` of `-q[INTERVAL]`.
fn option_words(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i] == '-'
            && (i == 0 || " \t\n(['\"/,`".contains(chars[i - 1]))
            && chars
                .get(i + 1)
                .is_some_and(|c| *c == '-' || c.is_ascii_alphabetic());
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        if chars[j] == '-' {
            j += 1;
        }
        while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '-') {
            j += 1;
        }
        let word: String = chars[i..j].iter().collect();
        if !word.trim_start_matches('-').is_empty() && !words.contains(&word) {
            words.push(word);
        }
        i = j;
    }
    words
}

/// The command names listed under "Commands:" in a help text.
fn command_words(help: &str) -> Vec<String> {
    help.split("\nCommands:\n")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .take_while(|l| l.starts_with("  "))
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_option_and_command_of_help_is_in_the_manual() {
    let manual = deroff(&stdout(&["man"]));
    let mut missing = Vec::new();
    // Walk the commands as --help shows them: the top level, then each command's own help.
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut seen_commands = 0;
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = stdout(&args);
        for word in option_words(&help) {
            if option_words(&manual).contains(&word) {
                continue;
            }
            missing.push(format!("option {word} (from {args:?})"));
        }
        for command in command_words(&help) {
            let mut sub = path.clone();
            sub.push(command);
            let name = format!("m365send {}", sub.join(" "));
            if !manual.contains(&name) {
                missing.push(format!("command `{name}`"));
            }
            seen_commands += 1;
            todo.push(sub);
        }
    }
    assert!(
        seen_commands >= 12,
        "the help lists too few commands ({seen_commands}): has its format changed?"
    );
    assert!(missing.is_empty(), "m365send(8) lacks: {missing:#?}");
    // The sendmail names, and the sections a system manual has.
    for needle in [
        "m365send, sendmail, mailq, newaliases - ",
        ".SH SYNOPSIS",
        ".SH \"SENDMAIL COMPATIBILITY\"",
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        "M365SEND_CONFIG",
        "/var/spool/m365send",
        "/etc/m365send/config.toml",
        "/usr/sbin/sendmail",
    ] {
        assert!(manual.contains(needle), "m365send(8) lacks {needle:?}");
    }
}

#[test]
fn every_exit_code_of_help_is_in_the_manual() {
    let help = stdout(&["--help"]);
    let codes = help
        .split("Exit codes follow sysexits(3):")
        .nth(1)
        .expect("--help lists the exit codes");
    let manual = deroff(&stdout(&["man", "m365send.8"]));
    let section = manual
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .and_then(|s| s.split("\n.SH ").next())
        .expect("an EXIT STATUS section");
    let mut count = 0;
    for item in codes.split(',') {
        let code = item.split_whitespace().next().unwrap_or("");
        assert!(code.parse::<u8>().is_ok(), "not a code: {item:?}");
        assert!(
            section.contains(&format!(".TP\n{code}\n")),
            "EXIT STATUS lacks {code}"
        );
        count += 1;
    }
    assert!(count >= 10, "{count} codes");
}

/// Key paths config.example.toml shows, written as m365send.toml(5) lists them: profile names
/// as NAME, inline tables of keys opened up, and `# key = value` lines (keys left at their
/// default) included.
fn example_keys() -> Vec<String> {
    fn is_value(path: &str, table: &toml::Table) -> bool {
        path.ends_with("aliases")
            || !table.is_empty()
                && table
                    .keys()
                    .all(|k| ["file", "env", "command", "value"].contains(&k.as_str()))
    }
    fn walk(prefix: &[String], table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let mut path = prefix.to_vec();
            path.push(if prefix.len() == 1 && prefix[0] == "profiles" {
                "NAME".to_owned()
            } else {
                key.clone()
            });
            let joined = path.join(".");
            match value.as_table() {
                Some(t) if !is_value(&joined, t) => walk(&path, t, out),
                _ => {
                    if !out.contains(&joined) {
                        out.push(joined);
                    }
                }
            }
        }
    }
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"))
            .expect("config.example.toml");
    let document: toml::Table = toml::from_str(&text).expect("config.example.toml parses");
    let mut keys = Vec::new();
    walk(&[], &document, &mut keys);
    // Commented-out keys, in the table they are written in.
    let mut table: Vec<String> = Vec::new();
    // A table written commented out (`# [serve.users.scanner]`) holds the commented keys after
    // it, until a real line.
    let mut commented: Option<Vec<String>> = None;
    let path_of = |header: &str| {
        let mut t: Vec<String> = header
            .trim_end_matches(']')
            .split('.')
            .map(str::to_owned)
            .collect();
        if t.len() > 1 && t[0] == "profiles" {
            t[1] = "NAME".into();
        }
        if t.len() > 2 && t[0] == "serve" && t[1] == "users" {
            t[2] = "NAME".into();
        }
        t
    };
    for line in text.lines() {
        if !line.is_empty() && !line.starts_with('#') {
            commented = None;
        }
        if let Some(header) = line.strip_prefix('[') {
            table = path_of(header);
        } else if let Some(header) = line.strip_prefix("# [") {
            commented = Some(path_of(header.trim_end()));
        } else if let Some(code) = line.strip_prefix("# ")
            && code.starts_with(|c: char| c.is_ascii_lowercase())
            && let Ok(one) = toml::from_str::<toml::Table>(code)
        {
            walk(commented.as_ref().unwrap_or(&table), &one, &mut keys);
        }
    }
    keys
}

#[test]
fn every_key_of_the_example_is_in_the_config_manual() {
    let manual = deroff(&stdout(&["man", "m365send.toml.5"]));
    let keys = example_keys();
    assert!(keys.len() > 50, "only {} keys found", keys.len());
    for expected in [
        "default_profile",
        "log.syslog",
        "profiles.NAME.mode",
        "profiles.NAME.tls.client_cert",
        "profiles.NAME.auth.client_secret",
        "profiles.NAME.auth.refresh_token",
        "profiles.NAME.aliases",
        "profiles.NAME.endpoint.mx_host",
    ] {
        assert!(keys.contains(&expected.to_owned()), "{expected}: {keys:?}");
    }
    // Each key is an entry of its own (a tag line), not just a word somewhere in the page.
    let tags: Vec<&str> = manual.lines().collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !tags.contains(&k.as_str()))
        .collect();
    assert!(missing.is_empty(), "m365send.toml(5) lacks {missing:?}");
}

#[test]
fn every_key_in_the_config_manual_is_described() {
    let doc = m365send::man::parse_example(include_str!("../config.example.toml"));
    let bare: Vec<&str> = doc
        .keys
        .iter()
        .filter(|k| k.text.iter().all(|l| l.trim().is_empty()))
        .map(|k| k.path.as_str())
        .collect();
    assert!(
        bare.is_empty(),
        "config.example.toml has no comment for {bare:?}"
    );
}

#[test]
fn completion_scripts_name_the_commands() {
    let bash = stdout(&["completions", "bash"]);
    assert!(bash.contains("complete ") && bash.contains("_m365send"));
    for word in ["queue", "explain", "--dry-run", "--profile"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    assert!(stdout(&["completions", "zsh"]).starts_with("#compdef m365send"));
    assert!(stdout(&["completions", "fish"]).contains("complete -c m365send"));
    // Loads in bash and registers the completion (where bash is installed).
    if Path::new("/bin/bash").exists() {
        let out = Command::new("/bin/bash")
            .args(["--norc", "-c", "eval \"$SCRIPT\" && complete -p m365send"])
            .env("SCRIPT", &bash)
            .output()
            .expect("bash");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("-F _m365send m365send"),
            "{out:?}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_m365send"))
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

/// A `# key = value` line documents a key of the table it is written in (the manual lists it
/// there): uncommented on its own, it is a known key there (other complaints, such as a
/// certificate without its key, are about the example's values, not its layout).
#[test]
fn every_commented_key_of_the_example_is_valid_where_written() {
    let text = include_str!("../config.example.toml");
    let lines: Vec<&str> = text.lines().collect();
    let mut tried = 0;
    // A commented-out table (`# [serve.users.scanner]`): its commented keys are tried in it.
    let mut commented_table: Option<usize> = None;
    for (i, line) in lines.iter().enumerate() {
        if !line.is_empty() && !line.starts_with('#') {
            commented_table = None;
        }
        let Some(code) = line.strip_prefix("# ") else {
            continue;
        };
        if code.starts_with('[') && code.trim_end().ends_with(']') {
            commented_table = Some(i);
            continue;
        }
        if !code.starts_with(|c: char| c.is_ascii_lowercase())
            || toml::from_str::<toml::Table>(code).is_err()
        {
            continue;
        }
        let mut edited = lines.clone();
        edited[i] = code;
        if let Some(h) = commented_table {
            edited[h] = &lines[h][2..];
        }
        let edited = edited.join("\n");
        if let Err(e) = m365send::config::Config::parse(&edited, Path::new("config.example.toml"))
            && e.message.contains("unknown field")
        {
            panic!(
                "config.example.toml line {}: `{code}` uncommented: {e}",
                i + 1
            );
        }
        tried += 1;
    }
    assert!(tried > 20, "only {tried} commented keys");
}
