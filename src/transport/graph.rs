//! The Microsoft Graph transport: the seam's implementation over `graph::Client`, and the
//! `fallback = "graph"` connector that wraps the SMTP one.
//!
//! Owns: the Graph token for the profile (audience graph.microsoft.com, its own cache slot;
//! replaced once when Graph answers 401 to a cached token), the Graph client settings from
//! the profile (host, mailbox, Sent Items, TLS trust, timeouts, -v transcript), turning
//! Graph's answers into the seam's `MessageResult` / `Problem` (a Graph error becomes a reply
//! with the SMTP code that means the same and the Graph code and HTTP status in its text:
//! `status::graph_reply`), and the switch from client submission to Graph when Microsoft 365
//! says SMTP AUTH is disabled. Must not: retry across rounds, queue, decide exit codes beyond
//! the class of a failure, or word explanations (explain does).

use std::sync::Arc;

use crate::auth::{self, AccessToken, TokenClaims};
use crate::config::{Config, OAuthFlow, Profile, TlsVersion};
use crate::exit::{Exit, Failure};
use crate::explain;
use crate::graph::{self, GraphError};
use crate::message::{Envelope, Prepared};
use crate::route::{Endpoint, Host};
use crate::smtp::{TlsSettings, client_config};
use crate::status::{EnhancedCode, MessageResult, Reply, Step, graph_reply};

use super::smtp::SmtpConnector;
use super::{BoxFuture, Connector, Options, Problem, Transport};

/// The log line's `auth=` for Graph.
const AUTH_GRAPH: &str = "OAUTH2-GRAPH";
/// The log line's `auth=` when the Graph fallback sent the message.
const AUTH_FALLBACK: &str = "OAUTH2-GRAPH-FALLBACK";

/// Opens Graph "transports" (HTTPS is connectionless here: `open` connects nothing).
pub struct GraphConnector<'a> {
    config: &'a Config,
    profile: &'a Profile,
    opts: &'a Options,
    tls: Arc<rustls::ClientConfig>,
    mailbox: String,
    token: Option<AccessToken>,
    /// Why the fallback switched to Graph (None: mode "graph").
    fallback: Option<String>,
}

impl<'a> GraphConnector<'a> {
    /// The TLS trust and the mailbox; the token is acquired on the first `open`.
    pub fn new(
        config: &'a Config,
        profile: &'a Profile,
        opts: &'a Options,
        tls_min: TlsVersion,
        ca_file: Option<std::path::PathBuf>,
    ) -> Result<GraphConnector<'a>, Problem> {
        let tls = client_config(&TlsSettings {
            min_version: tls_min,
            ca_file,
            client_cert: None,
        })
        .map_err(|e| Problem::local(Failure::config(e.to_string())))?;
        let mailbox = profile
            .mailbox
            .clone()
            .or_else(|| profile.auth.user.clone())
            .ok_or_else(|| {
                Problem::local(Failure::config(format!(
                    "profile \"{}\" needs `mailbox` to send through Microsoft Graph (the mailbox \
                     that sends, e.g. app@contoso.com)",
                    profile.name
                )))
            })?;
        Ok(GraphConnector {
            config,
            profile,
            opts,
            tls,
            mailbox,
            token: None,
            fallback: None,
        })
    }

    async fn token(&mut self) -> Result<AccessToken, Problem> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let t = auth::graph_token(self.config, self.profile, None)
            .await
            .map_err(Problem::local)?;
        self.token = Some(t.clone());
        Ok(t)
    }

    /// The Graph client settings for `host` (also `doctor`'s, which probes with them).
    pub fn settings(&self, host: &Host) -> graph::Settings {
        let t = &self.profile.timeouts;
        let log: Option<graph::Log> = self.opts.transcript().map(|sink| {
            let l: graph::Log = Arc::new(move |line: &str| sink.line(line));
            l
        });
        graph::Settings {
            host: host.name.clone(),
            port: host.port,
            mailbox: self.mailbox.clone(),
            save_to_sent_items: self.profile.save_to_sent_items(),
            tls: self.tls.clone(),
            connect_timeout: t.connect(),
            // A request carries up to 4 MB: give it the end-of-data time.
            request_timeout: t.data_end(),
            log,
        }
    }

    async fn open_graph(&mut self, host: &Host) -> Result<Box<dyn Transport>, Problem> {
        let token = self.token().await?;
        let client = graph::Client::new(self.settings(host))
            .map_err(|e| Problem::local(Failure::new(Exit::Software, e.to_string())))?;
        Ok(Box::new(GraphTransport {
            host: host.name.clone(),
            client,
            token,
            refreshed: false,
            config: self.config.clone(),
            profile: self.profile.clone(),
            mailbox: self.mailbox.clone(),
            fallback: self.fallback.clone(),
        }))
    }
}

