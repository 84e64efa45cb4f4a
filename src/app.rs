//! The program: from an `Invocation` to an exit code, calling each step in turn.
//!
//! Owns: the order of the steps (cli → config → message → route → deliver), logging set-up,
//! and what is printed for --dry-run; for `serve`, the steps each accepted message takes
//! (`serve_accept`) and the queue run (`serve_drain`) that `serve` calls. Must not: hold any step's logic itself.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read};
use std::path::Path;

use crate::cli::{Command, DeliveryMode, Invocation, SendArgs};
use crate::config::{self, Config, Mode, OAuthFlow, Profile, QueuePolicy, TlsVersion};
use crate::exit::{Exit, Failure};
use crate::message::{Prepared, Ret};
use crate::queue::{EnqueueOptions, EntryId, RunOptions, TransportDeliverer};
use crate::route::{AuthKind, Endpoint, TlsPolicy};

/// Run with the given argv (argv[0] included) and return the process exit code.
pub fn main_with(args: Vec<OsString>) -> i32 {
    let outcome = crate::cli::parse(args).and_then(|inv| {
        init_tracing(inv.verbose);
        for option in &inv.ignored {
            tracing::debug!(%option, "option accepted for compatibility and ignored");
        }
        let server_given = match &inv.command {
            Command::Send(a) | Command::SmtpStdio(a) => a.server.is_some(),
            _ => false,
        };
        let refused = config::check_command_line_overrides(
            inv.personality == crate::cli::Personality::Sendmail,
            inv.config.is_some(),
            server_given,
        )
        .err();
        match (refused, &inv.command) {
            // A message refused for its argv is kept in the dead letter like any other.
            (Some(f), Command::Send(args)) => Err(refused_before_reading(args, f)),
            (Some(f), _) => Err(f),
            (None, _) => run(inv),
        }
    });
    match outcome {
        Ok(()) => Exit::Ok.code(),
        Err(f) => {
            crate::console::err_line(&format!("m365send: {}", f.message));
            f.exit.code()
        }
    }
}

/// Log to stderr: warnings by default, m365send's debug lines with -v, trace with -vv.
/// `M365SEND_LOG` (an env-filter directive) overrides.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,m365send=debug",
        _ => "warn,m365send=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("M365SEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    // A closed stderr must not panic: the builder's default reports a failed write with
    // `eprintln!`, which panics on that same closed stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(|| crate::console::Stderr)
        .log_internal_errors(false)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(io::stderr().is_terminal())
        .without_time()
        .try_init();
}

fn run(inv: Invocation) -> Result<(), Failure> {
    let config_path = inv.config.as_deref();
    let profile_name = inv.profile.as_deref();
    match inv.command {
        Command::Help { text } => {
            // A stdout that cannot be written (`m365send --help >&-`) is not worth reporting.
            let _ = crate::console::out(&text);
            Ok(())
        }
        Command::Send(args) => send(config_path, profile_name, inv.verbose, &args),
        Command::Newaliases => {
            crate::console::err_line(
                "m365send: newaliases: nothing to do; aliases are read from the profile's \
                 `aliases`/`aliases_file` on every message",
            );
            Ok(())
        }
        Command::QueueList { json } => queue_list(&config_or_default(config_path)?, json),
        Command::QueueRun => queue_run(&config_or_default(config_path)?, false, inv.verbose),
        Command::QueueFlush => queue_run(&config_or_default(config_path)?, true, inv.verbose),
        Command::QueueShow { id } => {
            let config = config_or_default(config_path)?;
            let (entry, headers) = crate::queue::show(&config, &id)?;
            let explanation = crate::queue::explain_last_reply(&config, &entry);
            crate::console::out(&crate::queue::format_show(
                &entry,
                &headers,
                explanation.as_deref(),
            ))
            .map_err(|e| Failure::io(format!("cannot write the queue entry: {e}")))
        }
        Command::QueueDelete { id } => {
            crate::queue::delete(&config_or_default(config_path)?, &id)?;
            crate::console::err_line(&format!("m365send: {id} deleted from the queue"));
            Ok(())
        }
        Command::Explain { code } => explain(&code),
        Command::Completions { shell } => print_stdout(&crate::completions::script(shell)),
        Command::Man { page } => print_stdout(page.render().as_bytes()),
        Command::SmtpStdio(args) => smtp_stdio(config_path, profile_name, inv.verbose, &args),
        Command::Login => {
            let (config, profile) = config_and_profile(config_path, profile_name)?;
            let runtime = runtime()?;
            let mut out = crate::console::Stdout;
            runtime.block_on(crate::auth::login(&config, &profile, &mut out))
        }
        Command::TokenStatus => {
            let (config, profile) = config_and_profile(config_path, profile_name)?;
            crate::auth::token_status(&config, &profile, &mut crate::console::Stdout)
        }
        Command::Doctor { all, to, json } => crate::doctor::run(
            &crate::doctor::Options {
                config: config_path,
                profile: profile_name,
                all,
                to,
                json,
                verbose: inv.verbose,
            },
            &mut io::stdout(),
        ),
        Command::Serve => serve(config_path),
        Command::TokenClear => {
            let (config, profile) = config_and_profile(config_path, profile_name)?;
            crate::auth::token_clear(&config, &profile)?;
            crate::console::err_line(&format!(
                "m365send: cached tokens of profile \"{}\" removed",
                profile.name
            ));
            Ok(())
        }
    }
}

/// `mailq`, `sendmail -bp`, `m365send queue list [--json]`.
fn queue_list(config: &Config, json: bool) -> Result<(), Failure> {
    let entries = crate::queue::list(config)?;
    let explain = |e: &crate::queue::Entry| crate::queue::explain_last_reply(config, e);
    let text = if json {
        crate::queue::format_json(&entries, &explain)
    } else {
        crate::queue::format_list(&entries, &explain)
    };
    crate::console::out(&text)
        .map_err(|e| Failure::io(format!("cannot write the queue listing: {e}")))
}

