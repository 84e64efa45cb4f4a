//! Groups 3, 4 and 6 — network, TLS and SMTP — around the token check (group 5): the route
//! (`route::resolve`), a TCP connect to the endpoint's port with the time it took, then one
//! SMTP session with the sending path's own settings (`transport::smtp::session_config`):
//! STARTTLS and what it negotiated, EHLO capabilities, AUTH, and `Session::probe` (MAIL FROM,
//! RCPT TO with `--to`, RSET), then QUIT. Never DATA: no message is sent.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{Check, Ctx, cert, graph, legacy_tls, token};
use crate::auth::{self, Credentials};
use crate::config::Mode;
use crate::exit::Exit;
use crate::explain;
use crate::route::{AuthKind, Endpoint, Host};
use crate::smtp::{EnhancedCode, Reply, Session, SessionError, Sink, Step, TlsFailure, TlsInfo};
use crate::transport::Problem;
use crate::transport::graph::{GraphCall, graph_call};
use crate::transport::smtp::{session_config, tls_config};

/// Network, TLS, token and SMTP checks, in that order.
pub async fn checks(ctx: &Ctx<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let endpoint = match crate::route::resolve(ctx.profile, &ctx.envelope(), None).await {
        Ok(e) => e,
        Err(f) => {
            checks.push(Check::from_failure(
                "network.route",
                &f,
                "Fix the profile's endpoint settings as the message says.",
            ));
            checks.push(Check::skipped(
                "network.connect",
                "no endpoint (see network.route)",
            ));
            checks.push(token::check(ctx, None, None).await.0);
            checks.push(Check::skipped(
                if ctx.profile.mode == Mode::Graph {
                    "graph.sendmail"
                } else {
                    "smtp"
                },
                "no endpoint (see network.route)",
            ));
            return checks;
        }
    };
    let (connect, host) = connect(ctx, &endpoint).await;
    checks.push(connect);
    if endpoint.mode == Mode::Graph {
        checks.extend(graph::checks(ctx, &endpoint, host.as_ref()).await);
        return checks;
    }
    let Some(host) = host else {
        checks.push(Check::skipped(
            "tls.starttls",
            "no connection (see network.connect)",
        ));
        checks.push(token::check(ctx, Some(endpoint.auth), None).await.0);
        checks.push(Check::skipped(
            "smtp",
            "no connection (see network.connect)",
        ));
        return checks;
    };
    let session = open(ctx, &endpoint, &host).await;
    let (tls, session) = match session {
        Ok(s) => (tls_check(&host, &s), Some(s)),
        Err(check) => (check, None),
    };
    checks.push(tls);
    let (token_check, creds) = token::check(ctx, Some(endpoint.auth), Some(&host.name)).await;
    checks.push(token_check);
    match session {
        Some(s) => checks.extend(smtp(ctx, &endpoint, &host, s, creds).await),
        None => checks.push(Check::skipped("smtp", "no session (see tls.starttls)")),
    }
    checks
}

/// What to do when port 25 or 587 cannot be reached.
fn blocked_port_advice(port: u16) -> String {
    match port {
        25 => "Many clouds (AWS, Azure, Google Cloud) and ISPs block outbound port 25: ask the \
               provider to lift the block, or submit on port 587 with a mailbox (mode = \
               \"submit\"), or send through Microsoft Graph over HTTPS (port 443). A local \
               firewall may block it too."
            .to_owned(),
        587 => "Port 587 is blocked on the way (a local firewall, the network, some ISPs): open \
                outbound 587 to the host, or send through Microsoft Graph over HTTPS (port 443)."
            .to_owned(),
        443 => "Port 443 (HTTPS) is blocked on the way: open outbound HTTPS to the host, or set \
                HTTPS_PROXY to a proxy that may reach it (the Graph client honours it)."
            .to_owned(),
        p => format!(
            "Check that the host listens on port {p} and that no firewall blocks it on the way."
        ),
    }
}

