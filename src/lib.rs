//! m365send: a sendmail-compatible mail submission tool for Microsoft 365.
//!
//! A message flows one way: cli → config → message → route → auth → transport (smtp) →
//! deliver (→ queue). `status` holds the leaf reply/step types every layer shares.
//! See each module's top comment for what it owns.

pub mod address;
pub mod aliases;
pub mod app;
pub mod auth;
pub mod bs;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod exit;
pub mod explain;
pub mod fsutil;
pub mod message;
pub mod queue;
pub mod report;
pub mod route;
pub mod secret;
pub mod smtp;
pub mod status;
pub mod transport;
