//! The explanation catalogue: every reply row of BRIEF.md → exit code and an explanation that
//! names the right fix; `explain CODE`; the AADSTS catalogue; the DESIGN.md message format.

use m365send::config::Mode;
use m365send::exit::Exit;
use m365send::explain::{
    Context, aadsts_code, exit_for, explain_aadsts, explain_code, explain_reply,
    explain_token_error, failure_for, format_failure,
};
use m365send::smtp::Reply;

fn reply(line: &str) -> Reply {
    let (code, rest) = line.split_once(' ').unwrap();
    let enh = rest.split_whitespace().next().unwrap();
    Reply {
        code: code.parse().unwrap(),
        enhanced: enh.parse().ok(),
        lines: vec![rest.to_owned()],
    }
}

fn ctx() -> Context<'static> {
    Context {
        mode: Some(Mode::Submit),
        profile: Some("cron"),
        mailbox: Some("app@contoso.com"),
        sender: Some("alerts@contoso.com"),
        recipient: Some("bob@contoso.com"),
        host: Some("smtp.office365.com"),
        app_only: false,
        basic_auth: false,
        ..Context::default()
    }
}

/// (reply, exit, keyword in meaning+advice, context tweak)
fn rows() -> Vec<(&'static str, Exit, &'static str)> {
    vec![
        (
            "535 5.7.3 Authentication unsuccessful [SN4PR0601CA0005.namprd06.prod.outlook.com]",
            Exit::NoPerm,
            "SmtpClientAuthenticationDisabled",
        ),
        (
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled",
            Exit::NoPerm,
            "Set-CASMailbox",
        ),
        (
            "535 5.7.139 Authentication unsuccessful, basic authentication is disabled.",
            Exit::NoPerm,
            "OAuth",
        ),
        (
            "535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults policy.",
            Exit::NoPerm,
            "OAuth",
        ),
        (
            "550 5.7.30 Basic authentication is not supported for Client Submission.",
            Exit::NoPerm,
            "OAuth",
        ),
        (
            "530 5.7.57 Client was not authenticated to send anonymous mail during MAIL FROM [X.prod.outlook.com]",
            Exit::NoPerm,
            "AUTH",
        ),
        (
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
            Exit::NoPerm,
            "Send As",
        ),
        (
            "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message",
            Exit::NoPerm,
            "Send As",
        ),
        (
            "554 5.2.252 SendAsDenied; app@contoso.com not allowed to send as alerts@contoso.com",
            Exit::NoPerm,
            "Send As",
        ),
        (
            "550 5.2.251 Sender throttled due to continuous send as denied errors.",
            Exit::Unavailable,
            "Stop retrying",
        ),
        (
            "550 5.2.253 Sender throttled due to continuous errors.",
            Exit::Unavailable,
            "Stop retrying",
        ),
        (
            "550 5.2.255 Sender throttled due to continuous errors.",
            Exit::Unavailable,
            "Stop retrying",
        ),
        (
            "550 5.7.64 TenantAttribution; Relay Access Denied",
            Exit::NoPerm,
            "connector",
        ),
        (
            "451 4.4.62 Mail sent to the wrong Office 365 region. ATTR35.",
            Exit::TempFail,
            "connector",
        ),
        (
            "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources",
            Exit::NoPerm,
            "relay",
        ),
        (
            "550 5.4.1 Recipient address rejected: Access denied. [X.prod.protection.outlook.com]",
            Exit::NoUser,
            "bob@contoso.com",
        ),
        (
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient bob@contoso.com not found by SMTP address lookup",
            Exit::NoUser,
            "recipient address",
        ),
        (
            "550 5.7.606 Access denied, banned sending IP [192.0.2.7]",
            Exit::Unavailable,
            "sender.office.com",
        ),
        (
            "550 5.7.649 Access denied, banned sending IP [192.0.2.7]",
            Exit::Unavailable,
            "sender.office.com",
        ),
        (
            "550 5.7.705 Access denied, tenant has exceeded threshold",
            Exit::Unavailable,
            "support",
        ),
        (
            "550 5.7.708 Access denied, traffic not accepted from this IP",
            Exit::Unavailable,
            "support",
        ),
        (
            "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains",
            Exit::Unavailable,
            "support",
        ),
        (
            "451 4.7.500 Access denied, please try again later.",
            Exit::TempFail,
            "try again later",
        ),
        (
            "451 4.7.699 Access denied, please try again later.",
            Exit::TempFail,
            "try again later",
        ),
        (
            "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.",
            Exit::TempFail,
            "TLS 1.2",
        ),
        (
            "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
            Exit::TempFail,
            "one message at a time",
        ),
        (
            "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message",
            Exit::Unavailable,
            "10,000",
        ),
        (
            "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException",
            Exit::Unavailable,
            "Sent Items",
        ),
        (
            "552 5.3.4 Message size exceeds fixed maximum message size",
            Exit::DataErr,
            "35 MB",
        ),
        ("452 4.5.3 Too many recipients", Exit::TempFail, "Split"),
        (
            "501 5.5.124 Invalid XOAUTH2 auth data",
            Exit::NoPerm,
            "access token",
        ),
        (
            "501 5.5.127 Token will expire soon",
            Exit::TempFail,
            "refresh_window_secs",
        ),
        (
            "550 5.5.105 High Volume Email is only available for internal recipients",
            Exit::NoUser,
            "outside",
        ),
    ]
}

