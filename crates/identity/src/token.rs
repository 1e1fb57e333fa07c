//! Credential tokens: `rw_<kind>_<id>_<secret>`, recognisable by secret scanners, with 256 bits
//! of secret stored only as a SHA-256 hash (a fast hash is right for high-entropy secrets) and
//! compared in constant time.

use runway_core::KeyId;
use runway_core::id::base32_encode;
use runway_core::secret::random_bytes;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What kind of key a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Service,
    Tenant,
}

impl TokenKind {
    pub fn tag(self) -> &'static str {
        match self {
            TokenKind::Service => "svc",
            TokenKind::Tenant => "tnt",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Service => "service",
            TokenKind::Tenant => "tenant",
        }
    }
}

/// A freshly minted key: the token to show once and the hash to store.
pub struct MintedKey {
    pub id: KeyId,
    pub token: String,
    pub secret_hash: String,
}

pub fn mint(kind: TokenKind) -> MintedKey {
    let id = KeyId::generate();
    let secret = base32_encode(&random_bytes::<32>());
    let token = format!("rw_{}_{}_{}", kind.tag(), id.body(), secret);
    MintedKey { secret_hash: hash_secret(&secret), id, token }
}

/// A new admin token (`rw_admin_<secret>`).
pub fn mint_admin() -> String {
    format!("rw_admin_{}", base32_encode(&random_bytes::<32>()))
}

/// A presented token split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    pub kind: TokenKind,
    pub id: KeyId,
    pub secret: &'a str,
}

/// Splits a key token; `None` when it is not shaped like one (it may be the admin token).
pub fn parse(token: &str) -> Option<ParsedToken<'_>> {
    let rest = token.strip_prefix("rw_")?;
    let (tag, rest) = rest.split_once('_')?;
    let kind = match tag {
        "svc" => TokenKind::Service,
        "tnt" => TokenKind::Tenant,
        _ => return None,
    };
    let (body, secret) = rest.split_once('_')?;
    let id = KeyId::parse(&format!("key_{body}")).ok()?;
    if secret.len() < 32 {
        return None;
    }
    Some(ParsedToken { kind, id, secret })
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison of a presented secret against a stored hash.
pub fn verify(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_verify() {
        let m = mint(TokenKind::Tenant);
        assert!(m.token.starts_with("rw_tnt_"));
        let p = parse(&m.token).unwrap();
        assert_eq!(p.kind, TokenKind::Tenant);
        assert_eq!(p.id, m.id);
        assert!(verify(p.secret, &m.secret_hash));
        assert!(!verify("x", &m.secret_hash));
        // 32 random bytes in base32: 52 characters, 256 bits.
        assert_eq!(p.secret.len(), 52);
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        assert!(parse("rw_xyz_01jd8x3v5k7m9p2q4r6s8t0w1y_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_none());
        assert!(parse("rw_svc_notanid_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_none());
        assert!(parse("rw_svc_01jd8x3v5k7m9p2q4r6s8t0w1y_short").is_none());
        assert!(parse(&mint_admin()).is_none());
    }
}
