//! Groups 4 and 6 for `mode = "graph"`: HTTPS instead of STARTTLS, and the Graph probe that
//! sends nothing instead of the SMTP dialogue. The Graph client and its settings are the
//! sending path's (`transport::graph::GraphConnector::settings`, `graph::Client::probe`: a
//! `sendMail` with no recipient, which Graph refuses with 400 ErrorInvalidRecipients only
//! after it has accepted the token and the mailbox's right to send); a Graph error is turned
//! into the reply the catalogue explains (`status::graph_reply`). Must not: give Graph a
//! recipient, or build a Graph client of its own.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::time::timeout;

use super::probe::tls_evidence;
use super::{Check, Ctx, token};
use crate::auth::{self, Credentials};
use crate::exit::Exit;
use crate::explain;
use crate::graph::{Client, GraphError, Settings};
use crate::route::{AuthKind, Endpoint, Host};
use crate::smtp::TlsInfo;
use crate::status::graph_reply;
use crate::transport::Options;
use crate::transport::graph::GraphConnector;

/// `HTTPS_PROXY` (or its kin) is set: Graph requests go through a proxy, and a direct
/// connection failing is not the end.
pub fn proxy() -> Option<String> {
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .find_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|_| (*k).to_owned())
        })
}

/// `tls.https`, `token` and `graph.sendmail`. `host`: the host that answered the TCP connect
/// (None: it did not, which through a proxy may not matter).
pub async fn checks(ctx: &Ctx<'_>, endpoint: &Endpoint, host: Option<&Host>) -> Vec<Check> {
    let mut checks = Vec::new();
    let target = host.or(endpoint.hosts.first());
    let opts = Options {
        verbose: ctx.verbose,
        stderr: None,
    };
    let settings = match (
        GraphConnector::new(
            ctx.config,
            ctx.profile,
            &opts,
            endpoint.tls_min,
            endpoint.ca_file.clone(),
        ),
        target,
    ) {
        (Ok(c), Some(h)) => Some(c.settings(h)),
        (Err(p), _) => {
            checks.push(Check::failed(
                "tls.https",
                p.exit,
                p.what,
                "Fix the profile's Graph settings (mailbox, tls.ca_file) as the message says.",
            ));
            None
        }
        (Ok(_), None) => None,
    };
    match (&settings, host) {
        (Some(s), Some(h)) => checks.push(https(ctx, h, s.tls.clone()).await),
        (Some(_), None) => checks.push(Check::skipped(
            "tls.https",
            "no direct connection (see network.connect)",
        )),
        (None, _) => {}
    }
    let (token, creds) =
        token::check(ctx, Some(AuthKind::OAuth), target.map(|h| h.name.as_str())).await;
    checks.push(token);
    checks.push(match settings {
        Some(s) => sendmail(ctx, s, creds).await,
        None => Check::skipped("graph.sendmail", "no Graph client (see tls.https)"),
    });
    checks
}

/// `tls.https`: a TLS handshake with the Graph host, with the trust the client uses.
async fn https(ctx: &Ctx<'_>, host: &Host, tls: Arc<rustls::ClientConfig>) -> Check {
    const NAME: &str = "tls.https";
    let wait = ctx.profile.timeouts.connect();
    let name = match rustls::pki_types::ServerName::try_from(host.name.clone()) {
        Ok(n) => n,
        Err(e) => {
            return Check::failed(
                NAME,
                Exit::Config,
                format!("{host}: not a host name for TLS: {e}"),
                "Fix endpoint.host or graph_host.",
            );
        }
    };
    let started = Instant::now();
    let tcp = match timeout(wait, TcpStream::connect((host.name.as_str(), host.port))).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return Check::failed(
                NAME,
                Exit::TempFail,
                format!("{host}: {e}"),
                "Run doctor again.",
            );
        }
        Err(_) => {
            return Check::failed(
                NAME,
                Exit::TempFail,
                format!("{host}: no answer"),
                "Run doctor again.",
            );
        }
    };
    match timeout(
        wait,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    {
        Ok(Ok(stream)) => {
            let info = TlsInfo::of(stream.get_ref().1);
            tls_evidence(
                NAME,
                format!("{host}: handshake in {} ms", started.elapsed().as_millis()),
                &info,
                host,
            )
        }
        Ok(Err(e)) => Check::failed(
            NAME,
            Exit::Unavailable,
            format!("{host}: TLS failed: {e}"),
            format!(
                "The certificate of {} is not trusted or not valid for it, or no TLS version is \
                 in common. Graph's hosts have publicly trusted certificates: a TLS-intercepting \
                 proxy on the way causes this (add its CA with tls.ca_file), or the host is not \
                 Microsoft Graph (check endpoint.host / graph_host).",
                host.name
            ),
        ),
        Err(_) => Check::failed(
            NAME,
            Exit::TempFail,
            format!(
                "{host}: the TLS handshake got no answer within {} s",
                wait.as_secs()
            ),
            "Something on the way holds HTTPS back: check the firewall or the proxy (HTTPS_PROXY).",
        ),
    }
}

