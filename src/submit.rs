//! Submission: what becomes of one prepared message — delivered now, or put in the queue —
//! as the profile's queue policy and the command line (`-odq`) say. Shared by the sendmail
//! path, `-bs` and `serve`.
//!
//! Owns: the choice between the queue at once (`-odq`, `queue = "always"`, every message of
//! `serve`: after the checks that need no network) and delivery with in-process retries;
//! queueing the recipients still pending after a temporary failure (policy `auto`);
//! "queued as ID" at -v; the dead letter when the queue cannot be written, and for a route
//! refused before any connection when the caller keeps no copy of its own. Must not: read
//! argv (it takes a [`Request`]), name a transport (deliver goes through the seam), word
//! explanations (deliver and explain do), or write the spool itself (queue does).

use crate::config::{Config, Mode, Profile, QueuePolicy};
use crate::deliver::Options;
use crate::exit::{Exit, Failure};
use crate::message::Prepared;
use crate::queue::{EnqueueOptions, EntryId};
use crate::route::Endpoint;

/// The command line's say in where a message goes.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `-odq`: into the queue without connecting.
    pub queue_only: bool,
    /// `--mode` over the profile's mode (kept with a queue entry).
    pub mode: Option<Mode>,
    /// `--server HOST[:PORT]` over the profile's endpoint (kept with a queue entry).
    pub server: Option<String>,
}

impl Request {
    /// What a queue entry remembers of the request.
    fn enqueue_options(&self) -> EnqueueOptions {
        EnqueueOptions {
            mode: self.mode,
            server: self.server.clone(),
            delivered: Vec::new(),
        }
    }
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

/// From a prepared message to its disposition: the queue at once (`-odq`, `queue =
/// "always"`), else the route, then delivery (see [`deliver_or_queue`]). `keep`: a message
/// the route refuses before any connection (direct send to an outside recipient, no MX
/// record, port 465) goes to the dead letter, as a delivery failure does. Not for `-bs` and
/// `serve`, whose client keeps its own copy and hears the refusal.
pub async fn message(
    config: &Config,
    profile: &Profile,
    prepared: &Prepared,
    request: &Request,
    opts: &Options,
    keep: bool,
) -> Result<Disposition, Failure> {
    // -odq, or a profile that always queues: into the spool without connecting (no DNS
    // either); the queue runner resolves the route.
    if request.queue_only || profile.queue == QueuePolicy::Always {
        return queue_at_once(config, profile, prepared, request, opts, keep)
            .await
            .map(Disposition::Queued);
    }
    let enqueue = request.enqueue_options();
    let endpoint =
        match crate::route::resolve(profile, &prepared.envelope, request.server.as_deref()).await {
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
                    opts,
                )
                .map(Disposition::Queued);
            }
            Err(f) => return Err(refused(config, profile, prepared, keep, f)),
        };
    deliver_or_queue(config, profile, prepared, &endpoint, opts, &enqueue).await
}

/// A refusal of the route, with the message kept in the dead letter when `keep`.
fn refused(
    config: &Config,
    profile: &Profile,
    prepared: &Prepared,
    keep: bool,
    f: Failure,
) -> Failure {
    if keep {
        crate::report::keep_refused(config, profile, prepared, f)
    } else {
        f
    }
}

/// Into the queue without connecting (`-odq`, `queue = "always"`, and every message of
/// `serve`), after the checks that need no network: port 465, accepted domains, an outside
/// recipient for direct send. So a broken submission fails now, not in the queue days later;
/// an MX lookup is left to the queue runner. `keep`: as for [`message`].
pub async fn queue_at_once(
    config: &Config,
    profile: &Profile,
    prepared: &Prepared,
    request: &Request,
    opts: &Options,
    keep: bool,
) -> Result<EntryId, Failure> {
    let enqueue = request.enqueue_options();
    let ep = &profile.endpoint;
    let needs_dns = matches!(profile.mode, Mode::Relay | Mode::Direct)
        && request.server.is_none()
        && ep.host.is_none()
        && ep.mx_host.is_none();
    if !needs_dns {
        crate::route::resolve(profile, &prepared.envelope, request.server.as_deref())
            .await
            .map_err(|f| refused(config, profile, prepared, keep, f))?;
    }
    let why = if request.queue_only {
        "queued on request (-odq)"
    } else {
        "the profile queues every message (queue = \"always\")"
    };
    queue_message(config, profile, prepared, None, why, &enqueue, opts)
}

/// Deliver with in-process retries; on a temporary failure (policy `auto`) queue the
/// recipients still pending. Prints "queued as ID" at -v, nothing else but the transcript.
/// Errors are the
/// user-facing report: a permanent failure (exit code of the reply, explanation, dead letter
/// written), a temporary one with `queue = "never"` (75, dead letter), or a queue that cannot
/// be written (73, dead letter). `enqueue`: the command line's overrides a queue entry keeps.
async fn deliver_or_queue(
    config: &Config,
    profile: &Profile,
    prepared: &Prepared,
    endpoint: &Endpoint,
    opts: &Options,
    enqueue: &EnqueueOptions,
) -> Result<Disposition, Failure> {
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
    opts: &Options,
) -> Result<EntryId, Failure> {
    match crate::queue::enqueue_with(config, &profile.name, prepared, reason, enqueue) {
        Ok(id) => {
            if opts.verbose > 0 {
                opts.sink()
                    .line(&format!("m365send: queued as {id} ({why})"));
            }
            Ok(id)
        }
        Err(f) => {
            let reason = format!("not queued: {}; {why}", f.message);
            let saved =
                crate::report::keep(config, profile, prepared, &reason).unwrap_or_else(|e| e);
            Err(Failure::new(
                Exit::CantCreat,
                format!("{}\n  {saved}", f.message),
            ))
        }
    }
}