/// `network.connect`: a TCP connection to the first host (in route order) that answers.
async fn connect(ctx: &Ctx<'_>, endpoint: &Endpoint) -> (Check, Option<Host>) {
    const NAME: &str = "network.connect";
    let wait = ctx.profile.timeouts.connect();
    let mut errors = Vec::new();
    let mut resolved_any = false;
    for host in &endpoint.hosts {
        let addrs: Vec<std::net::SocketAddr> = match timeout(
            wait,
            tokio::net::lookup_host((host.name.as_str(), host.port)),
        )
        .await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                errors.push(format!("{host}: cannot resolve: {e}"));
                continue;
            }
            Err(_) => {
                errors.push(format!("{host}: name lookup timed out"));
                continue;
            }
        };
        resolved_any |= !addrs.is_empty();
        for addr in addrs {
            let started = Instant::now();
            match timeout(wait, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    drop(s);
                    let ms = started.elapsed().as_millis();
                    let mut evidence = if addr.to_string() == host.to_string() {
                        format!("{host}: connected in {ms} ms")
                    } else {
                        format!("{host} ({addr}): connected in {ms} ms")
                    };
                    if !errors.is_empty() {
                        evidence.push_str(&format!(" (before: {})", errors.join("; ")));
                    }
                    return (Check::passed(NAME, evidence), Some(host.clone()));
                }
                Ok(Err(e)) => errors.push(format!("{host} ({addr}): {e}")),
                Err(_) => errors.push(format!(
                    "{host} ({addr}): no answer within {} s",
                    wait.as_secs()
                )),
            }
        }
    }
    let port = endpoint.hosts.first().map(|h| h.port).unwrap_or(0);
    let (exit, fix) = if resolved_any || endpoint.hosts.is_empty() {
        (Exit::TempFail, blocked_port_advice(port))
    } else {
        (
            Exit::NoHost,
            "Check the host name (endpoint.host, endpoint.mx_host, or the MX record) and this \
             host's DNS resolver."
                .to_owned(),
        )
    };
    if endpoint.mode == Mode::Graph
        && let Some(var) = graph::proxy()
    {
        return (
            Check::warning(
                NAME,
                format!("{} (a direct connection; {var} is set)", errors.join("; ")),
                format!(
                    "Graph requests go through the proxy in {var}, so this may not matter: \
                     graph.sendmail below says whether Graph answers through it."
                ),
            ),
            None,
        );
    }
    (Check::failed(NAME, exit, errors.join("; "), fix), None)
}

/// Connect the SMTP session: greeting, EHLO, STARTTLS, EHLO. Err: the failed `tls.starttls`
/// check.
async fn open(ctx: &Ctx<'_>, endpoint: &Endpoint, host: &Host) -> Result<Session, Check> {
    const NAME: &str = "tls.starttls";
    let tls = tls_config(endpoint).map_err(|f| {
        Check::from_failure(NAME, &f, "Fix the TLS settings of the profile (tls.*).")
    })?;
    let helo = crate::smtp::hello_name(
        ctx.profile.helo.as_deref(),
        ctx.sender.as_deref().unwrap_or(""),
    );
    let transcript = (ctx.verbose > 0).then(Sink::stderr);
    let cfg = session_config(ctx.profile, endpoint, host, tls, helo.clone(), transcript);
    let wait = cfg.command_timeout;
    match Session::connect(cfg).await {
        Ok(s) => Ok(s),
        Err(e) => Err(tls_failure(ctx, host, &helo, wait, &e).await),
    }
}

/// "TLSv1_3" → "TLS 1.3".
fn version_words(v: &str) -> String {
    match v {
        "TLSv1_3" => "TLS 1.3".to_owned(),
        "TLSv1_2" => "TLS 1.2".to_owned(),
        other => other.to_owned(),
    }
}

