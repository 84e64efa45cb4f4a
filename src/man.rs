//! Manual pages, generated instead of written a second time: m365send(8) from the clap
//! definition `--help` is printed from (clap_mangen, plus cli's own texts for sendmail's
//! pre-pass options, the examples and `exit`'s codes), and m365send.toml(5) from
//! config.example.toml (compiled in), whose comments document every key.
//!
//! They are printed by the hidden `m365send man [PAGE]`, which the Debian package build runs
//! on the binary it packages (a build script could not: the clap definition lives in the
//! library it would have to build first).
//!
//! Owns: the pages' layout and the few paragraphs only a manual has (description,
//! environment, files). Must not: read files at run time, parse argv, or describe a
//! configuration key that config.example.toml does not show (tests/man.rs checks both pages
//! against their sources).

use std::collections::HashMap;

use clap::{Arg, Command as ClapCommand};
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

use crate::cli;
use crate::exit::Exit;

/// The annotated example configuration: the source of m365send.toml(5).
const EXAMPLE: &str = include_str!("../config.example.toml");

/// A manual page m365send can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Page {
    /// m365send(8): the command, its options and subcommands.
    #[value(name = "m365send.8")]
    M365send8,
    /// m365send.toml(5): the configuration file.
    #[value(name = "m365send.toml.5")]
    ConfigToml5,
}

impl Page {
    /// The page in roff, as installed under /usr/share/man.
    pub fn render(self) -> String {
        match self {
            Page::M365send8 => m365send_8(),
            Page::ConfigToml5 => config_toml_5(),
        }
    }
}

/// The string definition `roff` puts at the top of everything it renders.
const ROFF_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// Append a rendered piece, keeping only the first copy of roff's preamble.
fn append(out: &mut String, piece: &str) {
    if out.is_empty() {
        out.push_str(piece);
    } else {
        out.push_str(piece.strip_prefix(ROFF_PREAMBLE).unwrap_or(piece));
    }
}

/// Append one of clap_mangen's sections.
fn append_man(out: &mut String, render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) {
    let mut buf = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = render(&mut buf);
    append(out, &String::from_utf8_lossy(&buf));
}

/// A `.TP` list item: the tag line, then the body paragraphs.
fn item(roff: &mut Roff, tag: Vec<Inline>, body: &[&str]) {
    roff.control("TP", []);
    roff.text(tag);
    for (i, paragraph) in body.iter().enumerate() {
        if i > 0 {
            roff.control("br", []);
        }
        roff.text([roman(*paragraph)]);
    }
}

/// Lines kept as they are (`.nf` ... `.fi`), indented.
fn verbatim<'a>(roff: &mut Roff, lines: impl IntoIterator<Item = &'a str>) {
    roff.control("RS", ["4"]);
    roff.control("nf", []);
    for line in lines {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
    roff.control("RE", []);
}

// ---------------------------------------------------------------------------------------------
// m365send(8)

const DESCRIPTION: &[&str] = &[
    "m365send is a sendmail replacement for hosts whose mail goes through Microsoft 365: \
     client submission (smtp.office365.com:587, OAuth2 or a password), SMTP relay through a \
     connector (the tenant's MX endpoint on port 25, with a TLS client certificate or the \
     host's IP address) and direct send, as well as High Volume Email and Azure Communication \
     Services. It reads a message on standard input, as sendmail does, or composes one from \
     --subject, --body and --attach. How a host sends is a profile in the configuration file, \
     m365send.toml(5).",
    "Installed as /usr/sbin/sendmail, existing callers (cron, PHP's mail(), mailx, git \
     send-email, symfony/mailer with -bs) work unchanged: recipients are arguments, -t takes \
     them from the To, Cc and Bcc headers, and local names such as root go through the \
     profile's aliases.",
    "A message that cannot be delivered now (a 4xx reply, a timeout, Microsoft 365 \
     unreachable) is kept in a durable queue with the default queue = \"auto\", and exit \
     status is 0, as with sendmail; m365send queue run delivers the queue (the \
     m365send-queue.timer systemd timer runs it every 5 minutes once enabled). A message that \
     cannot be delivered at all is never lost: it is appended to the dead letter file, whose \
     path is printed.",
    "Every refusal quotes the server's reply and says what it means and what to do; \
     m365send explain CODE prints that explanation for a reply code, an enhanced status code \
     or an identity platform (AADSTS) error. Secrets (passwords, tokens, AUTH lines) never \
     appear in messages, logs or the -v transcript.",
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        crate::config::CONFIG_ENV,
        "The configuration file to read when --config/-C is not given. A missing file is an \
         error.",
    ),
    (
        "M365SEND_LOG",
        "A tracing filter directive for the log on standard error (overrides -v), e.g. \
         m365send=trace.",
    ),
    (
        "XDG_CONFIG_HOME",
        "Where a user's configuration is looked for: $XDG_CONFIG_HOME/m365send/config.toml.",
    ),
    (
        "XDG_STATE_HOME",
        "A user's queue: $XDG_STATE_HOME/m365send/spool (not for root).",
    ),
    (
        "XDG_CACHE_HOME",
        "A user's OAuth token cache: $XDG_CACHE_HOME/m365send (not for root).",
    ),
    (
        "HOME",
        "The default of the three above (~/.config, ~/.local/state, ~/.cache) and of the dead \
         letter file, ~/dead.letter. Without HOME (a web server's PHP), the queue, token cache \
         and dead letter are under the home directory of the password database.",
    ),
];

