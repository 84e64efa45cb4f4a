//! The SMTP transport: the seam's implementation over our own `smtp::Session`.
//!
//! Owns: building the session settings from the profile and endpoint (timeouts, TLS, EHLO
//! name, CHUNKING: [`session_config`], [`tls_config`], which `doctor` probes with too),
//! credentials once per connector, the 5.7.3 re-authentication with a replacement token
//! (once per connector), the basic-auth warning, and turning session
//! errors into the seam's [`Problem`]. Each `send` is one transaction (one flight with
//! PIPELINING and CHUNKING), `send_and_close` pipelines QUIT behind it, `start` writes a
//! small message's flight behind the unread ones and `finish` reads the oldest's replies
//! (the session's `start_transaction`/`finish_transaction`), and `reset` sends
//! nothing (the session pipelines RSET into the next flight when the last one did not end
//! cleanly). A transaction the server cut short while answering the RCPTs comes back `Ok`
//! with the replies received (for `batch` to learn the server's limit from) and the
//! transport closed. Must not: retry, queue, decide exit codes beyond the class of a failure,
//! or word explanations (explain does).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::auth::{self, Credentials};
use crate::config::{Config, Profile};
use crate::exit::{Exit, Failure};
use crate::message::{Envelope, Prepared};
use crate::route::{AuthKind, Endpoint, Host};
use crate::smtp::{
    Flight, MessageFlags, Session, SessionConfig, SessionError, Sink, Step, TlsFailure,
    TlsSettings, client_config, hello_name, is_microsoft_host,
};

use super::{BoxFuture, Connector, MessageResult, Options, Problem, Transport};

impl Problem {
    /// A session failure on `host`.
    pub fn session(e: &SessionError, host: &str) -> Problem {
        if let SessionError::Rejected { step, reply } = e {
            return Problem::reply(*step, reply, host, None);
        }
        let exit = match e {
            SessionError::Resolve { .. } => Exit::NoHost,
            _ if e.is_transient() => Exit::TempFail,
            SessionError::StartTlsNotOffered => Exit::Unavailable,
            SessionError::Tls { kind, .. } => match kind {
                TlsFailure::Io => Exit::TempFail,
                TlsFailure::Certificate | TlsFailure::Protocol => Exit::Unavailable,
            },
            SessionError::AuthNotOffered { .. } | SessionError::AuthWithoutTls => Exit::Config,
            SessionError::Smtputf8NotOffered | SessionError::TooLarge { .. } => Exit::DataErr,
            SessionError::Body(_) => Exit::IoErr,
            _ => Exit::Unavailable,
        };
        // A DNS "try again" is transient; "no such host" is not.
        let transient = match e {
            SessionError::Resolve { reason, .. } => {
                reason.contains("Temporary failure") || reason.contains("timed out")
            }
            _ => e.is_transient(),
        };
        let exit = if transient { Exit::TempFail } else { exit };
        Problem {
            transient,
            exit,
            step: e.step(),
            host: Some(host.to_owned()),
            reply: None,
            what: format!("{host}: {e}"),
            note: None,
        }
    }
}

/// The TLS client configuration of an endpoint (CA file, client certificate, minimum
/// version). Errors are the user's configuration (78).
pub fn tls_config(endpoint: &Endpoint) -> Result<Arc<rustls::ClientConfig>, Failure> {
    client_config(&TlsSettings {
        min_version: endpoint.tls_min,
        ca_file: endpoint.ca_file.clone(),
        client_cert: endpoint.client_cert.clone(),
    })
    .map_err(|e| Failure::config(e.to_string()))
}

/// The session settings for one host of the profile's endpoint: timeouts, TLS policy, EHLO
/// name, CHUNKING. The connector's, and `doctor`'s, which probes with the same settings.
pub fn session_config(
    profile: &Profile,
    endpoint: &Endpoint,
    host: &Host,
    tls: Arc<rustls::ClientConfig>,
    helo: String,
    transcript: Option<Sink>,
) -> SessionConfig {
    let t = &profile.timeouts;
    SessionConfig {
        host: host.name.clone(),
        port: host.port,
        addrs: host.addrs.clone(),
        helo,
        tls: endpoint.tls,
        tls_config: tls,
        connect_timeout: t.connect(),
        command_timeout: t.command(),
        data_end_timeout: t.data_end(),
        chunking: profile.chunking.enabled(),
        transcript,
    }
}

