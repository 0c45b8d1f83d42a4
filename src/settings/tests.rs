//! The settings' own checks: trusted proxy ranges, the built-in defaults, the IPv6 prefix, the
//! SMS provider.

use super::*;
use std::net::IpAddr;

#[test]
fn trusted_proxies_are_cidrs_or_single_addresses() {
    let net = parse_net("10.1.0.0/16").unwrap();
    assert!(net.contains(&"10.1.200.3".parse::<IpAddr>().unwrap()));
    assert!(!net.contains(&"10.2.0.1".parse::<IpAddr>().unwrap()));
    let one = parse_net("127.0.0.1").unwrap();
    assert!(one.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
    assert!(!one.contains(&"127.0.0.2".parse::<IpAddr>().unwrap()));
    assert!(parse_net("10.0.0.0/33").is_err());
    assert!(parse_net("::1").is_ok());
}

#[test]
fn built_in_defaults_are_valid() {
    Settings::for_tests().unwrap();
}

#[test]
fn the_ipv6_prefix_is_1_to_128_bits_and_64_by_default() {
    let mut s = Settings::for_tests().unwrap();
    assert_eq!(s.rate_limit.ipv6_prefix, 64);
    let c = s.rate_limit.classes.unauthenticated;
    assert_eq!((c.limit, c.period_secs), (60, 60));
    for ok in [1, 48, 128] {
        s.rate_limit.ipv6_prefix = ok;
        s.validate().unwrap();
    }
    for bad in [0, 129] {
        s.rate_limit.ipv6_prefix = bad;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("rate_limit.ipv6_prefix"), "{e}");
    }
}

#[test]
fn an_sms_provider_is_an_http_url_with_a_sender() {
    let mut s = Settings::for_tests().unwrap();
    s.sms.provider_url =
        Some("https://api.example.com/2010-04-01/Accounts/AC1/Messages.json".into());
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("sms.from"), "{e}");
    s.sms.from = Some("+15005550006".into());
    s.validate().unwrap();
    for bad in ["ftp://example.com/", "not a url", "http://"] {
        s.sms.provider_url = Some(bad.into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("sms.provider_url"), "{bad}: {e}");
    }
}