const FILES: &[(&str, &str)] = &[
    (
        crate::config::SYSTEM_CONFIG,
        "The system-wide configuration, read when no other is found (see m365send.toml(5)). \
         Every user who sends mail reads it: keep it 0644 and hold no secret inline.",
    ),
    (
        "~/.config/m365send/config.toml",
        "A user's own configuration, read before the system-wide one.",
    ),
    (
        "/var/spool/m365send",
        "root's queue (mode 0700): msg/ and meta/ hold the entries, failed/ and corrupt/ what \
         could be neither delivered nor bounced. Other users: ~/.local/state/m365send/spool. \
         Configurable with spool_dir.",
    ),
    (
        "/var/cache/m365send",
        "root's OAuth token cache (mode 0700, files 0600). Other users: ~/.cache/m365send. \
         Configurable with cache_dir.",
    ),
    (
        "~/dead.letter",
        "Messages that could not be delivered at all (mbox, mode 0600). Configurable with \
         dead_letter.",
    ),
    (
        "/usr/sbin/sendmail, /usr/lib/sendmail, /usr/bin/mailq, /usr/bin/newaliases",
        "Links to m365send in the Debian package; the name it is run by selects what it does.",
    ),
    (
        "/usr/lib/systemd/system/m365send-queue.service, m365send-queue.timer",
        "Runs m365send queue run every 5 minutes, once enabled with \
         systemctl enable --now m365send-queue.timer.",
    ),
];

/// m365send(8).
pub fn m365send_8() -> String {
    let mut cmd = cli::clap_command(true);
    cmd.build();
    let man = Man::new(cmd.clone()).title("M365SEND").section("8");
    let mut out = String::new();
    append_man(&mut out, |w| man.render_title(w));
    // No hyphenation: paths and options must read as they are typed.
    append(&mut out, &Roff::new().control("nh", []).render());

    let mut roff = Roff::new();
    roff.control("SH", ["NAME"]);
    roff.text([roman(
        "m365send, sendmail, mailq, newaliases - send mail through Microsoft 365",
    )]);
    append(&mut out, &roff.render());

    append_man(&mut out, |w| man.render_synopsis_section(w));

    let mut roff = Roff::new();
    roff.control("SH", ["DESCRIPTION"]);
    if let Some(about) = cmd.get_about() {
        roff.text([roman(about.to_string())]);
    }
    for paragraph in DESCRIPTION {
        roff.control("PP", []);
        roff.text([roman(*paragraph)]);
    }
    append(&mut out, &roff.render());

    append_man(&mut out, |w| man.render_options_section(w));

    let mut roff = Roff::new();
    roff.control("SH", ["SENDMAIL COMPATIBILITY"]);
    roff.text([roman(
        "sendmail's options that mean something here, and those accepted for compatibility:",
    )]);
    for (option, meaning) in cli::SENDMAIL_OPTIONS {
        item(&mut roff, vec![bold(*option)], &[meaning]);
    }
    roff.control("PP", []);
    for line in cli::PERSONALITIES.lines() {
        roff.text([roman(line)]);
    }

    roff.control("SH", ["COMMANDS"]);
    roff.text([roman(
        "Invoked as m365send, the first word that is neither an option nor an option's value \
         is a command when it is one of these (m365send -- WORD makes it a recipient).",
    )]);
    commands(&mut roff, &cmd, "m365send");

    roff.control("SH", ["EXAMPLES"]);
    verbatim(&mut roff, cli::EXAMPLES.iter().copied());

    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "The codes of sysexits.h. A message that was queued counts as sent.",
    )]);
    for exit in Exit::ALL {
        item(
            &mut roff,
            vec![bold(exit.code().to_string())],
            &[exit.meaning().1],
        );
    }

    roff.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in ENVIRONMENT {
        item(&mut roff, vec![bold(*name)], &[meaning]);
    }

    roff.control("SH", ["FILES"]);
    roff.text([roman(cli::CONFIG_SEARCH.replace('\n', " "))]);
    for (path, meaning) in FILES {
        item(&mut roff, vec![italic(*path)], &[meaning]);
    }

    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("m365send.toml"),
        roman("(5), "),
        bold("crontab"),
        roman("(5), "),
        bold("systemd.timer"),
        roman("(5)"),
    ]);
    append(&mut out, &roff.render());
    out
}

