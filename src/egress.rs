//! Egress IP policy for the outbound proxy.
//!
//! Synapse does not apply its `ip_range_blacklist` to proxied connections;
//! its documentation expects the proxy to. fedpin refuses by default the
//! ranges Synapse's `DEFAULT_IP_RANGE_BLOCKLIST` names (plus the unspecified
//! and reserved ranges), checked on the address actually dialled, so DNS
//! rebinding cannot slip past. `deny_ips` always wins; `allow_ips` re-opens
//! ranges (tests allow 127.0.0.0/8).
//!
//! IPv6 addresses that carry an IPv4 address are judged by the IPv4 address
//! inside ([`embedded_ipv4`]): IPv4-mapped `::ffff:0:0/96` is IPv4 outright;
//! the tunnelled forms (NAT64 `64:ff9b::/96`, 6to4 `2002::/16`,
//! IPv4-compatible `::/96`, Teredo `2001::/32`) are refused when the IPv4
//! address inside is refused, unless an `allow_ips` entry covers the IPv6
//! address itself (an IPv4 entry such as `127.0.0.0/8` opens loopback, not a
//! translator's path to it). NAT64 local-use `64:ff9b:1::/48`, where the
//! IPv4 address may sit anywhere, is refused by default. Unwrapping rather
//! than refusing these ranges outright keeps IPv6-only hosts behind DNS64
//! federating with IPv4-only peers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    // NAT64 local-use prefix (RFC 8215): the embedded IPv4 address's place
    // depends on the operator's prefix length, so it cannot be unwrapped.
    "64:ff9b:1::/48",
];

/// An IPv6 form that carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// IPv4-mapped `::ffff:a.b.c.d` (the socket dials the IPv4 address).
    Mapped,
    /// IPv4-compatible `::a.b.c.d` (deprecated, RFC 4291).
    Compatible,
    /// NAT64 well-known prefix `64:ff9b::a.b.c.d` (RFC 6052).
    Nat64,
    /// 6to4 `2002:AABB:CCDD::/48` (RFC 3056).
    SixToFour,
    /// Teredo `2001:0::/32` (RFC 4380): server and (obfuscated) client address.
    Teredo,
}