/// Generated text (a completion script, a manual page) on stdout.
fn print_stdout(bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut out = crate::console::Stdout;
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::io(format!("cannot write to standard output: {e}")))
}

/// `m365send explain CODE`: the catalogue's explanation of a reply code or AADSTS error.
fn explain(code: &str) -> Result<(), Failure> {
    match crate::explain::explain_code(code) {
        Some(text) => crate::console::out(&format!("{}\n", text.trim_end()))
            .map_err(|e| Failure::io(format!("cannot write the explanation: {e}"))),
        None => Err(Failure::usage(format!(
            "explain: no explanation for \"{code}\" (give an SMTP reply such as 550, an \
             enhanced code such as 5.7.60, or an identity platform code such as AADSTS700082)"
        ))),
    }
}

/// A single-threaded tokio runtime: one message, one connection at a time.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Exit::OsErr, format!("cannot start the async runtime: {e}")))
}

/// The configuration for commands that also work without one (the queue: `mailq` on a host
/// that never configured m365send just has an empty queue).
fn config_or_default(path: Option<&Path>) -> Result<Config, Failure> {
    Ok(config::load(path)?.unwrap_or_default())
}

/// The configuration and the profile for commands that need both (`login`, `token`).
fn config_and_profile(
    path: Option<&Path>,
    profile_name: Option<&str>,
) -> Result<(Config, Profile), Failure> {
    let config = config::load(path)?.ok_or_else(no_config)?;
    let profile = config.select_profile(profile_name, None)?;
    Ok((config, profile))
}

/// Send one message: config → profile → message → route → (dry-run report | deliver).
fn send(
    config_path: Option<&Path>,
    profile_name: Option<&str>,
    verbose: u8,
    args: &SendArgs,
) -> Result<(), Failure> {
    let stdin = io::stdin();
    let reads_stdin = reads_stdin(args);
    // A message refused before delivery (no configuration, an alias loop, a recipient
    // without a domain...) is kept in the dead letter instead of being lost: cron and PHP
    // have no copy of their own. prepare hands back what it read; what was not read yet is
    // read now, unless someone would have to type it.
    let keeps = reads_stdin && !args.dry_run;
    let unread_input = || unread_input(args);
    let (config, profile) = match configure(config_path, profile_name, args) {
        Ok(c) => c,
        Err(f) => return Err(keep_unsent(None, None, args, unread_input(), false, f)),
    };
    tracing::debug!(profile = %profile.name, mode = profile.mode.as_str(), "profile chosen");

    let mut input: Box<dyn Read> = if reads_stdin {
        Box::new(stdin.lock())
    } else {
        Box::new(io::empty())
    };
    let prepared = match crate::message::prepare_keeping(args, &profile, &mut input) {
        Ok(p) => p,
        Err(refused) => {
            drop(input);
            // What prepare read is the caller's whole message (also one over max_size, read
            // to its end for this); otherwise read what is left now.
            let (copy, whole) = match refused.input {
                Some(copy) if keeps => (Some(copy), true),
                _ => (unread_input(), false),
            };
            return Err(keep_unsent(
                Some(&config),
                Some(&profile),
                args,
                copy,
                whole,
                refused.failure,
            ));
        }
    };
    drop(input);

    let runtime = runtime()?;
    if args.dry_run {
        let endpoint = runtime.block_on(crate::route::resolve(
            &profile,
            &prepared.envelope,
            args.server.as_deref(),
        ))?;
        return crate::console::out(&dry_run_report(&config, &profile, &endpoint, &prepared))
            .map_err(|e| Failure::io(format!("cannot write the dry-run report: {e}")));
    }
    runtime
        .block_on(route_and_submit(
            &config, &profile, &prepared, args, verbose, true,
        ))
        .map(|_| ())
}

/// With --body the message text is given; a composed message with nobody typing into a
/// terminal has no text. Otherwise stdin is read (as sendmail does, even from a terminal).
fn reads_stdin(args: &SendArgs) -> bool {
    !(args.body.is_some() || (args.composes() && io::stdin().is_terminal()))
}

/// What stdin still holds, copied for the dead letter (at most the default size limit), or
/// None when there is nothing to keep: a dry run, no message on stdin, or a terminal (someone
/// would have to type it).
fn unread_input(args: &SendArgs) -> Option<tempfile::NamedTempFile> {
    let stdin = io::stdin();
    if !reads_stdin(args) || args.dry_run || stdin.is_terminal() {
        return None;
    }
    let mut copy = tempfile::Builder::new()
        .prefix("m365send-in-")
        .tempfile()
        .ok()?;
    // At most the default size limit: beyond it the copy is not kept.
    let limit = Profile::default().max_size() + 1;
    io::copy(&mut stdin.lock().take(limit), copy.as_file_mut()).ok()?;
    Some(copy)
}

/// A message refused before its input was read (the caller's argv): keep what stdin holds.
fn refused_before_reading(args: &SendArgs, f: Failure) -> Failure {
    keep_unsent(None, None, args, unread_input(args), false, f)
}

