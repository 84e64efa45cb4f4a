//! Command line: sendmail-compatible argv and the native options, parsed into an `Invocation`.
//!
//! Owns: argv (including the program name: `sendmail`, `mailq`, `newaliases`), sendmail's
//! single-dash options (`-oi`, `-FNAME`, `-fADDR`, `-odi`, `-B8BITMIME`, ...), native long
//! options and subcommands (clap), and the texts `--help` shows beyond clap's option list
//! (examples, sendmail's pre-pass options, exit codes), which m365send(8) is built from too
//! (`man`). Must not: read files, stdin or the environment.
//!
//! How argv is read, in two passes:
//!
//! 1. A pre-pass (`prepass`) walks argv the way sendmail's getopt would and takes out what clap
//!    cannot express: `-o...` options (`-oi` becomes `-i`, `-odq` picks the queue, the rest are
//!    accepted and ignored), `-b...` modes (`-bm`, `-bs`, `-bp`, `-bi`), `-q[INTERVAL]`, and
//!    the options real callers pass that mean nothing here (`-B TYPE`, `-U`, `-L TAG`, `-h N`,
//!    `-X FILE`). It knows which options take a value (asked from the clap definition, so the
//!    two never disagree) so that a value such as `-f -odd` is never mistaken for an option.
//! 2. clap parses what is left: sendmail's ordinary short options (`-t -i -f -r -F -N -R -V -C
//!    -v`), the native long options, the recipients and, for `m365send` only, the subcommands.
//!
//! The subcommand rule: a word is a subcommand (`explain`, `login`, `token`, `queue`,
//! `doctor`, `serve`, `completions`, and the hidden `man` used by packaging) only when the
//! program is invoked as `m365send` AND the word is the first argument that is neither an
//! option nor an option's value AND no `--` came before it. Invoked as `sendmail` (or any other
//! name but `mailq`/`newaliases`) there are no subcommands at all, so `sendmail queue` mails
//! the local user "queue", exactly as sendmail would. `m365send -- queue` does too.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Args, Command as ClapCommand, FromArgMatches, Subcommand};

use crate::config::Mode;
use crate::exit::{Exit, Failure};
use crate::message::{Dsn, Ret};

/// What the caller asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `--config` / `-C`.
    pub config: Option<PathBuf>,
    /// `--profile`.
    pub profile: Option<String>,
    /// `-v` / `--verbose` (count).
    pub verbose: u8,
    pub command: Command,
    /// Options accepted for compatibility and ignored (`-oem`, `-B8BITMIME`, ...), in argv
    /// order, so that the app can log them once logging is set up.
    pub ignored: Vec<String>,
    /// The name we were invoked by (the app refuses `-C`/`--server` to a `sendmail` caller
    /// unless the configuration trusts it).
    pub personality: Personality,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a message (sendmail -bm, the default).
    Send(Box<SendArgs>),
    /// `-bs`: SMTP dialogue on stdin/stdout.
    SmtpStdio(Box<SendArgs>),
    /// `mailq`, `sendmail -bp`, `m365send queue list [--json]`.
    QueueList {
        json: bool,
    },
    /// `m365send queue run`, `sendmail -q`.
    QueueRun,
    /// `m365send queue flush`: run now, ignoring backoff.
    QueueFlush,
    QueueShow {
        id: String,
    },
    QueueDelete {
        id: String,
    },
    /// `newaliases`: nothing to rebuild; succeeds with a note.
    Newaliases,
    /// `m365send explain CODE`.
    Explain {
        code: String,
    },
    /// `m365send login`: delegated device code flow.
    Login,
    /// `m365send token status`.
    TokenStatus,
    /// `m365send token clear`.
    TokenClear,
    /// `m365send doctor [--all] [--to ADDR] [--json]`: check a profile without sending.
    Doctor {
        all: bool,
        to: Option<String>,
        json: bool,
    },
    /// `m365send serve`: the SMTP listener for devices and applications.
    Serve,
    /// `m365send completions SHELL`: print the shell's completion script.
    Completions {
        shell: clap_complete::Shell,
    },
    /// `m365send man [PAGE]` (hidden): print a manual page (roff) for packaging.
    Man {
        page: crate::man::Page,
    },
    /// `--help`, `--version`: print this text on stdout and exit 0.
    Help {
        text: String,
    },
}

impl Default for Command {
    fn default() -> Self {
        Command::Send(Box::default())
    }
}

/// `-od` delivery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// Deliver now (default, `-odi`, `-odb`).
    #[default]
    Now,
    /// `-odq`: put in the queue without trying.
    Queue,
}

/// Everything about one message the caller gave on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendArgs {
    /// Recipient arguments (sendmail style).
    pub recipients: Vec<String>,
    /// `-t`: also take recipients from To/Cc/Bcc.
    pub extract_recipients: bool,
    /// `-i` / `-oi`: a line with a single dot does not end the message.
    pub ignore_dots: bool,
    /// `-f ADDR` / `-fADDR` / `-r ADDR`.
    pub envelope_from: Option<String>,
    /// `-F NAME`: full name for a From header we create.
    pub full_name: Option<String>,
    /// `-N`, `-R`, `-V`.
    pub dsn: Dsn,
    pub delivery: DeliveryMode,
    /// `--mode`.
    pub mode: Option<Mode>,
    /// `--from`: From header (and envelope sender unless -f) of a composed message.
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub attach: Vec<PathBuf>,
    /// `--header 'Name: value'`.
    pub headers: Vec<String>,
    /// `--server HOST[:PORT]`.
    pub server: Option<String>,
    pub dry_run: bool,
}

