//! Which member addresses a pool may route to: the admission policy for backends.
//!
//! A member's address is its own claim, so a pool routes only to addresses inside networks
//! it accepts. With `accept_networks` set, those networks; without, a default that works
//! unchanged on one host, in compose, in a swarm overlay and across Kubernetes nodes: the
//! private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), the networks of the
//! host's own interfaces, and loopback only when the balancer's own gossip address is loopback.
//!
//! Whatever the accepted networks, some targets are refused unless a listed network lies
//! inside them: link-local addresses (169.254/16 with the cloud metadata services, fe80::/10),
//! unspecified, multicast and broadcast addresses. An address and port the balancer itself
//! listens on (a frontend, the stats or admin listener) is refused unless that very address
//! is listed (`/32`, `/128`): proxying to itself would loop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::cidr::Cidr;

/// The ranges accepted by default (besides the host's own networks).
pub const PRIVATE_NETWORKS: [&str; 5] =
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"];

/// Why an address is not routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Link-local (169.254/16, fe80::/10): metadata services live there.
    LinkLocal,
    /// 0.0.0.0 or `::`.
    Unspecified,
    /// A multicast group.
    Multicast,
    /// A broadcast address.
    Broadcast,
    /// One of the balancer's own listeners.
    OwnListener,
    /// Outside every accepted network.
    NotAccepted,
}

impl Refusal {
    /// What to say in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::LinkLocal => "link-local address (metadata services live there)",
            Refusal::Unspecified => "unspecified address",
            Refusal::Multicast => "multicast address",
            Refusal::Broadcast => "broadcast address",
            Refusal::OwnListener => "one of the balancer's own listeners",
            Refusal::NotAccepted => "outside the accepted networks",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host's own addresses and networks, as its interfaces say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNets {
    /// Networks of the interfaces, loopback and link-local ones left out.
    pub networks: Vec<Cidr>,
    /// Every address of every interface (loopback too).
    pub addrs: Vec<IpAddr>,
    /// The IPv4 broadcast address of each interface network.
    pub broadcasts: Vec<IpAddr>,
}

impl HostNets {
    /// Reads the interfaces (`getifaddrs`); on failure, none (logged).
    pub fn read() -> HostNets {
        let mut nets = HostNets::default();
        let ifaddrs = match nix::ifaddrs::getifaddrs() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the network interfaces: only the private ranges are accepted by default");
                return nets;
            }
        };
        let ip_of = |s: &nix::sys::socket::SockaddrStorage| -> Option<IpAddr> {
            s.as_sockaddr_in()
                .map(|a| IpAddr::V4(a.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
        };
        for ifa in ifaddrs {
            let Some(addr) = ifa.address.as_ref().and_then(ip_of) else { continue };
            nets.addrs.push(addr);
            let loopback = ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK);
            let Some(net) = ifa.netmask.as_ref().and_then(ip_of).and_then(|m| Cidr::from_netmask(addr, m))
            else {
                continue;
            };
            if loopback || addr.is_loopback() || is_link_local(addr) || net.prefix() == 0 {
                continue;
            }
            if addr.is_ipv4() && net.prefix() < 31 {
                nets.broadcasts.push(net.last());
            }
            if !nets.networks.contains(&net) {
                nets.networks.push(net);
            }
        }
        nets
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The refused range `ip` lies in, if any, with the narrowest network that lifts the refusal.
fn special(ip: IpAddr) -> Option<(Refusal, Cidr)> {
    let range = |s: IpAddr, p: u8| Cidr::containing(s, p);
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some((Refusal::Unspecified, Cidr::host(ip))),
        IpAddr::V4(v4) if v4.is_broadcast() => Some((Refusal::Broadcast, Cidr::host(ip))),
        IpAddr::V4(v4) if v4.is_multicast() => {
            Some((Refusal::Multicast, range(Ipv4Addr::new(224, 0, 0, 0).into(), 4)))
        }
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some((Refusal::LinkLocal, range(Ipv4Addr::new(169, 254, 0, 0).into(), 16)))
        }
        IpAddr::V6(v6) if v6.is_unspecified() => Some((Refusal::Unspecified, Cidr::host(ip))),
        IpAddr::V6(v6) if v6.is_multicast() => {
            Some((Refusal::Multicast, range(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0).into(), 8)))
        }
        IpAddr::V6(_) if is_link_local(ip) => {
            Some((Refusal::LinkLocal, range(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0).into(), 10)))
        }
        _ => None,
    }
}

/// A pool's admission policy, with what it needs to know about the balancer and its host.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The pool's `accept_networks`, if set.
    explicit: Option<Vec<Cidr>>,
    /// The default networks (private ranges and the host's), when `accept_networks` is unset.
    default: Vec<Cidr>,
    /// The balancer's own listeners.
    own: Vec<SocketAddr>,
    host_addrs: Vec<IpAddr>,
    broadcasts: Vec<IpAddr>,
}

impl Admission {
    /// The policy of a pool with `accept` (its `accept_networks`) on a host with `host`'s
    /// interfaces, for a balancer listening on `own`.
    pub fn new(accept: Option<&[Cidr]>, host: &HostNets, own: &[SocketAddr]) -> Admission {
        let mut default: Vec<Cidr> = PRIVATE_NETWORKS.iter().filter_map(|n| n.parse().ok()).collect();
        default.extend(host.networks.iter().copied());
        Admission {
            explicit: accept.map(<[Cidr]>::to_vec),
            default,
            own: own.to_vec(),
            host_addrs: host.addrs.iter().map(|a| a.to_canonical()).collect(),
            broadcasts: host.broadcasts.clone(),
        }
    }