/// A message refused before any delivery attempt: keep the caller's input in the dead letter
/// (as sendmail keeps it in dead.letter) and say where. `whole`: `copy` is the message as
/// prepare read it to its end (an envelope refusal, or a message over `max_size`: large cron
/// output is kept, not lost), kept whatever the refusal. Otherwise `copy` is what was left
/// unread, kept only up to the default size limit and not for a refusal of the data itself
/// (65: a header injection) or of a missing input file, where the caller can send again.
fn keep_unsent(
    config: Option<&Config>,
    profile: Option<&Profile>,
    args: &SendArgs,
    copy: Option<tempfile::NamedTempFile>,
    whole: bool,
    mut f: Failure,
) -> Failure {
    if !whole
        && matches!(
            f.exit,
            Exit::DataErr | Exit::NoInput | Exit::IoErr | Exit::CantCreat
        )
    {
        return f;
    }
    let Some(copy) = copy else { return f };
    let size = copy.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    let limit = profile.unwrap_or(&Profile::default()).max_size();
    if size == 0 || (size > limit && !whole) {
        return f;
    }
    let default_config = Config::default();
    let default_profile = Profile::default();
    let message = Prepared {
        envelope: crate::message::Envelope {
            sender: args
                .envelope_from
                .as_deref()
                .map(config::bare_address)
                .unwrap_or_default(),
            recipients: args.recipients.clone(),
            dsn: Default::default(),
        },
        body: crate::message::Body::temporary(copy.into_temp_path()),
        size,
        eight_bit: false,
        smtputf8: false,
        header_block: String::new(),
    };
    let reason = f.message.lines().next().unwrap_or("not sent").to_owned();
    match crate::report::dead_letter(
        config.unwrap_or(&default_config),
        profile.unwrap_or(&default_profile),
        &message,
        &reason,
    ) {
        Ok(path) => {
            f.message = format!(
                "{}\n  The message was not sent; it was saved to {}.",
                f.message,
                path.display()
            );
        }
        Err(e) => {
            f.message = format!(
                "{}\n  The message was not sent and could not be saved: {}",
                f.message, e.message
            );
        }
    }
    f
}

/// From a prepared message to its disposition: the queue at once (`-odq`, `queue =
/// "always"`), else the route and [`submit_with`]. Shared by the stdin path and `-bs`.
/// `keep`: a message the route refuses before any connection (direct send to an outside
/// recipient, no MX record, port 465) goes to the dead letter, as a delivery failure does.
/// Not for `-bs`, whose client keeps its own copy and hears the refusal.
async fn route_and_submit(
    config: &Config,
    profile: &Profile,
    prepared: &Prepared,
    args: &SendArgs,
    verbose: u8,
    keep: bool,
) -> Result<Disposition, Failure> {
    let refused = |mut f: Failure| {
        if !keep {
            return f;
        }
        let reason = f.message.lines().next().unwrap_or("not sent").to_owned();
        let note = match crate::report::dead_letter(config, profile, prepared, &reason) {
            Ok(path) => format!(
                "The message was not sent; it was saved to {}.",
                path.display()
            ),
            Err(e) => format!(
                "The message was not sent and could not be saved: {}",
                e.message
            ),
        };
        f.message = format!("{}\n  {note}", f.message);
        f
    };
    let enqueue = EnqueueOptions {
        mode: args.mode,
        server: args.server.clone(),
        delivered: Vec::new(),
    };
    let opts = crate::deliver::Options {
        verbose,
        ..Default::default()
    };
    // -odq, or a profile that always queues: into the spool without connecting (no DNS
    // either); the queue runner resolves the route.
    if args.delivery == DeliveryMode::Queue || profile.queue == QueuePolicy::Always {
        return queue_at_once(config, profile, prepared, args, &opts, &refused)
            .await
            .map(Disposition::Queued);
    }
    let endpoint =
        match crate::route::resolve(profile, &prepared.envelope, args.server.as_deref()).await {
            Ok(e) => e,
            // A DNS lookup that may work later: the queue runner tries again.
            Err(f) if f.exit == Exit::TempFail && profile.queue == QueuePolicy::Auto => {
                let reason = crate::queue::Reason::Text(&f.message);
                return queue_message(
                    config,
                    profile,
                    prepared,
                    Some(reason),
                    &f.message,
                    &enqueue,
                    &opts,
                )
                .map(Disposition::Queued);
            }
            Err(f) => return Err(refused(f)),
        };
    submit_with(config, profile, prepared, &endpoint, &opts, &enqueue).await
}

/// Into the queue without connecting (`-odq`, `queue = "always"`, and every message of
/// `serve`), after the checks that need no network: port 465, accepted domains, an outside
/// recipient for direct send. So a broken submission fails now, not in the queue days later;
/// an MX lookup is left to the queue runner. `refused` words a refusal of the route.
async fn queue_at_once(
    config: &Config,
    profile: &Profile,
    prepared: &Prepared,
    args: &SendArgs,
    opts: &crate::deliver::Options,
    refused: &dyn Fn(Failure) -> Failure,
) -> Result<EntryId, Failure> {
    let enqueue = EnqueueOptions {
        mode: args.mode,
        server: args.server.clone(),
        delivered: Vec::new(),
    };
    let ep = &profile.endpoint;
    let needs_dns = matches!(profile.mode, Mode::Relay | Mode::Direct)
        && args.server.is_none()
        && ep.host.is_none()
        && ep.mx_host.is_none();
    if !needs_dns {
        crate::route::resolve(profile, &prepared.envelope, args.server.as_deref())
            .await
            .map_err(refused)?;
    }
    let why = if args.delivery == DeliveryMode::Queue {
        "queued on request (-odq)"
    } else {
        "the profile queues every message (queue = \"always\")"
    };
    queue_message(config, profile, prepared, None, why, &enqueue, opts)
}

/// What became of a submitted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Every recipient accepted it.
    Delivered,
    /// In the queue (all recipients, or those still pending after a temporary failure);
    /// the queue runner delivers it.
    Queued(EntryId),
}