impl Embedding {
    /// The IPv6 range of this form.
    pub fn range(self) -> IpNet {
        let (addr, len) = match self {
            Embedding::Mapped => (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
            Embedding::Compatible => (Ipv6Addr::UNSPECIFIED, 96),
            Embedding::Nat64 => (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
            Embedding::SixToFour => (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
            Embedding::Teredo => (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
        };
        IpNet::V6(ipnet::Ipv6Net::new(addr, len).unwrap_or_default())
    }
}

/// The IPv4 address(es) an IPv6 address carries, and in which form
/// (`None` for an ordinary IPv6 address). Teredo yields the server and the
/// client address; every other form one address. `::` and `::1` are not
/// IPv4-compatible addresses (they are the unspecified and loopback addresses).
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<(Embedding, Vec<Ipv4Addr>)> {
    let s = v6.segments();
    let o = v6.octets();
    let low32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some((Embedding::Mapped, vec![v4]));
    }
    if s[..6] == [0; 6] {
        if s[6] == 0 && s[7] <= 1 {
            return None;
        }
        return Some((Embedding::Compatible, vec![low32]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((Embedding::Nat64, vec![low32]));
    }
    if s[0] == 0x2002 {
        return Some((
            Embedding::SixToFour,
            vec![Ipv4Addr::new(o[2], o[3], o[4], o[5])],
        ));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::new(o[4], o[5], o[6], o[7]);
        let client = Ipv4Addr::from(!u32::from(low32));
        return Some((Embedding::Teredo, vec![server, client]));
    }
    None
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It is in `deny_ips`.
    Denied(IpNet),
    /// It is in a special-purpose range and not in `allow_ips`.
    SpecialPurpose(IpNet),
    /// An IPv6 address of `form` that carries `v4`, which is refused for
    /// `why` (and no `allow_ips` entry covers the IPv6 address).
    Embedded {
        /// The IPv6 form.
        form: Embedding,
        /// The IPv4 address inside.
        v4: Ipv4Addr,
        /// Why the IPv4 address is refused.
        why: Box<Refusal>,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Denied(n) => write!(f, "in deny_ips ({n})"),
            Refusal::SpecialPurpose(n) => write!(
                f,
                "in the special-purpose range {n} (add it to allow_ips to permit)"
            ),
            Refusal::Embedded { form, v4, why } => match **why {
                Refusal::Denied(n) => write!(
                    f,
                    "carries the IPv4 address {v4} ({}), which is in deny_ips ({n})",
                    form.range()
                ),
                Refusal::SpecialPurpose(n) => write!(
                    f,
                    "carries the IPv4 address {v4} ({}), which is in the special-purpose range {n} (add the IPv6 address or {} to allow_ips to permit)",
                    form.range(),
                    form.range()
                ),
                Refusal::Embedded { .. } => write!(f, "carries the IPv4 address {v4} ({})", form.range()),
            },
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

    /// Checks one address. IPv4-mapped IPv6 is checked as IPv4; the other
    /// IPv6 forms that carry an IPv4 address (see [`embedded_ipv4`]) are
    /// refused when the IPv4 address inside is in `deny_ips` or a refused
    /// range, unless `allow_ips` covers the IPv6 address itself.
    pub fn check(&self, addr: IpAddr) -> Result<(), Refusal> {
        let embedded = match addr {
            IpAddr::V6(v6) => embedded_ipv4(v6),
            IpAddr::V4(_) => None,
        };
        if let Some((Embedding::Mapped, v4)) = &embedded {
            if let Some(v4) = v4.first() {
                return self.check_direct(IpAddr::V4(*v4));
            }
        }
        if let Some(n) = self.deny.iter().find(|n| n.contains(&addr)) {
            return Err(Refusal::Denied(*n));
        }
        if let Some((form, v4s)) = embedded {
            for v4 in v4s {
                let inner = IpAddr::V4(v4);
                if let Some(n) = self.deny.iter().find(|n| n.contains(&inner)) {
                    return Err(Refusal::Embedded {
                        form,
                        v4,
                        why: Box::new(Refusal::Denied(*n)),
                    });
                }
                if self.allow.iter().any(|n| n.contains(&addr)) {
                    continue;
                }
                if let Some(n) = self.blocked.iter().find(|n| n.contains(&inner)) {
                    return Err(Refusal::Embedded {
                        form,
                        v4,
                        why: Box::new(Refusal::SpecialPurpose(*n)),
                    });
                }
            }
        }
        self.check_direct(addr)
    }

    /// `deny_ips`, then `allow_ips`, then the refused ranges, on `addr` as it is.
    fn check_direct(&self, addr: IpAddr) -> Result<(), Refusal> {
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
    fn embedded_ipv4_is_found_in_each_form() {
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let e = |s: &str| embedded_ipv4(s.parse().unwrap());
        let cases: &[(&str, Embedding, &[&str])] = &[
            ("::ffff:10.0.0.1", Embedding::Mapped, &["10.0.0.1"]),
            ("::127.0.0.1", Embedding::Compatible, &["127.0.0.1"]),
            ("::2", Embedding::Compatible, &["0.0.0.2"]),
            ("64:ff9b::7f00:1", Embedding::Nat64, &["127.0.0.1"]),
            ("64:ff9b::808:808", Embedding::Nat64, &["8.8.8.8"]),
            ("2002:7f00:1::", Embedding::SixToFour, &["127.0.0.1"]),
            ("2002:c0a8:101:5::1", Embedding::SixToFour, &["192.168.1.1"]),
            // RFC 4380's example: server 65.54.227.120, client 192.0.2.45.
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                Embedding::Teredo,
                &["65.54.227.120", "192.0.2.45"],
            ),
        ];
        for (v6, how, v4s) in cases {
            let want = v4s.iter().map(|s| v4(s)).collect();
            assert_eq!(e(v6), Some((*how, want)), "{v6}");
        }
        for plain in [
            "::",
            "::1",
            "2606:4700::1111",
            "2001:db8::1",
            "2001:4860::1",
            "64:ff9b:1::1",
            "fe80::1",
        ] {
            assert_eq!(e(plain), None, "{plain}");
        }
        for form in [
            Embedding::Mapped,
            Embedding::Compatible,
            Embedding::Nat64,
            Embedding::SixToFour,
            Embedding::Teredo,
        ] {
            assert!(form.range().prefix_len() > 0, "{form:?}");
        }
        assert_eq!(Embedding::Nat64.range().to_string(), "64:ff9b::/96");
    }

    #[test]
    fn ipv6_forms_are_judged_by_the_ipv4_inside() {
        // The outbound tests' policy: loopback allowed as IPv4.
        let p = EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]);
        for a in [
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::7f00:1",
            "64:ff9b:1:ffff::1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "::127.0.0.1",
            "::10.0.0.1",
            "2001:0:7f00:1::",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
        ] {
            let r = p.check(a.parse().unwrap());
            assert!(r.is_err(), "{a} allowed");
            assert!(r.unwrap_err().to_string().contains("allow_ips"), "{a}");
        }
        // Mapped is IPv4 outright, so the IPv4 allow entry applies.
        assert!(p.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        // Public IPv4 inside: allowed (DNS64 answers for IPv4-only peers).
        for a in [
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        ] {
            assert_eq!(p.check(a.parse().unwrap()), Ok(()), "{a}");
        }
        assert!(matches!(
            p.check("64:ff9b::7f00:1".parse().unwrap()),
            Err(Refusal::Embedded {
                form: Embedding::Nat64,
                ..
            })
        ));
        assert!(matches!(
            p.check("64:ff9b:1::7f00:1".parse().unwrap()),
            Err(Refusal::SpecialPurpose(_))
        ));

        // An explicit allow entry for the IPv6 range re-opens it ...
        let open = EgressPolicy::new(
            vec![
                "64:ff9b::/96".parse().unwrap(),
                "2002:7f00:1::/48".parse().unwrap(),
                "64:ff9b:1::/48".parse().unwrap(),
            ],
            vec!["10.0.0.0/8".parse().unwrap()],
        );
        for a in ["64:ff9b::7f00:1", "2002:7f00:1::", "64:ff9b:1::7f00:1"] {
            assert_eq!(open.check(a.parse().unwrap()), Ok(()), "{a}");
        }
        // ... but deny_ips on the IPv4 inside still wins.
        match open.check("64:ff9b::a00:1".parse().unwrap()) {
            Err(Refusal::Embedded { why, .. }) => assert!(matches!(*why, Refusal::Denied(_))),
            r => panic!("{r:?}"),
        }
        // deny_ips on the IPv6 address itself, too.
        let deny6 = EgressPolicy::new(vec![], vec!["64:ff9b::/96".parse().unwrap()]);
        assert!(matches!(
            deny6.check("64:ff9b::808:808".parse().unwrap()),
            Err(Refusal::Denied(_))
        ));
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
