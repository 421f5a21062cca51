//! IP networks in CIDR notation (`10.0.0.0/8`, `fd00::/8`): parsing, containment, display.
//!
//! Parsing is strict: an address with host bits set under its prefix (`10.0.0.1/8`) is refused
//! rather than silently widened, and a bare address is a network of one (`/32`, `/128`).
//! IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are looked up as the IPv4 address they are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network: an address whose bits past the prefix are zero, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("{0:?} is not an IP network: expected ADDRESS/PREFIX such as 10.0.0.0/8")]
    Address(String),
    /// The prefix is not a number within the address family's width.
    #[error("{0:?}: the prefix must be 0-32 for IPv4 and 0-128 for IPv6")]
    Prefix(String),
    /// Bits are set past the prefix.
    #[error("{given:?} has host bits set: did you mean {network}?")]
    HostBits {
        /// What was written.
        given: String,
        /// The network it lies in.
        network: Cidr,
    },
}

fn width(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    let all = if width == 32 { u128::from(u32::MAX) } else { u128::MAX };
    all & !all.checked_shr(u32::from(prefix)).unwrap_or(0)
}

fn from_bits(v: u128, v4: bool) -> IpAddr {
    if v4 { IpAddr::V4(Ipv4Addr::from(v as u32)) } else { IpAddr::V6(Ipv6Addr::from(v)) }
}

impl Cidr {
    /// The network `addr/prefix`; refused when `addr` has bits set past the prefix.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let w = width(addr);
        if prefix > w {
            return Err(CidrError::Prefix(format!("{addr}/{prefix}")));
        }
        let network = Cidr::containing(addr, prefix);
        if network.addr != addr {
            return Err(CidrError::HostBits { given: format!("{addr}/{prefix}"), network });
        }
        Ok(network)
    }

    /// The network of `prefix` bits that `addr` lies in (`prefix` is clamped to the width).
    pub fn containing(addr: IpAddr, prefix: u8) -> Cidr {
        let w = width(addr);
        let prefix = prefix.min(w);
        Cidr { addr: from_bits(bits(addr) & mask(prefix, w), addr.is_ipv4()), prefix }
    }

    /// The network of just `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = addr.to_canonical();
        Cidr { addr, prefix: width(addr) }
    }

    /// The network an interface address and netmask describe (`None` for a non-contiguous mask
    /// or mixed families).
    pub fn from_netmask(addr: IpAddr, netmask: IpAddr) -> Option<Cidr> {
        if addr.is_ipv4() != netmask.is_ipv4() {
            return None;
        }
        let w = width(addr);
        let m = bits(netmask);
        let prefix = if w == 32 { (m as u32).leading_ones() } else { m.leading_ones() } as u8;
        (mask(prefix, w) == m).then(|| Cidr::containing(addr, prefix))
    }

    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network's last address (its broadcast address, for IPv4).
    pub fn last(&self) -> IpAddr {
        let w = width(self.addr);
        let all = if w == 32 { u128::from(u32::MAX) } else { u128::MAX };
        from_bits(bits(self.addr) | (all & !mask(self.prefix, w)), self.addr.is_ipv4())
    }

    /// Whether `ip` lies in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && bits(ip) & mask(self.prefix, width(ip)) == bits(self.addr)
    }

    /// Whether all of `other` lies in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address(s.to_string()))?;
        let prefix = match prefix {
            None => width(addr),
            Some(p) => match p.parse::<u8>() {
                Ok(n) if !p.starts_with('+') => n,
                _ => return Err(CidrError::Prefix(s.to_string())),
            },
        };
        Cidr::new(addr, prefix)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_print() {
        for s in ["10.0.0.0/8", "172.16.0.0/12", "0.0.0.0/0", "10.1.2.3/32", "fc00::/7", "::/0", "::1/128"] {
            assert_eq!(net(s).to_string(), s);
        }
        assert_eq!(net("10.1.2.3"), net("10.1.2.3/32"), "a bare address is one host");
        assert_eq!(net("fe80::1").prefix(), 128);
        assert_eq!(net(" 192.168.0.0/16 ").prefix(), 16);
    }

    #[test]
    fn bad_networks_are_refused_with_a_reason() {
        assert!(
            matches!("10.0.0.1/8".parse::<Cidr>(), Err(CidrError::HostBits { network, .. }) if network == net("10.0.0.0/8"))
        );
        assert!("10.0.0.1/8".parse::<Cidr>().unwrap_err().to_string().contains("did you mean 10.0.0.0/8"));
        for bad in [
            "10.0.0.0/33",
            "fc00::/129",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "10.0.0/8",
            "ten/8",
            "",
            "/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn containment() {
        let ten = net("10.0.0.0/8");
        assert!(ten.contains(ip("10.255.1.2")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(!ten.contains(ip("::a00:1")), "an IPv6 address is not in an IPv4 network");
        assert!(ten.contains(ip("::ffff:10.0.0.1")), "an IPv4-mapped address is its IPv4 address");
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(net("fc00::/7").contains(ip("fd12:3456::1")));
        assert!(!net("fc00::/7").contains(ip("fe80::1")));
        assert!(ten.covers(&net("10.1.0.0/16")) && !net("10.1.0.0/16").covers(&ten));
        assert_eq!(net("192.168.1.0/24").last(), ip("192.168.1.255"));
        assert_eq!(Cidr::containing(ip("172.20.3.4"), 12), net("172.16.0.0/12"));
    }

    #[test]
    fn netmasks_make_networks() {
        assert_eq!(Cidr::from_netmask(ip("172.18.0.3"), ip("255.255.0.0")), Some(net("172.18.0.0/16")));
        assert_eq!(Cidr::from_netmask(ip("fd00::5"), ip("ffff:ffff::")), Some(net("fd00::/32")));
        assert_eq!(Cidr::from_netmask(ip("10.0.0.1"), ip("255.0.255.0")), None);
        assert_eq!(Cidr::from_netmask(ip("10.0.0.1"), ip("::")), None);
    }
}