/// Submit one message as the profile's queue policy says: `queue = "always"` → into the
/// queue without connecting; otherwise deliver with in-process retries, and on a temporary
/// failure (policy `auto`) queue the recipients still pending. Errors are the user-facing
/// report: a permanent failure (exit code of the reply, explanation, dead letter written),
/// a temporary one with `queue = "never"` (75, dead letter), or a queue that cannot be
/// written (73, dead letter). Prints "queued as ID" at -v, nothing else but the transcript.
/// For the sendmail path and the `-bs` server.
pub async fn submit(
    config: &Config,
    profile: &Profile,
    prepared: &Prepared,
    endpoint: &Endpoint,
    opts: &crate::deliver::Options,
) -> Result<Disposition, Failure> {
    submit_with(
        config,
        profile,
        prepared,
        endpoint,
        opts,
        &EnqueueOptions::default(),
    )
    .await
}

/// [`submit`] recording the command line's `--mode`/`--server` in a queue entry.
pub async fn submit_with(
    config: &Config,
    profile: &Profile,
    prepared: &Prepared,
    endpoint: &Endpoint,
    opts: &crate::deliver::Options,
    enqueue: &EnqueueOptions,
) -> Result<Disposition, Failure> {
    if profile.queue == QueuePolicy::Always {
        let why = "the profile queues every message (queue = \"always\")";
        return queue_message(config, profile, prepared, None, why, enqueue, opts)
            .map(Disposition::Queued);
    }
    let outcome = crate::deliver::attempt(config, profile, prepared, endpoint, opts).await;
    crate::deliver::log_outcome(
        config,
        profile,
        prepared,
        &outcome,
        outcome.exit(),
        opts.verbose > 0,
    );
    if outcome.is_success() {
        return Ok(Disposition::Delivered);
    }
    if outcome.is_transient() && profile.queue == QueuePolicy::Auto {
        // Queue only the recipients still pending; remember who already has it.
        let pending = Prepared {
            envelope: crate::message::Envelope {
                recipients: outcome.pending.clone(),
                ..prepared.envelope.clone()
            },
            body: crate::message::Body::at(prepared.body.path()),
            size: prepared.size,
            eight_bit: prepared.eight_bit,
            smtputf8: prepared.smtputf8,
            header_block: prepared.header_block.clone(),
        };
        let mut enqueue = enqueue.clone();
        enqueue.delivered.extend(outcome.delivered.iter().cloned());
        let summary = outcome.summary_line();
        let reason = match outcome.problem.as_ref().and_then(|p| p.reply.as_ref()) {
            Some(r) => crate::queue::Reason::Reply(r),
            None => crate::queue::Reason::Text(&summary),
        };
        let id = match queue_message(
            config,
            profile,
            &pending,
            Some(reason),
            &summary,
            &enqueue,
            opts,
        ) {
            Ok(id) => id,
            Err(mut f) => {
                f.message = format!("{}\n  {}", outcome.report(profile, prepared), f.message);
                return Err(f);
            }
        };
        if let Some((_, reply)) = outcome.refused.first() {
            // Some recipients were refused for good: the caller must hear about them.
            return Err(Failure::new(
                crate::explain::exit_for(reply),
                format!(
                    "{}\n  queued as {id} for: {}",
                    outcome.report(profile, prepared),
                    outcome.pending.join(", ")
                ),
            ));
        }
        return Ok(Disposition::Queued(id));
    }
    // Permanent, or temporary with `queue = "never"`: report it and keep a copy.
    Err(crate::deliver::failure(config, profile, prepared, &outcome))
}

/// Put the message in the queue; say so at -v ("m365send: queued as ID (why)", as sendmail
/// does). When the queue cannot be written: the dead letter, and exit 73 with both reasons.
fn queue_message(
    config: &Config,
    profile: &Profile,
    prepared: &Prepared,
    reason: Option<crate::queue::Reason<'_>>,
    why: &str,
    enqueue: &EnqueueOptions,
    opts: &crate::deliver::Options,
) -> Result<EntryId, Failure> {
    match crate::queue::enqueue_with(config, &profile.name, prepared, reason, enqueue) {
        Ok(id) => {
            if opts.verbose > 0 {
                let sink = opts
                    .stderr
                    .clone()
                    .unwrap_or_else(crate::smtp::Sink::stderr);
                sink.line(&format!("m365send: queued as {id} ({why})"));
            }
            Ok(id)
        }
        Err(f) => {
            let reason = format!("not queued: {}; {why}", f.message);
            let saved = match crate::report::dead_letter(config, profile, prepared, &reason) {
                Ok(path) => format!("message saved to {}", path.display()),
                Err(e) => format!("could not save the message either: {}", e.message),
            };
            Err(Failure::new(
                Exit::CantCreat,
                format!("{}\n  {saved}", f.message),
            ))
        }
    }
}

/// The queue's lifetime: `queue_lifetime_days`, default 5 days.
fn queue_lifetime(config: &Config) -> std::time::Duration {
    let days = u64::from(config.queue_lifetime_days.unwrap_or(5));
    std::time::Duration::from_secs(days * 24 * 3600)
}

/// `m365send queue run` / `sendmail -q` (due entries) and `queue flush` (all entries).
fn queue_run(config: &Config, flush: bool, verbose: u8) -> Result<(), Failure> {
    let runtime = runtime()?;
    let report = runtime.block_on(drain_queue(config, flush, verbose))?;
    if verbose > 0 {
        if report.skipped_locked {
            for w in &report.warnings {
                crate::console::err_line(&format!("m365send: {w}"));
            }
        }
        crate::console::err_line(&format!("m365send: {}", report.summary()));
    }
    Ok(())
}

