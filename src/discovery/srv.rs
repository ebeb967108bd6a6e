//! SRV lookups (`_matrix-fed._tcp`, then the deprecated `_matrix._tcp`):
//! the backend trait, the system resolver (hickory) and the record choice.

use super::*;

/// The future returned by [`SrvLookup::lookup_srv`].
pub type SrvFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<SrvTarget>, DiscoveryError>> + Send + 'a>>;

/// SRV lookup abstraction so tests can stub DNS.
pub trait SrvLookup: Send + Sync {
    /// Looks up the SRV records named `name` (e.g. `_matrix-fed._tcp.example.org`).
    ///
    /// Must return `Ok(vec![])` when the name does not exist or has no SRV
    /// records, and `Err` only for real failures (which stop resolution).
    fn lookup_srv<'a>(&'a self, name: &'a str) -> SrvFuture<'a>;
}

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Priority: lower is preferred.
    pub priority: u16,
    /// Weight among records of equal priority: higher is preferred here.
    pub weight: u16,
    /// Port to dial.
    pub port: u16,
    /// Host to dial, lowercased, without trailing dot (`.` means "service not
    /// available").
    pub target: String,
}

/// [`SrvLookup`] backed by hickory's Tokio resolver.
#[derive(Clone)]
pub struct HickorySrv {
    resolver: TokioResolver,
}

impl HickorySrv {
    /// Builds a resolver from the system configuration (`/etc/resolv.conf`);
    /// if that cannot be read, logs a warning and falls back to hickory's
    /// default configuration (Google public DNS).
    pub fn from_system() -> Self {
        let builder = match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot read system DNS configuration; using hickory's default resolvers"
                );
                TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioConnectionProvider::default(),
                )
            }
        };
        Self {
            resolver: builder.build(),
        }
    }

    /// Wraps an already configured resolver.
    pub fn with_resolver(resolver: TokioResolver) -> Self {
        Self { resolver }
    }
}

impl fmt::Debug for HickorySrv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickorySrv").finish_non_exhaustive()
    }
}

impl SrvLookup for HickorySrv {
    fn lookup_srv<'a>(&'a self, name: &'a str) -> SrvFuture<'a> {
        Box::pin(async move {
            // Fully qualify so resolv.conf search domains are never appended.
            let fqdn = if name.ends_with('.') {
                name.to_owned()
            } else {
                format!("{name}.")
            };
            match self.resolver.srv_lookup(fqdn.as_str()).await {
                Ok(lookup) => Ok(lookup
                    .iter()
                    .map(|srv| SrvTarget {
                        priority: srv.priority(),
                        weight: srv.weight(),
                        port: srv.port(),
                        target: normalize_srv_target(&srv.target().to_ascii()),
                    })
                    .collect()),
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
                Err(e) => Err(DiscoveryError::Srv {
                    name: name.to_owned(),
                    reason: e.to_string(),
                }),
            }
        })
    }
}

/// Lowercases and drops the trailing dot, keeping the root name as `.`.
pub(super) fn normalize_srv_target(target: &str) -> String {
    if target == "." {
        return ".".to_owned();
    }
    target
        .strip_suffix('.')
        .unwrap_or(target)
        .to_ascii_lowercase()
}

/// Pure choice among SRV answers.
///
/// Records whose target is `.` (RFC 2782: service explicitly unavailable) or
/// empty, or whose port is 0, are ignored; if nothing is left the result is
/// `None`, which callers treat as "no records". Among the rest, the lowest
/// priority wins, then the highest weight; remaining ties go to the record
/// listed first. This is deterministic (no RFC 2782 weighted random choice),
/// so repeated `pinctl add` runs pick the same endpoint.
pub fn pick_srv(records: &[SrvTarget]) -> Option<&SrvTarget> {
    records
        .iter()
        .filter(|r| {
            let t = r.target.trim_end_matches('.');
            !t.is_empty() && r.port != 0
        })
        .min_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then_with(|| b.weight.cmp(&a.weight))
        })
}