#[test]
fn every_brief_row_has_its_exit_code_and_fix() {
    for (line, exit, keyword) in rows() {
        let r = reply(line);
        assert_eq!(exit_for(&r), exit, "exit for {line}");
        let mut c = ctx();
        if line.starts_with("535 5.7.3") {
            c.app_only = false;
        }
        let e = explain_reply(&r, &c).unwrap_or_else(|| panic!("no explanation for {line}"));
        assert_eq!(e.exit, exit, "explanation exit for {line}");
        let all = format!("{} {}", e.meaning, e.advice);
        assert!(all.contains(keyword), "{line}: {all:?} lacks {keyword:?}");
        assert!(!e.meaning.contains('\n') && !e.advice.contains('\n'));
        assert!(e.meaning.ends_with('.') && e.advice.ends_with('.'), "{all}");
    }
}

#[test]
fn app_only_5_7_3_names_the_three_causes() {
    let mut c = ctx();
    c.app_only = true;
    let e = explain_reply(&reply("535 5.7.3 Authentication unsuccessful"), &c).unwrap();
    assert!(e.advice.contains("New-ServicePrincipal"));
    assert!(e.advice.contains("Enterprise application"));
    assert!(e.advice.contains("FullAccess"));
    assert!(e.advice.contains("SendAs"));
    assert!(e.advice.contains("SmtpClientAuthenticationDisabled"));
    assert!(e.meaning.contains("app@contoso.com"));
    assert_eq!(e.exit, Exit::NoPerm);
}

#[test]
fn basic_auth_5_7_3_says_password() {
    let mut c = ctx();
    c.basic_auth = true;
    let e = explain_reply(&reply("535 5.7.3 Authentication unsuccessful"), &c).unwrap();
    assert!(e.meaning.contains("password"));
    assert!(e.advice.contains("OAuth"));
}

#[test]
fn design_md_message_format() {
    let r = reply("550 5.7.60 SMTP; Client does not have permissions to send as this sender");
    let msg = format_failure(&r, &ctx(), "the sender");
    assert_eq!(
        msg,
        "Microsoft 365 refused the sender (550 5.7.60 SMTP; Client does not have permissions to send as this sender): \
mailbox app@contoso.com may not send as alerts@contoso.com.\n  \
Grant it Send As on that address, or set `sender` in profile \"cron\"."
    );
}

#[test]
fn unknown_reply_is_quoted_alone() {
    let r = reply("550 5.7.1 Delivery not authorized, message refused");
    assert_eq!(explain_reply(&r, &ctx()), None);
    assert_eq!(
        format_failure(&r, &ctx(), "the recipient bob@contoso.com"),
        "Microsoft 365 refused the recipient bob@contoso.com (550 5.7.1 Delivery not authorized, message refused)."
    );
    let mut c = ctx();
    c.host = Some("127.0.0.1");
    assert!(format_failure(&r, &c, "the message").starts_with("the server 127.0.0.1 refused"));
}