/// One queue run with the product's wiring: the lifetime, the dead letter, and at -v one line
/// per entry (-vv: the SMTP transcript too). For `queue run`/`flush` and `serve`.
async fn drain_queue(
    config: &Config,
    flush: bool,
    verbose: u8,
) -> Result<crate::queue::RunReport, Failure> {
    // No /var/tmp fallback: under a service with a private /var/tmp (the shipped unit) it
    // would vanish with the service; the runner keeps the entry in SPOOL/failed/ instead.
    let dead_letter = |c: &Config, p: &Profile, m: &Prepared, r: &str| {
        crate::report::dead_letter_no_fallback(c, p, m, r)
    };
    let opts = RunOptions {
        flush,
        lifetime: queue_lifetime(config),
        dead_letter: Some(&dead_letter),
        verbose: verbose > 0,
        ..Default::default()
    };
    let mut deliverer = TransportDeliverer::new(verbose.saturating_sub(1));
    crate::queue::run(config, opts, &mut deliverer).await
}

/// The configuration and the profile for this message. Without a configuration file, only
/// `--dry-run --mode MODE` can go on (with a default profile for that mode).
fn configure(
    config_path: Option<&Path>,
    profile_name: Option<&str>,
    args: &SendArgs,
) -> Result<(Config, Profile), Failure> {
    match config::load(config_path)? {
        Some(config) => {
            let from = args.envelope_from.as_deref().or(args.from.as_deref());
            let profile = config
                .select_profile(profile_name, from)?
                .with_mode(args.mode);
            Ok((config, profile))
        }
        None => match (args.dry_run, args.mode, profile_name) {
            (true, Some(mode), None) => {
                // A profile from the command line alone: the sender given is also the
                // mailbox that would log in, so the report shows a complete route.
                let mut profile = Profile::for_mode(mode);
                profile.sender = args
                    .envelope_from
                    .as_deref()
                    .or(args.from.as_deref())
                    .map(config::bare_address)
                    .filter(|a| a.contains('@'));
                if matches!(mode, Mode::Submit | Mode::Hve) {
                    profile.mailbox = profile.sender.clone();
                }
                Ok((Config::default(), profile))
            }
            _ => Err(no_config()),
        },
    }
}

/// The failure when no configuration file exists (also `doctor`'s first check).
pub(crate) fn no_config() -> Failure {
    let mut looked = vec![format!("${}", config::CONFIG_ENV)];
    looked.extend(
        config::search_paths(&|name| std::env::var_os(name))
            .iter()
            .map(|p| p.display().to_string()),
    );
    Failure::config(format!(
        "no configuration file found (looked at {}).\n  \
         Copy config.example.toml (in the m365send sources and documentation) to {} and \
         edit a profile,\n  or give one with --config FILE. To try without one: \
         m365send --dry-run --mode submit --from me@example.com --to you@example.com --subject test --body hello",
        looked.join(", "),
        config::SYSTEM_CONFIG,
    ))
}

fn mode_title(mode: Mode) -> &'static str {
    match mode {
        Mode::Submit => "client submission (authenticated SMTP)",
        Mode::Relay => "SMTP relay through a connector",
        Mode::Direct => "direct send (internal recipients only)",
        Mode::Hve => "High Volume Email (internal recipients only)",
        Mode::Acs => "Azure Communication Services Email",
        Mode::Graph => "Microsoft Graph sendMail over HTTPS",
    }
}

/// The dry run's Graph rows: the endpoint, mailbox, token scope, Sent Items and the size path
/// (one sendMail request, or a draft with parts uploaded).
fn graph_rows(
    profile: &Profile,
    host: &crate::route::Host,
    prepared: &Prepared,
) -> Vec<(String, String)> {
    let mailbox = profile
        .mailbox
        .clone()
        .or_else(|| profile.auth.user.clone());
    let mut rows = vec![(
        "Graph endpoint".to_owned(),
        format!(
            "https://{}{}/v1.0/users/{}/sendMail",
            host.name,
            if host.port == 443 {
                String::new()
            } else {
                format!(":{}", host.port)
            },
            mailbox.as_deref().unwrap_or("<mailbox>")
        ),
    )];
    rows.push((
        "mailbox".into(),
        mailbox.unwrap_or_else(|| "— none: set `mailbox`".into()),
    ));
    rows.push((
        "token scope".into(),
        if profile.auth.token.is_set() && profile.mode == Mode::Graph {
            format!(
                "none requested: auth.token is used as is (it must be a token for {})",
                crate::auth::default_scope(
                    profile.cloud,
                    Mode::Graph,
                    OAuthFlow::ClientCredentials
                )
            )
        } else {
            crate::auth::graph_settings(profile)
                .map(|s| s.scope)
                .unwrap_or_else(|f| format!("— {}", f.message))
        },
    ));
    rows.push((
        "Sent Items".into(),
        if profile.save_to_sent_items() {
            "a copy is kept (save_to_sent_items = true)".into()
        } else {
            "no copy (save_to_sent_items = false; needs Mail.ReadWrite)".into()
        },
    ));
    rows.push((
        "size path".into(),
        match crate::graph::Client::plan(
            prepared.body.path(),
            &prepared.envelope.recipients,
            profile.save_to_sent_items(),
        ) {
            Ok((h, route, _)) => format!(
                "{}; {} To, {} Cc, {} Bcc",
                route.describe(),
                h.recipients.to.len(),
                h.recipients.cc.len(),
                h.recipients.bcc.len()
            ),
            Err(e) => format!("— {e}"),
        },
    ));
    rows
}

/// `1234 bytes`, `36700160 bytes (35.0 MiB)`.
fn human_size(n: u64) -> String {
    if n < 1024 * 1024 {
        format!("{n} bytes")
    } else {
        format!("{n} bytes ({:.1} MiB)", n as f64 / (1024.0 * 1024.0))
    }
}

