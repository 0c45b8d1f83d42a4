//! Webhook URLs and the SSRF guard: a merchant's URL must not reach the service's own network.
//!
//! The URL is parsed as browsers parse it (WHATWG, the `url` crate), so every spelling of an
//! IPv4 address (decimal `2130706433`, octal `0177.0.0.1`, hex `0x7f.1`, short `127.1`, a
//! trailing dot) becomes the address it names before it is judged. A name is judged by what it
//! resolves to: refused when any address is loopback, private, link-local, unspecified,
//! multicast, broadcast, carrier-grade NAT, reserved, or an IPv6 form carrying one of those
//! (IPv4-mapped, IPv4-compatible, NAT64). The check runs at creation and update, and again at
//! each delivery on the addresses the connection is made to (DNS rebinding).

use crate::error::FieldError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use url::{Host, Url};

/// An http(s) URL with a host and no credentials; whether it may be reached is [`Target`]'s call.
#[derive(Debug, Clone)]
pub struct WebhookUrl {
    /// As the merchant wrote it (what the API shows back).
    raw: String,
    /// As parsed: what is judged and connected to.
    url: Url,
}

/// How long a host's resolution may take at creation or update.
const RESOLVE_WITHIN: Duration = Duration::from_secs(2);

impl WebhookUrl {
    pub fn parse(field: &str, raw: &str, allow_private: bool) -> Result<Self, FieldError> {
        let bad = |m: &str| FieldError::new(field, m);
        if raw.len() > 2048 {
            return Err(bad("must be at most 2048 characters"));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must be a valid URL with a host"));
        }
        let url = Url::parse(raw).map_err(|_| bad("must be a valid URL with a host"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must be an http:// or https:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not carry credentials"));
        }
        let refused = match url.host() {
            None => return Err(bad("must be a valid URL with a host")),
            Some(Host::Ipv4(ip)) => forbidden(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => forbidden(IpAddr::V6(ip)),
            Some(Host::Domain(name)) => local_name(name),
        };
        if refused && !allow_private {
            return Err(bad(PRIVATE));
        }
        Ok(Self {
            raw: raw.to_owned(),
            url,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The host as the circuit of its destination is named.
    pub fn host(&self) -> String {
        self.url.host_str().unwrap_or_default().to_ascii_lowercase()
    }

    /// Resolves the host and refuses it when any address is internal (unless allowed). A name
    /// that does not resolve now is accepted: each delivery resolves and checks again.
    pub async fn check_resolved(&self, field: &str, allow_private: bool) -> Result<(), FieldError> {
        if allow_private {
            return Ok(());
        }
        let Some(Host::Domain(name)) = self.url.host() else {
            return Ok(());
        };
        let port = self.url.port_or_known_default().unwrap_or(80);
        let lookup = tokio::net::lookup_host((name.trim_end_matches('.'), port));
        match tokio::time::timeout(RESOLVE_WITHIN, lookup).await {
            Ok(Ok(addrs)) => {
                for addr in addrs {
                    if forbidden(addr.ip()) {
                        return Err(FieldError::new(field, PRIVATE));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

const PRIVATE: &str =
    "must not point at a loopback, private, link-local or otherwise internal address";

/// Names that mean this machine or its network whatever DNS says.
fn local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.is_empty()
        || name == "localhost"
        || [".localhost", ".local", ".internal", ".localdomain"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Whether connecting to `ip` could reach the service's own machine or network.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0 // "this network"
        || a >= 240 // reserved
        || (a == 100 && (b & 0xc0) == 64) // carrier-grade NAT, 100.64.0.0/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18.0.0/15
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // IPv4-compatible (::a.b.c.d, deprecated but routed by some stacks) and NAT64 (64:ff9b::/96).
    if s[..6] == [0, 0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return ip.is_loopback() || ip.is_unspecified() || forbidden_v4(v4);
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
}

/// The addresses a delivery may connect to: `host` resolved now, refused whole when any address
/// is internal (unless allowed). Used by the webhook client's resolver, so the check is made on
/// the very addresses the connection is made to.
pub async fn resolve_for_delivery(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            if !allow_private && local_name(host) {
                return Err(format!("{host} names a local host"));
            }
            tokio::net::lookup_host((host.trim_end_matches('.'), port))
                .await
                .map_err(|e| format!("resolving {host}: {e}"))?
                .collect()
        }
    };
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| forbidden(a.ip())) {
            return Err(format!(
                "{host} resolves to {}, an internal address",
                bad.ip()
            ));
        }
    }
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling of an internal address the guard must see through.
    const INTERNAL: &[&str] = &[
        "http://127.0.0.1/x",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://127.0.0.1./",
        "http://localhost./",
        "http://LOCALHOST:9000/h",
        "http://api.localhost/",
        "https://10.0.0.8/",
        "http://172.16.0.1/",
        "http://192.168.1.1",
        "http://169.254.169.254/latest",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://0/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[::1]:8080/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[0:0:0:0:0:ffff:10.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::a00:1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://[ff02::1]/",
    ];

    #[test]
    fn every_spelling_of_an_internal_address_is_refused_unless_allowed() {
        for url in INTERNAL {
            assert!(WebhookUrl::parse("u", url, false).is_err(), "{url}");
            assert!(WebhookUrl::parse("u", url, true).is_ok(), "{url}");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_and_other_urls_are_refused() {
        for url in [
            "https://shop.example.com/hooks",
            "http://93.184.215.14:8080/h?x=1",
            "http://[2606:4700::1111]/",
            "http://[::ffff:8.8.8.8]/",
        ] {
            assert!(WebhookUrl::parse("u", url, false).is_ok(), "{url}");
        }
        for url in [
            "ftp://example.com",
            "https://user:pw@example.com",
            "file:///etc/passwd",
            "http://",
            "not a url",
            "http://exa mple.com/",
        ] {
            assert!(WebhookUrl::parse("u", url, true).is_err(), "{url}");
        }
    }

    #[actix_web::test]
    async fn delivery_resolves_and_refuses_internal_addresses_of_names() {
        assert!(resolve_for_delivery("localhost", 80, false).await.is_err());
        assert!(resolve_for_delivery("127.0.0.1", 80, false).await.is_err());
        assert!(resolve_for_delivery("[::1]", 80, false).await.is_err());
        let allowed = resolve_for_delivery("localhost", 80, true).await;
        assert!(allowed.is_ok_and(|a| a.iter().all(|a| a.ip().is_loopback())));
    }
}
