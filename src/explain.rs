//! Explanation catalogue: Microsoft 365 reply codes → what happened, what to do, exit code.
//!
//! Owns: the catalogue (every reply in BRIEF.md's table and the identity platform's AADSTS
//! errors), the classification of a reply into a sysexits code, and `m365send explain CODE`.
//! Must not: do I/O beyond returning strings.
//!
//! Replies are recognised by their enhanced status code; the text is looked at only where
//! Microsoft uses one code for several causes (5.7.139, 5.2.0, 5.2.252). An explanation never
//! replaces the server's reply: callers print the reply, then the explanation's two lines
//! (`format_failure` does both).
//!
//! # Exit codes (sysexits) chosen for replies
//!
//! | reply | exit | why |
//! |---|---|---|
//! | any 4xx, and 501 5.5.127 (token expires soon) | 75 TEMPFAIL | trying again (with a fresh token) can succeed |
//! | 5.1.x (but 5.1.8 and 5.1.90), 5.4.1, 5.5.105 (HVE: external recipient) | 67 NOUSER | a recipient was refused |
//! | 5.7.3, 5.7.139, 5.7.8 and any other 535, 5.7.30, 5.7.57, 5.7.60, 5.2.0/5.2.252 SendAsDenied, 5.7.64, 5.7.68, 5.7.54 and 5.7.1 Unable to relay, 5.5.124, any other 5.7.x, bare 530/534/535/538 | 77 NOPERM | authentication or permission: an administrator must grant or fix something |
//! | 5.3.4, 5.6.x, bare 552 | 65 DATAERR | the message itself was refused |
//! | 5.2.251–5.2.255 throttled, 5.1.8 blocked sender, 5.7.501–503 banned sender, 5.7.511 and 5.7.606–649 banned IP, 5.7.705/708/750 tenant blocked, 5.2.0 quota, 5.2.2 and 5.1.90 recipient rate limit, 5.2.2 mailbox full, anything else | 69 UNAVAILABLE | the service refuses for now; no retry by us |
//!
//! Banned IPs, banned or blocked senders and blocked tenants are 69, not 77: no permission or
//! setting on our side fixes them, the IP must be delisted or Microsoft must lift the block.
//! 4.7.850–899 (suspicious IP), 421 4.3.2 (too many concurrent connections, PRX) and 421 4.7.0
//! (too many errors) are 4xx like the rest: 75.
//!
//! # Exit codes chosen for identity-platform (OAuth) errors
//!
//! This is the one AADSTS catalogue: `auth` parses the token endpoint's answer and asks
//! `explain_token_error` for the words and the exit code, so `m365send explain AADSTS700082`
//! and a failed token request say the same thing.
//!
//! 78 CONFIG when the fix is in a file or setting someone edits: m365send's configuration or
//! the app registration (client id, tenant, scope, secret value vs. secret id, an expired
//! secret, the certificate to upload, public client flows) or the host (its clock, for an
//! assertion outside its time range); 77 NOPERM when a person must grant or re-establish
//! permission (MFA, conditional access, consent, an expired or revoked refresh token, a
//! declined or expired device login); 75 TEMPFAIL for the identity platform's own temporary
//! failures.

pub mod graph;

use crate::config::Mode;
use crate::exit::{Exit, Failure};
use crate::status::{EnhancedCode, Reply};

/// What the explanation may mention about this user's situation.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    pub mode: Option<Mode>,
    pub profile: Option<&'a str>,
    /// The mailbox that authenticated (submit).
    pub mailbox: Option<&'a str>,
    /// Envelope sender / From.
    pub sender: Option<&'a str>,
    /// The recipient a RCPT reply is about.
    pub recipient: Option<&'a str>,
    /// The host that replied.
    pub host: Option<&'a str>,
    /// Authenticated with an app-only OAuth token.
    pub app_only: bool,
    /// Authenticated with a password.
    pub basic_auth: bool,
    /// Authenticated with a delegated OAuth token (a signed-in user, `m365send login`).
    pub delegated: bool,
    /// The OAuth tenant and application (client) id, for identity-platform errors and the
    /// 5.7.3 causes.
    pub tenant: Option<&'a str>,
    pub client_id: Option<&'a str>,
    /// Whether m365send's queue tries a temporary failure again: `Some(true)` for a queued
    /// message, `Some(false)` when the profile never queues (`queue = "never"`), `None` when
    /// not known (`m365send explain CODE`).
    pub retried_by_queue: Option<bool>,
}

/// One or two lines for the user, and the exit code the reply implies.
///
/// `meaning` is a clause that continues "Microsoft 365 refused X (reply): …" and ends with a
/// full stop; `advice` is one sentence (or two) ending with a full stop. Neither contains a
/// newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// What it means for this user (one line, no trailing newline).
    pub meaning: String,
    /// What to do (one line).
    pub advice: String,
    pub exit: Exit,
}

/// The sysexits name of an exit code (`EX_NOPERM`), for messages and log lines.
pub fn sysexits_name(exit: Exit) -> &'static str {
    match exit {
        Exit::Ok => "EX_OK",
        Exit::Usage => "EX_USAGE",
        Exit::DataErr => "EX_DATAERR",
        Exit::NoInput => "EX_NOINPUT",
        Exit::NoUser => "EX_NOUSER",
        Exit::NoHost => "EX_NOHOST",
        Exit::Unavailable => "EX_UNAVAILABLE",
        Exit::Software => "EX_SOFTWARE",
        Exit::OsErr => "EX_OSERR",
        Exit::CantCreat => "EX_CANTCREAT",
        Exit::IoErr => "EX_IOERR",
        Exit::TempFail => "EX_TEMPFAIL",
        Exit::NoPerm => "EX_NOPERM",
        Exit::Config => "EX_CONFIG",
    }
}

// ---------------------------------------------------------------------------------------------
// The reply catalogue
// ---------------------------------------------------------------------------------------------

/// Each Microsoft 365 reply the catalogue knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    AuthUnsuccessful,
    SmtpAuthDisabled,
    BasicAuthBlocked,
    BasicAuthNotSupported,
    NotAuthenticated,
    SendAsDenied,
    SenderThrottled,
    RelayDenied,
    WrongRegion,
    DirectSendRejected,
    RecipientAccessDenied,
    RecipientNotFound,
    BannedIp,
    TenantBlocked,
    TryLater,
    TlsTooOld,
    ThreadLimit,
    SubmissionQuota,
    MailboxFull,
    TooLarge,
    TooManyRecipients,
    InvalidXoauth2,
    TokenExpiresSoon,
    HveExternal,
    MalformedContent,
    RelayNotAccepted,
    SenderBlocked,
    BannedSender,
    BannedSenderIp,
    SuspiciousIp,
    TooManyConnections,
    TooManyErrors,
}