/// The arguments of a subcommand that belong to it (not the global ones).
fn own_args(cmd: &ClapCommand) -> Vec<&Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_global_set() && !a.is_hide_set())
        .collect()
}

/// How an argument is written in a command's synopsis: `[--json]`, `CODE...`, `[PAGE]`.
fn arg_synopsis(arg: &Arg) -> String {
    let takes_many = arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    let word = if arg.is_positional() {
        let name = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
        if takes_many {
            format!("{name}...")
        } else {
            name
        }
    } else {
        match arg.get_long() {
            Some(long) => format!("--{long}"),
            None => format!("-{}", arg.get_short().unwrap_or('?')),
        }
    };
    if arg.is_required_set() {
        word
    } else {
        format!("[{word}]")
    }
}

/// Every (visible) subcommand, depth first, with its arguments.
fn commands(roff: &mut Roff, cmd: &ClapCommand, path: &str) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{path} {}", sub.get_name());
        let args = own_args(sub);
        let mut tag = vec![bold(full.clone())];
        for arg in &args {
            tag.push(roman(format!(" {}", arg_synopsis(arg))));
        }
        if sub.has_subcommands() {
            let word = if sub.is_subcommand_required_set() {
                " COMMAND"
            } else {
                " [COMMAND]"
            };
            tag.push(roman(word));
        }
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        item(roff, tag, &[&about]);
        let documented: Vec<&&Arg> = args.iter().filter(|a| a.get_help().is_some()).collect();
        if !documented.is_empty() {
            roff.control("RS", []);
            for arg in documented {
                let mut help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let values: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                    .map(|v| v.get_name().to_owned())
                    .collect();
                if !values.is_empty() {
                    help.push_str(&format!(" One of: {}.", values.join(", ")));
                }
                item(roff, vec![bold(arg_synopsis(arg))], &[&help]);
            }
            roff.control("RE", []);
        }
        commands(roff, sub, &full);
    }
}

// ---------------------------------------------------------------------------------------------
// m365send.toml(5), from config.example.toml

/// One documented key: its path with profile names generalised (`profiles.NAME.tls.ca_file`),
/// the value the example gives, and the example's comments about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    pub path: String,
    /// The table it is listed under (`""` for the top level).
    pub table: String,
    pub example: String,
    /// Comment lines (without `# `); lines indented further are kept as they are.
    pub text: Vec<String>,
}

/// What config.example.toml says: its opening comment and every key.
#[derive(Debug, Clone, Default)]
pub struct ExampleDoc {
    pub header: Vec<String>,
    pub keys: Vec<KeyDoc>,
    /// Comments written right above a table header, by generalised table path.
    pub tables: Vec<(String, Vec<String>)>,
}

/// Inline tables holding a secret are `{ file | env | command | value = ... }`, documented
/// once in the file's opening comment, not as keys of their own.
const SECRET_SOURCE_KEYS: &[&str] = &["file", "env", "command", "value"];