    /// Whether `addr` is one of the balancer's own listeners (an unspecified listener stands for
    /// every local address on its port).
    fn is_own(&self, ip: IpAddr, port: u16) -> bool {
        self.own.iter().any(|l| {
            l.port() == port
                && (l.ip().to_canonical() == ip
                    || (l.ip().is_unspecified() && (ip.is_loopback() || self.host_addrs.contains(&ip))))
        })
    }

    /// Whether the pool may route to `addr`; `loopback_ok` says the balancer's own gossip
    /// address is loopback (then loopback is in the default networks).
    pub fn check(&self, addr: SocketAddr, loopback_ok: bool) -> Result<(), Refusal> {
        let ip = addr.ip().to_canonical();
        let special = if self.is_own(ip, addr.port()) {
            Some((Refusal::OwnListener, Cidr::host(ip)))
        } else if self.broadcasts.contains(&ip) {
            Some((Refusal::Broadcast, Cidr::host(ip)))
        } else {
            special(ip)
        };
        let listed = self.explicit.as_deref();
        if let Some((why, range)) = special {
            // Lifted only by a listed network no wider than the refused range.
            return match listed {
                Some(nets) if nets.iter().any(|n| n.contains(ip) && range.covers(n)) => Ok(()),
                _ => Err(why),
            };
        }
        let accepted = match listed {
            Some(nets) => nets.iter().any(|n| n.contains(ip)),
            None => self.default.iter().any(|n| n.contains(ip)) || (loopback_ok && ip.is_loopback()),
        };
        if accepted { Ok(()) } else { Err(Refusal::NotAccepted) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn host() -> HostNets {
        HostNets {
            networks: nets(&["203.0.113.0/24"]),
            addrs: vec!["203.0.113.7".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            broadcasts: vec!["203.0.113.255".parse().unwrap()],
        }
    }

    #[test]
    fn the_default_takes_private_ranges_and_the_hosts_networks() {
        let a = Admission::new(None, &host(), &[]);
        for ok in [
            "10.1.2.3:80",
            "172.31.0.9:80",
            "192.168.1.1:80",
            "100.64.0.1:80",
            "[fd00::1]:80",
            "203.0.113.9:80",
        ] {
            assert_eq!(a.check(sa(ok), false), Ok(()), "{ok}");
        }
        assert_eq!(a.check(sa("198.51.100.1:80"), false), Err(Refusal::NotAccepted));
        assert_eq!(
            a.check(sa("127.0.0.1:80"), false),
            Err(Refusal::NotAccepted),
            "loopback only for a loopback balancer"
        );
        assert_eq!(a.check(sa("127.0.0.1:80"), true), Ok(()));
        assert_eq!(a.check(sa("[::1]:80"), true), Ok(()));
    }

    #[test]
    fn dangerous_targets_are_refused_unless_listed_narrowly() {
        let a = Admission::new(None, &host(), &[]);
        let cases = [
            ("169.254.169.254:80", Refusal::LinkLocal),
            ("[fe80::1]:80", Refusal::LinkLocal),
            ("[::ffff:169.254.169.254]:80", Refusal::LinkLocal),
            ("0.0.0.0:80", Refusal::Unspecified),
            ("[::]:80", Refusal::Unspecified),
            ("224.0.0.1:80", Refusal::Multicast),
            ("[ff02::1]:80", Refusal::Multicast),
            ("255.255.255.255:80", Refusal::Broadcast),
            ("203.0.113.255:80", Refusal::Broadcast),
        ];
        for (addr, why) in cases {
            assert_eq!(a.check(sa(addr), true), Err(why), "{addr}");
        }
        // Everything listed, but not the metadata range: still refused.
        let wide = Admission::new(Some(&nets(&["0.0.0.0/0", "::/0"])), &host(), &[]);
        assert_eq!(wide.check(sa("169.254.169.254:80"), true), Err(Refusal::LinkLocal));
        assert_eq!(wide.check(sa("198.51.100.1:80"), true), Ok(()));
        let metadata = Admission::new(Some(&nets(&["169.254.169.254/32"])), &host(), &[]);
        assert_eq!(metadata.check(sa("169.254.169.254:80"), true), Ok(()));
        assert_eq!(metadata.check(sa("10.0.0.1:80"), true), Err(Refusal::NotAccepted), "only what is listed");
    }

    #[test]
    fn the_balancers_own_listeners_are_refused() {
        let own = [sa("127.0.0.1:8080"), sa("0.0.0.0:1936")];
        let a = Admission::new(None, &host(), &own);
        assert_eq!(a.check(sa("127.0.0.1:8080"), true), Err(Refusal::OwnListener));
        assert_eq!(a.check(sa("127.0.0.1:8081"), true), Ok(()));
        assert_eq!(
            a.check(sa("203.0.113.7:1936"), true),
            Err(Refusal::OwnListener),
            "0.0.0.0 listens on every local address"
        );
        assert_eq!(a.check(sa("127.0.0.2:1936"), true), Err(Refusal::OwnListener));
        assert_eq!(a.check(sa("203.0.113.9:1936"), true), Ok(()), "another host's port");
        let listed = Admission::new(Some(&nets(&["127.0.0.0/8"])), &host(), &own);
        assert_eq!(
            listed.check(sa("127.0.0.1:8080"), true),
            Err(Refusal::OwnListener),
            "a wide network does not lift it"
        );
        let exact = Admission::new(Some(&nets(&["127.0.0.1/32"])), &host(), &own);
        assert_eq!(
            exact.check(sa("127.0.0.1:8080"), true),
            Ok(()),
            "chaining to one's own frontend, on purpose"
        );
    }
}