impl Connector for GraphConnector<'_> {
    fn open<'b>(
        &'b mut self,
        host: &'b Host,
    ) -> BoxFuture<'b, Result<Box<dyn Transport>, Problem>> {
        Box::pin(self.open_graph(host))
    }

    fn last_session(&self) -> (bool, Option<&'static str>) {
        (
            true,
            Some(if self.fallback.is_some() {
                AUTH_FALLBACK
            } else {
                AUTH_GRAPH
            }),
        )
    }
}

/// Graph behind the seam: one mailbox, one token.
pub struct GraphTransport {
    host: String,
    client: graph::Client,
    token: AccessToken,
    refreshed: bool,
    config: Config,
    profile: Profile,
    mailbox: String,
    fallback: Option<String>,
}

impl GraphTransport {
    async fn send_once(
        &mut self,
        message: &Prepared,
        envelope: &Envelope,
    ) -> Result<graph::Sent, GraphError> {
        self.client
            .send(
                self.token.token.expose(),
                message.body.path(),
                &envelope.recipients,
            )
            .await
    }

    /// A Graph error as the seam's problem.
    fn problem(&self, e: &GraphError) -> Problem {
        match e {
            GraphError::Status {
                status,
                code,
                message,
                maybe_sent,
                request,
                ..
            } => {
                let (smtp, enhanced) = explain::graph::equivalent(*status, code);
                let reply = graph_reply(smtp, enhanced, *status, code, message);
                let mut p = Problem::reply(Step::DataEnd, &reply, &self.host, None);
                p.what = format!("{} ({request})", p.what);
                if *maybe_sent {
                    p.note = Some(
                        "Graph may have sent the message anyway; m365send sends it again later, \
                         so a recipient may get it twice (a duplicate is better than a loss)."
                            .to_owned(),
                    );
                } else if *status == 401 {
                    p.note = audience_note(&self.token);
                }
                p
            }
            GraphError::Transport {
                what,
                request,
                maybe_sent,
            } => Problem {
                transient: true,
                exit: Exit::TempFail,
                step: Some(Step::Connect),
                host: Some(self.host.clone()),
                reply: None,
                what: format!("{}: {request}: {what}", self.host),
                note: maybe_sent.then(|| {
                    "The answer was lost after the request went out: Graph may have sent the \
                     message; m365send sends it again later, so a recipient may get it twice."
                        .to_owned()
                }),
            },
            GraphError::Io(e) => Problem::local(Failure::io(format!(
                "cannot read the message for Microsoft Graph: {e}"
            ))),
            GraphError::Setup(e) => Problem::local(Failure::new(Exit::Software, e.clone())),
        }
    }

    fn result(&self, envelope: &Envelope, sent: &graph::Sent) -> MessageResult {
        let ok = |text: String| Reply::new(250, vec![text]);
        let mut text = format!(
            "2.0.0 Graph accepted the message (HTTP {}, {})",
            sent.status,
            match &sent.route {
                graph::Route::SendMail { .. } => "sendMail".to_owned(),
                graph::Route::Draft { attachments, .. } =>
                    format!("draft + {} uploaded part(s) + send", attachments.len()),
            }
        );
        if sent.confirmed_after_ambiguity {
            text.push_str("; its answer was lost, but the draft had left Drafts");
        }
        if let Some(why) = &self.fallback {
            text.push_str(&format!("; Graph fallback after {why}"));
        }
        MessageResult {
            mail: ok(format!("2.1.0 sending as {}", self.mailbox)),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| (r.clone(), ok("2.1.5 recipient".to_owned())))
                .collect(),
            data: Some((Step::DataEnd, ok(text))),
        }
    }
}

/// What a refused token says about its audience, when Graph refused it (401).
fn audience_note(token: &AccessToken) -> Option<String> {
    let c = TokenClaims::of(&token.token)?;
    let aud = c.aud?;
    (!aud.contains("graph")).then(|| {
        format!(
            "The token's audience is {aud}, not Microsoft Graph (https://graph.microsoft.com): \
             it was issued for another service."
        )
    })
}

impl Transport for GraphTransport {
    fn host(&self) -> &str {
        &self.host
    }

    fn is_open(&self) -> bool {
        true
    }

    fn send<'a>(
        &'a mut self,
        message: &'a Prepared,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<MessageResult, Problem>> {
        Box::pin(async move {
            let mut r = self.send_once(message, envelope).await;
            // A cached token Graph calls invalid or expired: replace it once.
            if let Err(GraphError::Status { status: 401, .. }) = &r
                && self.token.from_cache
                && !self.refreshed
            {
                self.refreshed = true;
                tracing::debug!(host = %self.host, "Graph refused a cached token (401); getting another");
                self.token =
                    auth::graph_token(&self.config, &self.profile, Some(&self.token.token))
                        .await
                        .map_err(Problem::local)?;
                r = self.send_once(message, envelope).await;
            }
            match r {
                Ok(sent) => Ok(self.result(envelope, &sent)),
                Err(e) => Err(self.problem(&e)),
            }
        })
    }

    fn reset(&mut self) -> BoxFuture<'_, Result<(), Problem>> {
        Box::pin(async { Ok(()) })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

