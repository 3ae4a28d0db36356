//! Source addresses: which address a request came from behind trusted proxies, and which sources are
//! blocked (`block_source`). Shared by the server, the guard and the gateway so that they agree.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the nearest address in
/// the `X-Forwarded-For` chain that is not itself a trusted proxy. `forwarded_for` yields each header line
/// (`None` for one that is not text). A chain that cannot be read is not evidence of anything: the peer is
/// used then.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = Option<&'a str>>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut chain = Vec::new();
    for line in forwarded_for {
        let Some(text) = line else { return peer };
        for part in text.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => chain.push(ip),
                Err(_) => return peer,
            }
        }
    }
    chain.iter().rev().find(|ip| !is_trusted(ip)).or(chain.first()).copied().unwrap_or(peer)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// A source an operator or a detection blocks: one address or one network (`203.0.113.0/24`), in canonical
/// text. `None` for anything else.
pub fn parse_source(text: &str) -> Option<String> {
    if let Ok(ip) = text.trim().parse::<IpAddr>() {
        return Some(canonical(ip).to_string());
    }
    let net = text.trim().parse::<IpNet>().ok()?.trunc();
    Some(net.to_string())
}

/// The blocked sources, each until a time. Pure: entries and the time come in, a verdict comes out. The
/// latest entry for an address or network wins, so a lift ends an earlier block.
#[derive(Debug, Clone, Default)]
pub struct SourceBlocks {
    addresses: HashMap<IpAddr, i64>,
    networks: Vec<(IpNet, i64)>,
}

impl SourceBlocks {
    /// Applies a block of `subject` until `expires_at`, or (`lift`) ends its block. A subject that is
    /// neither an address nor a CIDR cannot match a peer and is ignored.
    pub fn apply(&mut self, subject: &str, lift: bool, expires_at: i64, now: i64) {
        let blocked = !lift && expires_at > now;
        if let Ok(addr) = subject.parse::<IpAddr>() {
            let addr = canonical(addr);
            if blocked {
                self.addresses.insert(addr, expires_at);
            } else {
                self.addresses.remove(&addr);
            }
        } else if let Ok(net) = subject.parse::<IpNet>() {
            let net = net.trunc();
            self.networks.retain(|(n, _)| *n != net);
            if blocked {
                self.networks.push((net, expires_at));
            }
        }
    }

    /// Whether requests from `peer` are blocked at `now`.
    pub fn blocks(&self, peer: IpAddr, now: i64) -> bool {
        if self.is_empty() {
            return false;
        }
        let peer = canonical(peer);
        self.addresses.get(&peer).is_some_and(|exp| *exp > now)
            || self.networks.iter().any(|(net, exp)| *exp > now && net.contains(&peer))
    }

    /// How many addresses and networks are held.
    pub fn len(&self) -> usize {
        self.addresses.len() + self.networks.len()
    }

    /// Whether nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.networks.is_empty()
    }

    /// Drops blocks that have ended.
    pub fn prune(&mut self, now: i64) {
        self.addresses.retain(|_, exp| *exp > now);
        self.networks.retain(|(_, exp)| *exp > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocked_source_is_refused_until_lifted_or_expired() {
        let mut set = SourceBlocks::default();
        assert!(!set.blocks(ip("203.0.113.7"), NOW));
        set.apply("203.0.113.7", false, NOW + 60, NOW);
        assert!(set.blocks(ip("203.0.113.7"), NOW));
        assert!(set.blocks(ip("::ffff:203.0.113.7"), NOW), "an IPv4-mapped peer is the same address");
        assert!(!set.blocks(ip("203.0.113.8"), NOW), "one address blocks only itself");
        assert!(!set.blocks(ip("203.0.113.7"), NOW + 60), "the block ends at its expiry");
        set.apply("203.0.113.7", true, NOW + 60, NOW);
        assert!(!set.blocks(ip("203.0.113.7"), NOW), "a lift ends the block");
        set.apply("203.0.113.0/24", false, NOW + 60, NOW);
        assert!(set.blocks(ip("203.0.113.8"), NOW), "a network blocks every address in it");
        assert!(!set.blocks(ip("198.51.100.1"), NOW));
        set.apply("203.0.113.0/24", true, NOW + 60, NOW);
        assert!(set.is_empty());
        set.apply("not an address", false, NOW + 60, NOW);
        assert!(set.is_empty(), "an unreadable subject matches nothing");
        set.apply("2001:db8::/48", false, NOW + 60, NOW);
        assert!(set.blocks(ip("2001:db8::1"), NOW));
        set.prune(NOW + 60);
        assert!(set.is_empty());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = |v: &'static str| [Some(v)];
        assert_eq!(client_ip(ip("203.0.113.9"), xff("198.51.100.1"), &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("10.0.0.2"), xff("198.51.100.1, 10.0.0.3"), &trusted), ip("198.51.100.1"));
        assert_eq!(client_ip(ip("10.0.0.2"), xff("garbage"), &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.2"), [None], &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.2"), [], &trusted), ip("10.0.0.2"));
    }

    #[test]
    fn sources_are_written_canonically() {
        assert_eq!(parse_source("::ffff:192.0.2.1").as_deref(), Some("192.0.2.1"));
        assert_eq!(parse_source("192.0.2.77/24").as_deref(), Some("192.0.2.0/24"));
        assert_eq!(parse_source("example.com"), None);
    }
}