/// A typical reply for each kind: (basic code, enhanced code, text). Used by `explain CODE`
/// to find the kinds a bare code may mean, and by the tests.
const SAMPLES: &[(Kind, u16, &str, &str)] = &[
    (
        Kind::AuthUnsuccessful,
        535,
        "5.7.3",
        "Authentication unsuccessful",
    ),
    (
        Kind::SmtpAuthDisabled,
        535,
        "5.7.139",
        "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
    ),
    (
        Kind::BasicAuthBlocked,
        535,
        "5.7.139",
        "Authentication unsuccessful, basic authentication is disabled.",
    ),
    (
        Kind::BasicAuthNotSupported,
        550,
        "5.7.30",
        "Basic authentication is not supported for Client Submission.",
    ),
    (
        Kind::NotAuthenticated,
        530,
        "5.7.57",
        "Client was not authenticated to send anonymous mail during MAIL FROM",
    ),
    (
        Kind::SendAsDenied,
        550,
        "5.7.60",
        "SMTP; Client does not have permissions to send as this sender",
    ),
    (
        Kind::SendAsDenied,
        554,
        "5.2.0",
        "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
    ),
    (Kind::SendAsDenied, 554, "5.2.252", "SendAsDenied"),
    (
        Kind::SenderThrottled,
        550,
        "5.2.251",
        "Sender throttled due to continuous send as denied errors.",
    ),
    (
        Kind::RelayDenied,
        550,
        "5.7.64",
        "TenantAttribution; Relay Access Denied",
    ),
    (
        Kind::WrongRegion,
        451,
        "4.4.62",
        "Mail sent to the wrong Office 365 region.",
    ),
    (
        Kind::DirectSendRejected,
        550,
        "5.7.68",
        "TenantInboundAttribution; Direct Send not allowed for this organization",
    ),
    (
        Kind::RecipientAccessDenied,
        550,
        "5.4.1",
        "Recipient address rejected: Access denied.",
    ),
    (
        Kind::RecipientNotFound,
        550,
        "5.1.10",
        "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    ),
    (
        Kind::RecipientNotFound,
        550,
        "5.1.1",
        "RESOLVER.ADR.RecipNotFound; not found",
    ),
    (
        Kind::BannedIp,
        550,
        "5.7.606",
        "Access denied, banned sending IP [192.0.2.1].",
    ),
    (
        Kind::TenantBlocked,
        550,
        "5.7.705",
        "Access denied, tenant has exceeded threshold.",
    ),
    (
        Kind::TenantBlocked,
        550,
        "5.7.708",
        "Access denied, traffic not accepted from this IP.",
    ),
    (
        Kind::TenantBlocked,
        550,
        "5.7.750",
        "Service unavailable. Client blocked from sending from unregistered domains.",
    ),
    (
        Kind::TryLater,
        451,
        "4.7.500",
        "Access denied, please try again later.",
    ),
    (
        Kind::TlsTooOld,
        421,
        "4.7.66",
        "TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.",
    ),
    (
        Kind::ThreadLimit,
        432,
        "4.3.2",
        "STOREDRV.ClientSubmit; sender thread limit exceeded",
    ),
    (
        Kind::SubmissionQuota,
        554,
        "5.2.0",
        "STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
    ),
    (Kind::MailboxFull, 554, "5.2.2", "mailbox full"),
    (
        Kind::TooLarge,
        552,
        "5.3.4",
        "Message size exceeds fixed maximum message size",
    ),
    (Kind::TooManyRecipients, 452, "4.5.3", "Too many recipients"),
    (
        Kind::InvalidXoauth2,
        501,
        "5.5.124",
        "Invalid XOAUTH2 auth data",
    ),
    (
        Kind::TokenExpiresSoon,
        501,
        "5.5.127",
        "Token will expire soon",
    ),
    (
        Kind::HveExternal,
        550,
        "5.5.105",
        "High Volume Email may only be sent to recipients inside the organization",
    ),
    (
        Kind::MalformedContent,
        550,
        "5.6.11",
        "SMTPSEND.BareLinefeedsAreIllegal",
    ),
    (
        Kind::AuthUnsuccessful,
        535,
        "5.7.8",
        "Error: authentication failed: authentication failure",
    ),
    (
        Kind::RelayNotAccepted,
        550,
        "5.7.54",
        "SMTP; Unable to relay recipient in non-accepted domain",
    ),
    (Kind::RelayNotAccepted, 550, "5.7.1", "Unable to relay"),
    (
        Kind::SenderBlocked,
        550,
        "5.1.8",
        "Access denied, bad outbound sender",
    ),
    (
        Kind::BannedSender,
        550,
        "5.7.501",
        "Access denied, spam abuse detected. The sending account has been banned due to detected spam activity.",
    ),
    (
        Kind::BannedSender,
        550,
        "5.7.502",
        "Access denied, banned sender",
    ),
    (
        Kind::BannedSender,
        550,
        "5.7.503",
        "Access denied, banned sender",
    ),
    (
        Kind::BannedSenderIp,
        550,
        "5.7.511",
        "Access denied, banned sender[192.0.2.1]. To request removal from this list please forward this message to delist@microsoft.com.",
    ),
    (
        Kind::SuspiciousIp,
        451,
        "4.7.850",
        "Access denied, please try again later. The IP address has been temporarily restricted.",
    ),
    (
        Kind::SubmissionQuota,
        550,
        "5.1.90",
        "Your message can't be sent because you've reached your daily limit for message recipients",
    ),
    (
        Kind::TooManyConnections,
        421,
        "4.3.2",
        "The maximum number of concurrent server connections has exceeded a limit, closing transmission channel [AM0PR01CA0001.eurprd01.prod.exchangelabs.com] PRX",
    ),
    (
        Kind::TooManyErrors,
        421,
        "4.7.0",
        "mail.contoso.com Error: too many errors",
    ),
];

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack.to_ascii_lowercase().contains(needle)
}

/// Which catalogue entry a reply is, by enhanced code (text only where the code is shared).
fn classify(reply: &Reply) -> Option<Kind> {
    let e = reply.enhanced?;
    let text = reply.text();
    let (c, s, d) = (e.class, e.subject, e.detail);
    let kind = match (c, s, d) {
        (5, 7, 3) => Kind::AuthUnsuccessful,
        (5, 7, 139) => {
            if contains_ci(&text, "smtpclientauthentication") {
                Kind::SmtpAuthDisabled
            } else {
                Kind::BasicAuthBlocked
            }
        }
        (5, 7, 30) => Kind::BasicAuthNotSupported,
        (5, 7, 57) => Kind::NotAuthenticated,
        (5, 7, 60) => Kind::SendAsDenied,
        (5, 2, 0) => {
            if contains_ci(&text, "sendasdenied") {
                Kind::SendAsDenied
            } else if contains_ci(&text, "quotaexceeded") {
                Kind::SubmissionQuota
            } else {
                return None;
            }
        }
        (5, 2, 252) if contains_ci(&text, "sendasdenied") && !contains_ci(&text, "throttl") => {
            Kind::SendAsDenied
        }
        (5, 2, 251..=255) => Kind::SenderThrottled,
        (5, 7, 64) => Kind::RelayDenied,
        (4, 4, 62) => Kind::WrongRegion,
        (5, 7, 68) => Kind::DirectSendRejected,
        (5, 4, 1) => Kind::RecipientAccessDenied,
        (5, 1, 10) | (5, 1, 1) => Kind::RecipientNotFound,
        (5, 7, 606..=649) => Kind::BannedIp,
        (5, 7, 705) | (5, 7, 708) | (5, 7, 750) => Kind::TenantBlocked,
        (4, 7, 500..=699) => Kind::TryLater,
        (4, 7, 850..=899) => Kind::SuspiciousIp,
        (4, 7, 66) => Kind::TlsTooOld,
        (4, 3, 2) => {
            if contains_ci(&text, "storedrv") || contains_ci(&text, "thread limit") {
                Kind::ThreadLimit
            } else if contains_ci(&text, "concurrent")
                || contains_ci(&text, "prx")
                || reply.code == 421
            {
                Kind::TooManyConnections
            } else {
                Kind::ThreadLimit
            }
        }
        (4, 7, 0) if contains_ci(&text, "too many errors") => Kind::TooManyErrors,
        (5, 2, 2)
            if contains_ci(&text, "submissionquota")
                || contains_ci(&text, "submission quota")
                || contains_ci(&text, "rate limit")
                || contains_ci(&text, "limit for message recipients") =>
        {
            Kind::SubmissionQuota
        }
        (5, 1, 90) => Kind::SubmissionQuota,
        (5, 2, 2) => Kind::MailboxFull,
        (5, 7, 54) => Kind::RelayNotAccepted,
        (5, 7, 1) if contains_ci(&text, "relay") => Kind::RelayNotAccepted,
        (5, 1, 8) => Kind::SenderBlocked,
        (5, 7, 501..=503) => Kind::BannedSender,
        (5, 7, 511) => Kind::BannedSenderIp,
        // RFC 4954 5.7.8 "authentication credentials invalid" (any other 535: see
        // `classify_any`).
        (5, 7, 8) => Kind::AuthUnsuccessful,
        (5, 3, 4) => Kind::TooLarge,
        (4, 5, 3) | (5, 5, 3) => Kind::TooManyRecipients,
        (5, 5, 124) => Kind::InvalidXoauth2,
        (5, 5, 127) => Kind::TokenExpiresSoon,
        (5, 5, 105) => Kind::HveExternal,
        (5, 6, _) => Kind::MalformedContent,
        _ => return None,
    };
    Some(kind)
}

