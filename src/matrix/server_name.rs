//! Server names: parsing and the canonical form (hostname or IP literal,
//! optional port) that every later step and the pin file use.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest accepted server name, per the Matrix grammar.
const MAX_SERVER_NAME_LEN: usize = 255;

/// Longest DNS name (without the trailing dot).
const MAX_DNS_NAME_LEN: usize = 253;

/// Longest DNS label.
const MAX_DNS_LABEL_LEN: usize = 63;

/// A server name that does not follow the Matrix server-name grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server name {input:?}: {reason}")]
pub struct InvalidServerName {
    /// The text that was parsed.
    pub input: String,
    /// Which part is wrong and why.
    pub reason: String,
}

/// The host part of a Matrix server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lowercased, without a trailing dot.
    Dns(String),
    /// An IPv4 or IPv6 address literal.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    /// Writes the bare host: the DNS name or the IP address text
    /// (IPv6 without brackets, as used for SNI and certificate checks).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Dns(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A parsed Matrix server name: host (DNS name, IPv4, or IPv6 literal without
/// brackets) and optional explicit port.
///
/// Parsing ([`FromStr`]) follows the grammar of the Matrix specification
/// (appendix "Server Name"):
///
/// * a DNS name of letters, digits, `-` and `.`; it is lowercased and one
///   trailing dot is removed. Each label must be 1–63 characters and must not
///   start or end with `-`; the whole name must be at most 253 characters and
///   its last label must not be all digits;
/// * a dotted-quad IPv4 address (anything made only of digits and dots must
///   be one);
/// * an IPv6 address in brackets, e.g. `[::1]` (no zone identifier);
/// * optionally followed by `:PORT`, with PORT a decimal number in 1..=65535.
///
/// [`Display`](fmt::Display) writes the canonical form, e.g. `example.org`,
/// `example.org:8448`, `192.0.2.1`, `[::1]:8448`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerName {
    /// The host part.
    pub host: Host,
    /// The explicit port, if the name carried one.
    pub port: Option<u16>,
}

impl FromStr for ServerName {
    type Err = InvalidServerName;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse_server_name(input).map_err(|reason| InvalidServerName {
            input: input.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Dns(name) => f.write_str(name)?,
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Parses a server name; the error is the reason (without the input, which
/// the caller adds).
pub(crate) fn parse_server_name(input: &str) -> Result<ServerName, String> {
    if input.is_empty() {
        return Err("it is empty".to_owned());
    }
    if input.len() > MAX_SERVER_NAME_LEN {
        return Err(format!(
            "it is {} bytes long; the maximum is {MAX_SERVER_NAME_LEN}",
            input.len()
        ));
    }

    if let Some(rest) = input.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err("the IPv6 literal is missing its closing ']'".to_owned());
        };
        let ip = parse_ipv6_literal(inner)?;
        let port = if after.is_empty() {
            None
        } else if let Some(port) = after.strip_prefix(':') {
            Some(parse_port(port)?)
        } else {
            return Err(format!(
                "unexpected {after:?} after the IPv6 literal; expected \":PORT\" or nothing"
            ));
        };
        return Ok(ServerName {
            host: Host::Ip(IpAddr::V6(ip)),
            port,
        });
    }

    if input.matches(':').count() > 1 {
        return Err(
            "an IPv6 address must be enclosed in brackets, e.g. \"[::1]\" or \"[::1]:8448\""
                .to_owned(),
        );
    }
    let (host, port) = match input.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (input, None),
    };
    Ok(ServerName {
        host: parse_host(host)?,
        port,
    })
}

/// `Ok` when `text` is not empty and every character is `allowed`; else the
/// message for an empty text, or the one `bad` writes for the first
/// character that is not allowed.
fn only(
    text: &str,
    allowed: impl Fn(char) -> bool,
    empty: &str,
    bad: impl FnOnce(char) -> String,
) -> Result<(), String> {
    if text.is_empty() {
        return Err(empty.to_owned());
    }
    match text.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(bad(c)),
        None => Ok(()),
    }
}

/// Parses the text between `[` and `]`.
pub(crate) fn parse_ipv6_literal(inner: &str) -> Result<Ipv6Addr, String> {
    only(
        inner,
        |c| c.is_ascii_hexdigit() || c == ':' || c == '.',
        "the IPv6 literal between the brackets is empty",
        |bad| {
            format!(
                "invalid character {bad:?} in IPv6 literal {inner:?} \
                 (allowed: hex digits, ':' and '.'; zone identifiers are not allowed)"
            )
        },
    )?;
    Ipv6Addr::from_str(inner).map_err(|_| format!("{inner:?} is not a valid IPv6 address"))
}

/// Parses the text after `:`.
pub(crate) fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("the port after ':' is empty".to_owned());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a decimal number"));
    }
    match port.parse::<u16>() {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("port {port:?} is out of range (1-65535)")),
    }
}

/// Parses an unbracketed host: IPv4 dotted quad or DNS name.
pub(crate) fn parse_host(host: &str) -> Result<Host, String> {
    only(
        host,
        |c| c.is_ascii_alphanumeric() || c == '-' || c == '.',
        "the host part is empty",
        |bad| {
            format!("invalid character {bad:?} in host {host:?} (allowed: letters, digits, '-' and '.')")
        },
    )?;
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Ipv4Addr::from_str(host)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|_| {
                format!("{host:?} looks like an IPv4 address but is not a valid dotted quad")
            });
    }

    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(format!("host {host:?} has no labels"));
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(format!(
            "host is {} characters long; a DNS name is at most {MAX_DNS_NAME_LEN}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "host {host:?} has an empty label (leading dot or \"..\")"
            ));
        }
        if label.len() > MAX_DNS_LABEL_LEN {
            return Err(format!(
                "label {label:?} in host {host:?} is longer than {MAX_DNS_LABEL_LEN} characters"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "label {label:?} in host {host:?} starts or ends with '-'"
            ));
        }
    }
    if let Some(last) = name.rsplit('.').next() {
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "the last label {last:?} of host {host:?} is all digits, which is not a valid host name"
            ));
        }
    }
    Ok(Host::Dns(name.to_ascii_lowercase()))
}