impl SendArgs {
    /// True when the message is composed from options rather than read whole from stdin.
    pub fn composes(&self) -> bool {
        self.subject.is_some() || self.body.is_some() || !self.attach.is_empty()
    }
}

/// Who we are, by the basename of argv[0].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Personality {
    /// `m365send`: sendmail options, native options and subcommands.
    #[default]
    M365send,
    /// `sendmail` or any other name: sendmail options and native options, no subcommands.
    Sendmail,
    /// `mailq`: list the queue.
    Mailq,
    /// `newaliases`: nothing to rebuild.
    Newaliases,
}

impl Personality {
    pub fn of(argv0: Option<&OsStr>) -> Personality {
        let name = argv0
            .and_then(|a| Path::new(a).file_name())
            .and_then(OsStr::to_str)
            .unwrap_or("");
        // `m365send`, `m365send.exe`, `m365send-0.1`: all the native name.
        if name.starts_with("m365send") {
            Personality::M365send
        } else if name == "mailq" {
            Personality::Mailq
        } else if name == "newaliases" {
            Personality::Newaliases
        } else {
            Personality::Sendmail
        }
    }
}

/// The subcommand words (only for the `m365send` personality; see the module comment).
const SUBCOMMANDS: &[&str] = &[
    "explain",
    "login",
    "token",
    "queue",
    "doctor",
    "serve",
    "completions",
    "man",
];

/// Parse argv (argv[0] included).
pub fn parse(args: Vec<OsString>) -> Result<Invocation, Failure> {
    let mut args = args.into_iter();
    let argv0 = args.next();
    let rest: Vec<OsString> = args.collect();
    let personality = Personality::of(argv0.as_deref());
    let inv = match personality {
        Personality::Mailq => Ok(Invocation {
            command: Command::QueueList { json: false },
            ignored: lossy(&rest),
            ..Invocation::default()
        }),
        Personality::Newaliases => Ok(Invocation {
            command: Command::Newaliases,
            ignored: lossy(&rest),
            ..Invocation::default()
        }),
        Personality::M365send => parse_main(rest, true),
        Personality::Sendmail => parse_main(rest, false),
    };
    inv.map(|inv| Invocation { personality, ..inv })
}

fn lossy(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// A mode chosen by a sendmail option rather than a subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    SmtpStdio,
    QueueList,
    QueueRun,
    Newaliases,
}

#[derive(Debug, Default)]
struct Pre {
    args: Vec<OsString>,
    ignored: Vec<String>,
    special: Option<Special>,
    delivery: DeliveryMode,
}

/// Which options take a value, asked from the clap definition.
struct ValueOptions {
    shorts: Vec<char>,
    longs: Vec<String>,
}

impl ValueOptions {
    fn of(cmd: &ClapCommand) -> ValueOptions {
        let takes = |a: &&Arg| a.get_action().takes_values();
        ValueOptions {
            shorts: cmd
                .get_arguments()
                .filter(takes)
                .flat_map(|a| {
                    a.get_short()
                        .into_iter()
                        .chain(a.get_all_short_aliases().unwrap_or_default())
                })
                .collect(),
            longs: cmd
                .get_arguments()
                .filter(takes)
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect(),
        }
    }
}

/// Take out sendmail's options that clap cannot express (see the module comment).
fn prepass(args: Vec<OsString>, values: &ValueOptions, subcommands: bool) -> Result<Pre, Failure> {
    let mut pre = Pre::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str().map(str::to_owned) else {
            // Not UTF-8: let clap decide (it reports it as an invalid argument).
            pre.args.push(arg);
            continue;
        };
        if s == "--" {
            pre.args.push(arg);
            pre.args.extend(it.by_ref());
            break;
        }
        if let Some(long) = s.strip_prefix("--") {
            pre.args.push(arg);
            if !long.contains('=')
                && values.longs.iter().any(|l| l == long)
                && let Some(v) = it.next()
            {
                pre.args.push(v);
            }
            continue;
        }
        let Some(opt) = s
            .strip_prefix('-')
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
        else {
            // A positional argument (or a lone "-").
            if subcommands && SUBCOMMANDS.contains(&s.as_str()) {
                // The first positional word is a subcommand: from here on it is clap's.
                pre.args.push(arg);
                pre.args.extend(it.by_ref());
                break;
            }
            pre.args.push(arg);
            continue;
        };
        let mut chars = opt.chars();
        let letter = chars.next().unwrap_or_default();
        let attached = chars.as_str().to_owned();
        let attached = attached.as_str();
        match letter {
            'o' => match attached {
                "" => {
                    return Err(Failure::usage(
                        "option -o needs a letter (as in -oi or -oem); see m365send --help",
                    ));
                }
                "i" => pre.args.push(OsString::from("-i")),
                "dq" | "dd" => pre.delivery = DeliveryMode::Queue,
                "di" | "db" => {
                    pre.delivery = DeliveryMode::Now;
                    pre.ignored.push(s);
                }
                _ => pre.ignored.push(s),
            },
            'b' => match attached {
                "m" => {}
                "s" => pre.special = Some(Special::SmtpStdio),
                "p" => pre.special = Some(Special::QueueList),
                "i" => pre.special = Some(Special::Newaliases),
                "d" | "D" => {
                    return Err(Failure::usage(format!(
                        "option {s} is not supported: sendmail's daemon mode is `m365send \
                         serve`, an SMTP listener configured in [serve] (see `man m365send`, \
                         and contrib/systemd/m365send-serve.service)"
                    )));
                }
                _ => {
                    return Err(Failure::usage(format!(
                        "unknown or unsupported option {s}; m365send knows -bm (send, the \
                         default), -bs (SMTP on stdin/stdout), -bp (list the queue) and -bi \
                         (newaliases)"
                    )));
                }
            },
            // -q, -q15m, -qR...: run the queue once; the interval is ignored.
            'q' => {
                pre.special = Some(Special::QueueRun);
                if !attached.is_empty() {
                    pre.ignored.push(s);
                }
            }
            'U' if attached.is_empty() => pre.ignored.push(s),
            // `m365send -h` alone: the hop count has no value, so the user wants help.
            'h' if attached.is_empty() && it.len() == 0 => {
                pre.args.push(OsString::from("--help"));
            }
            'B' | 'L' | 'h' | 'X' => {
                let mut shown = s;
                if attached.is_empty() {
                    match it.next() {
                        Some(v) => {
                            shown.push(' ');
                            shown.push_str(&v.to_string_lossy());
                        }
                        None => {
                            return Err(Failure::usage(format!(
                                "option {shown} needs a value; see m365send --help"
                            )));
                        }
                    }
                }
                pre.ignored.push(shown);
            }
            _ => {
                // Ordinary short options, possibly clustered (-ti). When the last one takes a
                // value and none is attached, the next argument is that value.
                pre.args.push(arg);
                for (i, c) in opt.char_indices() {
                    if values.shorts.contains(&c) {
                        if i + c.len_utf8() == opt.len()
                            && let Some(v) = it.next()
                        {
                            pre.args.push(v);
                        }
                        break;
                    }
                }
            }
        }
    }
    Ok(pre)
}

