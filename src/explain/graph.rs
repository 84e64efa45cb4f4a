//! The Microsoft Graph part of the catalogue: Graph error codes (`ErrorSendAsDenied`, HTTP
//! 429, ...) → what happened, what to do, the exit code, and the SMTP reply that means the
//! same (the form a Graph error takes behind the transport seam: `status::graph_reply`).
//!
//! Owns: that table, and `m365send explain ErrorSendAsDenied`. Must not: import anything but
//! the leaf types (like the rest of explain).
//!
//! Sources for what Graph answers: the sendMail, create-message and createUploadSession
//! reference pages (learn.microsoft.com/graph/api/user-sendmail, user-post-messages,
//! attachment-createuploadsession), "Limiting application permissions to specific Exchange
//! Online mailboxes" (Access to OData is disabled), and the error bodies quoted in
//! microsoftgraph/microsoft-graph-docs issues #9589 (ErrorAttachmentSizeShouldNotBeLessThan
//! MinimumSize), #2561 (ErrorMessageSizeExceeded), #3816 (4 MB request limit).

use crate::config::Mode;
use crate::exit::Exit;
use crate::status::{EnhancedCode, Reply, graph_error};

use super::{Context, Explanation};

/// One Graph error the catalogue knows.
struct Entry {
    /// Graph's error code, and other names it goes by.
    codes: &'static [&'static str],
    /// The HTTP status Graph sends it with (for `explain` and the fallback by status).
    http: u16,
    /// The SMTP reply that means the same.
    smtp: u16,
    enhanced: (u8, u16, u16),
    exit: Exit,
}

const ACCESS_DENIED: usize = 0;
const INVALID_TOKEN: usize = 5;
const INVALID_USER: usize = 10;
const THROTTLED: usize = 6;
const UNAVAILABLE: usize = 7;

const ENTRIES: &[Entry] = &[
    Entry {
        codes: &[
            "ErrorAccessDenied",
            "AccessDenied",
            "Authorization_RequestDenied",
        ],
        http: 403,
        smtp: 550,
        enhanced: (5, 7, 1),
        exit: Exit::NoPerm,
    },
    Entry {
        codes: &["ErrorSendAsDenied"],
        http: 403,
        smtp: 550,
        enhanced: (5, 7, 60),
        exit: Exit::NoPerm,
    },
    Entry {
        codes: &[
            "MailboxNotEnabledForRESTAPI",
            "MailboxNotSupportedForRESTAPI",
        ],
        http: 404,
        smtp: 550,
        enhanced: (5, 2, 1),
        exit: Exit::Config,
    },
    Entry {
        codes: &["ErrorInvalidRecipients", "ErrorInvalidRecipient"],
        http: 400,
        smtp: 550,
        enhanced: (5, 1, 3),
        exit: Exit::NoUser,
    },
    Entry {
        codes: &[
            "ErrorMessageSizeExceeded",
            "RequestEntityTooLarge",
            "RequestBodyTooLarge",
        ],
        http: 413,
        smtp: 552,
        enhanced: (5, 3, 4),
        exit: Exit::DataErr,
    },
    Entry {
        codes: &[
            "InvalidAuthenticationToken",
            "Unauthorized",
            "ExpiredAuthenticationToken",
        ],
        http: 401,
        smtp: 535,
        enhanced: (5, 7, 8),
        exit: Exit::NoPerm,
    },
    Entry {
        codes: &[
            "TooManyRequests",
            "ApplicationThrottled",
            "ErrorTooManyObjectsOpened",
        ],
        http: 429,
        smtp: 451,
        enhanced: (4, 3, 2),
        exit: Exit::TempFail,
    },
    Entry {
        codes: &[
            "ServiceUnavailable",
            "InternalServerError",
            "ErrorInternalServerError",
            "ErrorInternalServerTransientError",
            "BadGateway",
            "MailboxStoreUnavailable",
            "ErrorMailboxStoreUnavailable",
            "ErrorServerBusy",
        ],
        http: 503,
        smtp: 451,
        enhanced: (4, 3, 0),
        exit: Exit::TempFail,
    },
    Entry {
        codes: &["GatewayTimeout"],
        http: 504,
        smtp: 451,
        enhanced: (4, 4, 7),
        exit: Exit::TempFail,
    },
    Entry {
        codes: &["ErrorQuotaExceeded"],
        http: 507,
        smtp: 552,
        enhanced: (5, 2, 2),
        exit: Exit::Unavailable,
    },
    Entry {
        codes: &[
            "ErrorInvalidUser",
            "ResourceNotFound",
            "Request_ResourceNotFound",
        ],
        http: 404,
        smtp: 550,
        enhanced: (5, 1, 8),
        exit: Exit::Config,
    },
    Entry {
        codes: &[
            "ErrorMimeContentInvalidBase64String",
            "ErrorMimeContentConversionFailed",
            "ErrorMimeContentInvalid",
            "UnableToDeserializePostBody",
            "RequestBodyRead",
        ],
        http: 400,
        smtp: 554,
        enhanced: (5, 6, 0),
        exit: Exit::DataErr,
    },
    Entry {
        codes: &["ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"],
        http: 400,
        smtp: 554,
        enhanced: (5, 3, 0),
        exit: Exit::Software,
    },
    Entry {
        codes: &["ErrorItemNotFound"],
        http: 404,
        smtp: 451,
        enhanced: (4, 3, 0),
        exit: Exit::TempFail,
    },
];