/// Table paths name profiles (`profiles.cron`) and serve's users (`serve.users.scanner`); the
/// manual names them `profiles.NAME` and `serve.users.NAME`.
fn generalise(segments: &[&str]) -> String {
    segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if (i == 1 && segments[0] == "profiles")
                || (i == 2 && segments[0] == "serve" && segments[1] == "users")
            {
                "NAME"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// `key = value  # comment` → (`key = value`, `Some("comment")`), minding quoted `#`.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return (line[..i].trim_end(), Some(line[i + 1..].trim())),
            None => {}
        }
    }
    (line.trim_end(), None)
}

/// A `key = value` line (its code part), parsed as TOML; None for anything else.
fn key_line(code: &str) -> Option<(String, String, toml::Value)> {
    let first = code.chars().next()?;
    if !first.is_ascii_lowercase() {
        return None;
    }
    let table: toml::Table = toml::from_str(code).ok()?;
    let mut entries = table.into_iter();
    let (key, value) = entries.next()?;
    if entries.next().is_some() {
        return None;
    }
    let source = code.split_once('=').map(|(_, v)| v.trim()).unwrap_or("");
    Some((key, source.to_owned(), value))
}

impl ExampleDoc {
    fn add(&mut self, index: &mut HashMap<String, usize>, doc: KeyDoc) {
        match index.get(&doc.path) {
            Some(&i) => {
                if self.keys[i].text.is_empty() {
                    self.keys[i].text = doc.text;
                }
            }
            None => {
                index.insert(doc.path.clone(), self.keys.len());
                self.keys.push(doc);
            }
        }
    }

    /// The keys of an inline table value (`tls = { min_version = "1.2" }`), recursively.
    fn add_inline(&mut self, index: &mut HashMap<String, usize>, path: &str, value: &toml::Value) {
        let Some(inline) = value.as_table() else {
            return;
        };
        for (key, value) in inline {
            let sub = format!("{path}.{key}");
            if is_table_of_keys(&sub, value) {
                self.add_inline(index, &sub, value);
            } else {
                self.add(
                    index,
                    KeyDoc {
                        path: sub,
                        table: path.to_owned(),
                        example: format!("{key} = {value}"),
                        text: Vec::new(),
                    },
                );
            }
        }
    }
}

/// True when a value is a table of further keys (`tls = { ... }`), rather than one value that
/// happens to be a table: `aliases` (names of the user's choosing) or a secret source
/// (`{ file = "..." }`).
pub fn is_table_of_keys(path: &str, value: &toml::Value) -> bool {
    match value.as_table() {
        None => false,
        Some(_) if path == "aliases" || path.ends_with(".aliases") => false,
        Some(t) => t.is_empty() || !t.keys().all(|k| SECRET_SOURCE_KEYS.contains(&k.as_str())),
    }
}

/// Read config.example.toml's structure: comments above a key (or after it on the same line)
/// describe it; `# key = value` lines document keys left at their default.
pub fn parse_example(text: &str) -> ExampleDoc {
    let mut doc = ExampleDoc::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut table: Vec<String> = Vec::new();
    // A table written commented out (`# [serve.users.scanner]`, an example of a table the
    // admin adds): the commented keys after it are its keys, until a real line.
    let mut commented_table: Option<Vec<String>> = None;
    let mut pending: Vec<String> = Vec::new();
    let mut in_header = true;
    // The key whose trailing comment continues on the next `#   # ...` lines.
    let mut last_key: Option<usize> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        if line.trim().is_empty() {
            if in_header {
                doc.header = std::mem::take(&mut pending);
                in_header = false;
            }
            pending.clear();
            last_key = None;
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if !in_header {
                let body = comment.trim();
                if body.len() > 3 && body.chars().all(|c| c == '-') {
                    pending.clear();
                    last_key = None;
                    continue;
                }
                // `#        # more of the comment above` continues a trailing comment.
                if let (Some(more), Some(i)) = (body.strip_prefix('#'), last_key)
                    && comment.starts_with("  ")
                {
                    push_more(&mut doc.keys[i].text, more.trim());
                    continue;
                }
                // `# [table]`: an example table, commented out.
                if let Some(header) = comment
                    .strip_prefix(" [")
                    .and_then(|h| h.trim_end().strip_suffix(']'))
                    .filter(|h| !h.contains(['[', ']', ' ']))
                {
                    let t: Vec<String> = header.split('.').map(str::to_owned).collect();
                    let segments: Vec<&str> = t.iter().map(String::as_str).collect();
                    doc.tables
                        .push((generalise(&segments), std::mem::take(&mut pending)));
                    commented_table = Some(t);
                    last_key = None;
                    continue;
                }
                // `# key = value`: a key left at its default.
                let within = commented_table.as_ref().unwrap_or(&table);
                if let Some(code) = comment.strip_prefix(' ')
                    && !code.starts_with(' ')
                    && let Some(added) = add_key(&mut doc, &mut index, within, &mut pending, code)
                {
                    last_key = added;
                    continue;
                }
            }
            last_key = None;
            pending.push(comment.strip_prefix(' ').unwrap_or(comment).to_owned());
            continue;
        }
        in_header = false;
        commented_table = None;
        if let Some(header) = line.strip_prefix('[') {
            let (code, _) = split_comment(header);
            let name = code.trim_end_matches(']').trim();
            table = name.split('.').map(|s| s.trim().to_owned()).collect();
            let segments: Vec<&str> = table.iter().map(String::as_str).collect();
            doc.tables
                .push((generalise(&segments), std::mem::take(&mut pending)));
            last_key = None;
            continue;
        }
        if let Some(added) = add_key(&mut doc, &mut index, &table, &mut pending, line) {
            last_key = added;
        } else {
            // Not a line this reader understands (a value over several lines): the test in
            // tests/man.rs finds the keys it hides.
            pending.clear();
            last_key = None;
        }
    }
    doc
}