/// Opens authenticated SMTP sessions for one profile and endpoint.
pub struct SmtpConnector<'a> {
    config: &'a Config,
    profile: &'a Profile,
    endpoint: &'a Endpoint,
    opts: &'a Options,
    tls: Arc<rustls::ClientConfig>,
    creds: Credentials,
    helo: String,
    refreshed: bool,
    warned: bool,
    /// The last session: TLS on, and the AUTH mechanism tried (for the log line).
    last_tls: bool,
    last_auth: Option<&'static str>,
}

impl<'a> SmtpConnector<'a> {
    /// Credentials and the TLS configuration, once. `sender` picks the EHLO name when the
    /// profile has none and the host name is not qualified.
    pub async fn new(
        config: &'a Config,
        profile: &'a Profile,
        endpoint: &'a Endpoint,
        opts: &'a Options,
        sender: &str,
    ) -> Result<SmtpConnector<'a>, Problem> {
        // The route decides whether this endpoint authenticates at all (relay and direct
        // send do not, whatever the profile's auth settings say).
        let creds = if endpoint.auth == AuthKind::None {
            Credentials::None
        } else {
            auth::credentials(config, profile, false)
                .await
                .map_err(Problem::local)?
        };
        let tls = tls_config(endpoint).map_err(Problem::local)?;
        Ok(SmtpConnector {
            config,
            profile,
            endpoint,
            opts,
            tls,
            creds,
            helo: hello_name(profile.helo.as_deref(), sender),
            refreshed: false,
            warned: false,
            last_tls: false,
            last_auth: None,
        })
    }

    /// Connect to one host and authenticate.
    pub async fn open_session(&mut self, host: &Host) -> Result<Session, Problem> {
        let cfg = session_config(
            self.profile,
            self.endpoint,
            host,
            self.tls.clone(),
            self.helo.clone(),
            self.opts.transcript(),
        );
        if !self.warned
            && let Some(w) = basic_auth_warning(&self.creds, &host.name, &self.profile.name)
        {
            self.warned = true;
            self.opts.sink().line(&w);
        }
        self.last_tls = false;
        self.last_auth = None;
        let mut session = Session::connect(cfg)
            .await
            .map_err(|e| Problem::session(&e, &host.name))?;
        self.last_tls = session.is_tls();
        self.last_auth = self.auth_mechanism(&session);
        match session.authenticate(&self.creds).await {
            Ok(_) => Ok(session),
            Err(e) if needs_fresh_token(&self.creds, &e) && !self.refreshed => {
                // A cached token refused with 5.7.3: replace it once. `credentials_replacing`
                // takes a token another process already fetched after the same refusal, so
                // 50 processes refused at once make one token request.
                self.refreshed = true;
                let rejected = match &self.creds {
                    Credentials::XOAuth2 { token, .. } => token.clone(),
                    _ => return Err(Problem::session(&e, &host.name)),
                };
                tracing::debug!(host = %host.name, "535 5.7.3 with a cached token; getting another");
                self.creds = auth::credentials_replacing(self.config, self.profile, &rejected)
                    .await
                    .map_err(Problem::local)?;
                match session.authenticate(&self.creds).await {
                    Ok(_) => Ok(session),
                    Err(e) => Err(self.auth_problem(&e, &host.name)),
                }
            }
            Err(e) => Err(self.auth_problem(&e, &host.name)),
        }
    }

    /// The problem for a failed AUTH; for a refused OAuth token, what the token says about its
    /// permissions goes with it (the catalogue's causes come with the report).
    fn auth_problem(&self, e: &SessionError, host: &str) -> Problem {
        let mut p = Problem::session(e, host);
        if let Credentials::XOAuth2 { token, .. } = &self.creds
            && e.step() == Some(Step::Auth)
        {
            p.note = auth::token_permission_note(token);
        }
        p
    }

    /// The AUTH mechanism `open` used on `session` (None: no AUTH), for the log line.
    fn auth_mechanism(&self, session: &Session) -> Option<&'static str> {
        match &self.creds {
            Credentials::None => None,
            Credentials::XOAuth2 { .. } => Some("XOAUTH2"),
            Credentials::Password { .. } if session.capabilities().has_auth("PLAIN") => {
                Some("PLAIN")
            }
            Credentials::Password { .. } => Some("LOGIN"),
        }
    }
}