/// Examples, shown by `--help` and in m365send(8).
pub(crate) const EXAMPLES: &[&str] = &[
    "df -h | m365send --to ops@contoso.com --subject \"web1: disk\"",
    "m365send --profile app --to a@contoso.com --subject report --attach /var/log/backup.log < note.txt",
    "sendmail -t -i < message.eml            (installed as /usr/sbin/sendmail)",
    "m365send --dry-run -f root root < /dev/null     (show the route without sending)",
    "m365send explain 5.7.60",
    "m365send doctor --to ops@contoso.com    (check the setup step by step; sends nothing)",
];

/// sendmail's options that the pre-pass takes out before clap (so clap cannot list them):
/// shown by `--help` and in m365send(8). Keep in step with `prepass`.
pub(crate) const SENDMAIL_OPTIONS: &[(&str, &str)] = &[
    ("-oi", "Same as -i."),
    (
        "-odq",
        "Put the message in the queue without trying to deliver it now.",
    ),
    ("-odi, -odb", "Deliver now (the default)."),
    (
        "-bm",
        "Read a message from stdin and send it (the default).",
    ),
    (
        "-bs",
        "Speak SMTP on stdin/stdout (for callers such as symfony/mailer).",
    ),
    (
        "-bp",
        "List the queue (same as `mailq` and `m365send queue list`).",
    ),
    ("-bi", "Same as `newaliases`: nothing to rebuild."),
    (
        "-q[INTERVAL]",
        "Run the queue once (any interval is ignored).",
    ),
    (
        "-B TYPE, -U, -L TAG, -h N, -X FILE",
        "Accepted and ignored.",
    ),
    (
        "-oem, -oee, -oep, -oeq, -oew, -om, -oX...",
        "Accepted and ignored, as is any other -o option.",
    ),
];

/// How the program name changes what argv means (see the module comment).
pub(crate) const PERSONALITIES: &str = "\
Installed as `sendmail` there are no subcommands: every word is a recipient.
Installed as `mailq` it lists the queue; as `newaliases` it succeeds with a note.";

/// Where the configuration is looked for (`config::load`).
pub(crate) const CONFIG_SEARCH: &str = "\
Configuration is read from --config/-C, else $M365SEND_CONFIG, else
$XDG_CONFIG_HOME/m365send/config.toml (~/.config/m365send/config.toml), else
/etc/m365send/config.toml. See config.example.toml for every key.";

/// The text after the options in `--help`, built from the same pieces as m365send(8).
fn after_help() -> String {
    let mut out = String::from("Examples:\n");
    for example in EXAMPLES {
        out.push_str(&format!("  {example}\n"));
    }
    out.push_str("\nSendmail compatibility:\n");
    for (option, meaning) in SENDMAIL_OPTIONS {
        if option.len() < 20 {
            out.push_str(&format!("  {option:<20}{meaning}\n"));
        } else {
            out.push_str(&format!("  {option}\n  {:<20}{meaning}\n", ""));
        }
    }
    for line in PERSONALITIES.lines() {
        out.push_str(&format!("  {line}\n"));
    }
    let codes: Vec<String> = Exit::ALL
        .iter()
        .map(|e| format!("{} {}", e.code(), e.meaning().0))
        .collect();
    out.push_str(&format!("\n{CONFIG_SEARCH}\n\n"));
    // The exit codes as a paragraph of lines at most 95 columns wide.
    let mut line = String::from("Exit codes follow sysexits(3):");
    for (i, code) in codes.iter().enumerate() {
        let sep = if i + 1 == codes.len() { "." } else { "," };
        if line.len() + 1 + code.len() + 1 > 95 {
            out.push_str(&line);
            out.push('\n');
            line = format!("{code}{sep}");
        } else {
            line.push_str(&format!(" {code}{sep}"));
        }
    }
    out.push_str(&line);
    out
}