/// `graph.sendmail`: Graph's answer to a message without recipients.
async fn sendmail(ctx: &Ctx<'_>, settings: Settings, creds: Option<Credentials>) -> Check {
    const NAME: &str = "graph.sendmail";
    let Some(Credentials::XOAuth2 {
        token, from_cache, ..
    }) = creds
    else {
        return Check::skipped(NAME, "no token (see token)");
    };
    let mailbox = settings.mailbox.clone();
    let host = settings.host.clone();
    let mut client = match Client::new(settings) {
        Ok(c) => c,
        Err(e) => {
            return Check::failed(NAME, Exit::Software, e.to_string(), "Report this as a bug.");
        }
    };
    let what = format!("POST /v1.0/users/{mailbox}/sendMail without recipients");
    let mut result = client.probe(token.expose()).await;
    let mut note = "";
    // A cached token Graph calls invalid or expired is replaced once, as the transport does.
    if let Err(GraphError::Status { status: 401, .. }) = &result
        && from_cache
    {
        match auth::graph_token(ctx.config, ctx.profile, Some(&token)).await {
            Ok(fresh) => {
                note = " (the cached token was refused; a new one was acquired)";
                result = client.probe(fresh.token.expose()).await;
            }
            Err(f) => return Check::from_failure(NAME, &f, "See the token check."),
        }
    }
    match result {
        Err(GraphError::Status {
            status: 400,
            code,
            message,
            ..
        }) if code == "ErrorInvalidRecipients" => Check::passed(
            NAME,
            format!(
                "{what} → HTTP 400 {code} ({message}): Graph accepted the token and \
                     {mailbox}'s right to send, and refused the message for having no \
                     recipient{note}; nothing was sent"
            ),
        ),
        Ok(status) => Check::warning(
            NAME,
            format!("{what} → HTTP {status}{note}"),
            "Graph accepted a message without recipients, which it should refuse; it can reach \
             no one. If this is not Microsoft Graph, check endpoint.host / graph_host.",
        ),
        Err(GraphError::Status {
            status,
            code,
            message,
            ..
        }) => {
            let (smtp, enhanced) = explain::graph::equivalent(status, &code);
            let reply = graph_reply(smtp, enhanced, status, &code, &message);
            let ectx = explain::Context {
                host: Some(&host),
                sender: ctx.sender.as_deref(),
                ..auth::explain_context(ctx.profile)
            };
            let fix = explain::explain_reply(&reply, &ectx)
                .map(|e| format!("{} {}", auth::errors::sentence(&e.meaning), e.advice))
                .unwrap_or_else(|| format!("`m365send explain {code}` says more."));
            Check::failed(
                NAME,
                explain::exit_for(&reply),
                format!("{what} → HTTP {status} {code}: {message}{note}"),
                fix,
            )
        }
        Err(e @ GraphError::Transport { .. }) => Check::failed(
            NAME,
            Exit::TempFail,
            format!("{what}: {e}"),
            "Graph did not answer: check the network on the way to it, or HTTPS_PROXY.",
        ),
        Err(e) => Check::failed(
            NAME,
            Exit::Software,
            format!("{what}: {e}"),
            "Report this as a bug.",
        ),
    }
}
