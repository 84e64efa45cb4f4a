//! m365send: a sendmail-compatible mail submission tool for Microsoft 365.
//!
//! A message flows one way: cli → config → message → route → submit → deliver (auth,
//! transport: smtp or graph) or the queue. `status` holds the leaf reply/step types every
//! layer shares.
//! See each module's top comment for what it owns.

// A closed stderr or stdout must never panic: every write goes through `console`.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod address;
pub mod aliases;
pub mod app;
pub mod auth;
pub mod bs;
pub mod cli;
pub mod completions;
pub mod config;
pub mod console;
pub mod deliver;
pub mod doctor;
pub mod dry_run;
pub mod exit;
pub mod explain;
pub mod fsutil;
pub mod graph;
pub mod http;
pub mod man;
pub mod message;
pub mod printable;
pub mod queue;
pub mod report;
pub mod route;
pub mod secret;
pub mod serve;
pub mod smtp;
pub mod starttls;
pub mod status;
pub mod submit;
pub mod transport;
pub mod trust;