/// [`classify`], and any other 535 as a refused login, whatever the server calls it (a bare
/// 535, 5.7.8 from a non-Microsoft server...). Not used to match the catalogue's samples
/// against a code alone: every code would then look like a 535.
fn classify_any(reply: &Reply) -> Option<Kind> {
    classify(reply).or_else(|| (reply.code == 535).then_some(Kind::AuthUnsuccessful))
}

impl Kind {
    fn exit(self) -> Exit {
        match self {
            Kind::AuthUnsuccessful
            | Kind::SmtpAuthDisabled
            | Kind::BasicAuthBlocked
            | Kind::BasicAuthNotSupported
            | Kind::NotAuthenticated
            | Kind::SendAsDenied
            | Kind::RelayDenied
            | Kind::DirectSendRejected
            | Kind::InvalidXoauth2
            | Kind::RelayNotAccepted => Exit::NoPerm,
            Kind::RecipientAccessDenied | Kind::RecipientNotFound | Kind::HveExternal => {
                Exit::NoUser
            }
            Kind::TooLarge | Kind::MalformedContent => Exit::DataErr,
            Kind::SenderThrottled
            | Kind::BannedIp
            | Kind::TenantBlocked
            | Kind::SubmissionQuota
            | Kind::MailboxFull
            | Kind::SenderBlocked
            | Kind::BannedSender
            | Kind::BannedSenderIp => Exit::Unavailable,
            Kind::WrongRegion
            | Kind::TryLater
            | Kind::TlsTooOld
            | Kind::ThreadLimit
            | Kind::TooManyRecipients
            | Kind::TokenExpiresSoon
            | Kind::SuspiciousIp
            | Kind::TooManyConnections
            | Kind::TooManyErrors => Exit::TempFail,
        }
    }
}

/// The exit code a final reply implies (5xx by enhanced code; 4xx → 75).
///
/// A positive reply gives `Exit::Ok`. See the module documentation for the table.
pub fn exit_for(reply: &Reply) -> Exit {
    if reply.is_positive() {
        return Exit::Ok;
    }
    if let Some(e) = graph::exit_for(reply) {
        return e;
    }
    if reply.is_transient() {
        return Exit::TempFail;
    }
    if let Some(kind) = classify(reply) {
        // A 5xx reply with a 4.x.x enhanced code keeps the basic code's verdict.
        return match kind.exit() {
            Exit::TempFail if kind != Kind::TokenExpiresSoon => Exit::Unavailable,
            e => e,
        };
    }
    if let Some(e) = reply.enhanced {
        match (e.class, e.subject) {
            (5, 1) => return Exit::NoUser,
            (5, 6) => return Exit::DataErr,
            // X.7.x is "security or policy" (RFC 3463): a sender or relay refusal by policy,
            // fixed by someone granting or configuring something. The 5.7.x codes no setting
            // of ours fixes (banned IP, blocked tenant) were classified above.
            (5, 7) => return Exit::NoPerm,
            _ => {}
        }
    }
    match reply.code {
        530 | 534 | 535 | 538 => Exit::NoPerm,
        552 => Exit::DataErr,
        _ => Exit::Unavailable,
    }
}

/// Wording helpers: the user's names when known, neutral words otherwise.
struct Words<'c, 'a> {
    ctx: &'c Context<'a>,
}

impl Words<'_, '_> {
    fn mailbox(&self) -> String {
        match self.ctx.mailbox {
            Some(m) => format!("mailbox {m}"),
            None => "the mailbox that logs in".to_owned(),
        }
    }
    /// The mailbox address, or a `<mailbox>` placeholder (it goes into PowerShell commands).
    fn mailbox_or_it(&self) -> String {
        match self.ctx.mailbox {
            Some(m) => m.to_owned(),
            None => "<mailbox>".to_owned(),
        }
    }
    fn sender(&self) -> String {
        match self.ctx.sender {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => "the sender address".to_owned(),
        }
    }
    fn recipient(&self) -> String {
        match self.ctx.recipient {
            Some(r) => r.to_owned(),
            None => "the recipient".to_owned(),
        }
    }
    fn profile(&self) -> String {
        match self.ctx.profile {
            Some(p) => format!("profile \"{p}\""),
            None => "the profile".to_owned(),
        }
    }
    fn login_cmd(&self) -> String {
        match self.ctx.profile {
            Some(p) => format!("`m365send login --profile {p}`"),
            None => "`m365send login --profile PROFILE`".to_owned(),
        }
    }
    /// "try again later" and who does it, for temporary refusals.
    fn try_later(&self) -> &'static str {
        match self.ctx.retried_by_queue {
            Some(true) => "try again later (the queue does so)",
            Some(false) => {
                "try again later: this message was not queued (the profile has queue = \"never\"), so send it again yourself"
            }
            None => {
                "try again later (m365send's queue does so unless the profile has queue = \"never\")"
            }
        }
    }
    /// The address Microsoft blocked: the mailbox for a login, else the sender.
    fn account(&self) -> String {
        match (self.ctx.mode, self.ctx.mailbox, self.ctx.sender) {
            (Some(mode), Some(m), _) if mode.sends_as_mailbox() => m.to_owned(),
            (_, _, Some(s)) if !s.is_empty() => s.to_owned(),
            (_, Some(m), _) => m.to_owned(),
            _ => "the sending account".to_owned(),
        }
    }
    fn domain_of_sender(&self) -> Option<&str> {
        self.ctx
            .sender
            .and_then(|s| s.rsplit_once('@'))
            .map(|(_, d)| d)
    }
}