const USAGE: &str = "\
m365send [OPTIONS] [--] [RECIPIENT]...  < message
       m365send [OPTIONS] --to ADDR --subject TEXT [--attach FILE]... [RECIPIENT]...
       m365send explain CODE | login | token status|clear | completions SHELL
       m365send queue list [--json] | run | flush | show ID | delete ID
       m365send doctor [--profile NAME | --all] [--to ADDR] [--json]
       m365send serve  (SMTP listener for devices and applications, see [serve])
       sendmail -t -i  (installed as /usr/sbin/sendmail; also mailq, newaliases)";

fn mode_values() -> PossibleValuesParser {
    PossibleValuesParser::new([
        PossibleValue::new("submit").help("client submission: smtp.office365.com:587, login"),
        PossibleValue::new("relay").help("relay connector: MX endpoint:25, certificate or IP"),
        PossibleValue::new("direct").help("direct send: MX endpoint:25, internal recipients only"),
        PossibleValue::new("hve").help("High Volume Email: smtp.hve.mx.microsoft:587"),
        PossibleValue::new("acs").help("Azure Communication Services: smtp.azurecomm.net:587"),
    ])
}

// Options for sending a message (and the few that apply to every command). A plain comment:
// a doc comment here would become the program's `about` text.
#[derive(Debug, Args)]
struct SendOpts {
    /// Add the recipients in the message's To, Cc and Bcc headers to those given as arguments.
    #[arg(short = 't', help_heading = "Sendmail options")]
    extract_recipients: bool,

    /// A line holding a single dot does not end the message (also -oi).
    #[arg(short = 'i', help_heading = "Sendmail options")]
    ignore_dots: bool,

    /// Envelope sender (MAIL FROM). Also picks the profile whose sender, mailbox or addresses
    /// match. -r ADDR is the same.
    #[arg(
        short = 'f',
        short_alias = 'r',
        value_name = "ADDR",
        allow_hyphen_values = true,
        help_heading = "Sendmail options"
    )]
    envelope_from: Option<String>,

    /// Full name for a From header that m365send creates, e.g. "Cron Daemon".
    #[arg(
        short = 'F',
        value_name = "NAME",
        allow_hyphen_values = true,
        help_heading = "Sendmail options"
    )]
    full_name: Option<String>,

    /// Delivery status notification: `never`, or a comma list of success, failure, delay.
    #[arg(short = 'N', value_name = "WHEN", help_heading = "Sendmail options")]
    notify: Option<String>,

    /// What a bounce returns: the full message or only its headers.
    #[arg(
        short = 'R',
        value_name = "full|hdrs",
        value_parser = PossibleValuesParser::new(["full", "hdrs"]),
        ignore_case = true,
        hide_possible_values = true,
        help_heading = "Sendmail options"
    )]
    ret: Option<String>,

    /// Envelope id for delivery status notifications (MAIL ... ENVID=).
    #[arg(
        short = 'V',
        value_name = "ENVID",
        allow_hyphen_values = true,
        help_heading = "Sendmail options"
    )]
    envid: Option<String>,

    /// Read this configuration file instead of searching for one. A missing file is an error.
    #[arg(short = 'C', long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    /// Use this profile instead of choosing one by the envelope sender.
    #[arg(long, value_name = "NAME", global = true)]
    profile: Option<String>,

    /// Say more on stderr: the route, and the SMTP dialogue with secrets redacted. -vv for more.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, global = true)]
    verbose: u8,

    /// Way of sending, overriding the profile's `mode`.
    #[arg(long, value_name = "MODE", value_parser = mode_values())]
    mode: Option<String>,

    /// From header of a composed message (also the envelope sender unless -f is given).
    #[arg(long, value_name = "ADDR", help_heading = "Composing a message")]
    from: Option<String>,

    /// Recipient in the To header (repeatable). Also a recipient of the envelope.
    #[arg(long, value_name = "ADDR", action = ArgAction::Append, help_heading = "Composing a message")]
    to: Vec<String>,

    /// Recipient in the Cc header (repeatable).
    #[arg(long, value_name = "ADDR", action = ArgAction::Append, help_heading = "Composing a message")]
    cc: Vec<String>,

    /// Hidden recipient (repeatable): gets the message, appears in no header.
    #[arg(long, value_name = "ADDR", action = ArgAction::Append, help_heading = "Composing a message")]
    bcc: Vec<String>,

    /// Subject of a composed message. With --subject, --body or --attach the message is
    /// composed and stdin (unless --body is given) is its text.
    #[arg(
        long,
        value_name = "TEXT",
        allow_hyphen_values = true,
        help_heading = "Composing a message"
    )]
    subject: Option<String>,

    /// Text of a composed message (else it is read from stdin).
    #[arg(
        long,
        value_name = "TEXT",
        allow_hyphen_values = true,
        help_heading = "Composing a message"
    )]
    body: Option<String>,

    /// Attach a file (repeatable); the MIME type is guessed from its name.
    #[arg(long, value_name = "PATH", action = ArgAction::Append, help_heading = "Composing a message")]
    attach: Vec<PathBuf>,

    /// Add a header, 'Name: value' (repeatable).
    #[arg(long, value_name = "'NAME: VALUE'", action = ArgAction::Append, allow_hyphen_values = true, help_heading = "Composing a message")]
    header: Vec<String>,

    /// Connect to this server instead of the mode's endpoint (an on-premises relay, a test
    /// server). The mode's TLS and authentication rules still apply.
    #[arg(long, value_name = "HOST[:PORT]")]
    server: Option<String>,

    /// Do everything but connect to a mail server or ask for a token: print the profile,
    /// the endpoint, the envelope and the final header block, and exit 0.
    #[arg(long)]
    dry_run: bool,

    /// Recipient addresses (local names such as root go through the profile's aliases).
    #[arg(value_name = "RECIPIENT", allow_hyphen_values = false)]
    recipients: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Explain a Microsoft 365 reply code: `m365send explain 5.7.60` or `explain 535 5.7.3`.
    Explain {
        /// The reply code, enhanced status code or AADSTS error.
        #[arg(value_name = "CODE", required = true, num_args = 1..)]
        code: Vec<String>,
    },
    /// Log in to the profile's mailbox with a device code (delegated OAuth).
    Login,
    /// Show or clear the cached OAuth tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// List, run or edit the queue of messages waiting for another try.
    Queue {
        #[command(subcommand)]
        action: Option<QueueAction>,
    },
    /// Check a profile's setup, step by step, without sending a message.
    Doctor {
        /// Check every profile.
        #[arg(long)]
        all: bool,
        /// Also ask the server about this recipient (RCPT TO, then RSET; nothing is sent).
        #[arg(long, value_name = "ADDR")]
        to: Option<String>,
        /// Print the checks as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Accept mail from devices and applications over SMTP (`[serve]` in the configuration)
    /// and deliver it through the queue.
    Serve,
    /// Print a shell completion script: `m365send completions bash > /etc/bash_completion.d/m365send`.
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print a manual page in roff (packaging generates the installed pages with it).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "PAGE", default_value = "m365send.8")]
        page: crate::man::Page,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Show what is cached for the profile and when it expires.
    Status,
    /// Forget the cached tokens of the profile.
    Clear,
}

