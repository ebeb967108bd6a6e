//! fedpin: a certificate-pinning TLS proxy for Matrix homeserver federation.
//!
//! A homeserver federates over HTTPS checked only against the Web PKI, so
//! anyone who can route its traffic and holds a CA-signed certificate for a
//! peer's name can read and alter federation unseen. fedpin pins peers' keys
//! (SPKI SHA-256), raises an alert on every mismatch, and applies the
//! operator's policy to everyone else.
//!
//! # Layout
//!
//! Modules depend only on modules listed before them (no import cycles; the
//! list is checked by `tests/structure.rs`):
//!
//! 1. Foundations: [`matrix`] (server-name grammar, canonical JSON, signing
//!    keys and signatures), [`egress`] (where fedpin may dial), [`watch`]
//!    (file watching), [`cli`] (the binaries' clap definitions, also the
//!    source of the man pages and shell completions).
//! 2. [`pins`]: the pin type and the pin file, parsed and validated into an
//!    immutable [`pins::PinSet`].
//! 3. [`alert`]: alert events, dedup, the hub and its bounded sink queues.
//! 4. [`pin_store`]: the hot-reloaded current pin set (publishes generations,
//!    raises reload alerts). [`metrics`]: counters for `/metrics`.
//! 5. [`verify`]: the pin rules as a pure [`verify::Verdict`], the one
//!    report of a verdict (alert, metric labels, rustls error), and the
//!    rustls verifiers.
//! 6. [`tls`] (provider, per-generation configs, the local CA), then
//!    [`https`] (the crate's one HTTPS client), [`sinks`] (webhook, Matrix
//!    and command alert sinks), [`discovery`] (Matrix server-name
//!    resolution), [`keys`] (signing-key fetching: direct, notaries, cache).
//! 7. [`config`], [`prepare`] (a config's files loaded and checked),
//!    [`probe`], [`proxy`] (outbound, inbound, admin), [`daemon`],
//!    [`service`] (a started daemon under a service manager), [`demo`].
//! 8. [`pinfile_edit`] (atomic, locked, comment-keeping edits) and
//!    [`pinctl`] (the `pinctl` workflows: enrolment, the live check, lint).
//!
//! The binaries parse arguments, call these, print and choose exit codes.
// No unsafe code but the global allocator's four calls into mimalloc
// ([`alloc`], which allows it for itself).
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// The global allocator: mimalloc. A reload of a large pin file and the
/// per-request proxying path are allocation-heavy (TOML values, hyper's
/// header maps); glibc's malloc was a third of a reload's CPU (issue 13).
/// Declared here so the binaries, tests and benches all measure the same
/// allocator; the `mimalloc` feature (default) turns it off for the fuzz
/// crate, whose sanitizer wants to see every allocation.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: alloc::Mimalloc = alloc::Mimalloc;

#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
pub mod alloc;

pub mod alert;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod discovery;
pub mod egress;
#[doc(hidden)]
pub mod fuzzing;
pub mod https;
pub mod keys;
pub mod log_writer;
pub mod matrix;
pub mod metrics;
pub mod pin_store;
pub mod pinctl;
pub mod pinfile_edit;
pub mod pins;
pub mod prepare;
pub mod probe;
pub mod proxy;
pub mod service;
pub mod sinks;
pub mod tls;
pub mod verify;
pub mod watch;