/// The likely causes of `535 5.7.3` for an app-only token, one line. The single source of
/// this advice: deliver's report and `auth::smtp_535_advice` use it; `explain 5.7.3` (no
/// profile, so no flow known) gives the generic wording, which names the same causes.
fn app_only_535_causes(w: &Words<'_, '_>) -> String {
    let m = w.mailbox_or_it();
    let app = w.ctx.client_id.unwrap_or("<client id>");
    format!(
        "Likely causes: (1) no Exchange service principal for the app: in Exchange Online PowerShell run `New-ServicePrincipal -AppId {app} -ObjectId <object id of the *Enterprise application*, not of the App registration>`; (2) the service principal has no FullAccess or SendAs on {m}: `Add-MailboxPermission -Identity {m} -User <service principal id> -AccessRights FullAccess` (Add-RecipientPermission -AccessRights SendAs for other senders); (3) SMTP AUTH is disabled for {m} or the tenant: `Set-CASMailbox -Identity {m} -SmtpClientAuthenticationDisabled $false`."
    )
}

fn words(kind: Kind, ctx: &Context<'_>) -> (String, String) {
    let w = Words { ctx };
    match kind {
        Kind::AuthUnsuccessful => {
            if ctx.mode == Some(Mode::Acs) {
                (
                    format!(
                        "the login of {} was not accepted by Azure Communication Services.",
                        w.mailbox_or_it()
                    ),
                    "The login name must be <resource name>.<application (client) id>.<tenant id> (or an SMTP Username of the resource) and the password a client secret of that application, which needs a role on the Communication Services resource that allows sending email.".to_owned(),
                )
            } else if ctx.app_only {
                (
                    format!(
                        "the app-only token was not accepted for {}.",
                        w.mailbox()
                    ),
                    app_only_535_causes(&w),
                )
            } else if ctx.delegated {
                (
                    format!(
                        "the signed-in user's token was not accepted for {}.",
                        w.mailbox()
                    ),
                    format!(
                        "Likely causes: (1) the signed-in user is not {m} and has no FullAccess or Send As on it: log in as that mailbox ({}) or grant the rights; (2) SMTP AUTH is disabled for {m} or the tenant: `Set-CASMailbox -Identity {m} -SmtpClientAuthenticationDisabled $false`.",
                        w.login_cmd(),
                        m = w.mailbox_or_it()
                    ),
                )
            } else if ctx.basic_auth {
                (
                    format!("the password for {} was not accepted.", w.mailbox()),
                    "Check the user name and password; if they are right, basic authentication is probably disabled for it: switch the profile to OAuth (auth.method = \"oauth\").".to_owned(),
                )
            } else {
                (
                    format!("the login of {} was not accepted.", w.mailbox()),
                    format!(
                        "Check the credentials (the token's user must be the mailbox; an app-only token also needs an Exchange service principal created with the *Enterprise application's* object id and FullAccess or SendAs on the mailbox), and that SMTP AUTH is enabled for {} (Set-CASMailbox -SmtpClientAuthenticationDisabled $false).",
                        w.mailbox_or_it()
                    ),
                )
            }
        }
        Kind::SmtpAuthDisabled => (
            format!(
                "SMTP AUTH (client submission) is disabled for {} or for the whole tenant.",
                w.mailbox()
            ),
            format!(
                "Enable it: Set-CASMailbox -Identity {} -SmtpClientAuthenticationDisabled $false, or turn on SMTP AUTH in the tenant setting (Set-TransportConfig -SmtpClientAuthenticationDisabled $false).",
                w.mailbox_or_it()
            ),
        ),
        Kind::BasicAuthBlocked => {
            if ctx.basic_auth {
                (
                    "password (basic) authentication is disabled (tenant setting, security defaults or conditional access).".to_owned(),
                    format!(
                        "Switch {} to OAuth (auth.method = \"oauth\"), or ask the administrator to exempt this mailbox.",
                        w.profile()
                    ),
                )
            } else {
                (
                    "this login is blocked by the tenant's authentication policy (basic authentication disabled, security defaults or conditional access).".to_owned(),
                    format!(
                        "Use OAuth for {}; if it already does, ask the administrator to exclude this sign-in from the security defaults or conditional access policy.",
                        w.profile()
                    ),
                )
            }
        }
        Kind::BasicAuthNotSupported => (
            "basic (password) authentication is no longer supported for client submission.".to_owned(),
            format!(
                "Switch {} to OAuth (auth.method = \"oauth\").",
                w.profile()
            ),
        ),
        Kind::NotAuthenticated => {
            if matches!(ctx.mode, Some(Mode::Direct) | Some(Mode::Relay)) {
                (
                    "the server wanted a login before MAIL FROM: this host is not the tenant's MX endpoint.".to_owned(),
                    "Direct send and relay go to the MX endpoint (e.g. contoso-com.mail.protection.outlook.com) on port 25, not smtp.office365.com: remove the host override or fix endpoint.mx_host.".to_owned(),
                )
            } else {
                (
                    "the message was sent without logging in (AUTH) first.".to_owned(),
                    format!(
                        "smtp.office365.com needs AUTH: configure auth in {} (OAuth or password); for direct send without a login use mode = \"direct\" (the MX endpoint).",
                        w.profile()
                    ),
                )
            }
        }
        Kind::SendAsDenied => (
            format!("{} may not send as {}.", w.mailbox(), w.sender()),
            format!(
                "Grant it Send As on that address, or set `sender` in {}.",
                w.profile()
            ),
        ),
        Kind::SenderThrottled => (
            format!(
                "{} is blocked from sending for a while after repeated errors (throttled).",
                w.mailbox()
            ),
            "Stop retrying until the block lifts (up to 24 hours), and fix the error that came before it (often Send As).".to_owned(),
        ),
        Kind::RelayDenied => (
            "the relay connector did not recognise this host (TenantAttribution).".to_owned(),
            match w.domain_of_sender() {
                Some(d) => format!(
                    "Check the inbound connector: its certificate name must match this host's client certificate (an accepted domain such as {d}), or its IP list must include this host's public IP; and the sender must be in an accepted domain."
                ),
                None => "Check the inbound connector: its certificate name must match this host's client certificate (an accepted domain), or its IP list must include this host's public IP; and the sender must be in an accepted domain.".to_owned(),
            },
        ),
        Kind::WrongRegion => (
            "the connection reached a Microsoft 365 region that does not host this tenant.".to_owned(),
            "Relay to the tenant's MX endpoint from the sender domain's MX record, and check that the connector's certificate or IP matches this host.".to_owned(),
        ),
        Kind::DirectSendRejected => (
            "the tenant refuses direct send (RejectDirectSend is on).".to_owned(),
            format!(
                "Use mode = \"relay\" (with a connector) or mode = \"submit\" (with a mailbox) in {}.",
                w.profile()
            ),
        ),
        Kind::RecipientAccessDenied => {
            if ctx.mode == Some(Mode::Direct) {
                (
                    format!(
                        "{} does not exist in the tenant, or is outside it (direct send reaches only the organisation's own recipients).",
                        w.recipient()
                    ),
                    "Check the address; for outside recipients use mode = \"relay\" or \"submit\".".to_owned(),
                )
            } else {
                (
                    format!(
                        "{} does not exist in the receiving directory (directory-based edge blocking).",
                        w.recipient()
                    ),
                    "Check the recipient address.".to_owned(),
                )
            }
        }
        Kind::RecipientNotFound => (
            format!("{} was not found.", w.recipient()),
            "Check the recipient address (and the aliases that produced it).".to_owned(),
        ),
        Kind::BannedIp => (
            "this host's public IP address is on Microsoft's block list.".to_owned(),
            "Delist the IP at https://sender.office.com, and find out why it was listed.".to_owned(),
        ),
        Kind::TenantBlocked => (
            "Microsoft blocks mail from this tenant or this IP (traffic or reputation limits).".to_owned(),
            "Ask the Microsoft 365 administrator to open a support request; retrying will not help.".to_owned(),
        ),
        Kind::TryLater => (
            "access is denied for now.".to_owned(),
            format!("This is temporary: {}.", w.try_later()),
        ),
        Kind::TlsTooOld => (
            "the connection used TLS 1.0 or 1.1.".to_owned(),
            "Use TLS 1.2 or newer (tls.min_version = \"1.2\"), and check for a proxy that downgrades TLS.".to_owned(),
        ),
        Kind::ThreadLimit => (
            format!(
                "{} has more than 3 connections open at once.",
                w.mailbox()
            ),
            format!(
                "This is temporary: {}, and send one message at a time for this mailbox (the queue runner sends one at a time).",
                w.try_later()
            ),
        ),
        Kind::SubmissionQuota => (
            format!(
                "{} has sent to more than its limit of recipients for the day (10,000 per 24 hours).",
                w.mailbox()
            ),
            "Wait until the 24-hour window frees up, or spread the mail over several mailboxes, or use relay or High Volume Email.".to_owned(),
        ),
        Kind::MailboxFull => (
            match ctx.mailbox {
                Some(m) => format!(
                    "the sending mailbox {m} is full (its Sent Items cannot take the copy)."
                ),
                None => "the sending mailbox is full (its Sent Items cannot take the copy)."
                    .to_owned(),
            },
            "Empty the mailbox's Sent Items or raise its quota.".to_owned(),
        ),
        Kind::TooLarge => (
            "the message is larger than the organisation allows.".to_owned(),
            format!(
                "Send a smaller message (the default limit is 35 MB, at most 150 MB), or raise the limit in Exchange; set max_size in {} to catch this before sending.",
                w.profile()
            ),
        ),
        Kind::MalformedContent => (
            "the server refused the message's content or format (for example bare line feeds or a malformed MIME structure).".to_owned(),
            "Check the message the program produced; m365send already sends CRLF line endings, so look at headers and MIME parts added by the caller.".to_owned(),
        ),
        Kind::TooManyRecipients => (
            "the message has too many recipients for one transaction.".to_owned(),
            "Split the recipients over several messages (at most 500 per message).".to_owned(),
        ),
        Kind::InvalidXoauth2 => (
            "the XOAUTH2 login string was malformed.".to_owned(),
            "Check that the login user is the mailbox address and that auth.token holds an access token (not an id token or refresh token) on one line.".to_owned(),
        ),
        Kind::TokenExpiresSoon => (
            "the access token was about to expire.".to_owned(),
            "Refresh tokens earlier: raise auth.refresh_window_secs (default 300); sending again gets a fresh token.".to_owned(),
        ),
        Kind::RelayNotAccepted => {
            if ctx.mode == Some(Mode::Direct) {
                (
                    format!(
                        "{} is outside the organisation, and direct send does not relay.",
                        w.recipient()
                    ),
                    "Send to outside recipients with mode = \"relay\" (a connector) or \"submit\" (a mailbox).".to_owned(),
                )
            } else {
                (
                    format!(
                        "the server does not relay for this host to {}: no connector accepts this host, or an on-premises or hybrid receive connector does not let it relay outside the organisation.",
                        w.recipient()
                    ),
                    "For Exchange Online, add an inbound connector from \"Your organization's email server\" that recognises this host by its TLS certificate (tls.client_cert) or its static public IP, and relay to the tenant's MX endpoint; for an on-premises or hybrid Exchange receive connector, let this host relay (Ms-Exch-SMTP-Accept-Any-Recipient). Or send with mode = \"submit\" and a mailbox.".to_owned(),
                )
            }
        }
        Kind::SenderBlocked => (
            format!(
                "Microsoft 365 has blocked {} from sending, usually because it sent spam (a compromised account).",
                w.account()
            ),
            "An administrator must secure the account (reset its password, remove forwarding rules and app consents nobody knows) and release it under Restricted entities in the Microsoft Defender portal; retrying will not help.".to_owned(),
        ),
        Kind::BannedSender => (
            format!(
                "Microsoft 365 has banned {} for sending spam.",
                w.account()
            ),
            "Find out what was sent (a compromised account, or a script sending to many recipients) and stop it, then ask the Microsoft 365 administrator to open a support request to lift the ban; retrying will not help.".to_owned(),
        ),
        Kind::BannedSenderIp => (
            "this host's public IP address is banned by Microsoft.".to_owned(),
            "Find out why it was listed, then ask for delisting as the reply says (forward it to delist@microsoft.com); the delist portal sender.office.com does not lift this ban. Retrying will not help.".to_owned(),
        ),
        Kind::SuspiciousIp => (
            "Microsoft 365 restricts this host's IP address for now (its traffic looks suspicious).".to_owned(),
            format!(
                "This is temporary: {}; if it keeps happening, check what this host sends, and for relay that a connector recognises it.",
                w.try_later()
            ),
        ),
        Kind::TooManyConnections => (
            "too many connections are open at once from this host (or tenant), so this one was closed.".to_owned(),
            format!(
                "Back off: open fewer connections at once (let one `m365send queue run` send queued mail rather than many processes in parallel) and {}.",
                w.try_later()
            ),
        ),
        Kind::TooManyErrors => (
            "the server closed the connection after too many errors in this session (refused commands, such as recipients over its limit or unknown ones).".to_owned(),
            "Sending the same transaction again repeats the errors: look at the refusals before this one (split the recipients after 452 too many recipients, fix the addresses refused) and send again.".to_owned(),
        ),
        Kind::HveExternal => (
            format!(
                "High Volume Email delivers only inside the organisation, and {} is outside it.",
                w.recipient()
            ),
            "Send to outside recipients with mode = \"submit\" or \"relay\".".to_owned(),
        ),
    }
}

