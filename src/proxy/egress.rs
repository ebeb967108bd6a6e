//! Egress IP policy for the outbound proxy.
//!
//! Synapse does not apply its `ip_range_blacklist` to proxied connections;
//! its documentation expects the proxy to. fedpin refuses by default the
//! ranges Synapse's `DEFAULT_IP_RANGE_BLOCKLIST` names (plus the unspecified
//! and reserved ranges), checked on the address actually dialled, so DNS
//! rebinding cannot slip past. `deny_ips` always wins; `allow_ips` re-opens
//! ranges (tests allow 127.0.0.0/8).

use std::net::IpAddr;

use ipnet::IpNet;

/// The default refused ranges (Synapse's `DEFAULT_IP_RANGE_BLOCKLIST` plus
/// `0.0.0.0/8`, `240.0.0.0/4`, broadcast, `::/128`).
pub const DEFAULT_BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
];

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It is in `deny_ips`.
    Denied(IpNet),
    /// It is in a special-purpose range and not in `allow_ips`.
    SpecialPurpose(IpNet),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Denied(n) => write!(f, "in deny_ips ({n})"),
            Refusal::SpecialPurpose(n) => write!(
                f,
                "in the special-purpose range {n} (add it to allow_ips to permit)"
            ),
        }
    }
}

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    blocked: Vec<IpNet>,
}

impl EgressPolicy {
    /// Builds the policy from config lists.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        let blocked = DEFAULT_BLOCKED
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        EgressPolicy {
            allow,
            deny,
            blocked,
        }
    }

    /// Checks one address (IPv4-mapped IPv6 is checked as IPv4).
    pub fn check(&self, addr: IpAddr) -> Result<(), Refusal> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        if let Some(n) = self.deny.iter().find(|n| n.contains(&addr)) {
            return Err(Refusal::Denied(*n));
        }
        if self.allow.iter().any(|n| n.contains(&addr)) {
            return Ok(());
        }
        if let Some(n) = self.blocked.iter().find(|n| n.contains(&addr)) {
            return Err(Refusal::SpecialPurpose(*n));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_blocks_special_ranges() {
        let p = EgressPolicy::new(vec![], vec![]);
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
        ] {
            assert!(p.check(a.parse().unwrap()).is_err(), "{a}");
        }
        for a in ["1.1.1.1", "2606:4700::1111", "8.8.8.8"] {
            assert!(p.check(a.parse().unwrap()).is_ok(), "{a}");
        }
    }

    #[test]
    fn allow_and_deny_override() {
        let p = EgressPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap()],
            vec![
                "1.1.1.0/24".parse().unwrap(),
                "127.0.0.2/32".parse().unwrap(),
            ],
        );
        assert!(p.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(matches!(
            p.check("127.0.0.2".parse().unwrap()),
            Err(Refusal::Denied(_))
        ));
        assert!(matches!(
            p.check("1.1.1.1".parse().unwrap()),
            Err(Refusal::Denied(_))
        ));
    }
}