/// For the dry run: a file the real run will need but cannot read, said next to its name
/// (`" — cannot read: No such file or directory (os error 2)"`), else nothing.
fn unreadable(path: &Path) -> String {
    match std::fs::File::open(path) {
        Ok(_) => String::new(),
        Err(e) => format!(" — CANNOT READ: {e}"),
    }
}

/// What `--dry-run` prints: everything that would be used, nothing that was done.
pub fn dry_run_report(
    config: &Config,
    profile: &Profile,
    endpoint: &Endpoint,
    prepared: &Prepared,
) -> String {
    let mut s =
        String::from("m365send --dry-run: nothing was sent, no token was requested\n\nProfile\n");
    let origin = match &config.path {
        Some(p) => format!("{} (from {})", profile.name, p.display()),
        None => format!(
            "{} (no configuration file: defaults for --mode {})",
            profile.name,
            profile.mode.as_str()
        ),
    };
    // Writing to a String cannot fail; labels are padded so the values line up.
    let section = |s: &mut String, title: &str, rows: Vec<(String, String)>| {
        if !title.is_empty() {
            s.push_str(title);
            s.push('\n');
        }
        for (label, value) in rows {
            let _ = writeln!(s, "  {label:<20} {value}");
        }
    };
    section(
        &mut s,
        "",
        vec![
            ("name".into(), origin),
            (
                "mode".into(),
                format!("{} — {}", profile.mode.as_str(), mode_title(profile.mode)),
            ),
        ],
    );

    // Endpoint
    let mut rows: Vec<(String, String)> = vec![("hosts from".into(), endpoint.source.clone())];
    if endpoint.mode != profile.mode {
        rows.push(("route mode".into(), endpoint.mode.as_str().into()));
    }
    if endpoint.hosts.is_empty() {
        rows.push(("host".into(), "(none)".into()));
    }
    for (i, h) in endpoint.hosts.iter().enumerate() {
        let pref = h
            .preference
            .map(|p| format!("  (MX preference {p})"))
            .unwrap_or_default();
        let label = if endpoint.hosts.len() > 1 {
            format!("host {}", i + 1)
        } else {
            "host".into()
        };
        // Addresses the route resolved (an MX host asked of endpoint.dns_server).
        let addrs = if h.addrs.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = h.addrs.iter().map(|a| a.to_string()).collect();
            format!("  at {}", list.join(", "))
        };
        rows.push((label, format!("{}:{}{pref}{addrs}", h.name, h.port)));
    }
    let min = match endpoint.tls_min {
        TlsVersion::V1_2 => "TLS 1.2 or 1.3",
        TlsVersion::V1_3 => "TLS 1.3 only",
    };
    if endpoint.mode == Mode::Graph {
        if let Some(h) = endpoint.hosts.first() {
            rows.extend(graph_rows(profile, h, prepared));
        }
        rows.push((
            "CA certificates".into(),
            match &endpoint.ca_file {
                Some(p) => format!("system roots + {}{}", p.display(), unreadable(p)),
                None => "system roots".into(),
            },
        ));
        s.push('\n');
        section(&mut s, "Endpoint", rows);
        rows = Vec::new();
    }
    if endpoint.mode == Mode::Submit && profile.fallback == config::Fallback::Graph {
        rows.push((
            "fallback".into(),
            match crate::route::graph_host(profile) {
                Ok((h, _)) => format!(
                    "Microsoft Graph at {}:{} when SMTP AUTH is disabled (535 5.7.139)",
                    h.name, h.port
                ),
                Err(f) => format!("— {}", f.message),
            },
        ));
    }
    if endpoint.mode != Mode::Graph {
        rows.push((
            "TLS".into(),
            match endpoint.tls {
                TlsPolicy::Required => format!("STARTTLS required, {min}"),
                TlsPolicy::Opportunistic => format!("STARTTLS when offered, {min}"),
            },
        ));
        rows.push((
            "CA certificates".into(),
            match &endpoint.ca_file {
                Some(p) => format!("system roots + {}{}", p.display(), unreadable(p)),
                None => "system roots".into(),
            },
        ));
        rows.push((
            "client certificate".into(),
            match &endpoint.client_cert {
                Some(c) => format!(
                    "{}{} (key {}{})",
                    c.cert.display(),
                    unreadable(&c.cert),
                    c.key.display(),
                    unreadable(&c.key)
                ),
                None => "none".into(),
            },
        ));
        let user = match profile.login_user() {
            Some(u) => format!("as {u}"),
            None => "— no login name: set `mailbox` or `auth.user`".into(),
        };
        rows.push((
            "authentication".into(),
            match endpoint.auth {
                AuthKind::OAuth => {
                    let flow = match profile.auth.flow {
                        OAuthFlow::ClientCredentials if profile.auth.token.is_set() => {
                            "token from auth.token"
                        }
                        OAuthFlow::ClientCredentials => "app-only",
                        OAuthFlow::Delegated => "delegated",
                    };
                    format!("OAuth2 XOAUTH2 ({flow}) {user}")
                }
                AuthKind::Password => format!("password (AUTH LOGIN) {user}"),
                AuthKind::None => match (endpoint.mode, &endpoint.client_cert) {
                    (Mode::Relay, Some(_)) => {
                        "none: the connector recognises the client certificate".into()
                    }
                    (Mode::Relay, None) => {
                        "none: the connector must know this host's public IP".into()
                    }
                    _ => "none".into(),
                },
            },
        ));
        s.push('\n');
        section(&mut s, "Endpoint", rows);
    }

    // Envelope
    let env = &prepared.envelope;
    let mut rows: Vec<(String, String)> = vec![(
        "sender (MAIL FROM)".into(),
        if env.sender.is_empty() {
            "<> (null sender)".into()
        } else {
            shown(&env.sender)
        },
    )];
    if env.recipients.is_empty() {
        rows.push(("recipient".into(), "(none)".into()));
    }
    for r in &env.recipients {
        rows.push(("recipient (RCPT TO)".into(), shown(r)));
    }
    let dsn = &env.dsn;
    rows.push((
        "DSN".into(),
        if dsn.is_requested() {
            let mut parts = Vec::new();
            if let Some(n) = &dsn.notify {
                parts.push(format!("NOTIFY={n}"));
            }
            if let Some(r) = dsn.ret {
                parts.push(format!(
                    "RET={}",
                    match r {
                        Ret::Full => "FULL",
                        Ret::Hdrs => "HDRS",
                    }
                ));
            }
            if let Some(e) = &dsn.envid {
                parts.push(format!("ENVID={}", shown(e)));
            }
            parts.join(" ")
        } else {
            "none requested".into()
        },
    ));
    s.push('\n');
    section(&mut s, "Envelope", rows);

    // Message
    let yes_no = |b: bool, yes: &str| if b { yes.to_owned() } else { "no".to_owned() };
    let rows = vec![
        ("size".into(), human_size(prepared.size)),
        ("size limit".into(), human_size(profile.max_size())),
        (
            "8-bit body".into(),
            yes_no(prepared.eight_bit, "yes (BODY=8BITMIME)"),
        ),
        (
            "non-ASCII addresses".into(),
            yes_no(prepared.smtputf8, "yes (SMTPUTF8)"),
        ),
    ];
    s.push('\n');
    section(&mut s, "Message", rows);

    // The headers come from the message (a web form's Subject…): control characters are
    // shown escaped (`\x1b`), never sent to the terminal; folded lines keep their TAB.
    s.push_str("\nHeader block as it will be sent:\n");
    for line in prepared.header_block.split("\r\n") {
        if line.is_empty() {
            continue;
        }
        let _ = writeln!(s, "  {}", crate::printable::for_terminal(line, true));
    }
    s
}