impl Connector for SmtpConnector<'_> {
    fn open<'b>(
        &'b mut self,
        host: &'b Host,
    ) -> BoxFuture<'b, Result<Box<dyn Transport>, Problem>> {
        Box::pin(async move {
            let session = self.open_session(host).await?;
            let t: Box<dyn Transport> = Box::new(SmtpTransport {
                host: host.name.clone(),
                session: Some(session),
                flights: VecDeque::new(),
            });
            Ok(t)
        })
    }

    fn last_session(&self) -> (bool, Option<&'static str>) {
        (self.last_tls, self.last_auth)
    }
}

/// One SMTP session behind the seam.
pub struct SmtpTransport {
    host: String,
    /// None once the connection is unusable (and no started message is left to finish).
    session: Option<Session>,
    /// Messages started (flight written) and not finished, oldest first.
    flights: VecDeque<Flight>,
}

impl Transport for SmtpTransport {
    fn host(&self) -> &str {
        &self.host
    }

    fn is_open(&self) -> bool {
        self.session.as_ref().is_some_and(Session::is_open)
    }

    fn send<'a>(
        &'a mut self,
        message: &'a Prepared,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<MessageResult, Problem>> {
        Box::pin(async move { self.transaction(message, envelope, false).await })
    }

    fn send_and_close<'a>(
        mut self: Box<Self>,
        message: &'a Prepared,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<MessageResult, Problem>>
    where
        Self: 'a,
    {
        // QUIT goes in the same flight as the end of the message.
        Box::pin(async move { self.transaction(message, envelope, true).await })
    }

    fn start<'a>(
        &'a mut self,
        message: &'a Prepared,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some(session) = self.session.as_mut() else {
                return false;
            };
            let flags = MessageFlags::from(message);
            // An error here is a check before anything was written: `send` reports it.
            match session
                .start_transaction(envelope, &message.body, flags)
                .await
            {
                Ok(Some(f)) => {
                    self.flights.push_back(f);
                    true
                }
                Ok(None) | Err(_) => false,
            }
        })
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<MessageResult, Problem>> {
        Box::pin(async move {
            let Some(flight) = self.flights.pop_front() else {
                return Err(closed(&self.host));
            };
            let Some(session) = self.session.as_mut() else {
                return Err(closed(&self.host));
            };
            let r = session
                .finish_transaction(flight)
                .await
                .map_err(|e| Problem::session(&e, &self.host));
            if !session.is_open() && self.flights.is_empty() {
                self.session = None;
            }
            r
        })
    }

    /// Nothing on the wire: a transaction that ended cleanly needs no RSET, and the
    /// session pipelines one into the next flight after one that did not.
    fn reset(&mut self) -> BoxFuture<'_, Result<(), Problem>> {
        Box::pin(async move {
            if self.is_open() {
                Ok(())
            } else {
                // Started messages still get their replies read by `finish`.
                if self.flights.is_empty() {
                    self.session = None;
                }
                Err(closed(&self.host))
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(s) = self.session {
                let _ = s.quit().await;
            }
        })
    }
}

impl SmtpTransport {
    /// One transaction; a session that failed (or quit) is dropped.
    async fn transaction(
        &mut self,
        message: &Prepared,
        envelope: &Envelope,
        quit: bool,
    ) -> Result<MessageResult, Problem> {
        let Some(session) = self.session.as_mut() else {
            return Err(closed(&self.host));
        };
        let flags = MessageFlags::from(message);
        let r = session
            .send_transaction(envelope, &message.body, flags, quit)
            .await
            .map_err(|e| Problem::session(&e, &self.host));
        // After Smtputf8NotOffered and TooLarge (checked before anything was sent) the
        // session is still usable.
        if !session.is_open() {
            self.session = None;
        }
        r
    }
}

