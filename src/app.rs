//! The program: from an `Invocation` to an exit code, calling each step in turn.
//!
//! Owns: the order of the steps (cli → config → message → route → submit), logging set-up,
//! each subcommand's call into the module that does it, keeping the caller's input in the
//! dead letter when a message is refused before it was prepared, and turning an SMTP
//! client's envelope and data (`-bs`, `serve`) into a prepared message; for `serve`, the
//! steps each accepted message takes (`serve_accept`) and the queue run (`serve_drain`).
//! Must not: hold any step's logic itself (the --dry-run report is `dry_run`, the choice
//! between delivering and queueing is `submit`).

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read};
use std::path::Path;

use crate::cli::{Command, DeliveryMode, Invocation, SendArgs};
use crate::config::{self, Config, Mode, Profile};
use crate::exit::{Exit, Failure};
use crate::message::Prepared;
use crate::queue::{EntryId, RunOptions, TransportDeliverer};
use crate::submit::Disposition;

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
             enhanced code such as 5.7.60, an identity platform code such as AADSTS700082, or \
             a Microsoft Graph error such as ErrorSendAsDenied)"
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
    let config = config::load(path)?.ok_or_else(config::not_found)?;
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
    let queued_at_once =
        args.delivery == DeliveryMode::Queue || profile.queue == config::QueuePolicy::Always;
    if !args.dry_run && !queued_at_once {
        // The CA store loads while the message is read (a few ms off each message sent); a
        // message that goes into the queue without connecting needs none.
        crate::transport::preload();
    }

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
        return crate::console::out(&crate::dry_run::report(
            &config, &profile, &endpoint, &prepared,
        ))
        .map_err(|e| Failure::io(format!("cannot write the dry-run report: {e}")));
    }
    let opts = crate::deliver::Options {
        verbose,
        ..Default::default()
    };
    runtime
        .block_on(crate::submit::message(
            &config,
            &profile,
            &prepared,
            &request(args),
            &opts,
            true,
        ))
        .map(|_| ())
}

/// The command line's say in where a message goes.
fn request(args: &SendArgs) -> crate::submit::Request {
    crate::submit::Request {
        queue_only: args.delivery == DeliveryMode::Queue,
        mode: args.mode,
        server: args.server.clone(),
    }
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
    f: Failure,
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
    crate::report::keep_refused(
        config.unwrap_or(&default_config),
        profile.unwrap_or(&default_profile),
        &message,
        f,
    )
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
        lifetime: config.queue_lifetime(),
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
            _ => Err(config::not_found()),
        },
    }
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
    let config = config::load(config_path)?.ok_or_else(config::not_found)?;
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
    let (profile, prepared) = session_message(config, profile_name, args, envelope, body)?;
    let opts = crate::deliver::Options {
        verbose,
        ..Default::default()
    };
    runtime.block_on(crate::submit::message(
        config,
        &profile,
        &prepared,
        &request(args),
        &opts,
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
) -> Result<(Profile, Prepared), Failure> {
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
    Ok((profile, prepared))
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
        let args = SendArgs::default();
        let (profile, prepared) =
            session_message(&m.config, m.profile.as_deref(), &args, m.envelope, m.body)?;
        let request = crate::submit::Request {
            queue_only: true,
            ..request(&args)
        };
        if let Some((patterns, who)) = &m.senders {
            crate::serve::access::check_header_senders(
                patterns,
                &prepared.envelope.sender,
                &prepared.header_block,
                who,
            )?;
        }
        let opts = crate::deliver::Options::default();
        crate::submit::queue_at_once(&m.config, &profile, &prepared, &request, &opts, false).await
    })
}

/// One queue run for `serve`, as `m365send queue run` does it.
fn serve_drain(
    config: std::sync::Arc<Config>,
) -> crate::serve::LocalFuture<Result<crate::queue::RunReport, Failure>> {
    Box::pin(async move { drain_queue(&config, false, 0).await })
}