#[test]
fn exit_codes_without_catalogue_entry() {
    assert_eq!(
        exit_for(&reply("550 5.1.3 bad address syntax")),
        Exit::NoUser
    );
    assert_eq!(exit_for(&reply("554 5.6.0 corrupt content")), Exit::DataErr);
    assert_eq!(
        exit_for(&reply("550 5.7.1 Delivery not authorized")),
        Exit::NoPerm
    );
    assert_eq!(
        exit_for(&reply(
            "553 5.7.1 Sender address rejected: not owned by user"
        )),
        Exit::NoPerm
    );
    assert_eq!(exit_for(&reply("550 5.0.0 no")), Exit::Unavailable);
    assert_eq!(exit_for(&reply("450 4.2.1 busy")), Exit::TempFail);
    let bare = |code| Reply {
        code,
        enhanced: None,
        lines: vec!["x".into()],
    };
    assert_eq!(exit_for(&bare(535)), Exit::NoPerm);
    assert_eq!(exit_for(&bare(530)), Exit::NoPerm);
    assert_eq!(exit_for(&bare(552)), Exit::DataErr);
    assert_eq!(exit_for(&bare(550)), Exit::Unavailable);
    assert_eq!(exit_for(&bare(421)), Exit::TempFail);
    // 5.2.0 with unknown text: not explained, permanent.
    let r = reply("554 5.2.0 STOREDRV.Submission.Exception:SomethingElse");
    assert_eq!(explain_reply(&r, &ctx()), None);
    assert_eq!(exit_for(&r), Exit::Unavailable);
}

#[test]
fn direct_send_5_4_1_mentions_outside_recipients() {
    let mut c = ctx();
    c.mode = Some(Mode::Direct);
    let e = explain_reply(
        &reply("550 5.4.1 Recipient address rejected: Access denied."),
        &c,
    )
    .unwrap();
    assert!(e.meaning.contains("outside"));
    assert!(e.advice.contains("relay"));
}

#[test]
fn context_free_words_are_neutral() {
    let e = explain_reply(
        &reply("550 5.7.60 SMTP; Client does not have permissions to send as this sender"),
        &Context::default(),
    )
    .unwrap();
    assert_eq!(
        e.meaning,
        "the mailbox that logs in may not send as the sender address."
    );
    assert!(e.advice.contains("set `sender` in the profile"));
}

#[test]
fn explain_code_accepts_the_forms() {
    let s = explain_code("5.7.60").unwrap();
    assert!(s.contains("Send As") && s.contains("77 (EX_NOPERM)"), "{s}");
    let s = explain_code("550 5.7.60").unwrap();
    assert!(s.starts_with("550 5.7.60:"), "{s}");
    let s = explain_code("4.7.500").unwrap();
    assert!(s.contains("75 (EX_TEMPFAIL)"), "{s}");
    let s = explain_code("4.7.612").unwrap();
    assert!(s.contains("try again later"), "{s}");
    let s = explain_code("550").unwrap();
    assert!(
        s.contains("5.7.60") && s.contains("69 (EX_UNAVAILABLE)"),
        "{s}"
    );
    let s = explain_code("AADSTS700082").unwrap();
    assert!(s.contains("m365send login") && s.contains("77"), "{s}");
    assert!(explain_code("aadsts700082").unwrap().contains("login"));
    let s = explain_code("700016").unwrap();
    assert!(
        s.contains("client_id") && s.contains("78 (EX_CONFIG)"),
        "{s}"
    );
    let s = explain_code("invalid_grant").unwrap();
    assert!(s.contains("login"), "{s}");
    assert!(explain_code("hello").is_none());
    assert!(explain_code("").is_none());
    assert!(explain_code("999").is_none());
}

