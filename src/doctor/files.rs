//! Group 7, queue and files: the spool writable, the entries waiting (the oldest's age and
//! last error), the dead letter's size, the token cache's permissions. Reads only, except a
//! temporary file created and removed in the spool to prove it writable. Must not: change
//! an entry, the dead letter or the cache, or print a token from it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::{Check, Ctx};
use crate::config::AuthMethod;
use crate::exit::Exit;

pub fn checks(ctx: &Ctx<'_>) -> Vec<Check> {
    vec![spool(ctx), queue(ctx), dead_letter(ctx), token_cache(ctx)]
}

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.is_dir())
}

/// `files.spool`: the queue's directory can be written (or created).
fn spool(ctx: &Ctx<'_>) -> Check {
    const NAME: &str = "files.spool";
    let dir = match crate::queue::spool_dir(ctx.config) {
        Ok(d) => d,
        Err(f) => {
            return Check::from_failure(NAME, &f, "Set spool_dir in the configuration.");
        }
    };
    // Each user has a spool of their own (README.md, Spools on a multi-user host): the fix
    // makes it this user's, never a shared one.
    let euid = crate::trust::euid();
    let who = crate::trust::describe_uid(euid);
    if dir.is_dir() {
        let fix = if euid == 0 {
            format!("`chown -R root {0} && chmod 700 {0}`", dir.display())
        } else {
            format!(
                "The spool must be {who}'s own: as root, `chown -R {} {1} && chmod 700 {1}`",
                crate::trust::describe_owner_arg(euid),
                dir.display()
            )
        };
        let mode = std::fs::metadata(&dir)
            .map(|m| {
                format!(
                    "mode {:04o}, owner uid {}",
                    m.permissions().mode() & 0o7777,
                    m.uid()
                )
            })
            .unwrap_or_default();
        let probe_dir = if dir.join("tmp").is_dir() {
            dir.join("tmp")
        } else {
            dir.clone()
        };
        return match tempfile::Builder::new()
            .prefix(".doctor-")
            .tempfile_in(&probe_dir)
        {
            Ok(_) => Check::passed(NAME, format!("{} writable ({mode})", dir.display())),
            Err(e) => Check::failed(
                NAME,
                Exit::CantCreat,
                format!("{} ({mode}): cannot write: {e}", dir.display()),
                fix,
            ),
        };
    }
    let fix = if euid == 0 {
        format!("Create it: `install -d -m 0700 {}`", dir.display())
    } else {
        crate::trust::create_private_dir_fix(&dir, euid)
    };
    match existing_ancestor(&dir) {
        Some(parent) if writable(parent) => Check::passed(
            NAME,
            format!(
                "{} does not exist yet; it is created (mode 0700) when a message is first queued",
                dir.display()
            ),
        ),
        parent => Check::failed(
            NAME,
            Exit::CantCreat,
            format!(
                "{} does not exist and {} cannot be written: a message that must wait would go \
                 to the dead letter instead",
                dir.display(),
                parent.map(|p| p.display().to_string()).unwrap_or_default()
            ),
            fix,
        ),
    }
}

fn writable(dir: &Path) -> bool {
    tempfile::Builder::new()
        .prefix(".doctor-")
        .tempfile_in(dir)
        .is_ok()
}

/// `files.queue`: what is waiting, and for how long.
fn queue(ctx: &Ctx<'_>) -> Check {
    const NAME: &str = "files.queue";
    let entries = match crate::queue::spool_dir(ctx.config) {
        Ok(d) if !d.join("meta").is_dir() => Vec::new(),
        _ => match crate::queue::list(ctx.config) {
            Ok(e) => e,
            Err(f) => {
                return Check::from_failure(NAME, &f, "Check the spool directory's permissions.");
            }
        },
    };
    let Some(oldest) = entries.iter().min_by_key(|e| e.created) else {
        return Check::passed(NAME, "no message waiting");
    };
    let now = chrono::Utc::now().timestamp();
    let age = now - oldest.created;
    let mine = entries
        .iter()
        .filter(|e| e.profile == ctx.profile.name)
        .count();
    let last = oldest
        .last_reply
        .as_ref()
        .map(|r| r.to_reply().to_string())
        .or_else(|| oldest.last_error.clone())
        .unwrap_or_else(|| "not tried yet".to_owned());
    let evidence = format!(
        "{} message{} waiting ({mine} of profile \"{}\"); the oldest, {}, waits for {} after {} \
         attempt{}; last: {last}",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        ctx.profile.name,
        oldest.id,
        crate::queue::human_duration(age),
        oldest.attempts,
        if oldest.attempts == 1 { "" } else { "s" },
    );
    if age > 3600 {
        Check::warning(
            NAME,
            evidence,
            "Something must run `m365send queue run` every few minutes (the systemd timer or \
             cron job in contrib/; `systemctl list-timers m365send-queue.timer`), and the last \
             error says why the messages still wait; `m365send queue show ID` tells more.",
        )
    } else {
        Check::passed(NAME, evidence)
    }
}

