//! The local interception CA (`fedpin ca init`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Errors creating the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file already exists; the CA is never overwritten.
    #[error("{0} already exists; refusing to overwrite an interception CA (move it away first)")]
    Exists(String),
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// The file that could not be read or written.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Key or certificate generation failed.
    #[error("cannot generate the CA: {0}")]
    Generate(String),
}

/// The files written.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// Certificate (PEM), to give Synapse as `federation_custom_ca_list`.
    pub cert: PathBuf,
    /// Private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// A P-256 interception CA named `common_name`: may sign end-entity
/// certificates only (path length 0), valid from an hour ago for ten years.
pub fn generate(common_name: &str) -> Result<(rcgen::Certificate, KeyPair), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Generate(e.to_string()))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CaError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fedpin");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Generate(e.to_string()))?;
    Ok((cert, key))
}

/// Creates a P-256 interception CA in `dir` (`fedpin-ca.pem`, `fedpin-ca.key`).
pub fn init_ca(dir: &Path) -> Result<CaFiles, CaError> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| CaError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert_path = dir.join("fedpin-ca.pem");
    let key_path = dir.join("fedpin-ca.key");
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(CaError::Exists(p.display().to_string()));
        }
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let (cert, key) = generate(&format!("fedpin interception CA ({host})"))?;

    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut kf = opts.open(&key_path).map_err(io(&key_path))?;
    kf.write_all(key.serialize_pem().as_bytes())
        .map_err(io(&key_path))?;
    kf.sync_all().map_err(io(&key_path))?;
    let mut cf = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&cert_path)
        .map_err(io(&cert_path))?;
    cf.write_all(cert.pem().as_bytes())
        .map_err(io(&cert_path))?;
    cf.sync_all().map_err(io(&cert_path))?;
    Ok(CaFiles {
        cert: cert_path,
        key: key_path,
    })
}

/// The Synapse configuration that points federation at fedpin outbound.
pub fn synapse_snippet(ca_cert: &Path, proxy: &str) -> String {
    format!(
        "# homeserver.yaml (Synapse >= 1.136 reads https_proxy here; older: set HTTPS_PROXY in Synapse's environment)\n\
         federation_custom_ca_list:\n  - {}\n\
         # Synapse must trust ONLY fedpin's CA for federation, so traffic that bypasses fedpin fails closed.\n\
         # Environment (systemd: Environment=...):\n\
         #   HTTPS_PROXY=http://{proxy}\n\
         #   no_proxy must NOT list federation peers (or '*').\n",
        ca_cert.display()
    )
}

/// Refuses a private key file readable by group or others (fedpin's CA key
/// can impersonate any server to the homeserver). Ok on non-Unix systems.
pub fn check_key_mode(key: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(key).map_err(|e| format!("{}: {e}", key.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is readable by group or others (mode {mode:o}); run chmod 600 on it",
                key.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = key;
    Ok(())
}