#[test]
fn explain_code_lists_variants_of_shared_codes() {
    let s = explain_code("5.2.0").unwrap();
    assert!(
        s.contains("SendAsDenied") && s.contains("SubmissionQuotaExceeded"),
        "{s}"
    );
    assert!(
        s.contains("77 (EX_NOPERM)") && s.contains("69 (EX_UNAVAILABLE)"),
        "{s}"
    );
    let s = explain_code("5.7.139").unwrap();
    assert!(s.contains("Set-CASMailbox") && s.contains("OAuth"), "{s}");
    // Text narrows it down.
    let s = explain_code("554 5.2.0 SubmissionQuotaExceededException").unwrap();
    assert!(s.contains("10,000") && !s.contains("Send As"), "{s}");
    // 5.2.252: SendAsDenied or throttled.
    let s = explain_code("5.2.252").unwrap();
    assert!(s.contains("Send As") && s.contains("throttled"), "{s}");
}

#[test]
fn explain_code_unknown_enhanced_code_is_generic() {
    let s = explain_code("5.7.2").unwrap();
    assert!(s.contains("security or policy") && s.contains("77"), "{s}");
    let s = explain_code("5.1.3").unwrap();
    assert!(s.contains("address") && s.contains("67 (EX_NOUSER)"), "{s}");
}

#[test]
fn aadsts_catalogue() {
    let c = Context {
        profile: Some("app"),
        ..Context::default()
    };
    let cases: &[(&str, Exit, &str)] = &[
        ("AADSTS700016", Exit::Config, "client_id"),
        ("AADSTS7000215", Exit::Config, "Value"),
        ("AADSTS700027", Exit::Config, "certificate"),
        ("AADSTS700024", Exit::Config, "clock"),
        ("AADSTS50076", Exit::NoPerm, "multi-factor"),
        ("AADSTS53003", Exit::NoPerm, "Conditional Access"),
        ("AADSTS700082", Exit::NoPerm, "m365send login --profile app"),
        ("AADSTS70008", Exit::NoPerm, "m365send login --profile app"),
        ("invalid_scope", Exit::Config, "scope"),
        ("unauthorized_client", Exit::Config, "public client"),
        ("invalid_client", Exit::Config, "client_id"),
        (
            "invalid_grant",
            Exit::NoPerm,
            "m365send login --profile app",
        ),
        ("temporarily_unavailable", Exit::TempFail, "later"),
    ];
    for (code, exit, kw) in cases {
        let e = explain_aadsts(code, &c).unwrap_or_else(|| panic!("{code}"));
        assert_eq!(e.exit, *exit, "{code}");
        let all = format!("{} {}", e.meaning, e.advice);
        assert!(all.contains(kw), "{code}: {all}");
    }
    assert!(explain_aadsts("AADSTS1", &c).is_none());
    assert!(explain_aadsts("nonsense", &c).is_none());
    let body = r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity. The token was issued on 2026-01-01 and was inactive for 90.00:00:00.\r\nTrace ID: x"}"#;
    let code = aadsts_code(body).unwrap();
    assert_eq!(code, "AADSTS700082");
    assert!(explain_aadsts(&code, &c).unwrap().advice.contains("login"));
}

#[test]
fn token_error_prefers_the_aadsts_code() {
    let c = Context::default();
    let e = explain_token_error(
        "invalid_client",
        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID",
        &c,
    )
    .unwrap();
    assert!(e.advice.contains("Secret ID"));
    let e = explain_token_error("invalid_scope", "no code here", &c).unwrap();
    assert_eq!(e.exit, Exit::Config);
    // An unknown AADSTS code falls back to the error name.
    let e = explain_token_error("invalid_grant", "AADSTS99999999: new", &c).unwrap();
    assert!(e.advice.contains("m365send login"));
    assert!(explain_token_error("weird", "nothing", &c).is_none());
}

#[test]
fn failure_for_carries_exit_and_message() {
    let r = reply("550 5.7.60 SMTP; Client does not have permissions to send as this sender");
    let f = failure_for(&r, &ctx(), "the sender");
    assert_eq!(f.exit, Exit::NoPerm);
    assert_eq!(f.message, format_failure(&r, &ctx(), "the sender"));
}