/// `tls.starttls` for an open session: what was negotiated and the server's certificate.
fn tls_check(host: &Host, s: &Session) -> Check {
    const NAME: &str = "tls.starttls";
    let Some(info) = s.tls_info() else {
        // Only direct send goes on without TLS.
        return Check::warning(
            NAME,
            format!("{host}: the server does not offer STARTTLS; this mode goes on without TLS"),
            "Microsoft 365's MX endpoint offers STARTTLS: this is not Microsoft's endpoint, or \
             something on the way (SMTP inspection in a firewall) removes STARTTLS.",
        );
    };
    tls_evidence(NAME, "STARTTLS offered".to_owned(), &info, host)
}

/// A check for a TLS connection that worked: `lead`, the version and cipher, the server's
/// certificate (verified for `host` by the handshake) and its expiry; a warning when it
/// expires within two weeks.
pub(super) fn tls_evidence(name: &'static str, lead: String, info: &TlsInfo, host: &Host) -> Check {
    let mut evidence = format!("{lead}; {}, {}", version_words(&info.version), info.cipher);
    let leaf = info
        .peer_certificates
        .first()
        .map(|c| cert::facts(c.as_ref()));
    let now = chrono::Utc::now().timestamp();
    match leaf {
        Some(Ok(f)) => {
            evidence.push_str(&format!(
                "; server certificate {} (issuer {}), valid for {} (verified), {}",
                f.subject,
                f.issuer,
                host.name,
                cert::expiry(&f, now)
            ));
            if cert::days_until(f.not_after, now) < 14 {
                return Check::warning(
                    name,
                    evidence,
                    "The server's certificate expires within two weeks; when it does, every \
                     connection fails. Microsoft renews its own; for another server, tell its \
                     administrator.",
                );
            }
        }
        Some(Err(e)) => evidence.push_str(&format!("; server certificate: {e}")),
        None => {}
    }
    Check::passed(name, evidence)
}

/// `tls.starttls` (or an earlier step of the session) failed: say what, and why.
async fn tls_failure(
    ctx: &Ctx<'_>,
    host: &Host,
    helo: &str,
    wait: Duration,
    e: &SessionError,
) -> Check {
    const NAME: &str = "tls.starttls";
    let exit = Problem::session(e, &host.name).exit;
    let ectx = explain::Context {
        host: Some(&host.name),
        ..auth::explain_context(ctx.profile)
    };
    match e {
        SessionError::StartTlsNotOffered => Check::failed(
            NAME,
            exit,
            format!(
                "{host}: the server's EHLO reply does not offer STARTTLS, and this mode requires TLS"
            ),
            "Microsoft 365 offers STARTTLS on ports 25 and 587: this is not Microsoft's endpoint \
             (check endpoint.host, or the MX), or something on the way removes STARTTLS (SMTP \
             inspection in a firewall, such as Cisco ASA's `inspect esmtp`): turn that off.",
        ),
        SessionError::Tls {
            kind: TlsFailure::Certificate,
            reason,
            ..
        } => Check::failed(
            NAME,
            exit,
            format!("{host}: {reason}"),
            format!(
                "The server's certificate is not valid for {} (expired, issued for another name, \
                 or by an authority this host does not trust). Connect by the name in the \
                 certificate (smtp.office365.com, never an IP address); for a private relay add \
                 its CA with tls.ca_file; a TLS-intercepting proxy on the way causes this too.",
                host.name
            ),
        ),
        SessionError::Tls {
            kind: TlsFailure::Protocol,
            reason,
            ..
        } => match legacy_tls::offered(&host.name, host.port, helo, wait).await {
            Some(old) => Check::failed(
                NAME,
                exit,
                format!(
                    "{host}: the server offers only {old}: it answered a {old} hello and \
                         refused TLS 1.2 and 1.3 ({reason})"
                ),
                "TLS 1.0 and 1.1 are retired: Microsoft 365 accepts neither, and m365send \
                     speaks TLS 1.2 or newer only. Microsoft's own endpoints offer TLS 1.2 and \
                     1.3, so this is not Microsoft's endpoint or a proxy on the way downgrades \
                     TLS: upgrade that server or proxy to TLS 1.2.",
            ),
            None => Check::failed(
                NAME,
                exit,
                format!("{host}: TLS failed: {reason}"),
                match ctx.profile.tls.min_version {
                    crate::config::TlsVersion::V1_3 => {
                        "The server may not offer TLS 1.3: set tls.min_version = \"1.2\"; if the \
                             server asks for a client certificate, set tls.client_cert and \
                             tls.client_key."
                    }
                    crate::config::TlsVersion::V1_2 => {
                        "No TLS version or cipher in common, or the server refused our client \
                             certificate: check tls.client_cert / tls.client_key and the server's \
                             TLS settings."
                    }
                },
            ),
        },
        SessionError::Rejected { step, reply } => {
            let (fix, exit) = reply_fix(reply, &ectx);
            Check::failed(
                NAME,
                exit,
                format!("{host}: the server refused {step}: {reply}"),
                fix.unwrap_or_else(|| {
                    "The server turned the connection away before TLS; its reply says why."
                        .to_owned()
                }),
            )
        }
        other => Check::failed(
            NAME,
            exit,
            format!("{host}: {other}"),
            if other.is_transient() {
                "A temporary failure (the server closed or stopped answering): run doctor again; \
                 if it persists, something on the way interferes with SMTP."
            } else {
                "Check the server and the TLS settings of the profile."
            },
        ),
    }
}

