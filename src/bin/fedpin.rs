//! `fedpin`: the daemon binary (clap + tracing setup; the work is in the
//! library: [`fedpin::prepare`], [`fedpin::daemon`], [`fedpin::service`]).

use std::process::ExitCode;

use clap::Parser;
use fedpin::cli::fedpin::{CaCmd, Cli, Cmd, LogFormat};
use fedpin::prepare::Prepared;

const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = match cli.log_format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FEDPIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Log lines are written by a dedicated thread in batches, so the
    // per-request access log never makes a proxy thread wait on stderr, and
    // one write(2) carries many lines (see `fedpin::log_writer`). Not
    // lossy: alerts are log lines too. The guard writes the rest on exit.
    let (writer, _log_guard) = fedpin::log_writer::batched(std::io::stderr());
    if matches!(cli.cmd, Cmd::Demo) {
        // The demo prints its own account.
        tracing_subscriber::fmt()
            .with_writer(writer)
            .with_env_filter(tracing_subscriber::EnvFilter::new("off"))
            .init();
    } else if json {
        // The access log (one line per request) is written straight to the
        // log, in the JSON format's shape, without spans: through tracing's
        // field dispatch and the span lists it cost several times as much
        // (see `fedpin::proxy::access_log::Line::log`). The filter still
        // decides whether it is written.
        fedpin::proxy::access_log::write_json_to(writer.clone());
        use tracing_subscriber::prelude::*;
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer))
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(writer)
            .with_env_filter(filter)
            .compact()
            .init();
    }
    match cli.cmd {
        Cmd::Run { config, drain_secs } => run(&config, std::time::Duration::from_secs(drain_secs)),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "fedpin", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Demo => demo(),
        Cmd::CheckConfig { config } => check_config(&config),
        Cmd::Ca {
            cmd: CaCmd::Init { dir, proxy },
        } => match fedpin::tls::ca::init_ca(&dir) {
            Ok(files) => {
                println!(
                    "wrote {} and {} (mode 0600)",
                    files.cert.display(),
                    files.key.display()
                );
                println!();
                print!("{}", fedpin::tls::ca::synapse_snippet(&files.cert, &proxy));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fedpin: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// The tokio runtime (`workers` threads, else one per core), or the exit
/// code after saying why it could not start.
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    #[cfg(feature = "mimalloc")]
    {
        builder.on_thread_park(collect_when_idle);
        // The inbound edge's lanes (their own runtimes) too.
        fedpin::proxy::lanes::on_park(collect_when_idle);
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("fedpin: cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

/// Called as a runtime worker goes idle: at most once a second per thread,
/// mimalloc hands back to the system what that thread's heap freed.
///
/// mimalloc purges freed pages lazily, on a later allocation on the same
/// thread; a worker whose connections have all gone quiet never gets
/// there, and what it freed while they were busy (hyper's buffers before a
/// connection parks, an upstream connection closed) stays resident.
/// Measured (`N=5000 tests/load/memory_per_conn.sh`, one run each way),
/// with this the RSS per idle connection fell from 14.8 to 13.2 kB
/// inbound and from 18.1 to 16.7 kB per idle outbound tunnel; a busy
/// worker seldom parks, so the hot path does not pay for it.
#[cfg(feature = "mimalloc")]
fn collect_when_idle() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| {
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            last.set(Some(now));
            // SAFETY: `mi_collect` takes no pointers; it may be called on
            // any thread at any time (mimalloc's API documentation).
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    });
}

fn demo() -> ExitCode {
    let rt = match runtime(Some(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = match rt.block_on(fedpin::demo::run()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fedpin: {e}");
            return ExitCode::from(1);
        }
    };
    let host = fedpin::demo::DEMO_HOST;
    println!("fedpin demo: two servers on 127.0.0.1 answer as {host}.");
    println!("Both hold a certificate from the same trusted CA, so Web PKI alone accepts both.");
    println!("Only the genuine one holds the pinned key. A stand-in homeserver sends one");
    println!(
        "federation request to each through fedpin's outbound proxy (CONNECT, as Synapse does)."
    );
    println!();
    match &report.genuine {
        Ok(body) => {
            println!("PASSED   genuine peer: pin matched; the homeserver got: {body}")
        }
        Err(e) => println!("FAILED   genuine peer was refused: {e}"),
    }
    match &report.impostor {
        Ok(body) => println!("FAILED   impostor was NOT blocked: {body}"),
        Err(e) => println!("BLOCKED  impostor: the homeserver got: {e}"),
    }
    println!();
    println!("Alerts raised ({}):", report.alerts.len());
    for a in &report.alerts {
        println!("{a}");
    }
    println!();
    if report.success() {
        println!("Result: OK — the genuine peer passed and the CA-valid impostor was blocked with a critical pin_mismatch alert.");
        ExitCode::SUCCESS
    } else {
        println!("Result: FAILED — see above.");
        ExitCode::from(1)
    }
}

/// `fedpin check-config`: everything `run` checks, without binding sockets.
fn check_config(path: &std::path::Path) -> ExitCode {
    match Prepared::load(path) {
        Ok(prepared) => {
            for w in prepared.warnings() {
                println!("{w}");
            }
            println!("{}", prepared.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

fn run(path: &std::path::Path, drain: std::time::Duration) -> ExitCode {
    let prepared = match Prepared::load(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    for w in prepared.warnings() {
        tracing::warn!(target: "fedpin::pins", "{w}");
    }
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let daemon = match fedpin::daemon::Daemon::start_prepared(prepared).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(target: "fedpin::daemon", error = %e, "cannot start");
                eprintln!("fedpin: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some((_, addr)) = &daemon.outbound {
            // A line scripts can wait for.
            println!("fedpin: outbound listening on {addr}");
        }
        if let Some((_, addr)) = &daemon.inbound {
            println!("fedpin: inbound listening on {addr}");
        }
        if let Some(addr) = &daemon.admin {
            println!("fedpin: admin listening on {addr}");
        }
        fedpin::service::serve(daemon, path, drain).await;
        ExitCode::SUCCESS
    })
}