/// The problem for using a transport whose connection is gone.
fn closed(host: &str) -> Problem {
    Problem::session(&SessionError::Closed { step: Step::Rset }, host)
}

/// A cached token refused with 535 5.7.3 may just be stale (revoked, permissions changed):
/// worth one retry with a freshly acquired token.
fn needs_fresh_token(creds: &Credentials, e: &SessionError) -> bool {
    matches!(
        creds,
        Credentials::XOAuth2 {
            from_cache: true,
            ..
        }
    ) && e.step() == Some(Step::Auth)
        && e.reply()
            .and_then(|r| r.enhanced)
            .is_some_and(|c| c == crate::smtp::EnhancedCode::new(5, 7, 3))
}

/// The one-line warning for a password used against a Microsoft host.
fn basic_auth_warning(creds: &Credentials, host: &str, profile: &str) -> Option<String> {
    (matches!(creds, Credentials::Password { .. }) && is_microsoft_host(host)).then(|| {
        format!(
            "m365send: warning: profile \"{profile}\" uses a password (basic auth) with {host}: Microsoft disables basic authentication for SMTP AUTH by default from the end of December 2026; switch to OAuth (auth.method = \"oauth\")"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::smtp::Reply;

    #[test]
    fn basic_auth_warning_only_for_passwords_to_microsoft() {
        let pw = Credentials::Password {
            user: "u@contoso.com".into(),
            password: Secret::new("hunter2"),
        };
        let w = basic_auth_warning(&pw, "smtp.office365.com", "app").unwrap();
        assert!(w.contains("December 2026") && !w.contains("hunter2") && !w.contains('\n'));
        assert!(basic_auth_warning(&pw, "mail.example.org", "app").is_none());
        let tok = Credentials::XOAuth2 {
            user: "u".into(),
            token: Secret::new("t"),
            from_cache: false,
        };
        assert!(basic_auth_warning(&tok, "smtp.office365.com", "app").is_none());
    }

    #[test]
    fn fresh_token_only_for_cached_token_refused_5_7_3() {
        let cached = Credentials::XOAuth2 {
            user: "u".into(),
            token: Secret::new("t"),
            from_cache: true,
        };
        let refused = |text: &str| SessionError::Rejected {
            step: Step::Auth,
            reply: Reply::parse(text).unwrap(),
        };
        assert!(needs_fresh_token(
            &cached,
            &refused("535 5.7.3 Authentication unsuccessful")
        ));
        assert!(!needs_fresh_token(
            &cached,
            &refused(
                "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"
            )
        ));
        let configured = Credentials::XOAuth2 {
            user: "u".into(),
            token: Secret::new("t"),
            from_cache: false,
        };
        assert!(!needs_fresh_token(
            &configured,
            &refused("535 5.7.3 Authentication unsuccessful")
        ));
    }

    #[test]
    fn host_not_found_is_68_and_connection_trouble_is_75() {
        let e = SessionError::Resolve {
            host: "nx.contoso.com".into(),
            reason: "failed to lookup address information: Name or service not known".into(),
        };
        let p = Problem::session(&e, "nx.contoso.com");
        assert_eq!(p.exit, Exit::NoHost);
        assert!(!p.transient);
        let e = SessionError::Resolve {
            host: "nx.contoso.com".into(),
            reason: "Temporary failure in name resolution".into(),
        };
        assert!(Problem::session(&e, "nx.contoso.com").transient);
        let e = SessionError::Timeout {
            step: Step::DataEnd,
            secs: 300,
        };
        let p = Problem::session(&e, "h");
        assert_eq!((p.exit, p.transient), (Exit::TempFail, true));
        let p = Problem::session(&SessionError::StartTlsNotOffered, "h");
        assert_eq!((p.exit, p.transient), (Exit::Unavailable, false));
        let p = Problem::session(&SessionError::TooLarge { size: 2, limit: 1 }, "h");
        assert_eq!(p.exit, Exit::DataErr);
    }
}