/// The catalogue's explanation of a refusal as a fix, and its exit code.
fn reply_fix(reply: &Reply, ectx: &explain::Context<'_>) -> (Option<String>, Exit) {
    let exit = explain::exit_for(reply);
    let fix = explain::explain_reply(reply, ectx)
        .map(|e| format!("{} {}", auth::errors::sentence(&e.meaning), e.advice));
    (fix, exit)
}

/// `smtp.ehlo`, `smtp.auth`, `smtp.mail_from`, `smtp.rcpt_to` on the open session, then QUIT.
async fn smtp(
    ctx: &Ctx<'_>,
    endpoint: &Endpoint,
    host: &Host,
    mut session: Session,
    creds: Option<Credentials>,
) -> Vec<Check> {
    let mut checks = vec![ehlo(ctx, &session)];
    let ectx_base = explain::Context {
        host: Some(&host.name),
        sender: ctx.sender.as_deref(),
        recipient: ctx.to,
        ..auth::explain_context(ctx.profile)
    };
    // AUTH.
    let authed = match (endpoint.auth, creds) {
        (AuthKind::None, _) => {
            checks.push(Check::skipped(
                "smtp.auth",
                format!(
                    "no login: the server recognises {}",
                    super::auth_words(endpoint)
                ),
            ));
            true
        }
        (_, None) => {
            checks.push(Check::skipped(
                "smtp.auth",
                "no credentials (see token / config.secrets)",
            ));
            false
        }
        (_, Some(creds)) => {
            let (check, ok) = authenticate(ctx, &mut session, creds, &ectx_base).await;
            checks.push(check);
            ok
        }
    };
    // MAIL FROM, RCPT TO, RSET.
    let Some(sender) = ctx.sender.as_deref() else {
        checks.push(Check::skipped(
            "smtp.mail_from",
            "the profile has no `sender` or `mailbox`: messages give their own (-f)",
        ));
        checks.push(Check::skipped("smtp.rcpt_to", "no sender to ask with"));
        finish(session).await;
        return checks;
    };
    if let Some(why) = crate::address::path_problem(sender) {
        checks.push(Check::failed(
            "smtp.mail_from",
            Exit::Config,
            format!("the sender {sender:?} {why}"),
            "Fix `sender` (or `mailbox`) in the profile: a whole address, local@domain.",
        ));
        checks.push(Check::skipped("smtp.rcpt_to", "no usable sender"));
        finish(session).await;
        return checks;
    }
    if !authed {
        checks.push(Check::skipped(
            "smtp.mail_from",
            "not logged in (see smtp.auth)",
        ));
        checks.push(Check::skipped(
            "smtp.rcpt_to",
            "not logged in (see smtp.auth)",
        ));
        finish(session).await;
        return checks;
    }
    match session.probe(sender, ctx.to).await {
        Ok(r) => {
            let mail = if r.mail.is_positive() {
                Check::passed(
                    "smtp.mail_from",
                    format!("MAIL FROM:<{sender}> → {}", r.mail),
                )
            } else {
                let (fix, exit) = reply_fix(&r.mail, &ectx_base);
                Check::failed(
                    "smtp.mail_from",
                    exit,
                    format!("MAIL FROM:<{sender}> → {}", r.mail),
                    fix.unwrap_or_else(|| format!("The server refused the sender {sender}: check `sender` in the profile and the server's rules for it.")),
                )
            };
            let refused = !r.mail.is_positive();
            checks.push(mail);
            let rset = match &r.rset {
                Some(reply) => format!("; then RSET → {}", reply.code),
                None => "; the server closed the connection".to_owned(),
            };
            let rcpt = match (ctx.to, &r.rcpt) {
                (None, _) => Check::skipped(
                    "smtp.rcpt_to",
                    format!("give --to ADDR to ask the server about a recipient{rset}"),
                ),
                (Some(_), None) if refused => Check::skipped(
                    "smtp.rcpt_to",
                    format!("the sender was refused (see smtp.mail_from){rset}"),
                ),
                (Some(to), Some(reply)) if reply.is_positive() => {
                    Check::passed("smtp.rcpt_to", format!("RCPT TO:<{to}> → {reply}{rset}"))
                }
                (Some(to), Some(reply)) => {
                    let (fix, exit) = reply_fix(reply, &ectx_base);
                    Check::failed(
                        "smtp.rcpt_to",
                        exit,
                        format!("RCPT TO:<{to}> → {reply}{rset}"),
                        fix.unwrap_or_else(|| rcpt_fallback(ctx, reply)),
                    )
                }
                (Some(_), None) => Check::skipped("smtp.rcpt_to", format!("no reply{rset}")),
            };
            checks.push(rcpt);
        }
        Err(e) => {
            let step = e.step().unwrap_or(Step::Mail);
            let name = if step == Step::Rcpt {
                "smtp.rcpt_to"
            } else {
                "smtp.mail_from"
            };
            checks.push(Check::failed(
                name,
                Problem::session(&e, &host.name).exit,
                format!("{host}: {e}"),
                "The server broke off the dialogue: run doctor again; if it persists, read the \
                 transcript with -v.",
            ));
        }
    }
    finish(session).await;
    checks
}