#[derive(Debug, Subcommand)]
enum QueueAction {
    /// List the queued messages (the default).
    List {
        /// Print the queue as one JSON object, for monitoring.
        #[arg(long)]
        json: bool,
    },
    /// Try the messages that are due.
    Run,
    /// Try every message now, ignoring backoff.
    Flush,
    /// Show one message's envelope, attempts and last error.
    Show { id: String },
    /// Remove one message from the queue.
    Delete { id: String },
}

/// The clap definition. `subcommands` is true for the `m365send` personality only.
pub fn clap_command(subcommands: bool) -> ClapCommand {
    let cmd = ClapCommand::new("m365send")
        .version(env!("CARGO_PKG_VERSION"))
        .about(
            "Send mail through Microsoft 365: a sendmail replacement for client submission, \
             relay through a connector, and direct send.",
        )
        .override_usage(USAGE)
        .after_help(after_help())
        // -h is sendmail's hop count and -V its envelope id: help and version are long only.
        .disable_help_flag(true)
        .disable_version_flag(true)
        .disable_help_subcommand(true)
        // sendmail semantics: an option given twice takes its last value.
        .args_override_self(true)
        .arg(
            Arg::new("help")
                .long("help")
                .action(ArgAction::Help)
                .global(true)
                .display_order(1000)
                .help("Print this help"),
        )
        .arg(
            Arg::new("version")
                .long("version")
                .action(ArgAction::Version)
                .display_order(1001)
                .help("Print the version"),
        );
    let cmd = SendOpts::augment_args(cmd);
    if subcommands {
        Sub::augment_subcommands(cmd).subcommand_value_name("COMMAND")
    } else {
        cmd
    }
}

fn parse_main(args: Vec<OsString>, subcommands: bool) -> Result<Invocation, Failure> {
    let cmd = clap_command(subcommands);
    let values = ValueOptions::of(&cmd);
    let pre = prepass(args, &values, subcommands)?;
    let argv = std::iter::once(OsString::from("m365send")).chain(pre.args);
    let matches = match cmd.try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => return clap_failure(e),
    };
    let opts = SendOpts::from_arg_matches(&matches).map_err(|e| usage_from_clap(&e))?;
    let sub = if matches.subcommand_name().is_some() {
        Some(Sub::from_arg_matches(&matches).map_err(|e| usage_from_clap(&e))?)
    } else {
        None
    };

    let config = opts.config.clone();
    let profile = opts.profile.clone();
    let verbose = opts.verbose;
    let send = send_args(opts, pre.delivery)?;

    let command = match (sub, pre.special) {
        (Some(_), Some(_)) => {
            return Err(Failure::usage(
                "a subcommand cannot be combined with -bs, -bp, -bi or -q",
            ));
        }
        (Some(sub), None) => {
            if *send != SendArgs::default() {
                return Err(Failure::usage(
                    "options for sending a message (recipients, --to, --subject, -f, ...) \
                     cannot be combined with a subcommand",
                ));
            }
            match sub {
                Sub::Explain { code } => Command::Explain {
                    code: code.join(" "),
                },
                Sub::Login => Command::Login,
                Sub::Token {
                    action: TokenAction::Status,
                } => Command::TokenStatus,
                Sub::Token {
                    action: TokenAction::Clear,
                } => Command::TokenClear,
                Sub::Doctor { all, to, json } => Command::Doctor { all, to, json },
                Sub::Queue { action } => match action {
                    None => Command::QueueList { json: false },
                    Some(QueueAction::List { json }) => Command::QueueList { json },
                    Some(QueueAction::Run) => Command::QueueRun,
                    Some(QueueAction::Flush) => Command::QueueFlush,
                    Some(QueueAction::Show { id }) => Command::QueueShow { id },
                    Some(QueueAction::Delete { id }) => Command::QueueDelete { id },
                },
                Sub::Serve => Command::Serve,
                Sub::Completions { shell } => Command::Completions { shell },
                Sub::Man { page } => Command::Man { page },
            }
        }
        (None, Some(Special::SmtpStdio)) => Command::SmtpStdio(send),
        (None, Some(Special::QueueList)) => Command::QueueList { json: false },
        (None, Some(Special::QueueRun)) => Command::QueueRun,
        (None, Some(Special::Newaliases)) => Command::Newaliases,
        (None, None) => Command::Send(send),
    };
    Ok(Invocation {
        config,
        profile,
        verbose,
        command,
        ignored: pre.ignored,
        personality: Personality::default(),
    })
}