/// `files.dead_letter`: messages that could not be delivered at all.
fn dead_letter(ctx: &Ctx<'_>) -> Check {
    const NAME: &str = "files.dead_letter";
    let Some(path) = crate::report::dead_letter_path(ctx.config, ctx.profile) else {
        return Check::skipped(
            NAME,
            "no dead letter path (HOME is not set and none is configured)",
        );
    };
    // Where ~/dead.letter cannot be written (www-data's home belongs to root), messages went
    // to the shared-directory fallback instead: those were lost from view too.
    let configured = ctx.profile.dead_letter.is_some() || ctx.config.dead_letter.is_some();
    let fallback = crate::report::fallback_dead_letter_path();
    if !configured
        && let Ok(m) = std::fs::metadata(&fallback)
        && m.len() > 0
    {
        return Check::warning(
            NAME,
            format!(
                "{}: {} bytes of undelivered mail ({} could not be written)",
                fallback.display(),
                m.len(),
                path.display()
            ),
            format!(
                "It holds messages that could not be delivered (mbox, each with the reason in an \
                 X-M365send-Failure header): read it (`mail -f {}`), send again what matters, \
                 then empty it.",
                fallback.display()
            ),
        );
    }
    match std::fs::metadata(&path) {
        Err(_) => Check::passed(
            NAME,
            format!("{}: none (no message was lost)", path.display()),
        ),
        Ok(m) if m.len() == 0 => Check::passed(NAME, format!("{}: empty", path.display())),
        Ok(m) => Check::warning(
            NAME,
            format!("{}: {} bytes of undelivered mail", path.display(), m.len()),
            format!(
                "It holds messages that could not be delivered (mbox, each with the reason in an \
                 X-M365send-Failure header): read it (`mail -f {}`), send again what matters, \
                 then empty it.",
                path.display()
            ),
        ),
    }
}

/// `files.token_cache`: the OAuth token cache holds tokens: 0700 directory, 0600 files.
fn token_cache(ctx: &Ctx<'_>) -> Check {
    const NAME: &str = "files.token_cache";
    if ctx.profile.auth_method() != AuthMethod::OAuth || ctx.profile.auth.token.is_set() {
        return Check::skipped(NAME, "the profile caches no token");
    }
    let dir = match crate::auth::cache::dir(ctx.config) {
        Ok(d) => d,
        Err(f) => return Check::from_failure(NAME, &f, "Set cache_dir in the configuration."),
    };
    let Ok(meta) = std::fs::metadata(&dir) else {
        let euid = crate::trust::euid();
        return match existing_ancestor(&dir) {
            Some(parent) if euid == 0 || writable(parent) => Check::passed(
                NAME,
                format!(
                    "{} does not exist yet (created 0700 with the first token)",
                    dir.display()
                ),
            ),
            parent => Check::failed(
                NAME,
                Exit::NoPerm,
                format!(
                    "{} does not exist and {} cannot be written: no token can be cached, so \
                     no message can be sent",
                    dir.display(),
                    parent.map(|p| p.display().to_string()).unwrap_or_default()
                ),
                crate::trust::create_private_dir_fix(&dir, euid),
            ),
        };
    };
    let mut loose = Vec::new();
    let dmode = meta.permissions().mode() & 0o777;
    if dmode & 0o077 != 0 {
        loose.push(format!("chmod 700 {}", dir.display()));
    }
    let file = crate::auth::cache::file_path(&dir, &ctx.profile.name);
    let fmode = std::fs::metadata(&file)
        .ok()
        .map(|m| m.permissions().mode() & 0o777);
    if let Some(m) = fmode
        && m & 0o077 != 0
    {
        loose.push(format!("chmod 600 {}", file.display()));
    }
    let evidence = format!(
        "{} (mode {dmode:04o}); {}",
        dir.display(),
        match fmode {
            Some(m) => format!("{} (mode {m:04o})", file.display()),
            None => format!("{} not written yet", file.display()),
        }
    );
    if loose.is_empty() {
        Check::passed(NAME, evidence)
    } else {
        Check::warning(
            NAME,
            evidence,
            format!(
                "Other users could read the tokens: {}.",
                loose.join(" and ")
            ),
        )
    }
}