/// QUIT (its failure changes nothing: nothing was sent).
async fn finish(session: Session) {
    let _ = session.quit().await;
}

/// Advice for a refused recipient the catalogue does not know.
fn rcpt_fallback(ctx: &Ctx<'_>, reply: &Reply) -> String {
    let relay = ctx.profile.mode == Mode::Relay;
    let policy = reply
        .enhanced
        .is_some_and(|e| e.class == 5 && e.subject == 7);
    if relay && policy {
        "The server will not relay for this host to that recipient: the connector (or an \
         Exchange receive connector) must allow this host to relay — by its certificate name or \
         its public IP — and the sender must be in an accepted domain."
            .to_owned()
    } else {
        format!(
            "Check the recipient address; `m365send explain {}` says more about the reply.",
            reply
                .enhanced
                .map(|e| e.to_string())
                .unwrap_or_else(|| reply.code.to_string())
        )
    }
}

/// `smtp.ehlo`: the capabilities after STARTTLS.
fn ehlo(ctx: &Ctx<'_>, s: &Session) -> Check {
    let c = s.capabilities();
    let yn = |b: bool| if b { "yes" } else { "no" };
    let size = match c.size {
        None => "not announced".to_owned(),
        Some(0) => "no fixed limit".to_owned(),
        Some(n) => format!("{n} bytes"),
    };
    let auth = if c.auth.is_empty() {
        "none".to_owned()
    } else {
        c.auth.join(" ")
    };
    let evidence = format!(
        "SIZE {size}, PIPELINING {}, CHUNKING {}, SMTPUTF8 {}, 8BITMIME {}, AUTH {auth}",
        yn(c.pipelining),
        yn(c.chunking),
        yn(c.smtputf8),
        yn(c.eight_bit_mime),
    );
    let max = ctx.profile.max_size();
    match c.size {
        Some(n) if n > 0 && n < max => Check::warning(
            "smtp.ehlo",
            evidence,
            format!(
                "The server takes messages up to {n} bytes, the profile up to {max} (max_size): \
                 set max_size = {n} so a message too large is refused before it is sent."
            ),
        ),
        _ => Check::passed("smtp.ehlo", evidence),
    }
}