// ---------------------------------------------------------------------------------------------
// fallback = "graph"

/// What a refusal of SMTP AUTH means for `fallback = "graph"` (also for `doctor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphCall {
    /// Not a refusal the fallback answers.
    No,
    /// 535 5.7.139 naming SmtpClientAuthentication: SMTP AUTH is disabled; go to Graph.
    Yes,
    /// 535 5.7.3 to an app-only login: go to Graph if the same app holds Graph's Mail.Send.
    IfMailSend,
}

/// How `r`, Microsoft 365's refusal of this profile's SMTP AUTH, bears on the fallback.
pub fn graph_call(r: &Reply, profile: &Profile) -> GraphCall {
    if r.enhanced == Some(EnhancedCode::new(5, 7, 139))
        && r.text()
            .to_ascii_lowercase()
            .contains("smtpclientauthentication")
    {
        GraphCall::Yes
    } else if r.enhanced == Some(EnhancedCode::new(5, 7, 3))
        && profile.auth.flow == OAuthFlow::ClientCredentials
    {
        GraphCall::IfMailSend
    } else {
        GraphCall::No
    }
}

/// Client submission, switching to Graph (same app registration, same prepared message) when
/// Microsoft 365 refuses SMTP AUTH because it is disabled.
pub struct FallbackConnector<'a> {
    smtp: SmtpConnector<'a>,
    graph: GraphConnector<'a>,
    profile: &'a Profile,
    opts: &'a Options,
    graph_host: Host,
    switched: bool,
}

impl<'a> FallbackConnector<'a> {
    pub fn new(
        smtp: SmtpConnector<'a>,
        config: &'a Config,
        profile: &'a Profile,
        endpoint: &'a Endpoint,
        opts: &'a Options,
    ) -> Result<FallbackConnector<'a>, Problem> {
        let graph = GraphConnector::new(
            config,
            profile,
            opts,
            endpoint.tls_min,
            endpoint.ca_file.clone(),
        )?;
        let (graph_host, _) = crate::route::graph_host(profile).map_err(Problem::local)?;
        Ok(FallbackConnector {
            smtp,
            graph,
            profile,
            opts,
            graph_host,
            switched: false,
        })
    }

    /// Whether this refusal of SMTP AUTH calls for Graph: 535 5.7.139 naming
    /// SmtpClientAuthentication, or 535 5.7.3 for an app-only token while the same app holds
    /// Graph's Mail.Send (its Graph token says so).
    async fn calls_for_graph(&mut self, p: &Problem) -> bool {
        if p.step != Some(Step::Auth) {
            return false;
        }
        let Some(r) = &p.reply else { return false };
        match graph_call(r, self.profile) {
            GraphCall::Yes => true,
            GraphCall::IfMailSend => match self.graph.token().await {
                Ok(t) => TokenClaims::of(&t.token)
                    .is_some_and(|c| c.roles.iter().any(|r| r == "Mail.Send")),
                Err(_) => false,
            },
            GraphCall::No => false,
        }
    }

    async fn open_any(&mut self, host: &Host) -> Result<Box<dyn Transport>, Problem> {
        if self.switched {
            let h = self.graph_host.clone();
            return self.graph.open_graph(&h).await;
        }
        match self.smtp.open(host).await {
            Ok(t) => Ok(t),
            Err(p) => {
                if !self.calls_for_graph(&p).await {
                    return Err(p);
                }
                let why = p
                    .reply
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| p.what.clone());
                if self.opts.verbose > 0 {
                    self.opts.sink().line(&format!(
                        "m365send: client submission refused ({why}): SMTP AUTH is off for this \
                         mailbox or tenant; sending through Microsoft Graph as {} instead \
                         (fallback = \"graph\" in profile \"{}\")",
                        self.graph.mailbox, self.profile.name
                    ));
                }
                let short = p
                    .reply
                    .as_ref()
                    .map(|r| match r.enhanced {
                        Some(e) => format!("{} {e}", r.code),
                        None => r.code.to_string(),
                    })
                    .unwrap_or_else(|| "an SMTP AUTH refusal".to_owned());
                self.graph.fallback = Some(short);
                self.switched = true;
                let h = self.graph_host.clone();
                self.graph.open_graph(&h).await
            }
        }
    }
}

impl Connector for FallbackConnector<'_> {
    fn open<'b>(
        &'b mut self,
        host: &'b Host,
    ) -> BoxFuture<'b, Result<Box<dyn Transport>, Problem>> {
        Box::pin(self.open_any(host))
    }

    fn last_session(&self) -> (bool, Option<&'static str>) {
        if self.switched {
            self.graph.last_session()
        } else {
            self.smtp.last_session()
        }
    }
}
