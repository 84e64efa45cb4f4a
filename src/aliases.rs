//! Local-user aliases: the profile's inline `aliases` table and an `/etc/aliases`-format file.
//!
//! Owns: parsing the file format (`name: a, b`, continuation lines starting with white space,
//! `#` comments), the `default` catch-all, recursive expansion with loop detection.
//! An alias applies only to a bare local name (`root`) or a local name at the host's own
//! domain (`root@host.localdomain`); addresses in other domains pass through untouched.
//! Must not: apply the default domain (message does that after expansion).

use std::collections::BTreeMap;
use std::path::Path;

use crate::address::{self, LocalHost};
use crate::config::Profile;
use crate::exit::Failure;

/// Most addresses one recipient may expand to, and deepest nesting, before we call it a loop
/// or a mistake.
const MAX_EXPANSION: usize = 10_000;
const MAX_DEPTH: usize = 64;

/// Alias table: lower-cased local name → targets (as written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    map: BTreeMap<String, Vec<String>>,
    /// Where each alias came from, for error messages.
    origin: BTreeMap<String, String>,
}

impl Aliases {
    /// The profile's aliases: the file first, then the inline table on top (inline wins).
    pub fn load(profile: &Profile) -> Result<Aliases, Failure> {
        let mut a = Aliases::default();
        if let Some(path) = &profile.aliases_file {
            // Checked as the configuration is: an aliases file another user could write
            // redirects mail.
            let text = crate::trust::read_file(path, 16 * 1024 * 1024).map_err(|e| {
                Failure::config(format!(
                    "aliases_file {} in profile \"{}\": {e}",
                    path.display(),
                    profile.name
                ))
            })?;
            a.merge_file(&String::from_utf8_lossy(&text), path)?;
        }
        for (name, value) in &profile.aliases {
            a.insert(
                name,
                split_targets(value),
                format!("aliases.{name} in profile \"{}\"", profile.name),
            );
        }
        Ok(a)
    }

    /// Parse `/etc/aliases` text into the table (entries already present are replaced).
    pub fn merge_file(&mut self, text: &str, path: &Path) -> Result<(), Failure> {
        let mut entries: Vec<(usize, String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                match entries.last_mut() {
                    Some((_, e)) => {
                        e.push(' ');
                        e.push_str(line.trim());
                    }
                    None => {
                        return Err(Failure::config(format!(
                            "{}:{}: continuation line without an alias before it",
                            path.display(),
                            i + 1
                        )));
                    }
                }
            } else {
                entries.push((i + 1, line.to_owned()));
            }
        }
        for (lineno, entry) in entries {
            let Some((name, value)) = entry.split_once(':') else {
                return Err(Failure::config(format!(
                    "{}:{lineno}: expected `name: address, ...`",
                    path.display()
                )));
            };
            let name = name.trim().trim_matches('"');
            if name.is_empty() {
                return Err(Failure::config(format!(
                    "{}:{lineno}: alias without a name",
                    path.display()
                )));
            }
            self.insert(
                name,
                split_targets(value),
                format!("{}:{lineno}", path.display()),
            );
        }
        Ok(())
    }

    pub fn insert(&mut self, name: &str, targets: Vec<String>, origin: String) {
        let key = name.trim().to_ascii_lowercase();
        self.map.insert(key.clone(), targets);
        self.origin.insert(key, origin);
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Expand one recipient. Addresses that are not local pass through unchanged.
    pub fn expand(
        &self,
        addr: &str,
        host: &LocalHost,
        accepted: &[String],
    ) -> Result<Vec<String>, Failure> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        self.expand_into(addr, host, accepted, &mut path, &mut out, false)?;
        Ok(out)
    }

    fn expand_into(
        &self,
        addr: &str,
        host: &LocalHost,
        accepted: &[String],
        path: &mut Vec<String>,
        out: &mut Vec<String>,
        from_default: bool,
    ) -> Result<(), Failure> {
        // `root: admin@contoso.com, \root` (common in /etc/aliases): a backslash stops
        // aliasing, as in sendmail. The name is delivered as it is (the default domain
        // applies), neither expanded again nor caught by `default`.
        if let Some(leaf) = addr.strip_prefix('\\') {
            if !leaf.trim().is_empty() {
                out.push(leaf.trim().to_owned());
            }
            return Ok(());
        }
        let Some(local) = self.local_name(addr, host, accepted) else {
            out.push(addr.to_owned());
            return Ok(());
        };
        let key = local.to_ascii_lowercase();
        // `root: root, ops@x` delivers to root itself: a name naming itself is a leaf.
        if path.last() == Some(&key) {
            out.push(addr.to_owned());
            return Ok(());
        }
        if path.contains(&key) {
            let mut chain = path.clone();
            chain.push(key);
            return Err(Failure::config(format!(
                "alias loop: {} (check {})",
                chain.join(" → "),
                self.origin_of(&chain[0])
            )));
        }
        if path.len() >= MAX_DEPTH || out.len() >= MAX_EXPANSION {
            return Err(Failure::config(format!(
                "alias {} expands too deep or to too many addresses (check {})",
                path.first().map(String::as_str).unwrap_or(&key),
                self.origin_of(path.first().map(String::as_str).unwrap_or(&key))
            )));
        }
        let targets = match self.map.get(&key) {
            Some(t) => t,
            None => match self.map.get("default") {
                Some(t) if !from_default && key != "default" => {
                    path.push("default".into());
                    for t in t {
                        self.check_target(t, "default")?;
                        self.expand_into(t, host, accepted, path, out, true)?;
                    }
                    path.pop();
                    return Ok(());
                }
                _ => {
                    out.push(addr.to_owned());
                    return Ok(());
                }
            },
        };
        if targets.is_empty() {
            // `name:` with nothing after it: say so rather than "no recipients".
            return Err(Failure::config(format!(
                "alias {key} ({}) has no address",
                self.origin_of(&key)
            )));
        }
        path.push(key.clone());
        for t in targets {
            self.check_target(t, &key)?;
            self.expand_into(t, host, accepted, path, out, from_default)?;
        }
        path.pop();
        Ok(())
    }

    fn check_target(&self, target: &str, alias: &str) -> Result<(), Failure> {
        if target.starts_with('|') || target.starts_with('/') || target.starts_with(":include:") {
            return Err(Failure::config(format!(
                "alias {alias} ({}) delivers to `{target}`: pipes, files and :include: are \
                 not supported by m365send; point the alias at a mail address",
                self.origin_of(alias)
            )));
        }
        Ok(())
    }

    fn origin_of(&self, key: &str) -> &str {
        self.origin
            .get(key)
            .map(String::as_str)
            .unwrap_or("aliases")
    }

    /// The local name when `addr` is one an alias may resolve: a bare name or a name at the
    /// host's own domain.
    fn local_name<'a>(
        &self,
        addr: &'a str,
        host: &LocalHost,
        accepted: &[String],
    ) -> Option<&'a str> {
        match address::split(addr) {
            (l, None) if !l.is_empty() => Some(l),
            (l, Some(d)) if host.is_own_domain(d, accepted) => Some(l),
            _ => None,
        }
    }
}