/// The explanation of a server reply, when the catalogue knows it.
pub fn explain_reply(reply: &Reply, ctx: &Context<'_>) -> Option<Explanation> {
    if crate::status::graph_error(reply).is_some() {
        return graph::explain_reply(reply, ctx);
    }
    let kind = classify_any(reply)?;
    let (meaning, advice) = words(kind, ctx);
    Some(Explanation {
        meaning,
        advice,
        exit: exit_for(reply),
    })
}

/// Who refused: "Microsoft 365" unless the context names a host that is not Microsoft's.
fn refuser(ctx: &Context<'_>) -> String {
    const MICROSOFT: &[&str] = &[
        "office365.com",
        "outlook.com",
        ".microsoft",
        "office365.us",
        "outlook.cn",
        "azurecomm.net",
        "microsoft.com",
    ];
    match ctx.host {
        Some(h)
            if !MICROSOFT
                .iter()
                .any(|m| h.to_ascii_lowercase().ends_with(m)) =>
        {
            format!("the server {h}")
        }
        _ => "Microsoft 365".to_owned(),
    }
}

/// The user's message for a refused step, as in DESIGN.md:
///
/// ```text
/// Microsoft 365 refused the sender (550 5.7.60 …): mailbox app@contoso.com may not send as alerts@contoso.com.
///   Grant it Send As on that address, or set `sender` in profile "cron".
/// ```
///
/// `what` names what was refused ("the sender", "the recipient bob@contoso.com", "the
/// message", "the login"). The server's reply is always quoted whole; without an explanation
/// the result is the first line alone. No trailing newline.
pub fn format_failure(reply: &Reply, ctx: &Context<'_>, what: &str) -> String {
    let who = refuser(ctx);
    match explain_reply(reply, ctx) {
        Some(e) => format!(
            "{who} refused {what} ({reply}): {}\n  {}",
            e.meaning, e.advice
        ),
        None => format!("{who} refused {what} ({reply})."),
    }
}