fn words(i: usize, ctx: &Context<'_>, message: &str) -> (String, String) {
    let mailbox = ctx.mailbox.unwrap_or("the profile's mailbox");
    let mailbox_arg = ctx.mailbox.unwrap_or("<mailbox>");
    let app = ctx
        .client_id
        .map(|c| format!("the app registration {c}"))
        .unwrap_or_else(|| "the app registration".to_owned());
    let sender = ctx
        .sender
        .filter(|s| !s.is_empty())
        .unwrap_or("the From address");
    let delegated = ctx.delegated;
    match i {
        ACCESS_DENIED => {
            let policy = message.to_ascii_lowercase().contains("odata is disabled");
            (
                if policy {
                    format!(
                        "an application access policy (or RBAC for Applications scope) keeps {app} out of {mailbox}."
                    )
                } else if delegated {
                    format!("the signed-in user may not send as {mailbox} (Mail.Send not consented, or no right to the mailbox).")
                } else {
                    format!(
                        "{app} may not send as {mailbox}: Mail.Send is not granted or not consented, or an application access policy / RBAC for Applications scope excludes this mailbox."
                    )
                },
                if delegated {
                    "Consent Mail.Send (delegated) for the app, sign in again with `m365send login`, and send as the signed-in user's own mailbox (or one it has Send As on).".to_owned()
                } else {
                    format!(
                        "In Entra ID give {app} the Microsoft Graph application permission Mail.Send and grant admin consent; if it has both, add {mailbox_arg} to the scope that limits the app (Test-ApplicationAccessPolicy -Identity {mailbox_arg} -AppId <client id>, or Test-ServicePrincipalAuthorization for RBAC for Applications). A new permission reaches new tokens only: `m365send token clear`."
                    )
                },
            )
        }
        1 => (
            format!("{mailbox} may not send as {sender}."),
            format!(
                "Grant {mailbox_arg} Send As on {sender} (Add-RecipientPermission {sender} -AccessRights SendAs -Trustee {mailbox_arg}), or set `sender` to the mailbox itself."
            ),
        ),
        2 => (
            format!(
                "{mailbox} is not a mailbox Graph can use: it is on-premises, unlicensed, inactive or soft-deleted."
            ),
            "Use a mailbox hosted in Exchange Online (a licensed user or a shared mailbox) in `mailbox`; a hybrid on-premises mailbox cannot send through Graph.".to_owned(),
        ),
        3 => (
            "at least one recipient is not a valid address, and Graph then sends to nobody.".to_owned(),
            "Check the recipient addresses (aliases, default_domain); the whole message was refused, so fix the address and send again.".to_owned(),
        ),
        4 => (
            "the message is larger than the mailbox may send (35 MB by default, at most 150 MB).".to_owned(),
            format!(
                "Send a smaller message, or raise the limit (Set-Mailbox {mailbox_arg} -MaxSendSize 150MB) and the profile's max_size with it."
            ),
        ),
        INVALID_TOKEN => (
            "Graph did not accept the access token: it is for another audience (a token for Outlook instead of Graph), expired, or malformed.".to_owned(),
            "A Graph token has the audience https://graph.microsoft.com (scope https://graph.microsoft.com/.default): remove auth.scope or a fixed auth.token meant for SMTP from the profile, then `m365send token clear`.".to_owned(),
        ),
        THROTTLED => (
            "Graph throttles this app or mailbox for now (HTTP 429).".to_owned(),
            "Nothing to fix: m365send waits as Retry-After asks, then leaves the message in the queue, which sends it later. If it keeps happening, send less often (rate_per_minute).".to_owned(),
        ),
        UNAVAILABLE => (
            "Graph or the mailbox's server is unavailable for now.".to_owned(),
            "Nothing to fix: the queue sends the message later.".to_owned(),
        ),
        8 => (
            "Graph's gateway gave up waiting (HTTP 504): the message may have been sent anyway.".to_owned(),
            "m365send checks where it can: a draft that has left Drafts was sent and is not sent again. A single sendMail request cannot be checked, so the queue sends it again and a recipient may get it twice: a duplicate is better than a lost message.".to_owned(),
        ),
        9 => (
            format!("{mailbox} is full (Drafts and Sent Items count against its quota)."),
            "Empty Sent Items and Deleted Items or raise the quota; save_to_sent_items = false stops filling Sent Items.".to_owned(),
        ),
        INVALID_USER => (
            format!("Graph knows no mailbox {mailbox} in this tenant."),
            "Check `mailbox` (the mailbox's primary SMTP address or UPN) and the tenant.".to_owned(),
        ),
        11 => (
            "Graph could not read the MIME message m365send sent.".to_owned(),
            "This is m365send's fault or a malformed message: keep the dead letter copy and report it.".to_owned(),
        ),
        12 => (
            "an attachment under 3 MB was sent by upload session, which Graph refuses.".to_owned(),
            "This is a bug in m365send: report it with the message size.".to_owned(),
        ),
        _ => (
            "the draft disappeared before it was sent (deleted or moved by someone or a rule).".to_owned(),
            "Nothing to fix: the queue sends the message again.".to_owned(),
        ),
    }
}

