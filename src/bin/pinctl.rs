//! `pinctl`: the operator's CLI for the fedpin pin file.
//!
//! Exit codes: 0 ok, 1 mismatch or lint error, 2 usage, 64 bad pin file or input.
//! See [`fedpin::cli::pinctl::EXIT_HELP`] for how a broken pin file is reported.
//! The work is in [`fedpin::pinctl`]; this file parses, calls, prints.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fedpin::cli::pinctl::{Cli, Cmd};
use fedpin::pinctl::enrol::{self, EnrolEvent, EnrolRequest, EnrolUi, Enrolment, Written};
use fedpin::pinctl::error::PinctlError;
use fedpin::pinctl::inspect::{self, Lint};
use fedpin::pinctl::live::{LiveChecker, PeerCheck, VerifyRequest, VerifyStatus};
use fedpin::pinctl::target::Reach;
use fedpin::pinfile_edit::{self, AddOutcome, EditError};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const EXIT_MISMATCH: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_BAD_INPUT: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PINCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,fedpin::alert=off")),
        )
        .compact()
        .init();
    let path = cli.pins.as_path();
    let res = match cli.cmd {
        Cmd::Hash { file } => hash(&file),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "pinctl", &mut std::io::stdout());
            Ok(0)
        }
        Cmd::Check => check(path),
        Cmd::List { json } => list(path, json),
        Cmd::Remove { server_name } => remove(path, &server_name),
        #[rustfmt::skip]
        Cmd::Add { server_name, pins, from_cert, from_cert_all, connect, connect_to, trust, mode, expires, roots, yes, no_signing_keys, note } => {
            let req = EnrolRequest { server_name, pins, from_cert, from_cert_all, reach: Reach { roots, connect, connect_to }, trust: trust.map(Into::into), mode: mode.map(Into::into), expires, yes, no_signing_keys, note };
            runtime().and_then(|rt| rt.block_on(add(path, &req)))
        }
        #[rustfmt::skip]
        Cmd::Verify { server_names, roots, connect, connect_to, json, timeout } => {
            let req = VerifyRequest { server_names, reach: Reach { roots, connect, connect_to }, timeout: Duration::from_secs(timeout.max(1)) };
            runtime().and_then(|rt| rt.block_on(verify(path, &req, json)))
        }
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pinctl: {e}");
            ExitCode::from(match e {
                PinctlError::Usage(_) => EXIT_USAGE,
                PinctlError::Input(_) => EXIT_BAD_INPUT,
                PinctlError::NotListed(_) => EXIT_MISMATCH,
            })
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, PinctlError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PinctlError::Input(format!("cannot start the async runtime: {e}")))
}

fn hash(file: &str) -> Result<u8, PinctlError> {
    for item in inspect::hash(file)? {
        println!("{}  {}", item.pin, item.label);
    }
    Ok(0)
}

/// Lints the pin file. Its findings are its output (stdout): errors with
/// exit 1, warnings with exit 0. Only a file it cannot read is bad input
/// (stderr, exit 64).
fn check(path: &Path) -> Result<u8, PinctlError> {
    let file = path.display();
    match inspect::lint(path, OffsetDateTime::now_utc())? {
        Lint::Valid { set, warnings } => {
            for w in &warnings {
                println!("{file}: warning: {w}");
            }
            println!(
                "{file}: ok: {} peer(s), policy unpinned={} on_expired={}, {} warning(s)",
                set.len(),
                set.policy.unpinned,
                set.policy.on_expired,
                warnings.len()
            );
            Ok(0)
        }
        Lint::Invalid(e) => {
            for d in &e.errors {
                println!("{file}: error: {d}");
            }
            println!("{file}: {} error(s)", e.errors.len());
            Ok(EXIT_MISMATCH)
        }
    }
}

