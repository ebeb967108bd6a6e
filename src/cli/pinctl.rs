//! The `pinctl` command line (the operator's CLI for the pin file).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The exit-code convention, shown under `pinctl --help`.
pub const EXIT_HELP: &str = "\
Exit codes: 0 ok; 1 a peer does not match (verify), a lint error (check) or \
an unknown peer (remove, verify); 2 usage; 64 bad input.

A pin file that does not parse or validate is bad input for `list` and \
`verify`: the located errors go to stderr, exit 64 (`add` likewise refuses, \
exit 64, to write a file that would not validate). `check` is the linter: \
reporting such errors is its job, so its findings (errors and warnings) go \
to stdout, exit 1 on errors. A pin file that cannot be read at all is bad \
input for `check` too (stderr, exit 64).";

/// `pinctl [--pins FILE] COMMAND`.
#[derive(Parser)]
#[command(
    name = "pinctl",
    version,
    about = "Manage fedpin's pin file: enrol, list, remove, verify live, lint, hash",
    after_help = EXIT_HELP,
    long_about = None
)]
pub struct Cli {
    /// The pin file.
    #[arg(
        long,
        global = true,
        default_value = "pins/pins.toml",
        env = "FEDPIN_PINS"
    )]
    pub pins: PathBuf,
    /// The command to run.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `--trust`: how the pins relate to Web PKI (see `fedpin::pins::Trust`).
// No doc comments on the variants: clap would show them as per-value help
// and change `--help`.
#[allow(missing_docs)]
#[derive(Clone, Copy, ValueEnum)]
pub enum TrustArg {
    Webpki,
    PinOnly,
}

/// `--mode`: enforce or only report mismatches (see `fedpin::pins::Mode`).
#[allow(missing_docs)]
#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Enforce,
    Report,
}

/// The `pinctl` commands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Enrol a peer: pin given keys, or connect and choose from the served chain.
    Add {
        /// Matrix server name (may carry a port).
        server_name: String,
        /// A pin to add (`sha256/…`); repeatable.
        #[arg(long = "pin", id = "pin")]
        pins: Vec<String>,
        /// Pin the key of the first certificate (or public key) in this PEM
        /// file: the leaf of a full chain; repeatable. Every certificate is
        /// listed with its pin, marked pinned or not pinned.
        #[arg(long = "from-cert")]
        from_cert: Vec<PathBuf>,
        /// With --from-cert: pin every certificate of each file, the
        /// intermediates and root of a full chain too (a CA pin accepts
        /// anything that CA issues for the name).
        #[arg(long = "from-cert-all", requires = "from_cert")]
        from_cert_all: bool,
        /// Connect here instead of resolving the server name the Matrix way.
        #[arg(long, value_name = "HOST:PORT")]
        connect: Option<String>,
        /// During discovery, dial ADDR:PORT2 for connections meant for
        /// HOST:PORT (like curl's --connect-to; TLS names are unchanged);
        /// repeatable. For enrolling through a particular front end.
        #[arg(long = "connect-to", value_name = "HOST:PORT:ADDR:PORT2")]
        connect_to: Vec<String>,
        /// How the pins relate to Web PKI.
        #[arg(long, value_enum)]
        trust: Option<TrustArg>,
        /// Enforce or only report mismatches.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// When the pins stop being enforced (RFC 3339, or YYYY-MM-DD).
        #[arg(long)]
        expires: Option<String>,
        /// Extra trust anchors (PEM) for Web PKI validation.
        #[arg(long)]
        roots: Vec<PathBuf>,
        /// Do not ask: pin the leaf.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Do not record the peer's Matrix signing keys (its requests are
        /// then checked with keys fedpin fetches over pinned TLS).
        #[arg(long)]
        no_signing_keys: bool,
        /// Free-form note stored with the entry.
        #[arg(long)]
        note: Option<String>,
    },
    /// List the peers (a broken pin file: errors on stderr, exit 64).
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a peer.
    Remove {
        /// Matrix server name.
        server_name: String,
    },
    /// Connect to peers now and check they still match their pins.
    Verify {
        /// Peers to check (default: all).
        server_names: Vec<String>,
        /// Extra trust anchors (PEM).
        #[arg(long)]
        roots: Vec<PathBuf>,
        /// Connect here instead of resolving (only with one server name).
        #[arg(long, value_name = "HOST:PORT")]
        connect: Option<String>,
        /// During discovery, dial ADDR:PORT2 for connections meant for
        /// HOST:PORT (like curl's --connect-to); repeatable.
        #[arg(long = "connect-to", value_name = "HOST:PORT:ADDR:PORT2")]
        connect_to: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Per-peer timeout in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Lint the pin file: findings on stdout, exit 1 on errors.
    Check,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the pins of PEM/DER certificates or public keys (`-` reads stdin).
    Hash {
        /// File to read, or `-`.
        file: String,
    },
}