#[test]
fn mode_specific_wording() {
    let mut c = ctx();
    c.mode = Some(Mode::Direct);
    let e = explain_reply(&reply("530 5.7.57 Client was not authenticated"), &c).unwrap();
    assert!(e.advice.contains("MX endpoint"), "{}", e.advice);
    c.mode = Some(Mode::Relay);
    let e = explain_reply(
        &reply("550 5.7.64 TenantAttribution; Relay Access Denied"),
        &c,
    )
    .unwrap();
    assert!(e.advice.contains("contoso.com"), "{}", e.advice);
    c.mode = Some(Mode::Hve);
    let e = explain_reply(&reply("550 5.5.105 external"), &c).unwrap();
    assert!(e.meaning.contains("bob@contoso.com"));
}

#[test]
fn five_seven_three_by_flow_names_the_app_and_the_login() {
    let r = reply("535 5.7.3 Authentication unsuccessful");
    let mut c = ctx();
    c.app_only = true;
    c.client_id = Some("11111111-2222-3333-4444-555555555555");
    let e = explain_reply(&r, &c).unwrap();
    assert!(
        e.advice
            .contains("New-ServicePrincipal -AppId 11111111-2222-3333-4444-555555555555"),
        "{}",
        e.advice
    );
    assert!(
        e.advice
            .contains("Add-MailboxPermission -Identity app@contoso.com")
    );
    let mut c = ctx();
    c.delegated = true;
    let e = explain_reply(&r, &c).unwrap();
    assert!(e.meaning.contains("signed-in user"), "{}", e.meaning);
    assert!(
        e.advice.contains("`m365send login --profile cron`"),
        "{}",
        e.advice
    );
    assert!(e.advice.contains("SmtpClientAuthenticationDisabled"));
    assert!(!e.advice.contains('\n') && e.advice.ends_with('.'));
}

#[test]
fn aadsts_wording_uses_the_tenant_and_client_when_known() {
    let c = Context {
        profile: Some("app"),
        tenant: Some("contoso.onmicrosoft.com"),
        client_id: Some("cid-1"),
        app_only: true,
        ..Context::default()
    };
    let e = explain_aadsts("AADSTS700016", &c).unwrap();
    assert_eq!(
        e.meaning,
        "the application cid-1 was not found in tenant contoso.onmicrosoft.com."
    );
    // App-only invalid_grant is not about logging in again.
    let e = explain_token_error("invalid_grant", "no code", &c).unwrap();
    assert!(!e.advice.contains("login"), "{}", e.advice);
    // A declined device login says so, whatever AADSTS code comes with it.
    let e = explain_token_error("authorization_declined", "AADSTS70019: x", &c).unwrap();
    assert!(e.meaning.contains("declined"), "{}", e.meaning);
}

/// `m365send explain` has no profile: the wording must still read (no "the sending the
/// mailbox that logs in", no "-Identity the mailbox" in a command, no code listed twice).
#[test]
fn explain_code_reads_without_a_profile() {
    let s = explain_code("5.2.2").unwrap();
    assert!(s.contains("the sending mailbox is full"), "{s}");
    let with = explain_reply(
        &reply("554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException"),
        &ctx(),
    )
    .unwrap();
    assert!(
        with.meaning
            .starts_with("the sending mailbox app@contoso.com is full"),
        "{}",
        with.meaning
    );
    let s = explain_code("5.7.139").unwrap();
    assert!(s.contains("Set-CASMailbox -Identity <mailbox> "), "{s}");
    assert!(!s.contains("-Identity the mailbox"), "{s}");
    let s = explain_code("554").unwrap();
    let list = s.lines().nth(1).unwrap();
    assert_eq!(list.matches("5.2.0").count(), 1, "{list}");
}