/// A value from the message or the command line as printed by `--dry-run`: control
/// characters escaped.
fn shown(s: &str) -> String {
    crate::printable::for_terminal(s, false).into_owned()
}

/// `sendmail -bs`: an SMTP dialogue on stdin/stdout. Each message the client hands over goes
/// through the same steps as one read from stdin (profile by envelope sender, message policy,
/// route, delivery or the queue), and the client gets the real outcome as the reply to its
/// end of data.
fn smtp_stdio(
    config_path: Option<&Path>,
    profile_name: Option<&str>,
    verbose: u8,
    args: &SendArgs,
) -> Result<(), Failure> {
    let config = config::load(config_path)?.ok_or_else(no_config)?;
    // The limits come from the profile the session would use without a sender to go by.
    let limits = crate::bs::Limits::for_profile(&config.select_profile(profile_name, None)?);
    let runtime = runtime()?;
    let mut handler =
        |envelope: crate::message::Envelope, body: crate::message::Body| -> crate::bs::BsOutcome {
            let outcome = stdio_message(
                &config,
                profile_name,
                verbose,
                args,
                &runtime,
                envelope,
                body,
            );
            match outcome {
                Ok(Disposition::Delivered) => crate::bs::BsOutcome::Delivered,
                Ok(Disposition::Queued(_)) => crate::bs::BsOutcome::Queued,
                Err(f) => {
                    tracing::debug!(exit = f.exit.code(), "-bs message not delivered");
                    crate::bs::BsOutcome::from_failure(&f)
                }
            }
        };
    let stdin = io::stdin();
    let stdout = io::stdout();
    crate::bs::serve(stdin.lock(), stdout.lock(), &limits, &mut handler)
        .map_err(|e| Failure::io(format!("-bs: {e}")))
}

/// One message of a `-bs` session, from the envelope and data the client gave.
fn stdio_message(
    config: &Config,
    profile_name: Option<&str>,
    verbose: u8,
    args: &SendArgs,
    runtime: &tokio::runtime::Runtime,
    envelope: crate::message::Envelope,
    body: crate::message::Body,
) -> Result<Disposition, Failure> {
    let (message_args, profile, prepared) =
        session_message(config, profile_name, args, envelope, body)?;
    runtime.block_on(route_and_submit(
        config,
        &profile,
        &prepared,
        &message_args,
        verbose,
        false,
    ))
}

/// A message an SMTP client handed over (`-bs`, `serve`) through the same steps as one read
/// from stdin: the client's envelope replaces argv's recipients and sender, the profile is
/// chosen by that sender (unless named), and the data is a whole message whose dots the SMTP
/// layer already removed.
fn session_message(
    config: &Config,
    profile_name: Option<&str>,
    args: &SendArgs,
    envelope: crate::message::Envelope,
    body: crate::message::Body,
) -> Result<(SendArgs, Profile, Prepared), Failure> {
    let mut message_args = args.clone();
    message_args.recipients = envelope.recipients;
    message_args.envelope_from = Some(if envelope.sender.is_empty() {
        "<>".to_owned()
    } else {
        envelope.sender
    });
    message_args.extract_recipients = false;
    message_args.ignore_dots = true;
    let profile = config
        .select_profile(profile_name, message_args.envelope_from.as_deref())?
        .with_mode(args.mode);
    let mut input = body
        .open()
        .map_err(|e| Failure::io(format!("cannot read the message back: {e}")))?;
    let prepared = crate::message::prepare(&message_args, &profile, &mut input)?;
    Ok((message_args, profile, prepared))
}

/// `m365send serve`: the SMTP listener. Each message goes through [`serve_accept`]; the
/// queue is drained in the same process by [`serve_drain`].
fn serve(config_path: Option<&Path>) -> Result<(), Failure> {
    crate::serve::run(
        config_path.map(Path::to_path_buf),
        crate::serve::Steps {
            accept: serve_accept,
            drain: serve_drain,
        },
    )
}