/// `smtp.auth`: log in; a cached token refused with 535 5.7.3 is replaced once, as the
/// sending path does. Returns the check and whether the session is logged in.
async fn authenticate(
    ctx: &Ctx<'_>,
    session: &mut Session,
    creds: Credentials,
    ectx: &explain::Context<'_>,
) -> (Check, bool) {
    const NAME: &str = "smtp.auth";
    let mech = match &creds {
        Credentials::XOAuth2 { user, .. } => format!("XOAUTH2 as {user}"),
        Credentials::Password { user, .. } if session.capabilities().has_auth("PLAIN") => {
            format!("PLAIN as {user}")
        }
        Credentials::Password { user, .. } => format!("LOGIN as {user}"),
        Credentials::None => "none".to_owned(),
    };
    let mut creds = creds;
    let mut result = session.authenticate(&creds).await;
    let mut note = String::new();
    if let (
        Err(SessionError::Rejected { reply, .. }),
        Credentials::XOAuth2 {
            token,
            from_cache: true,
            ..
        },
    ) = (&result, &creds)
        && reply.enhanced == Some(EnhancedCode::new(5, 7, 3))
    {
        match auth::credentials_replacing(ctx.config, ctx.profile, token).await {
            Ok(fresh) => {
                note = " (the cached token was refused; a new one was acquired)".to_owned();
                creds = fresh;
                result = session.authenticate(&creds).await;
            }
            Err(f) => return (Check::from_failure(NAME, &f, "See the token check."), false),
        }
    }
    match result {
        Ok(Some(reply)) => (Check::passed(NAME, format!("{mech} → {reply}{note}")), true),
        Ok(None) => (Check::skipped(NAME, "no login needed"), true),
        Err(SessionError::Rejected { reply, .. }) => {
            let (fix, exit) = reply_fix(&reply, ectx);
            let permission = match &creds {
                Credentials::XOAuth2 { token, .. } => auth::token_permission_note(token),
                _ => None,
            };
            let fix = [permission, fix]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            let mut check = Check::failed(
                NAME,
                exit,
                format!("AUTH {mech} → {reply}{note}"),
                if fix.is_empty() {
                    "The server refused the login; its reply says why.".to_owned()
                } else {
                    fix
                },
            );
            check.calls_for_graph = graph_call(&reply, ctx.profile) != GraphCall::No;
            (check, false)
        }
        Err(e @ SessionError::AuthNotOffered { .. }) => (
            Check::failed(
                NAME,
                Exit::Config,
                e.to_string(),
                "smtp.office365.com offers AUTH LOGIN XOAUTH2 after STARTTLS: check the host \
                 (endpoint.host) and the mode; relay and direct send to the MX endpoint do not \
                 log in at all.",
            ),
            false,
        ),
        Err(e) => (
            Check::failed(
                NAME,
                Problem::session(&e, session.host()).exit,
                e.to_string(),
                "The connection failed during AUTH: run doctor again; with -v it prints the \
                 dialogue (secrets redacted).",
            ),
            false,
        ),
    }
}