fn list(path: &Path, json: bool) -> Result<u8, PinctlError> {
    let set = inspect::load(path)?;
    if json {
        let v = inspect::set_json(&set);
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    if set.is_empty() {
        println!("no peers in {}", path.display());
    }
    for p in set.peers() {
        let expires = p.expires.and_then(|e| e.format(&Rfc3339).ok());
        let expires = expires.map(|e| format!(" expires={e}")).unwrap_or_default();
        println!(
            "{}  trust={} mode={}{expires}",
            p.server_name, p.trust, p.mode
        );
        println!("  hosts: {}", p.hosts.join(", "));
        for pin in &p.pins {
            println!("  {pin}");
        }
    }
    Ok(0)
}

fn remove(path: &Path, server_name: &str) -> Result<u8, PinctlError> {
    pinfile_edit::remove_peer(path, server_name).map_err(|e| match e {
        EditError::NotFound { .. } => PinctlError::NotListed(e.to_string()),
        other => PinctlError::input(other),
    })?;
    println!("removed {server_name} from {}", path.display());
    Ok(0)
}

async fn add(path: &Path, req: &EnrolRequest) -> Result<u8, PinctlError> {
    let enrolment = enrol::enrol(
        req,
        &mut Terminal {
            server_name: req.server_name.clone(),
        },
    )
    .await?;
    let written = enrol::write(path, &enrolment)?;
    print_written(path, &enrolment, &written);
    Ok(0)
}

fn print_written(path: &Path, e: &Enrolment, w: &Written) {
    let name = &e.entry.server_name;
    match w.outcome {
        AddOutcome::Added => {
            let n = e.entry.pins.len();
            println!("added {name} with {n} pin(s) to {}", path.display());
            for (h, list) in &e.entry.host_pins {
                println!("  and {} pin(s) for its well-known front {h}", list.len());
            }
        }
        AddOutcome::Extended(n) => println!("{name} already listed: added {n} new pin(s)"),
    }
    if w.single_pin {
        println!("warning: {name} has a single pin and no backup: add the next key (or pin the CA) before it rotates");
    }
}

/// The enrolment's operator: standard output, and the choice read from
/// standard input.
struct Terminal {
    /// The server name being enrolled.
    server_name: String,
}

impl EnrolUi for Terminal {
    fn show(&mut self, event: EnrolEvent<'_>) {
        let name = &self.server_name;
        match event {
            EnrolEvent::CertFile { file, certs, only_leaf } => {
                println!("{}:", file.display());
                for (i, c) in certs.iter().enumerate() {
                    let mark = if c.pinned { "pinned" } else { "not pinned" };
                    println!("  [{}] {}  {mark:<10}  {}", i + 1, c.item.pin, c.item.label);
                }
                if only_leaf {
                    println!("  only the first certificate (the leaf) is pinned; --from-cert-all pins the others too");
                }
            }
            EnrolEvent::Connecting { target: t, via } => eprintln!(
                "{name}: connecting to {}:{} (TLS name {}, via {via})",
                t.connect_host, t.port, t.tls_name
            ),
            EnrolEvent::Chain { target, captured } => {
                println!("Served chain of {} ({}):", target.tls_name, captured.peer_addr);
                for (i, e) in captured.entries.iter().enumerate() {
                    println!("  [{}] {}", i + 1, e.role);
                    if !e.subject.is_empty() {
                        println!("      subject:   {}", e.subject);
                        println!("      issuer:    {}", e.issuer);
                        println!("      not after: {}", e.not_after);
                    }
                    println!("      pin:       {}", e.pin);
                }
                match &captured.webpki {
                    Ok(()) => println!("Web PKI: valid for {}", target.tls_name),
                    Err(e) => println!("Web PKI: NOT valid for {} ({e})", target.tls_name),
                }
            }
            EnrolEvent::Front { hop, delegated } => println!(
                "\n{} answers /.well-known/matrix/server for {name} (HTTP {}; delegation to {delegated}); pin it too:",
                hop.host, hop.status
            ),
            EnrolEvent::SigningKeys(Ok(keys)) => {
                println!("\nSigning keys of {name} (from /_matrix/key/v2/server over the pinned connection):");
                for k in keys {
                    println!("  {k}");
                }
            }
            EnrolEvent::SigningKeys(Err(e)) => println!(
                "\nwarning: signing keys of {name} not recorded ({e}); requests from it are checked against fetched keys"
            ),
        }
    }

    fn ask_choice(&mut self, _n: usize) -> Result<Option<String>, PinctlError> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            eprintln!("(reading the choice from standard input)");
        }
        print!("Pin which certificate(s)? Numbers separated by commas [1 = leaf]: ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let read = stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| PinctlError::Input(format!("cannot read the choice: {e}")))?;
        Ok((read > 0).then_some(line))
    }
}

async fn verify(path: &Path, req: &VerifyRequest, json: bool) -> Result<u8, PinctlError> {
    let checker = LiveChecker::new(path, req)?;
    let now = OffsetDateTime::now_utc();
    let mut failed = 0;
    let mut results = Vec::new();
    for p in checker.peers() {
        let c = checker.check(p, now).await;
        if c.status != VerifyStatus::Ok {
            failed += 1;
        }
        if json {
            results.push(c.to_json());
        } else {
            print_check(&c);
        }
    }
    if json {
        let v = serde_json::Value::Array(results);
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    Ok(if failed > 0 { EXIT_MISMATCH } else { 0 })
}

fn print_check(c: &PeerCheck) {
    let status = c.status.as_str().to_uppercase();
    let mut line = format!("{status:<8} {}", c.server_name);
    if !c.target.is_empty() {
        line.push_str(&format!(" ({})", c.target));
    }
    if let Some(d) = c.cert_days_left {
        line.push_str(&format!(", certificate expires in {d} days"));
    }
    if let Some(d) = c.pins_days_left {
        line.push_str(&format!(", pins expire in {d} days"));
    }
    println!("{line}");
    if c.status != VerifyStatus::Ok {
        println!("         {}", c.detail);
    }
}