fn send_args(opts: SendOpts, delivery: DeliveryMode) -> Result<Box<SendArgs>, Failure> {
    let mode = match opts.mode.as_deref() {
        None => None,
        Some(m) => Some(Mode::parse(m).ok_or_else(|| {
            Failure::usage(format!(
                "--mode {m}: expected submit, relay, direct, hve, acs or graph"
            ))
        })?),
    };
    let ret = match opts.ret.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("full") => Some(Ret::Full),
        Some("hdrs") => Some(Ret::Hdrs),
        Some(other) => {
            return Err(Failure::usage(format!("-R {other}: expected full or hdrs")));
        }
    };
    let notify = opts.notify.as_deref().map(parse_notify).transpose()?;
    if let Some(envid) = &opts.envid
        && (envid.is_empty() || envid.len() > 100 || envid.chars().any(|c| c.is_control()))
    {
        return Err(Failure::usage(
            "-V ENVID: the envelope id must be 1 to 100 printable characters",
        ));
    }
    Ok(Box::new(SendArgs {
        recipients: opts.recipients,
        extract_recipients: opts.extract_recipients,
        ignore_dots: opts.ignore_dots,
        envelope_from: opts.envelope_from,
        full_name: opts.full_name,
        dsn: Dsn {
            notify,
            ret,
            envid: opts.envid,
        },
        delivery,
        mode,
        from: opts.from,
        to: opts.to,
        cc: opts.cc,
        bcc: opts.bcc,
        subject: opts.subject,
        body: opts.body,
        attach: opts.attach,
        headers: opts.header,
        server: opts.server,
        dry_run: opts.dry_run,
    }))
}

/// `-N never` or `-N success,failure,delay` (any subset, any case) → the RCPT NOTIFY= value.
pub fn parse_notify(value: &str) -> Result<String, Failure> {
    let bad = || {
        Failure::usage(format!(
            "-N {value}: expected never, or a comma list of success, failure and delay"
        ))
    };
    let mut words: Vec<&'static str> = Vec::new();
    for word in value.split(',').map(str::trim) {
        let w = match word.to_ascii_lowercase().as_str() {
            "never" => "NEVER",
            "success" => "SUCCESS",
            "failure" => "FAILURE",
            "delay" => "DELAY",
            _ => return Err(bad()),
        };
        if !words.contains(&w) {
            words.push(w);
        }
    }
    if words.contains(&"NEVER") && words.len() > 1 {
        return Err(Failure::usage(format!(
            "-N {value}: never cannot be combined with success, failure or delay"
        )));
    }
    Ok(words.join(","))
}

/// A clap error as the user should see it: help and version are not errors.
fn clap_failure(e: clap::Error) -> Result<Invocation, Failure> {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(Invocation {
            command: Command::Help {
                text: e.render().to_string(),
            },
            ..Invocation::default()
        }),
        _ => Err(usage_from_clap(&e)),
    }
}