fn push_more(text: &mut Vec<String>, more: &str) {
    match text.last_mut() {
        Some(last) => {
            last.push(' ');
            last.push_str(more);
        }
        None => text.push(more.to_owned()),
    }
}

/// Record the key of a `key = value  # comment` line (`None`: not such a line), described by
/// the pending comments and its own; `Some(None)` for a table of keys, which adds its keys.
/// The index of the entry it added comes back so that a comment continued on the next line
/// can join it.
fn add_key(
    doc: &mut ExampleDoc,
    index: &mut HashMap<String, usize>,
    table: &[String],
    pending: &mut Vec<String>,
    line: &str,
) -> Option<Option<usize>> {
    let (code, trailing) = split_comment(line);
    let (key, source, value) = key_line(code)?;
    let (key, value) = (key.as_str(), &value);
    let mut segments: Vec<&str> = table.iter().map(String::as_str).collect();
    let table_path = generalise(&segments);
    segments.push(key);
    let path = generalise(&segments);
    let mut text = std::mem::take(pending);
    if let Some(t) = trailing.filter(|t| !t.is_empty()) {
        text.push(t.to_owned());
    }
    if is_table_of_keys(&path, value) {
        doc.add_inline(index, &path, value);
        return Some(None);
    }
    doc.add(
        index,
        KeyDoc {
            path: path.clone(),
            table: table_path,
            example: format!("{key} = {source}"),
            text,
        },
    );
    Some(index.get(&path).copied())
}

/// Comment lines as roff: ordinary lines fill a paragraph, indented ones stay as they are
/// (without changing the indentation, so that this works inside a `.TP` item too).
fn comment_text(roff: &mut Roff, lines: &[String]) {
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with("  ") {
            roff.control("nf", []);
            while i < lines.len() && lines[i].starts_with("  ") {
                roff.text([roman(lines[i].as_str())]);
                i += 1;
            }
            roff.control("fi", []);
        } else if lines[i].trim().is_empty() {
            roff.control("PP", []);
            i += 1;
        } else {
            let line = &lines[i];
            // A trailing comment reads as a sentence in the manual.
            let mut chars = line.chars();
            let line = match chars.next() {
                Some(c) if i == 0 && c.is_ascii_lowercase() => {
                    format!("{}{}", c.to_ascii_uppercase(), chars.as_str())
                }
                _ => line.clone(),
            };
            roff.text([roman(line)]);
            i += 1;
        }
    }
}

const PROFILE_TABLE: &str = "One table per profile, a way of sending; NAME is yours to choose \
     (cron, app, ...). A message uses the profile named by --profile, else the one whose \
     sender, mailbox or addresses match the envelope sender (-f), else default_profile.";

