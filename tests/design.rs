//! DESIGN.md's "nevers" between modules, checked on the source so that a change that breaks
//! one fails here instead of in a review: deliver, submit, the queue, `-bs` and app know no
//! transport by name; explain and the leaf modules import nothing but leaves; smtp and graph
//! read no argv and no configuration file; message talks to no server; auth knows no SMTP.

use std::fs;
use std::path::Path;

fn source(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rust_files(dir: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&p).unwrap();
                out.push((p.display().to_string(), text));
            }
        }
    }
    out
}

/// The `crate::X` modules a file names in its code (`use` lines and paths written inline;
/// comments are skipped, and so are the file's unit tests).
fn crate_imports(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names: Vec<String> = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .flat_map(|l| l.split("crate::").skip(1))
        .map(|rest| {
            rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn delivery_queue_and_bs_know_no_transport_by_name() {
    // submit (deliver or queue) and app (the wiring) go through deliver and the queue too.
    let mut files = vec![
        ("src/deliver.rs".to_owned(), source("src/deliver.rs")),
        ("src/submit.rs".to_owned(), source("src/submit.rs")),
        ("src/app.rs".to_owned(), source("src/app.rs")),
        ("src/bs.rs".to_owned(), source("src/bs.rs")),
    ];
    files.extend(rust_files("src/queue"));
    for (name, text) in files {
        for banned in [
            "crate::smtp",
            "smtp::Session",
            "SessionError",
            "send_message(",
            "crate::graph",
            "transport::smtp",
            "transport::graph",
        ] {
            assert!(
                !text.contains(banned),
                "{name} names a transport ({banned}): go through crate::transport instead"
            );
        }
    }
}

#[test]
fn explain_and_the_leaves_import_nothing_else() {
    let mut explain = vec![("src/explain.rs".to_owned(), source("src/explain.rs"))];
    explain.extend(rust_files("src/explain"));
    for (name, text) in explain {
        for m in crate_imports(&text) {
            assert!(
                ["status", "config", "exit"].contains(&m.as_str()),
                "{name} imports crate::{m}: the catalogue takes codes in and gives words out"
            );
        }
    }
    for leaf in ["src/status.rs", "src/starttls.rs", "src/http.rs"] {
        let imports = crate_imports(&source(leaf));
        assert!(imports.is_empty(), "{leaf} imports {imports:?}");
    }
}

/// No file of `files` names a module of `banned`.
fn assert_imports_none_of(files: &[(String, String)], banned: &[&str], why: &str) {
    for (name, text) in files {
        for m in crate_imports(text) {
            assert!(
                !banned.contains(&m.as_str()),
                "{name} imports crate::{m}: {why}"
            );
        }
    }
}

#[test]
fn message_never_talks_to_a_server() {
    let files: Vec<(String, String)> = ["src/message.rs", "src/aliases.rs", "src/address.rs"]
        .iter()
        .map(|name| (name.to_string(), source(name)))
        .collect();
    assert_imports_none_of(
        &files,
        &[
            "smtp",
            "graph",
            "transport",
            "auth",
            "deliver",
            "submit",
            "queue",
            "serve",
            "http",
        ],
        "preparing a message connects nowhere",
    );
    for (name, text) in &files {
        for banned in ["TcpStream", "reqwest", "hickory", "UdpSocket"] {
            assert!(!text.contains(banned), "{name} names {banned}");
        }
    }
}

#[test]
fn auth_knows_no_smtp_and_no_transport() {
    assert_imports_none_of(
        &rust_files("src/auth"),
        &[
            "smtp",
            "graph",
            "transport",
            "deliver",
            "submit",
            "queue",
            "cli",
            "app",
        ],
        "credentials are the same for every transport",
    );
}

#[test]
fn smtp_reads_no_argv_and_no_config_file() {
    let files = rust_files("src/smtp");
    assert_imports_none_of(
        &files,
        &["cli", "app", "deliver", "queue", "transport", "explain"],
        "the session takes plain settings",
    );
    for (name, text) in &files {
        assert!(
            !text.contains("config::Config") && !text.contains("config::Profile"),
            "{name} reads the configuration: take plain settings instead"
        );
    }
}

#[test]
fn graph_reads_no_argv_and_no_config_file() {
    assert_imports_none_of(
        &rust_files("src/graph"),
        &[
            "cli",
            "app",
            "deliver",
            "queue",
            "transport",
            "config",
            "auth",
        ],
        "Graph takes plain settings",
    );
}