/// `format_failure` with the exit code `exit_for` gives: the `Failure` deliver returns.
pub fn failure_for(reply: &Reply, ctx: &Context<'_>, what: &str) -> Failure {
    Failure::new(exit_for(reply), format_failure(reply, ctx, what))
}

// ---------------------------------------------------------------------------------------------
// `m365send explain CODE`
// ---------------------------------------------------------------------------------------------

fn basic_meaning(code: u16) -> &'static str {
    match code {
        421 => "the server is closing the connection (service not available now)",
        432 => "a temporary limit was hit (Microsoft: too many connections for the mailbox)",
        450 => "the mailbox is unavailable for now",
        451 => "the server had a local error, or refuses for now",
        452 => "the server has too little storage, or too many recipients for now",
        454 => "TLS or authentication is not available for now",
        500 => "the server did not understand the command",
        501 => "a parameter or argument was invalid",
        502 => "the command is not implemented",
        503 => "the commands came in the wrong order",
        504 => "a parameter is not implemented",
        530 => "authentication is required",
        534 => "the authentication mechanism is too weak",
        535 => "authentication failed",
        538 => "encryption is required for this authentication mechanism",
        550 => "the mailbox or sender was refused (not found, no access, or policy)",
        551 => "the user is not local",
        552 => "the message exceeds a storage or size limit",
        553 => "the mailbox name is not allowed",
        554 => "the transaction failed",
        555 => "a MAIL or RCPT parameter was not recognised",
        c if (400..500).contains(&c) => "a temporary failure",
        c if (500..600).contains(&c) => "a permanent failure",
        _ => "an unknown reply",
    }
}

fn subject_meaning(e: EnhancedCode) -> &'static str {
    match e.subject {
        0 => "other or undefined status",
        1 => "an address problem",
        2 => "a mailbox problem",
        3 => "a mail system problem",
        4 => "a network or routing problem",
        5 => "a mail delivery protocol problem",
        6 => "a message content or media problem",
        7 => "a security or policy problem",
        _ => "an unknown status",
    }
}

fn exit_line(exit: Exit) -> String {
    format!("Exit code: {} ({}).", exit.code(), sysexits_name(exit))
}

fn kind_title(kind: Kind) -> &'static str {
    match kind {
        Kind::SmtpAuthDisabled => "when the text says SmtpClientAuthentication is disabled",
        Kind::BasicAuthBlocked => {
            "when the text says basic authentication is disabled, security defaults or conditional access"
        }
        Kind::SendAsDenied => "when the text says SendAsDenied",
        Kind::SubmissionQuota => {
            "when the text says SubmissionQuotaExceeded or a recipient rate limit"
        }
        Kind::SenderThrottled => "when the text says the sender is throttled",
        Kind::MailboxFull => "when the text says mailbox full",
        Kind::ThreadLimit => "when the text says STOREDRV sender thread limit",
        Kind::TooManyConnections => "when the text says concurrent connections (PRX), or with 421",
        Kind::RelayNotAccepted => "when the text says Unable to relay",
        Kind::TooManyErrors => "when the text says too many errors",
        _ => "",
    }
}

/// The generic explanation for `m365send explain CODE`, with the exit code it implies.
///
/// Accepts "5.7.60", "550 5.7.60", "550 5.7.60 some text", "550", "4.7.500", "AADSTS700082",
/// "700082" (an AADSTS number) and the OAuth error names ("invalid_grant"). None when the
/// input is not a code at all.
pub fn explain_code(code: &str) -> Option<String> {
    let input = code.trim();
    if input.is_empty() {
        return None;
    }
    if let Some(text) = graph::explain_code(input) {
        return Some(text);
    }
    if let Some(a) = aadsts_code(&input.to_ascii_uppercase()) {
        return explain_aadsts(&a, &Context::default()).map(|e| format_aadsts(&a, &e));
    }
    if oauth_error(input).is_some() {
        let name = input.to_ascii_lowercase();
        return explain_aadsts(&name, &Context::default()).map(|e| format_aadsts(&name, &e));
    }

    let mut parts = input.splitn(3, char::is_whitespace);
    let first = parts.next().unwrap_or_default();
    if first.bytes().all(|b| b.is_ascii_digit()) && first.len() > 3 {
        // A bare number that is not an SMTP code: an AADSTS number without its prefix.
        let a = format!("AADSTS{first}");
        return explain_aadsts(&a, &Context::default()).map(|e| format_aadsts(&a, &e));
    }
    let (basic, enhanced, text) = if let Ok(b) = first.parse::<u16>() {
        if !(200..600).contains(&b) {
            return None;
        }
        let rest = parts.next().unwrap_or_default();
        match rest.parse::<EnhancedCode>() {
            Ok(e) => (
                Some(b),
                Some(e),
                parts.next().unwrap_or_default().to_owned(),
            ),
            Err(()) => {
                let mut t = rest.to_owned();
                if let Some(more) = parts.next() {
                    t.push(' ');
                    t.push_str(more);
                }
                (Some(b), None, t)
            }
        }
    } else if let Ok(e) = first.parse::<EnhancedCode>() {
        let mut t = parts.next().unwrap_or_default().to_owned();
        if let Some(more) = parts.next() {
            t.push(' ');
            t.push_str(more);
        }
        (None, Some(e), t)
    } else {
        return None;
    };

    let ctx = Context::default();
    let Some(e) = enhanced else {
        // Basic code only.
        let b = basic.unwrap_or(550);
        let reply = Reply {
            code: b,
            enhanced: None,
            lines: vec![],
        };
        let mut out = format!("{b}: {}.", basic_meaning(b));
        let mut uses: Vec<String> = Vec::new();
        for s in SAMPLES.iter().filter(|s| s.1 == b) {
            if !uses.iter().any(|u| u == s.2) {
                uses.push(s.2.to_owned());
            }
        }
        if !uses.is_empty() {
            out.push_str(&format!(
                "\n  Microsoft 365 sends it with {}: run `m365send explain {b} <enhanced code>` for one.",
                uses.join(", ")
            ));
        }
        out.push_str("\n  ");
        out.push_str(&exit_line(exit_for(&reply)));
        return Some(out);
    };

    let default_basic = if e.class == 4 { 451 } else { 550 };
    // Which catalogue entries may this be?
    let mut found: Vec<(Kind, Reply)> = Vec::new();
    if !text.is_empty() {
        let reply = Reply {
            code: basic.unwrap_or(default_basic),
            enhanced: Some(e),
            lines: vec![format!("{e} {text}")],
        };
        if let Some(k) = classify_any(&reply) {
            found.push((k, reply));
        }
    }
    if found.is_empty() {
        for &(kind, b, _, sample_text) in SAMPLES {
            let reply = Reply {
                code: basic.unwrap_or(b),
                enhanced: Some(e),
                lines: vec![format!("{e} {sample_text}")],
            };
            if classify(&reply) == Some(kind) && !found.iter().any(|(k, _)| *k == kind) {
                found.push((kind, reply));
            }
        }
    }
    if found.is_empty() && basic == Some(535) {
        let reply = Reply {
            code: 535,
            enhanced: Some(e),
            lines: vec![e.to_string()],
        };
        found.push((Kind::AuthUnsuccessful, reply));
    }

    let shown_basic = basic
        .or_else(|| found.first().map(|(_, r)| r.code))
        .unwrap_or(default_basic);
    let head = match basic {
        Some(b) => format!("{b} {e}"),
        None => format!("{e}"),
    };
    if found.is_empty() {
        let reply = Reply {
            code: shown_basic,
            enhanced: Some(e),
            lines: vec![e.to_string()],
        };
        let nature = if e.class == 4 {
            "temporary"
        } else {
            "permanent"
        };
        return Some(format!(
            "{head}: not in the catalogue; a {nature} failure, {}.\n  {}",
            subject_meaning(e),
            exit_line(exit_for(&reply))
        ));
    }
    // A code the catalogue knows only by its text (5.7.1 "Unable to relay", 4.7.0 "too many
    // errors", 5.2.0): say which text, and what the code means with any other.
    let bare = Reply {
        code: shown_basic,
        enhanced: Some(e),
        lines: vec![e.to_string()],
    };
    let by_text_only = text.is_empty() && classify(&bare).is_none();
    let mut out = String::new();
    let several = found.len() > 1 || by_text_only;
    for (i, (kind, reply)) in found.iter().enumerate() {
        let (meaning, advice) = words(*kind, &ctx);
        if i > 0 {
            out.push('\n');
        }
        if several {
            out.push_str(&format!("{head}, {}: {meaning}", kind_title(*kind)));
        } else {
            out.push_str(&format!("{head}: {meaning}"));
        }
        out.push_str(&format!("\n  {advice}\n  {}", exit_line(exit_for(reply))));
    }
    if by_text_only {
        let nature = if e.class == 4 {
            "temporary"
        } else {
            "permanent"
        };
        out.push_str(&format!(
            "\n{head}, with any other text: a {nature} failure, {}.\n  {}",
            subject_meaning(e),
            exit_line(exit_for(&bare))
        ));
    }
    Some(out)
}