fn usage_from_clap(e: &clap::Error) -> Failure {
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    let message = match e.kind() {
        ErrorKind::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg).unwrap_or_default();
            let tip = context(ContextKind::SuggestedArg)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            format!("unknown option {arg}{tip}; see m365send --help")
        }
        ErrorKind::InvalidSubcommand => {
            let arg = context(ContextKind::InvalidSubcommand).unwrap_or_default();
            format!("unknown command {arg}; see m365send --help")
        }
        _ => {
            // clap's first paragraph, without its "error: " prefix and usage block.
            let rendered = e.render().to_string();
            let first = rendered.split("\n\n").next().unwrap_or("").trim();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            // One line: clap indents continuation lines.
            let first = first.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("{first}; see m365send --help")
        }
    };
    Failure::usage(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(argv0: &str, rest: &[&str]) -> Vec<OsString> {
        std::iter::once(argv0)
            .chain(rest.iter().copied())
            .map(OsString::from)
            .collect()
    }
    fn sendmail(rest: &[&str]) -> Result<Invocation, Failure> {
        parse(argv("/usr/sbin/sendmail", rest))
    }
    fn native(rest: &[&str]) -> Result<Invocation, Failure> {
        parse(argv("m365send", rest))
    }
    fn send_args(inv: Invocation) -> SendArgs {
        match inv.command {
            Command::Send(a) => *a,
            other => panic!("expected Send, got {other:?}"),
        }
    }
    fn rcpts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sender_forms() {
        for args in [&["-fa@x"][..], &["-f", "a@x"], &["-r", "a@x"], &["-ra@x"]] {
            let a = send_args(sendmail(args).unwrap());
            assert_eq!(a.envelope_from.as_deref(), Some("a@x"), "{args:?}");
        }
        let a = send_args(sendmail(&["-F", "Cron Daemon", "-t"]).unwrap());
        assert_eq!(a.full_name.as_deref(), Some("Cron Daemon"));
        // A value is never taken for an option.
        let a = send_args(sendmail(&["-f", "-odd", "x"]).unwrap());
        assert_eq!(a.envelope_from.as_deref(), Some("-odd"));
        assert_eq!(a.delivery, DeliveryMode::Now);
        // Last one wins, as with sendmail.
        let a = send_args(sendmail(&["-f", "a@x", "-f", "b@x"]).unwrap());
        assert_eq!(a.envelope_from.as_deref(), Some("b@x"));
    }

    #[test]
    fn dsn() {
        let a = send_args(
            sendmail(&["-N", "success,Failure,delay", "-R", "hdrs", "-V", "id1"]).unwrap(),
        );
        assert_eq!(a.dsn.notify.as_deref(), Some("SUCCESS,FAILURE,DELAY"));
        assert_eq!(a.dsn.ret, Some(Ret::Hdrs));
        assert_eq!(a.dsn.envid.as_deref(), Some("id1"));
        let a = send_args(sendmail(&["-Nnever", "-Rfull"]).unwrap());
        assert_eq!(a.dsn.notify.as_deref(), Some("NEVER"));
        assert_eq!(a.dsn.ret, Some(Ret::Full));
        assert_eq!(
            sendmail(&["-N", "sometimes"]).unwrap_err().exit,
            crate::exit::Exit::Usage
        );
        assert_eq!(
            sendmail(&["-N", "never,success"]).unwrap_err().exit,
            crate::exit::Exit::Usage
        );
        assert_eq!(
            sendmail(&["-R", "body"]).unwrap_err().exit,
            crate::exit::Exit::Usage
        );
    }

    #[test]
    fn modes_by_b_and_q_and_o() {
        assert!(matches!(
            sendmail(&["-bm", "a@x"]).unwrap().command,
            Command::Send(_)
        ));
        assert!(matches!(
            sendmail(&["-bs"]).unwrap().command,
            Command::SmtpStdio(_)
        ));
        assert_eq!(
            sendmail(&["-bp"]).unwrap().command,
            Command::QueueList { json: false }
        );
        assert_eq!(sendmail(&["-bi"]).unwrap().command, Command::Newaliases);
        assert_eq!(sendmail(&["-q"]).unwrap().command, Command::QueueRun);
        assert_eq!(sendmail(&["-q15m"]).unwrap().command, Command::QueueRun);
        let a = send_args(sendmail(&["-odq", "a@x"]).unwrap());
        assert_eq!(a.delivery, DeliveryMode::Queue);
        let a = send_args(sendmail(&["-odq", "-odb", "a@x"]).unwrap());
        assert_eq!(a.delivery, DeliveryMode::Now);
        let e = sendmail(&["-bd"]).unwrap_err();
        assert!(e.message.contains("-bd"), "{e:?}");
    }

    #[test]
    fn ignored_options() {
        let inv = sendmail(&[
            "-B",
            "8BITMIME",
            "-U",
            "-L",
            "tag",
            "-h",
            "5",
            "-X",
            "/tmp/log",
            "-oee",
            "-oep",
            "-oeq",
            "-oew",
            "-om",
            "-oQ/var/spool",
            "-odb",
            "a@x",
        ])
        .unwrap();
        assert_eq!(
            inv.ignored,
            vec![
                "-B 8BITMIME",
                "-U",
                "-L tag",
                "-h 5",
                "-X /tmp/log",
                "-oee",
                "-oep",
                "-oeq",
                "-oew",
                "-om",
                "-oQ/var/spool",
                "-odb"
            ]
        );
        assert_eq!(send_args(inv).recipients, rcpts(&["a@x"]));
    }

    #[test]
    fn unknown_option_names_it() {
        for (args, name) in [
            (&["-x", "a@x"][..], "-x"),
            (&["--frobnicate"], "--frobnicate"),
        ] {
            let e = sendmail(args).unwrap_err();
            assert_eq!(e.exit, crate::exit::Exit::Usage);
            assert!(e.message.contains(name), "{e:?}");
        }
    }

    #[test]
    fn personalities() {
        assert_eq!(
            parse(argv("/usr/bin/mailq", &[])).unwrap().command,
            Command::QueueList { json: false }
        );
        assert_eq!(
            parse(argv("newaliases", &[])).unwrap().command,
            Command::Newaliases
        );
        // As sendmail, subcommand words are recipients.
        let a = send_args(sendmail(&["queue", "explain"]).unwrap());
        assert_eq!(a.recipients, rcpts(&["queue", "explain"]));
        let a = send_args(native(&["--", "queue"]).unwrap());
        assert_eq!(a.recipients, rcpts(&["queue"]));
        let a = send_args(native(&["a@x", "queue"]).unwrap());
        assert_eq!(a.recipients, rcpts(&["a@x", "queue"]));
        let a = send_args(native(&["-f", "queue", "b@x"]).unwrap());
        assert_eq!(a.envelope_from.as_deref(), Some("queue"));
        assert_eq!(a.recipients, rcpts(&["b@x"]));
    }

    #[test]
    fn subcommands() {
        assert_eq!(
            native(&["queue"]).unwrap().command,
            Command::QueueList { json: false }
        );
        assert_eq!(
            native(&["queue", "list", "--json"]).unwrap().command,
            Command::QueueList { json: true }
        );
        assert_eq!(
            native(&["queue", "run"]).unwrap().command,
            Command::QueueRun
        );
        assert_eq!(
            native(&["queue", "flush"]).unwrap().command,
            Command::QueueFlush
        );
        assert_eq!(
            native(&["queue", "show", "abc"]).unwrap().command,
            Command::QueueShow { id: "abc".into() }
        );
        assert_eq!(
            native(&["queue", "delete", "abc"]).unwrap().command,
            Command::QueueDelete { id: "abc".into() }
        );
        assert_eq!(
            native(&["explain", "535", "5.7.3"]).unwrap().command,
            Command::Explain {
                code: "535 5.7.3".into()
            }
        );
        assert_eq!(native(&["login"]).unwrap().command, Command::Login);
        assert_eq!(
            native(&["token", "status"]).unwrap().command,
            Command::TokenStatus
        );
        assert_eq!(
            native(&["token", "clear"]).unwrap().command,
            Command::TokenClear
        );
        let inv = native(&[
            "-C",
            "/etc/x.toml",
            "--profile",
            "app",
            "token",
            "status",
            "-v",
        ])
        .unwrap();
        assert_eq!(inv.config, Some(PathBuf::from("/etc/x.toml")));
        assert_eq!(inv.profile.as_deref(), Some("app"));
        assert_eq!(inv.verbose, 1);
        assert_eq!(
            native(&["token"]).unwrap_err().exit,
            crate::exit::Exit::Usage
        );
        assert_eq!(
            native(&["--subject", "x", "queue"]).unwrap_err().exit,
            crate::exit::Exit::Usage
        );
        assert_eq!(
            native(&["-bp", "queue"]).unwrap_err().exit,
            crate::exit::Exit::Usage
        );
    }

    #[test]
    fn native_options() {
        let inv = native(&[
            "--mode",
            "relay",
            "--profile",
            "cron",
            "--config",
            "/c.toml",
            "--from",
            "Ops <ops@c.com>",
            "--to",
            "a@c.com",
            "--to",
            "b@c.com",
            "--cc",
            "c@c.com",
            "--bcc",
            "d@c.com",
            "--subject",
            "-- backup done",
            "--body",
            "ok",
            "--attach",
            "/var/log/a.log",
            "--attach",
            "b.txt",
            "--header",
            "X-A: 1",
            "--header",
            "X-B: 2",
            "--server",
            "127.0.0.1:2525",
            "--dry-run",
            "--verbose",
            "-v",
        ])
        .unwrap();
        assert_eq!(inv.profile.as_deref(), Some("cron"));
        assert_eq!(inv.config, Some(PathBuf::from("/c.toml")));
        assert_eq!(inv.verbose, 2);
        let a = send_args(inv);
        assert_eq!(a.mode, Some(Mode::Relay));
        assert_eq!(a.from.as_deref(), Some("Ops <ops@c.com>"));
        assert_eq!(a.to, rcpts(&["a@c.com", "b@c.com"]));
        assert_eq!(a.cc, rcpts(&["c@c.com"]));
        assert_eq!(a.bcc, rcpts(&["d@c.com"]));
        assert_eq!(a.subject.as_deref(), Some("-- backup done"));
        assert_eq!(a.body.as_deref(), Some("ok"));
        assert_eq!(
            a.attach,
            vec![PathBuf::from("/var/log/a.log"), PathBuf::from("b.txt")]
        );
        assert_eq!(a.headers, rcpts(&["X-A: 1", "X-B: 2"]));
        assert_eq!(a.server.as_deref(), Some("127.0.0.1:2525"));
        assert!(a.dry_run && a.composes());
        assert_eq!(
            native(&["--mode", "smoke"]).unwrap_err().exit,
            crate::exit::Exit::Usage
        );
        let a = send_args(native(&["--mode=direct", "x@c.com"]).unwrap());
        assert_eq!(a.mode, Some(Mode::Direct));
    }

    #[test]
    fn help_and_version() {
        let Command::Help { text } = native(&["--help"]).unwrap().command else {
            panic!()
        };
        for needle in [
            "--dry-run",
            "-oi",
            "-bs",
            "--attach",
            "Sendmail options",
            "queue",
        ] {
            assert!(text.contains(needle), "help lacks {needle}:\n{text}");
        }
        let Command::Help { text } = sendmail(&["--version"]).unwrap().command else {
            panic!()
        };
        assert!(text.contains(env!("CARGO_PKG_VERSION")));
        // -h is the hop count, -V the envelope id: neither prints help or version.
        assert!(matches!(
            sendmail(&["-h", "3", "-V", "x", "a@x"]).unwrap().command,
            Command::Send(_)
        ));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for args in [
            &["-"][..],
            &["-o"],
            &["-f"],
            &["-B"],
            &["--to"],
            &["-b"],
            &["-ti"],
            &["-it", "-fx"],
            &["--header"],
            &["-\u{e9}"],
            &["--mode"],
            &["queue", "show"],
        ] {
            let _ = sendmail(args);
            let _ = native(args);
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let bad = OsString::from_vec(vec![0xff, 0xfe]);
            let _ = parse(vec![OsString::from("sendmail"), bad.clone()]);
            let _ = parse(vec![bad]);
            let _ = parse(vec![]);
        }
    }
}
