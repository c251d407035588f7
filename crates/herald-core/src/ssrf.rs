//! The SSRF guard: which addresses a subscriber URL may reach. The dispatcher applies it to
//! every address its resolver returns, at connect time, so a name that resolves to something
//! else later (DNS rebinding) cannot slip past a check made when the subscription was created.
//! The gateway applies it to IP literals when a subscription is created, for early feedback.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP network such as `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` (a bare address is a single host).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not a CIDR (e.g. 10.1.0.0/16)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{text:?}: bad prefix length"))?
            }
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// True if `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses a comma-separated list of CIDRs (`HERALD_ALLOW_NETWORKS`).
pub fn parse_networks(text: &str) -> Result<Vec<Cidr>, String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Cidr::parse).collect()
}

/// A list of networks as one configuration value (`HERALD_ALLOW_NETWORKS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<Cidr>);

impl Networks {
    /// Parses a comma-separated list of CIDRs; empty is none.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_networks(text).map(Self)
    }
}

/// Why an address or URL may not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by the SSRF guard: {0}")]
pub struct Refused(pub String);

/// What subscriber URLs may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Networks reachable despite the rules (e.g. `127.0.0.0/8` for local development).
    pub allow: Vec<Cidr>,
    /// Refuse plain `http` URLs.
    pub https_only: bool,
}

impl Policy {
    /// Checks one address a connection would go to.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.allow.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        match forbidden(ip) {
            Some(why) => Err(Refused(format!("{ip} is {why}"))),
            None => Ok(()),
        }
    }

    /// The addresses of `resolved` a connection may go to; the last refusal when none may.
    pub fn allowed(&self, resolved: Vec<std::net::SocketAddr>) -> Result<Vec<std::net::SocketAddr>, Refused> {
        let mut refusal = None;
        let allowed: Vec<std::net::SocketAddr> = resolved
            .into_iter()
            .filter(|a| match self.check_ip(a.ip()) {
                Ok(()) => true,
                Err(r) => {
                    refusal = Some(r);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            return Err(refusal.unwrap_or_else(|| Refused("resolved to no address".into())));
        }
        Ok(allowed)
    }

    /// Checks what can be checked of a URL without resolving it: the scheme, and the host when
    /// it is an IP literal (in any spelling the URL parser normalises: decimal, octal, hex).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            "http" => return Err(Refused("plain http is not allowed (HERALD_HTTPS_ONLY)".into())),
            other => return Err(Refused(format!("scheme {other:?} is not allowed"))),
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(Refused("the URL has no host".into())),
        }
    }
}

/// The class of a forbidden address, or `None` for an ordinary public one.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    Cidr { addr: IpAddr::V4(Ipv4Addr::from(net)), prefix }.contains(IpAddr::V4(ip))
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let rules: &[([u8; 4], u8, &'static str)] = &[
        ([0, 0, 0, 0], 8, "an unspecified (\"this network\") address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([100, 64, 0, 0], 10, "a carrier-grade NAT address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([169, 254, 0, 0], 16, "a link-local (cloud metadata) address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 0, 0, 0], 24, "an IETF protocol address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([192, 88, 99, 0], 24, "a 6to4 relay address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved (or broadcast) address"),
    ];
    rules.iter().find(|(net, prefix, _)| in4(ip, *net, *prefix)).map(|(_, _, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    // Addresses that carry an IPv4 address are refused: by the IPv4 address's class, or as a
    // translated route around the rules even when that address is public.
    if let Some(v4) = embedded_v4(ip) {
        return Some(forbidden_v4(v4).unwrap_or("an IPv6 address embedding IPv4"));
    }
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    let first = seg[0];
    if first & 0xfe00 == 0xfc00 {
        return Some("a unique local (private) address");
    }
    if first & 0xffc0 == 0xfe80 {
        return Some("a link-local address");
    }
    if first & 0xffc0 == 0xfec0 {
        return Some("a site-local address");
    }
    if first & 0xff00 == 0xff00 {
        return Some("a multicast address");
    }
    if first == 0x2001 && seg[1] == 0x0db8 {
        return Some("a documentation address");
    }
    if first == 0x0100 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 {
        return Some("a discard-only address");
    }
    None
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) != (0, 0) && (hi, lo) != (0, 1) => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        Policy::default().check_ip(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn forbidden_addresses() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.100.100.200",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "100::1",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses() {
        for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "2a00:1450::1"] {
            assert!(!refused(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn the_allowlist_wins() {
        let policy = Policy { allow: parse_networks("127.0.0.0/8, ::1/128").unwrap(), https_only: false };
        policy.check_ip("127.0.0.1".parse().unwrap()).unwrap();
        policy.check_ip("::1".parse().unwrap()).unwrap();
        assert!(policy.check_ip("10.0.0.1".parse().unwrap()).is_err());
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("nope").is_err());
        assert_eq!(Cidr::parse("10.1.0.0/16").unwrap().to_string(), "10.1.0.0/16");
    }

    #[test]
    fn odd_spellings_are_normalised_before_checking() {
        let p = Policy::default();
        for url in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://[fd00:ec2::254]/",
            "HTTP://127.0.0.1/",
        ] {
            let parsed = url::Url::parse(url).unwrap();
            assert!(p.check_url(&parsed).is_err(), "{url} should be refused");
        }
        p.check_url(&url::Url::parse("https://example.com/").unwrap()).unwrap();
        let strict = Policy { https_only: true, ..Policy::default() };
        assert!(strict.check_url(&url::Url::parse("http://example.com/").unwrap()).is_err());
        assert!(p.check_url(&url::Url::parse("ftp://example.com/").unwrap()).is_err());
    }
}