/// The catalogue entry of a Graph error code (case-insensitive), else by HTTP status.
fn find(http: u16, code: &str) -> Option<usize> {
    if let Some(i) = ENTRIES
        .iter()
        .position(|e| e.codes.iter().any(|c| c.eq_ignore_ascii_case(code)))
    {
        return Some(i);
    }
    match http {
        401 => Some(INVALID_TOKEN),
        403 => Some(ACCESS_DENIED),
        429 => Some(THROTTLED),
        500 | 502 | 503 => Some(UNAVAILABLE),
        504 => Some(8),
        _ => None,
    }
}

/// The SMTP reply code and enhanced code a Graph error stands for.
pub fn equivalent(http: u16, code: &str) -> (u16, EnhancedCode) {
    match find(http, code) {
        Some(i) => {
            let e = &ENTRIES[i];
            let (c, s, d) = e.enhanced;
            (e.smtp, EnhancedCode::new(c, s, d))
        }
        None if http == 408 || http >= 500 => (451, EnhancedCode::new(4, 3, 0)),
        None => (554, EnhancedCode::new(5, 0, 0)),
    }
}

/// The exit code of a reply that carries a Graph error.
pub fn exit_for(reply: &Reply) -> Option<Exit> {
    let (http, code) = graph_error(reply)?;
    if reply.is_transient() {
        return Some(Exit::TempFail);
    }
    Some(match find(http, &code) {
        Some(i) if ENTRIES[i].exit != Exit::TempFail => ENTRIES[i].exit,
        _ => Exit::Unavailable,
    })
}

/// The explanation of a reply that carries a Graph error.
pub fn explain_reply(reply: &Reply, ctx: &Context<'_>) -> Option<Explanation> {
    let (http, code) = graph_error(reply)?;
    let i = find(http, &code)?;
    let (meaning, advice) = words(i, ctx, &reply.text());
    Some(Explanation {
        meaning,
        advice,
        exit: exit_for(reply).unwrap_or(Exit::Unavailable),
    })
}

/// `m365send explain ErrorSendAsDenied` (also "HTTP 429", "http-504" and a bare 429).
pub fn explain_code(input: &str) -> Option<String> {
    let t = input.trim();
    let lower = t.to_ascii_lowercase();
    let status = lower
        .strip_prefix("http")
        .map(|r| r.trim_start_matches([' ', '-', '_']))
        .and_then(|r| r.parse::<u16>().ok())
        .or_else(|| (t == "429").then_some(429));
    let (i, head) = match status {
        Some(s) => (find(s, "")?, format!("HTTP {s} from Microsoft Graph")),
        None => {
            let i = ENTRIES
                .iter()
                .position(|e| e.codes.iter().any(|c| c.eq_ignore_ascii_case(t)))?;
            (i, format!("{} (Microsoft Graph)", ENTRIES[i].codes[0]))
        }
    };
    let e = &ENTRIES[i];
    let ctx = Context {
        mode: Some(Mode::Graph),
        ..Context::default()
    };
    let (meaning, advice) = words(i, &ctx, "");
    let (c, s, d) = e.enhanced;
    Some(format!(
        "{head}: {meaning}\n  {advice}\n  Usually HTTP {}; reported as {} {c}.{s}.{d} in the queue and to -bs clients.\n  Exit code: {} ({}).",
        e.http,
        e.smtp,
        e.exit.code(),
        super::sysexits_name(e.exit)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::graph_reply;

    #[test]
    fn every_entry_is_explained_and_its_reply_class_matches_its_exit() {
        for (i, e) in ENTRIES.iter().enumerate() {
            let (m, a) = words(i, &Context::default(), "");
            assert!(m.ends_with('.') && a.ends_with('.'), "{}", e.codes[0]);
            assert!(!m.contains('\n') && !a.contains('\n'));
            let (smtp, enh) = equivalent(e.http, e.codes[0]);
            let r = graph_reply(smtp, enh, e.http, e.codes[0], "x");
            assert_eq!(r.is_transient(), e.exit == Exit::TempFail, "{}", e.codes[0]);
            assert_eq!(exit_for(&r), Some(e.exit), "{}", e.codes[0]);
            assert!(explain_code(e.codes[0]).is_some());
        }
    }

    #[test]
    fn unknown_codes_fall_back_on_the_status() {
        assert_eq!(find(403, "SomethingNew"), Some(ACCESS_DENIED));
        assert_eq!(equivalent(418, "Teapot").0, 554);
        assert_eq!(equivalent(502, "Whatever").0, 451);
        assert!(explain_code("http 429").unwrap().contains("throttles"));
        assert!(explain_code("429").unwrap().contains("Retry-After"));
        assert!(
            explain_code("errorsendasdenied")
                .unwrap()
                .contains("Send As")
        );
    }
}
