//! Merchant names, webhook URLs and API keys.

pub use crate::domain::webhook_url::WebhookUrl;
use crate::error::{ApiError, FieldError};
use rand::RngCore;
use sha2::{Digest, Sha256};

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

/// An API key's SHA-256: what the database stores ([`hash_api_key`]) and what names it in
/// memory.
pub type KeyHash = [u8; 32];

pub fn key_hash(token: &str) -> KeyHash {
    Sha256::digest(token.as_bytes()).into()
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

    /// Refuses a webhook URL whose host resolves to an internal address (unless allowed).
    pub async fn check_resolved(&self, allow_private: bool) -> Result<(), ApiError> {
        match &self.webhook_url {
            Some(url) => url
                .check_resolved("webhook_url", allow_private)
                .await
                .map_err(|e| ApiError::Validation(vec![e])),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_long_random_and_recognisable() {
        let a = NewApiKey::generate();
        let b = NewApiKey::generate();
        assert!(a.plain.starts_with(API_KEY_PREFIX));
        assert_eq!(a.plain.len(), API_KEY_PREFIX.len() + 48);
        assert_ne!(a.plain, b.plain);
        assert_eq!(a.hash, hash_api_key(&a.plain));
    }

    #[test]
    fn a_key_is_named_by_the_hash_the_database_stores() {
        let key = "rk_0123456789abcdef";
        assert_eq!(key_hash(key).to_vec(), hash_api_key(key));
    }
}