/// m365send.toml(5).
pub fn config_toml_5() -> String {
    let doc = parse_example(EXAMPLE);
    let mut cmd = cli::clap_command(false);
    cmd.build();
    let man = Man::new(cmd).title("M365SEND.TOML").section("5");
    let mut out = String::new();
    append_man(&mut out, |w| man.render_title(w));
    // No hyphenation: paths and options must read as they are typed.
    append(&mut out, &Roff::new().control("nh", []).render());

    let mut roff = Roff::new();
    roff.control("SH", ["NAME"]);
    roff.text([roman("m365send.toml - configuration of m365send")]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([italic(crate::config::SYSTEM_CONFIG)]);
    roff.control("br", []);
    roff.text([italic("~/.config/m365send/config.toml")]);
    roff.control("SH", ["DESCRIPTION"]);
    roff.text([roman(
        "The configuration of m365send(8), in TOML: a few settings at the top, and one \
         [profiles.NAME] table per way of sending. Every key is listed below, with what the \
         example configuration shipped with m365send says about it.",
    )]);
    roff.control("PP", []);
    // The example's opening comment, less its title line.
    comment_text(&mut roff, doc.header.get(1..).unwrap_or_default());

    roff.control("SH", ["KEYS"]);
    let mut tables: Vec<&str> = Vec::new();
    for key in &doc.keys {
        if !tables.contains(&key.table.as_str()) {
            tables.push(&key.table);
        }
    }
    for table in tables {
        if table.is_empty() {
            roff.control("SS", ["Top level"]);
        } else {
            roff.control("SS", [format!("[{table}]").as_str()]);
            if table == "profiles.NAME" {
                roff.text([roman(PROFILE_TABLE)]);
            } else if let Some((_, text)) = doc
                .tables
                .iter()
                .find(|(t, text)| t == table && !text.is_empty())
            {
                comment_text(&mut roff, text);
            }
        }
        for key in doc.keys.iter().filter(|k| k.table == table) {
            roff.control("TP", []);
            roff.text([bold(key.path.as_str())]);
            comment_text(&mut roff, &key.text);
            roff.control("br", []);
            roff.text([roman("Example: "), italic(key.example.as_str())]);
        }
    }

    roff.control("SH", ["EXAMPLE"]);
    roff.text([roman(
        "The example configuration (config.example.toml in the sources; in the Debian \
         package, /etc/m365send/config.toml as installed, every line commented out):",
    )]);
    verbatim(&mut roff, EXAMPLE.lines());

    roff.control("SH", ["FILES"]);
    roff.text([roman(cli::CONFIG_SEARCH.replace('\n', " "))]);

    roff.control("SH", ["SEE ALSO"]);
    roff.text([bold("m365send"), roman("(8)")]);
    append(&mut out, &roff.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_values_split_outside_quotes() {
        assert_eq!(
            split_comment(r##"a = "x # y" # note"##),
            (r##"a = "x # y""##, Some("note"))
        );
        assert_eq!(split_comment("a = 'b#' "), ("a = 'b#'", None));
        assert_eq!(
            split_comment(r##"a = "q\"#" # n"##),
            (r##"a = "q\"#""##, Some("n"))
        );
    }

    #[test]
    fn example_keys_carry_their_comments() {
        let doc = parse_example(
            "# Title\n# about\n\n# The mode.\n# Default \"submit\".\nmode = \"relay\" # now\n\
             [profiles.x.tls]\n# ca_file = \"/ca.pem\"   # extra CAs\n#                     # (PEM)\n\
             [profiles.y]\nauth = { method = \"oauth\", client_secret = { file = \"/s\" } }\n",
        );
        assert_eq!(doc.header, vec!["Title", "about"]);
        let paths: Vec<&str> = doc.keys.iter().map(|k| k.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "mode",
                "profiles.NAME.tls.ca_file",
                // An inline table's keys come in toml's (sorted) order.
                "profiles.NAME.auth.client_secret",
                "profiles.NAME.auth.method",
            ]
        );
        assert_eq!(
            doc.keys[0].text,
            ["The mode.", "Default \"submit\".", "now"]
        );
        assert_eq!(doc.keys[1].text, ["extra CAs (PEM)"]);
        assert_eq!(doc.keys[1].example, "ca_file = \"/ca.pem\"");
        assert_eq!(doc.keys[1].table, "profiles.NAME.tls");
        assert_eq!(doc.keys[2].table, "profiles.NAME.auth");
        assert_eq!(doc.keys[2].example, "client_secret = { file = \"/s\" }");
    }
}
