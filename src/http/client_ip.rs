//! The client's address: the socket's peer, unless the peer is a trusted proxy
//! (`server.trusted_proxies`); then the right-most address of `X-Forwarded-For` that is not a
//! trusted proxy. Hops left of an untrusted one could be anything the client wrote, so they are
//! never believed.

use actix_web::dev::ServiceRequest;
use ipnet::{IpNet, Ipv6Net};
use std::net::IpAddr;

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// IPv4 peers may arrive as IPv4-mapped IPv6 addresses on a dual-stack socket.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The client's address, from the peer and the `X-Forwarded-For` values in order.
pub fn resolve<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a str>,
    proxies: &[IpNet],
) -> IpAddr {
    let peer = canonical(peer);
    if !trusted(peer, proxies) {
        return peer;
    }
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>().map(canonical) else {
            // A hop that is not an address ends what can be believed.
            break;
        };
        client = ip;
        if !trusted(ip, proxies) {
            break;
        }
    }
    client
}

/// The client a per-client-IP rate limit counts: an IPv4 address as it is, an IPv6 address as
/// its network of `ipv6_prefix` leading bits (`2001:db8:1:2::/64`), so the addresses of one
/// subscriber's block are one client. An IPv4-mapped IPv6 address is its IPv4 address.
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = ipv6_prefix.clamp(1, 128);
            match Ipv6Net::new(v6, prefix) {
                Ok(net) => net.trunc().to_string(),
                Err(_) => v6.to_string(),
            }
        }
    }
}

/// The client address of a request (`None` only without a peer, as in some in-process tests).
pub fn of(req: &ServiceRequest, proxies: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok());
    Some(resolve(peer, forwarded, proxies))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        let got = resolve(ip("203.0.113.9"), ["1.2.3.4"].into_iter(), &proxies);
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn an_ipv4_client_is_its_address() {
        assert_eq!(client_key(ip("198.51.100.7"), 64), "198.51.100.7");
        assert_eq!(client_key(ip("198.51.100.7"), 1), "198.51.100.7");
    }

    #[test]
    fn an_ipv4_mapped_ipv6_client_is_its_ipv4_address() {
        assert_eq!(client_key(ip("::ffff:198.51.100.7"), 64), "198.51.100.7");
        assert_eq!(
            client_key(ip("::ffff:198.51.100.7"), 64),
            client_key(ip("198.51.100.7"), 64)
        );
    }

    #[test]
    fn an_ipv6_client_is_its_network_of_the_prefix() {
        let a = client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(client_key(ip("2001:db8:1:2::1"), 64), a);
        assert_eq!(client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64), a);
        // The neighbouring /64s are other clients.
        assert_ne!(client_key(ip("2001:db8:1:3::1"), 64), a);
        assert_ne!(client_key(ip("2001:db8:1:1:ffff:ffff:ffff:ffff"), 64), a);
        // Other prefixes.
        assert_eq!(client_key(ip("2001:db8:1:2::1"), 48), "2001:db8:1::/48");
        assert_eq!(
            client_key(ip("2001:db8:1:2::1"), 128),
            "2001:db8:1:2::1/128"
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1"), 128),
            client_key(ip("2001:db8:1:2::2"), 128)
        );
        assert_eq!(client_key(ip("2001:db8::1"), 1), "::/1");
        assert_eq!(client_key(ip("::1"), 64), "::/64");
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        // The client forged the first hop; the proxy chain appended the real one.
        let chain = ["6.6.6.6, 198.51.100.7", "10.0.0.3"].into_iter();
        assert_eq!(resolve(ip("10.0.0.2"), chain, &proxies), ip("198.51.100.7"));
        let mapped = resolve(
            ip("::ffff:10.0.0.2"),
            ["198.51.100.8"].into_iter(),
            &proxies,
        );
        assert_eq!(mapped, ip("198.51.100.8"));
        let garbage = resolve(
            ip("10.0.0.2"),
            ["198.51.100.7, nonsense"].into_iter(),
            &proxies,
        );
        assert_eq!(garbage, ip("10.0.0.2"));
    }
}
