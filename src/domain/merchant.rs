//! Merchant names, webhook URLs and API keys.

use crate::error::{ApiError, FieldError};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::net::IpAddr;

pub const API_KEY_PREFIX: &str = "rk_live_";

#[derive(Debug, Clone)]
pub struct MerchantName(String);

impl MerchantName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        let len = trimmed.chars().count();
        if !(1..=200).contains(&len) {
            return Err(FieldError::new(field, "must be 1 to 200 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An http(s) URL whose host is not, unless allowed, a loopback, private or link-local address.
#[derive(Debug, Clone)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(field: &str, raw: &str, allow_private: bool) -> Result<Self, FieldError> {
        let bad = |m: &str| FieldError::new(field, m);
        if raw.len() > 2048 {
            return Err(bad("must be at most 2048 characters"));
        }
        let rest = raw
            .strip_prefix("https://")
            .or_else(|| raw.strip_prefix("http://"))
            .ok_or_else(|| bad("must be an http:// or https:// URL"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return Err(bad("must not carry credentials"));
        }
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        };
        if host.is_empty() || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must be a valid URL with a host"));
        }
        if !allow_private && is_private_host(host) {
            return Err(bad(
                "must not point at a loopback, private or link-local address",
            ));
        }
        Ok(Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_private_host(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    if lower == "localhost"
        || lower.ends_with(".localhost")
        || lower.ends_with(".local")
        || lower.ends_with(".internal")
    {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64
        }
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private_host(&v4.to_string()))
        }
        Err(_) => false,
    }
}

/// A freshly minted API key: the text shown once, and what is stored.
pub struct NewApiKey {
    pub plain: String,
    pub hash: Vec<u8>,
    pub prefix: String,
}

impl NewApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let plain = format!("{API_KEY_PREFIX}{}", hex::encode(bytes));
        Self {
            hash: hash_api_key(&plain),
            prefix: plain[..API_KEY_PREFIX.len() + 6].to_owned(),
            plain,
        }
    }
}

/// Keys carry 192 random bits, so a fast hash is enough: there is nothing to brute-force.
pub fn hash_api_key(plain: &str) -> Vec<u8> {
    Sha256::digest(plain.as_bytes()).to_vec()
}

pub fn new_webhook_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", hex::encode(bytes))
}

/// The validated input of a merchant creation, from the admin endpoint or the command line.
pub struct NewMerchant {
    pub name: MerchantName,
    pub webhook_url: Option<WebhookUrl>,
}

impl NewMerchant {
    pub fn parse(
        name: &str,
        webhook_url: Option<&str>,
        allow_private: bool,
    ) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let name = MerchantName::parse("name", name)
            .map_err(|e| errors.push(e))
            .ok();
        let webhook_url = match webhook_url {
            Some(url) => WebhookUrl::parse("webhook_url", url, allow_private)
                .map_err(|e| errors.push(e))
                .ok(),
            None => None,
        };
        match name {
            Some(name) if errors.is_empty() => Ok(Self { name, webhook_url }),
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_to_internal_hosts_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1/x",
            "https://10.0.0.8/",
            "http://[::1]:8080/",
            "http://localhost:9000/h",
            "http://169.254.169.254/latest",
            "http://192.168.1.1",
        ] {
            assert!(WebhookUrl::parse("u", url, false).is_err(), "{url}");
            assert!(WebhookUrl::parse("u", url, true).is_ok(), "{url}");
        }
        assert!(WebhookUrl::parse("u", "https://shop.example.com/hooks", false).is_ok());
        assert!(WebhookUrl::parse("u", "ftp://example.com", true).is_err());
        assert!(WebhookUrl::parse("u", "https://user:pw@example.com", true).is_err());
    }

    #[test]
    fn api_keys_are_long_random_and_recognisable() {
        let a = NewApiKey::generate();
        let b = NewApiKey::generate();
        assert!(a.plain.starts_with(API_KEY_PREFIX));
        assert_eq!(a.plain.len(), API_KEY_PREFIX.len() + 48);
        assert_ne!(a.plain, b.plain);
        assert_eq!(a.hash, hash_api_key(&a.plain));
    }
}
