//! Group 6b for a submit profile with `fallback = "graph"`: the Graph path the fallback would
//! take when Microsoft 365 refuses SMTP AUTH, probed as a graph profile is (`probe::checks` on
//! the same profile with `mode = "graph"` and the Graph host the fallback uses,
//! `route::graph_host`), its checks named `fallback.*`.
//!
//! How the two paths weigh: while SMTP AUTH works, a broken fallback is a warning (mail
//! flows; it would stop the day SMTP AUTH is turned off). When SMTP AUTH was refused in a way
//! the fallback answers (`transport::graph::graph_call`, recorded by `probe` on the
//! `smtp.auth` check) and every fallback check passed, that refusal is a warning: mail goes
//! through Graph.
//!
//! Must not: hold any Graph or SMTP logic of its own (the probes are `probe`'s and `graph`'s),
//! or send a message.

use super::{Check, Ctx, Status, probe};
use crate::config::{Fallback, Mode, Profile};

/// Whether this profile falls back to Graph.
pub fn applies(profile: &Profile) -> bool {
    profile.mode == Mode::Submit && profile.fallback == Fallback::Graph
}

/// The profile as the fallback sends with it: mode graph, the fallback's Graph host.
fn graph_profile(profile: &Profile) -> Result<Profile, crate::exit::Failure> {
    let (host, _) = crate::route::graph_host(profile)?;
    let mut p = profile.clone();
    p.mode = Mode::Graph;
    p.endpoint.host = Some(host.name);
    p.endpoint.port = Some(host.port);
    p.graph_host = None;
    p.fallback = Fallback::None;
    Ok(p)
}

/// The name a Graph-path check has in the fallback group.
fn renamed(name: &'static str) -> &'static str {
    match name {
        "network.route" => "fallback.network.route",
        "network.connect" => "fallback.network.connect",
        "tls.https" => "fallback.tls.https",
        "token" => "fallback.token",
        "graph.sendmail" => "fallback.graph.sendmail",
        _ => "fallback",
    }
}

/// The fallback's checks, and `smtp_checks` reweighed as the module doc says.
pub async fn checks(ctx: &Ctx<'_>, smtp_checks: &mut [Check]) -> Vec<Check> {
    let profile = match graph_profile(ctx.profile) {
        Ok(p) => p,
        Err(f) => {
            return vec![Check::from_failure(
                "fallback.network.route",
                &f,
                "Fix the profile's graph_host as the message says.",
            )];
        }
    };
    let graph_ctx = Ctx {
        config: ctx.config,
        profile: &profile,
        sender: ctx.sender.clone(),
        to: ctx.to,
        verbose: ctx.verbose,
    };
    let mut checks: Vec<Check> = probe::checks(&graph_ctx)
        .await
        .into_iter()
        .map(|mut c| {
            c.name = renamed(c.name);
            c
        })
        .collect();
    let auth = smtp_checks.iter_mut().find(|c| c.name == "smtp.auth");
    let auth_disabled = auth
        .as_ref()
        .is_some_and(|c| c.status == Status::Failed && c.calls_for_graph);
    let fallback_works = checks.iter().all(|c| c.status == Status::Passed);
    if let Some(auth) = auth
        && auth_disabled
        && fallback_works
    {
        auth.status = Status::Warning;
        auth.exit = None;
        auth.evidence = format!(
            "{} — mail goes through the Graph fallback (fallback.* passed)",
            auth.evidence
        );
    } else if !auth_disabled {
        for c in checks.iter_mut().filter(|c| c.status == Status::Failed) {
            c.status = Status::Warning;
            c.exit = None;
            c.evidence = format!(
                "{} — not used while SMTP AUTH works; the fallback would fail the day it is \
                 turned off",
                c.evidence
            );
        }
    }
    checks
}