fn format_aadsts(code: &str, e: &Explanation) -> String {
    format!(
        "{code}: {}\n  {}\n  {}",
        e.meaning,
        e.advice,
        exit_line(e.exit)
    )
}

// ---------------------------------------------------------------------------------------------
// Identity platform (OAuth) errors
// ---------------------------------------------------------------------------------------------

const SCOPE_ADVICE: &str = "Remove auth.scope to use the default, or use a scope ending in /.default for app-only (https://outlook.office365.com/.default) and https://outlook.office.com/SMTP.Send offline_access for delegated; check the cloud too.";

/// The OAuth 2.0 error names we explain (RFC 6749 §5.2, RFC 8628 §3.5).
fn oauth_error(s: &str) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "invalid_request",
        "invalid_scope",
        "unauthorized_client",
        "invalid_client",
        "invalid_grant",
        "unsupported_grant_type",
        "access_denied",
        "authorization_declined",
        "expired_token",
        "bad_verification_code",
        "interaction_required",
        "consent_required",
        "temporarily_unavailable",
        "server_error",
    ];
    let lower = s.to_ascii_lowercase();
    NAMES.iter().copied().find(|n| *n == lower)
}

/// Find the `AADSTSnnnn` code in an identity-platform error (the `error_description`, or the
/// whole JSON body). Also accepts the code alone ("AADSTS700082").
pub fn aadsts_code(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = text[from..].find("AADSTS") {
        let start = from + pos;
        let digits_start = start + "AADSTS".len();
        let mut end = digits_start;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
        if end > digits_start {
            return Some(text[start..end].to_owned());
        }
        from = digits_start;
    }
    None
}

