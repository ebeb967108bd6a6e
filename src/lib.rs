//! fedpin: a certificate-pinning TLS proxy for Matrix homeserver federation.
//!
//! A homeserver federates over HTTPS checked only against the Web PKI, so
//! anyone who can route its traffic and holds a CA-signed certificate for a
//! peer's name can read and alter federation unseen. fedpin pins peers' keys
//! (SPKI SHA-256), raises an alert on every mismatch, and applies the
//! operator's policy to everyone else.
//!
//! Layout: [`pins`] (pin type, pin file, hot-reloaded store), [`verify`] (the
//! pin rules and rustls verifiers), [`alert`] (alert events, dedup, sinks),
//! [`tls`] (provider and per-generation configs), [`metrics`] (counters
//! for `/metrics`), [`discovery`] (Matrix
//! server-name resolution), [`pinfile_edit`] (atomic, locked, comment-keeping
//! edits for `pinctl`), [`pinctl`] (the `pinctl` workflows: enrolment, the
//! live check, lint), [`service`] (a started daemon under a service
//! manager: notify, reload, drain), [`cli`] (the binaries' clap definitions,
//! also the source of the man pages and shell completions). The binaries
//! parse arguments, call these, print and choose exit codes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alert;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod discovery;
#[doc(hidden)]
pub mod fuzzing;
pub mod https;
pub mod matrix;
pub mod metrics;
pub mod pinctl;
pub mod pinfile_edit;
pub mod pins;
pub mod prepare;
pub mod probe;
pub mod proxy;
pub mod service;
pub mod tls;
pub mod verify;
pub mod watch;