/// A message `serve` accepted: prepared like one from stdin, then into the queue at once
/// (durably: the client hears 250 only after this returns the id). Not kept in a dead letter
/// when refused: the client hears the refusal and keeps its copy.
fn serve_accept(m: crate::serve::Accepted) -> crate::serve::LocalFuture<Result<EntryId, Failure>> {
    Box::pin(async move {
        let args = SendArgs {
            delivery: DeliveryMode::Queue,
            ..SendArgs::default()
        };
        let (message_args, profile, prepared) =
            session_message(&m.config, m.profile.as_deref(), &args, m.envelope, m.body)?;
        if let Some((patterns, who)) = &m.senders {
            crate::serve::access::check_header_senders(
                patterns,
                &prepared.envelope.sender,
                &prepared.header_block,
                who,
            )?;
        }
        let opts = crate::deliver::Options::default();
        queue_at_once(&m.config, &profile, &prepared, &message_args, &opts, &|f| f).await
    })
}

/// One queue run for `serve`, as `m365send queue run` does it.
fn serve_drain(
    config: std::sync::Arc<Config>,
) -> crate::serve::LocalFuture<Result<crate::queue::RunReport, Failure>> {
    Box::pin(async move { drain_queue(&config, false, 0).await })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, Dsn, Envelope};
    use crate::route::{ClientCert, Host};
    use std::path::PathBuf;

    fn prepared() -> Prepared {
        Prepared {
            envelope: Envelope {
                sender: "alerts@contoso.com".into(),
                recipients: vec!["ops@contoso.com".into(), "dba@contoso.com".into()],
                dsn: Dsn {
                    notify: Some("FAILURE,DELAY".into()),
                    ret: Some(Ret::Hdrs),
                    envid: None,
                },
            },
            body: Body::at("/nonexistent"),
            size: 1234,
            eight_bit: true,
            smtputf8: false,
            header_block:
                "From: Cron Daemon <alerts@contoso.com>\r\nTo: root\r\nSubject: x\r\n\r\n".into(),
        }
    }

    #[test]
    fn report_for_relay() {
        let config = Config {
            path: Some(PathBuf::from("/etc/m365send/config.toml")),
            ..Config::default()
        };
        let mut profile = Profile::for_mode(Mode::Relay);
        profile.name = "cron".into();
        let endpoint = Endpoint {
            mode: Mode::Relay,
            hosts: vec![
                Host {
                    name: "contoso-com.mail.protection.outlook.com".into(),
                    port: 25,
                    preference: Some(0),
                    addrs: Vec::new(),
                },
                Host {
                    name: "backup.contoso.com".into(),
                    port: 25,
                    preference: Some(10),
                    addrs: Vec::new(),
                },
            ],
            tls: TlsPolicy::Required,
            tls_min: TlsVersion::V1_2,
            ca_file: None,
            client_cert: Some(ClientCert {
                cert: "/etc/m365send/relay.crt".into(),
                key: "/etc/m365send/relay.key".into(),
            }),
            auth: AuthKind::None,
            source: "MX of contoso.com".into(),
        };
        let r = dry_run_report(&config, &profile, &endpoint, &prepared());
        assert!(
            r.contains(
                "/etc/m365send/relay.crt — CANNOT READ: No such file or directory (os error 2) \
                 (key /etc/m365send/relay.key — CANNOT READ"
            ) || Path::new("/etc/m365send/relay.crt").exists(),
            "{r}"
        );
        for needle in [
            "cron (from /etc/m365send/config.toml)",
            "relay — SMTP relay through a connector",
            "contoso-com.mail.protection.outlook.com:25  (MX preference 0)",
            "backup.contoso.com:25  (MX preference 10)",
            "STARTTLS required, TLS 1.2 or 1.3",
            "connector recognises the client certificate",
            "alerts@contoso.com",
            "ops@contoso.com",
            "dba@contoso.com",
            "NOTIFY=FAILURE,DELAY RET=HDRS",
            "1234 bytes\n",
            "36700160 bytes (35.0 MiB)",
            "BODY=8BITMIME",
            "  From: Cron Daemon <alerts@contoso.com>\n",
            "  Subject: x\n",
        ] {
            assert!(r.contains(needle), "report lacks {needle:?}:\n{r}");
        }
        assert!(!r.contains('\r'));
    }

    #[test]
    fn report_for_submit() {
        let mut profile = Profile::for_mode(Mode::Submit);
        profile.mailbox = Some("app@contoso.com".into());
        let endpoint = Endpoint {
            mode: Mode::Submit,
            hosts: vec![Host {
                name: "smtp.office365.com".into(),
                port: 587,
                preference: None,
                addrs: Vec::new(),
            }],
            tls: TlsPolicy::Required,
            tls_min: TlsVersion::V1_3,
            ca_file: Some("/etc/ca.pem".into()),
            client_cert: None,
            auth: AuthKind::OAuth,
            source: "default for submit".into(),
        };
        let r = dry_run_report(&Config::default(), &profile, &endpoint, &prepared());
        for needle in [
            "no configuration file",
            "smtp.office365.com:587\n",
            "TLS 1.3 only",
            "system roots + /etc/ca.pem",
            "OAuth2 XOAUTH2 (app-only) as app@contoso.com",
        ] {
            assert!(r.contains(needle), "report lacks {needle:?}:\n{r}");
        }
    }

    #[test]
    fn no_config_points_to_example() {
        let f = no_config();
        assert_eq!(f.exit, Exit::Config);
        assert!(f.message.contains("config.example.toml"));
    }
}
