//! The `fedpin` daemon's command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `fedpin [--log-format json|pretty] COMMAND`.
#[derive(Parser)]
#[command(
    name = "fedpin",
    version,
    about = "Certificate-pinning TLS proxy for Matrix federation",
    long_about = None
)]
pub struct Cli {
    /// Log format: json (default when stderr is not a terminal) or pretty.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// The command to run.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// How log lines are written (`--log-format`).
// The variants carry no doc comments on purpose: clap would show them as
// per-value help and change `--help`; the flag's own help says what each is.
#[allow(missing_docs)]
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The `fedpin` commands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Run the configured listeners until SIGTERM / SIGINT.
    Run {
        /// Config file.
        #[arg(long, default_value = "fedpin.toml")]
        config: PathBuf,
        /// On SIGTERM: stop accepting, then wait this long for open tunnels and
        /// connections to finish before exiting.
        #[arg(long, default_value_t = 30)]
        drain_secs: u64,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Self-contained loopback demo: a genuine peer passes, a CA-valid impostor is blocked with an alert.
    Demo,
    /// Validate the config and its pin file; exit 0, or 64 with located errors.
    CheckConfig {
        /// Config file.
        #[arg(long, default_value = "fedpin.toml")]
        config: PathBuf,
    },
    /// Manage the interception CA.
    Ca {
        /// The CA command.
        #[command(subcommand)]
        cmd: CaCmd,
    },
}

/// `fedpin ca` commands.
#[derive(Subcommand)]
pub enum CaCmd {
    /// Create the interception CA (key mode 0600) and print the Synapse snippet.
    Init {
        /// Directory for fedpin-ca.pem and fedpin-ca.key.
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// The outbound listener Synapse should use as its proxy.
        #[arg(long, default_value = "127.0.0.1:8449")]
        proxy: String,
    },
}