/// Replies users met that the catalogue lacked (issue 9): each has an explanation naming the
/// fix, and the exit code that fits.
#[test]
fn replies_new_users_met_are_explained() {
    let rows: &[(&str, Exit, &str)] = &[
        (
            "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain",
            Exit::NoPerm,
            "inbound connector",
        ),
        (
            "550 5.7.1 Unable to relay",
            Exit::NoPerm,
            "Ms-Exch-SMTP-Accept-Any-Recipient",
        ),
        (
            "535 5.7.8 Error: authentication failed: authentication failure",
            Exit::NoPerm,
            "the login of mailbox app@contoso.com was not accepted",
        ),
        (
            "550 5.1.8 Access denied, bad outbound sender",
            Exit::Unavailable,
            "Restricted entities",
        ),
        (
            "550 5.7.501 Access denied, spam abuse detected. The sending account has been banned due to detected spam activity.",
            Exit::Unavailable,
            "support request",
        ),
        (
            "550 5.7.502 Access denied, banned sender",
            Exit::Unavailable,
            "banned app@contoso.com",
        ),
        (
            "550 5.7.503 Access denied, banned sender",
            Exit::Unavailable,
            "stop it",
        ),
        (
            "550 5.7.511 Access denied, banned sender[192.0.2.1]. To request removal from this list please forward this message to delist@microsoft.com.",
            Exit::Unavailable,
            "delist@microsoft.com",
        ),
        (
            "451 4.7.850 Access denied, please try again later.",
            Exit::TempFail,
            "restricts this host's IP address",
        ),
        (
            "451 4.7.899 Access denied, please try again later.",
            Exit::TempFail,
            "This is temporary",
        ),
        (
            "550 5.2.2 Submission quota exceeded",
            Exit::Unavailable,
            "10,000",
        ),
        (
            "550 5.1.90 Your message can't be sent because you've reached your daily limit for message recipients",
            Exit::Unavailable,
            "10,000",
        ),
        (
            "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit, closing transmission channel [AM0PR01CA0001.eurprd01.prod.exchangelabs.com] PRX",
            Exit::TempFail,
            "Back off: open fewer connections",
        ),
        (
            "421 4.7.0 mail.contoso.com Error: too many errors",
            Exit::TempFail,
            "split the recipients",
        ),
        // Still what they were.
        (
            "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
            Exit::TempFail,
            "one message at a time",
        ),
        (
            "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException",
            Exit::Unavailable,
            "Sent Items",
        ),
    ];
    for (line, exit, keyword) in rows {
        let r = reply(line);
        assert_eq!(exit_for(&r), *exit, "exit for {line}");
        let e = explain_reply(&r, &ctx()).unwrap_or_else(|| panic!("no explanation for {line}"));
        assert_eq!(e.exit, *exit, "explanation exit for {line}");
        let all = format!("{} {}", e.meaning, e.advice);
        assert!(all.contains(keyword), "{line}: {all:?} lacks {keyword:?}");
        assert!(!all.contains('\n'), "{all}");
        assert!(e.meaning.ends_with('.') && e.advice.ends_with('.'), "{all}");
    }
    // Direct send: 5.7.54 / Unable to relay means an outside recipient.
    let mut c = ctx();
    c.mode = Some(Mode::Direct);
    let e = explain_reply(&reply("550 5.7.1 Unable to relay"), &c).unwrap();
    assert!(
        e.meaning.contains("bob@contoso.com is outside"),
        "{}",
        e.meaning
    );
    // 5.7.1 with another text is not a relay refusal.
    assert_eq!(
        explain_reply(&reply("550 5.7.1 Delivery not authorized"), &ctx()),
        None
    );
}

/// Any 535 other than 5.7.3/5.7.139 is a refused login, explained by the profile's kind of
/// authentication: app-only OAuth names the token's mailbox and the Exchange service principal.
#[test]
fn any_other_535_is_explained_by_the_kind_of_login() {
    let r = reply("535 5.7.8 Error: authentication failed: authentication failure");
    // (how the profile logs in, what the explanation must say)
    let app_only = Context {
        app_only: true,
        client_id: Some("11111111-2222-3333-4444-555555555555"),
        ..ctx()
    };
    let cases = [
        (
            app_only.clone(),
            "the app-only token was not accepted for mailbox app@contoso.com",
        ),
        (
            app_only.clone(),
            "New-ServicePrincipal -AppId 11111111-2222-3333-4444-555555555555",
        ),
        (app_only, "-Identity app@contoso.com"),
        (
            Context {
                delegated: true,
                ..ctx()
            },
            "m365send login --profile cron",
        ),
        (
            Context {
                basic_auth: true,
                ..ctx()
            },
            "the password for mailbox app@contoso.com",
        ),
        (
            Context {
                mode: Some(Mode::Acs),
                ..ctx()
            },
            "<resource name>",
        ),
    ];
    for (c, needle) in cases {
        let e = explain_reply(&r, &c).unwrap();
        let all = format!("{} {}", e.meaning, e.advice);
        assert!(all.contains(needle), "{all}");
        assert_eq!(e.exit, Exit::NoPerm);
    }
    // A bare 535, or with another enhanced code.
    let bare = Reply {
        code: 535,
        enhanced: None,
        lines: vec!["Authentication failed".into()],
    };
    assert_eq!(explain_reply(&bare, &ctx()).unwrap().exit, Exit::NoPerm);
    assert!(explain_reply(&reply("535 5.7.0 Authentication failed"), &ctx()).is_some());
}