/// Plain advice for an identity-platform error: `code` is "AADSTS700082" (or the number
/// alone) or an OAuth error name ("invalid_grant"). Prefer the AADSTS code when the error has
/// one: it is more precise than the error name.
pub fn explain_aadsts(code: &str, ctx: &Context<'_>) -> Option<Explanation> {
    let w = Words { ctx };
    let code = code.trim();
    let number = code
        .strip_prefix("AADSTS")
        .or_else(|| code.strip_prefix("aadsts"))
        .unwrap_or(code);
    let e = |exit: Exit, meaning: String, advice: String| {
        Some(Explanation {
            meaning,
            advice,
            exit,
        })
    };
    if let Ok(n) = number.parse::<u64>() {
        return match n {
            700016 => e(
                Exit::Config,
                format!(
                    "the application {} was not found in tenant {}.",
                    ctx.client_id.unwrap_or("(client id)"),
                    ctx.tenant.unwrap_or("(the profile's tenant)")
                ),
                format!(
                    "Check auth.client_id and the tenant in {} (the app registration's Application (client) ID and the directory it lives in), and that an administrator consented to it in that tenant.",
                    w.profile()
                ),
            ),
            90002 | 90023 | 50059 => e(
                Exit::Config,
                format!(
                    "tenant {} was not found.",
                    ctx.tenant.unwrap_or("(the profile's tenant)")
                ),
                format!(
                    "Check `tenant` in {} (a tenant id or a domain such as contoso.onmicrosoft.com) and the cloud (global, usgov, china).",
                    w.profile()
                ),
            ),
            7000215 => e(
                Exit::Config,
                "the client secret is wrong.".to_owned(),
                format!(
                    "Put the secret's Value (shown once when it was created), not its Secret ID, in auth.client_secret of {}, and check that it has not expired.",
                    w.profile()
                ),
            ),
            7000222 => e(
                Exit::Config,
                "the client secret has expired.".to_owned(),
                format!(
                    "Create a new client secret in the app registration (Certificates & secrets) and update auth.client_secret in {}.",
                    w.profile()
                ),
            ),
            700027 => e(
                Exit::Config,
                "Microsoft could not verify the certificate assertion (the certificate is not registered with the app, or the signature does not match).".to_owned(),
                format!(
                    "Upload the certificate (the public .crt/.cer of auth.certificate) to the app registration under Certificates & secrets, check that auth.private_key is its key ({}), and that the system clock is right.",
                    w.profile()
                ),
            ),
            700024 => e(
                Exit::Config,
                "the certificate assertion is outside its valid time range: this host's clock is wrong.".to_owned(),
                "Synchronise the system clock (NTP) and try again: the assertion's nbf/exp must bracket Microsoft's time.".to_owned(),
            ),
            50076 | 50079 | 50158 => e(
                Exit::NoPerm,
                "the sign-in needs multi-factor authentication, which a sendmail program cannot answer.".to_owned(),
                format!(
                    "Run {} and complete MFA in the browser, or use an app-only profile (client credentials).",
                    w.login_cmd()
                ),
            ),
            53003 => e(
                Exit::NoPerm,
                "a Conditional Access policy blocked the sign-in.".to_owned(),
                "Ask the tenant administrator to exclude this application or host from the policy (the Entra ID sign-in logs name it), or use an app-only profile.".to_owned(),
            ),
            700082 | 70008 | 70043 => e(
                Exit::NoPerm,
                "the stored refresh token has expired (refresh tokens expire after 90 days without use) or the login code is too old.".to_owned(),
                format!("Run {} again to sign in.", w.login_cmd()),
            ),
            50173 | 50133 | 50089 => e(
                Exit::NoPerm,
                "the sign-in session was revoked (password change or expiry).".to_owned(),
                format!("Run {} again to sign in.", w.login_cmd()),
            ),
            70019 | 70020 => e(
                Exit::NoPerm,
                "the device code expired before the sign-in was completed.".to_owned(),
                format!(
                    "Run {} again and finish the sign-in within 15 minutes.",
                    w.login_cmd()
                ),
            ),
            65001 => e(
                Exit::NoPerm,
                format!(
                    "the application {}has no consent for the permissions it asks for.",
                    ctx.client_id.map(|c| format!("{c} ")).unwrap_or_default()
                ),
                "Have a tenant administrator grant admin consent to the app (SMTP.Send or SMTP.SendAsApp) in Entra ID.".to_owned(),
            ),
            70011 => e(
                Exit::Config,
                "the scope asked for is not valid.".to_owned(),
                SCOPE_ADVICE.to_owned(),
            ),
            500011 => e(
                Exit::Config,
                "the resource in the scope was not found in the tenant (wrong cloud or scope).".to_owned(),
                "Check the profile's cloud and auth.scope (the resource must be Exchange Online of that cloud).".to_owned(),
            ),
            7000218 => e(
                Exit::Config,
                "the app registration does not allow public client flows, so the request needs a client secret or certificate.".to_owned(),
                format!(
                    "Turn on \"Allow public client flows\" in the app registration (Authentication) for device-code login, or set auth.client_secret or auth.certificate in {}.",
                    w.profile()
                ),
            ),
            700025 => e(
                Exit::Config,
                "the app is a public client, so it must not send a client secret.".to_owned(),
                "Remove auth.client_secret for this delegated profile, or turn off \"Allow public client flows\".".to_owned(),
            ),
            50034 | 50126 => e(
                Exit::NoPerm,
                format!("the user name or password for {} was refused.", w.mailbox()),
                "Check the mailbox address and the password.".to_owned(),
            ),
            50057 => e(
                Exit::NoPerm,
                format!("the account of {} is disabled.", w.mailbox()),
                "Enable the account in Entra ID, or log in with another mailbox.".to_owned(),
            ),
            _ => None,
        };
    }
    match oauth_error(code)? {
        "invalid_scope" => e(
            Exit::Config,
            "the scope asked for is not valid for this application.".to_owned(),
            SCOPE_ADVICE.to_owned(),
        ),
        "unauthorized_client" => e(
            Exit::Config,
            "the application is not allowed to use this grant (this kind of login).".to_owned(),
            format!(
                "Check auth.flow in {} against the app registration (\"Allow public client flows\" for device code login; an application permission such as SMTP.SendAsApp for client credentials).",
                w.profile()
            ),
        ),
        "invalid_client" => e(
            Exit::Config,
            "the application's credentials were refused (client id, secret or certificate).".to_owned(),
            "Check auth.client_id, and that auth.client_secret is the secret's Value (or that the certificate is uploaded to the app registration).".to_owned(),
        ),
        "invalid_grant" if ctx.app_only => e(
            Exit::NoPerm,
            "the identity platform refused the application's grant.".to_owned(),
            format!(
                "Check auth.client_id, the client secret or certificate, and the tenant in {}.",
                w.profile()
            ),
        ),
        "invalid_grant" => e(
            Exit::NoPerm,
            "the stored sign-in (refresh token or code) is no longer valid: expired after 90 days unused, revoked, or the password changed.".to_owned(),
            format!("Run {} again to sign in.", w.login_cmd()),
        ),
        "access_denied" | "authorization_declined" => e(
            Exit::NoPerm,
            "the sign-in was declined.".to_owned(),
            format!(
                "Run {} again and accept the request, or ask the administrator to consent to the app.",
                w.login_cmd()
            ),
        ),
        "expired_token" | "bad_verification_code" => e(
            Exit::NoPerm,
            "the device code expired before the sign-in was completed.".to_owned(),
            format!(
                "Run {} again and finish the sign-in in time.",
                w.login_cmd()
            ),
        ),
        "interaction_required" | "consent_required" => e(
            Exit::NoPerm,
            "the identity platform needs an interactive sign-in (MFA, consent or a policy).".to_owned(),
            format!("Run {} to sign in interactively.", w.login_cmd()),
        ),
        "unsupported_grant_type" | "invalid_request" => e(
            Exit::Config,
            "the token request was not valid for this tenant or application.".to_owned(),
            "Check the profile's auth settings (flow, tenant, authority); the error description names the field.".to_owned(),
        ),
        "temporarily_unavailable" | "server_error" => e(
            Exit::TempFail,
            "the Microsoft identity platform is temporarily unavailable.".to_owned(),
            "Try again later; the message is kept.".to_owned(),
        ),
        _ => None,
    }
}

/// The explanation of a token endpoint's error response: the AADSTS code in
/// `error_description` when there is one (more precise), else the OAuth `error` name.
pub fn explain_token_error(
    error: &str,
    description: &str,
    ctx: &Context<'_>,
) -> Option<Explanation> {
    // The user said no: no AADSTS code says it better than the error name (RFC 8628).
    if matches!(error, "authorization_declined" | "access_denied") {
        return explain_aadsts(error, ctx);
    }
    aadsts_code(description)
        .and_then(|code| explain_aadsts(&code, ctx))
        .or_else(|| explain_aadsts(error, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enh: &str, text: &str) -> Reply {
        Reply {
            code,
            enhanced: enh.parse().ok(),
            lines: vec![format!("{enh} {text}")],
        }
    }

    #[test]
    fn every_sample_classifies_to_its_kind() {
        for &(kind, code, enh, text) in SAMPLES {
            assert_eq!(
                classify(&reply(code, enh, text)),
                Some(kind),
                "{code} {enh}"
            );
        }
    }

    #[test]
    fn positive_reply_is_ok() {
        assert_eq!(exit_for(&reply(250, "2.0.0", "OK")), Exit::Ok);
    }

    #[test]
    fn aadsts_code_found_in_description() {
        let t = r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity."}"#;
        assert_eq!(aadsts_code(t).as_deref(), Some("AADSTS700082"));
        assert_eq!(aadsts_code("AADSTS no digits"), None);
        assert_eq!(
            aadsts_code("x AADSTS AADSTS50076 y").as_deref(),
            Some("AADSTS50076")
        );
    }
}