/// `a, b ,c` → ["a", "b", "c"] (quoted commas respected).
fn split_targets(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
            }
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| {
            let t = s.trim();
            // `"|/usr/bin/uudecode"`: a quoted pipe or file is still a pipe or file.
            let t = match t.strip_prefix('"').and_then(|u| u.strip_suffix('"')) {
                Some(u) if u.starts_with(['|', '/']) || u.starts_with(":include:") => u,
                _ => t,
            };
            if t.starts_with('|') || t.starts_with('/') || t.starts_with(":include:") {
                t.to_owned()
            } else {
                address::from_arg(t).unwrap_or_else(|| t.to_owned())
            }
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> LocalHost {
        LocalHost::named("srv.localdomain")
    }

    #[test]
    fn file_format() {
        let mut a = Aliases::default();
        a.merge_file(
            "# comment\npostmaster: root\nroot: ops@contoso.com,\n  admin@contoso.com\n\nweb: \"www data\"@contoso.com\n",
            Path::new("/etc/aliases"),
        )
        .unwrap();
        assert_eq!(
            a.expand("postmaster", &host(), &[]).unwrap(),
            vec!["ops@contoso.com", "admin@contoso.com"]
        );
        assert_eq!(
            a.expand("root@srv.localdomain", &host(), &[]).unwrap(),
            vec!["ops@contoso.com", "admin@contoso.com"]
        );
        assert_eq!(
            a.expand("root@contoso.com", &host(), &[]).unwrap(),
            vec!["root@contoso.com"]
        );
    }

    #[test]
    fn backslash_stops_aliasing_and_quoted_pipes_are_pipes() {
        let mut a = Aliases::default();
        a.merge_file(
            "root: admin@contoso.com, \\root\ndefault: ops@contoso.com\nkeep: \\keep\ndecode: \"|/usr/bin/uudecode\"\n",
            Path::new("/etc/aliases"),
        )
        .unwrap();
        assert_eq!(
            a.expand("root", &host(), &[]).unwrap(),
            vec!["admin@contoso.com", "root"]
        );
        assert_eq!(a.expand("keep", &host(), &[]).unwrap(), vec!["keep"]);
        let e = a.expand("decode", &host(), &[]).unwrap_err();
        assert!(e.message.contains("pipes, files"), "{}", e.message);
        assert!(e.message.contains("/etc/aliases:4"), "{}", e.message);
    }

    #[test]
    fn empty_alias_is_named() {
        let mut a = Aliases::default();
        a.merge_file("ops: a@contoso.com\nempty:\n", Path::new("/etc/aliases"))
            .unwrap();
        let e = a.expand("empty", &host(), &[]).unwrap_err();
        assert_eq!(e.exit, crate::exit::Exit::Config);
        assert!(
            e.message
                .contains("alias empty (/etc/aliases:2) has no address"),
            "{}",
            e.message
        );
    }

    #[test]
    fn loop_is_an_error() {
        let mut a = Aliases::default();
        a.insert("a", vec!["b".into()], "x".into());
        a.insert("b", vec!["a".into()], "y".into());
        let e = a.expand("a", &host(), &[]).unwrap_err();
        assert_eq!(e.exit, crate::exit::Exit::Config);
        assert!(e.message.contains("a → b → a"), "{}", e.message);
    }

    #[test]
    fn default_catch_all_and_self() {
        let mut a = Aliases::default();
        a.insert("default", vec!["ops@contoso.com".into()], "x".into());
        a.insert(
            "root",
            vec!["root".into(), "r@contoso.com".into()],
            "x".into(),
        );
        assert_eq!(
            a.expand("www-data", &host(), &[]).unwrap(),
            vec!["ops@contoso.com"]
        );
        assert_eq!(
            a.expand("root", &host(), &[]).unwrap(),
            vec!["root", "r@contoso.com"]
        );
    }
}