/// "the queue does so" only where the queue does: never for a profile with queue = "never".
#[test]
fn temporary_advice_says_who_tries_again() {
    let r = reply("451 4.7.500 Access denied, please try again later");
    let mut c = ctx();
    c.retried_by_queue = Some(false);
    let e = explain_reply(&r, &c).unwrap();
    assert!(!e.advice.contains("the queue does so"), "{}", e.advice);
    assert!(e.advice.contains("was not queued"), "{}", e.advice);
    assert!(e.advice.contains("queue = \"never\""), "{}", e.advice);
    c.retried_by_queue = Some(true);
    let e = explain_reply(&r, &c).unwrap();
    assert!(e.advice.contains("(the queue does so)"), "{}", e.advice);
    let s = explain_code("4.7.500").unwrap();
    assert!(
        s.contains("unless the profile has queue = \"never\""),
        "{s}"
    );
}

/// `m365send explain CODE` shows each of them (the binary, as a user runs it).
#[test]
fn explain_command_shows_each_new_code() {
    let cases: &[(&str, &[&str])] = &[
        ("5.7.54", &["inbound connector", "77 (EX_NOPERM)"]),
        (
            "5.7.1",
            &[
                "5.7.1, when the text says Unable to relay",
                "5.7.1, with any other text: a permanent failure, a security or policy problem",
            ],
        ),
        (
            "550 5.7.1 Unable to relay",
            &["Ms-Exch-SMTP-Accept-Any-Recipient"],
        ),
        ("5.7.8", &["was not accepted", "77 (EX_NOPERM)"]),
        ("535 5.7.9", &["was not accepted", "77 (EX_NOPERM)"]),
        ("5.1.8", &["Restricted entities", "69 (EX_UNAVAILABLE)"]),
        ("5.7.501", &["banned", "69 (EX_UNAVAILABLE)"]),
        ("5.7.502", &["banned"]),
        ("5.7.503", &["banned"]),
        ("5.7.511", &["delist@microsoft.com", "69 (EX_UNAVAILABLE)"]),
        ("4.7.850", &["restricts this host's IP", "75 (EX_TEMPFAIL)"]),
        ("4.7.899", &["restricts this host's IP"]),
        ("5.2.2", &["10,000", "Sent Items"]),
        ("5.1.90", &["10,000", "69 (EX_UNAVAILABLE)"]),
        ("421 4.3.2", &["fewer connections", "75 (EX_TEMPFAIL)"]),
        ("4.3.2", &["fewer connections", "one message at a time"]),
        (
            "421 4.7.0",
            &["too many errors", "with any other text", "75 (EX_TEMPFAIL)"],
        ),
    ];
    for (code, needles) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_m365send"))
            .args(["explain", code])
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{code}: {text}");
        for n in *needles {
            assert!(text.contains(n), "explain {code} lacks {n:?}:\n{text}");
        }
        assert!(!text.contains("not in the catalogue"), "{code}: {text}");
    }
}

/// A code explain does not know: the usage error names every kind of code it does know,
/// Graph's included (the README lists `explain ErrorSendAsDenied`).
#[test]
fn an_unknown_code_names_every_kind_explain_knows() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_m365send"))
        .args(["explain", "NotACode"])
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for kind in ["5.7.60", "AADSTS700082", "ErrorSendAsDenied"] {
        assert!(err.contains(kind), "lacks {kind}: {err}");
    }
    assert_eq!(err.lines().count(), 1, "{err}");
}
