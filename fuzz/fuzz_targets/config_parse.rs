//! Configuration parsing: any text as a configuration file. Never a panic, and a parse
//! error never quotes a value from the file (values hold secrets: `{ value = "..." }`,
//! passwords, client secrets): no string value of the file appears in the error text.
//!
//! What counts as a value: every string the (error-tolerant) TOML parser finds as a value, and
//! every quoted run on a line (a syntax error may stop the parser before it). A string that
//! also appears in the file outside quotes (as a key or table name, which errors do name) is
//! not checked, nor short ones (under 6 characters, such as "relay", which errors name as
//! words of their own). After a successful parse, validation messages may quote an address,
//! domain or host the user got wrong; inline secrets (`value = "..."`) are checked there too.
//! The part of an error after "expected" (the accepted values) is not searched, nor the path;
//! a match that stays when the value's letters are changed is the message's own wording.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use m365send::config::Config;
use toml::de::{DeTable, DeValue};

const MIN: usize = 6;

/// (string values, of which inline secret values) of the document, as far as it parses.
fn values(text: &str) -> (Vec<String>, Vec<String>) {
    fn walk_value(v: &DeValue<'_>, key: &str, all: &mut Vec<String>, secrets: &mut Vec<String>) {
        match v {
            DeValue::String(s) => {
                all.push(s.to_string());
                if matches!(
                    key,
                    "value" | "password" | "client_secret" | "token" | "refresh_token"
                ) {
                    secrets.push(s.to_string());
                }
            }
            DeValue::Array(a) => {
                for item in a.iter() {
                    walk_value(item.get_ref(), key, all, secrets);
                }
            }
            DeValue::Table(t) => walk(t, all, secrets),
            _ => {}
        }
    }
    fn walk(t: &DeTable<'_>, all: &mut Vec<String>, secrets: &mut Vec<String>) {
        for (k, v) in t.iter() {
            walk_value(v.get_ref(), k.get_ref(), all, secrets);
        }
    }
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut all = Vec::new();
    let mut secrets = Vec::new();
    walk(doc.get_ref(), &mut all, &mut secrets);
    // Quoted runs, for lines the parser gave up on.
    for line in text.lines() {
        for q in ['"', '\''] {
            let parts: Vec<&str> = line.split(q).collect();
            for inner in parts.iter().skip(1).step_by(2) {
                all.push((*inner).to_owned());
            }
        }
    }
    (all, secrets)
}

/// `v` appears in `text` other than inside quotes (as a key, a table name, a bare word).
fn outside_quotes(text: &str, v: &str) -> bool {
    let mut rest = text.to_owned();
    for q in ['"', '\''] {
        rest = rest.replace(&format!("{q}{v}{q}"), " ");
    }
    rest.contains(v)
}

const PATH: &str = "/etc/m365send/config.toml";

fn parse_error(text: &str) -> Option<String> {
    Config::parse(text, Path::new(PATH))
        .err()
        .map(|e| e.message)
}

fn assert_absent(error: &str, text: &str, candidates: &[String]) {
    // What follows "expected" lists the accepted values (program constants, such as
    // `client-credentials`), which the file may well contain elsewhere; the path is ours.
    let error = error.split("expected").next().unwrap_or(error);
    let error = error.replace(PATH, "");
    for v in candidates {
        let v = v.trim();
        if v.chars().count() < MIN || outside_quotes(text, v) || !error.contains(v) {
            continue;
        }
        // Ours or the file's? The same file with that value's letters changed: when the error
        // still says it, it is the message's own wording ("inline table"), not the value.
        let masked = text.replace(v, &v.replace(|c: char| c.is_alphanumeric(), "Z"));
        if parse_error(&masked).is_some_and(|e2| e2.contains(v)) {
            continue;
        }
        panic!("the error quotes the value {v:?}:\n{error}\n--- from ---\n{text}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(error) = parse_error(text) else {
        return;
    };
    let (all, secrets) = values(text);
    if toml::from_str::<Config>(text).is_err() {
        // A parse error: no value at all.
        assert_absent(&error, text, &all);
    } else {
        // Validation: inline secrets never.
        assert_absent(&error, text, &secrets);
    }
});
