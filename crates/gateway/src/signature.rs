//! The signature over the identity headers the gateway sends upstream: an HMAC-SHA256, keyed
//! by `gateway.identity_secret`, over the request line and the identity, with the time it was
//! made. Pure; the README shows how an upstream checks it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What the signature covers: the request as sent upstream and the identity headers' values
/// (empty when absent, as on anonymous routes).
pub struct Signed<'a> {
    pub method: &'a str,
    /// Path and query, as sent upstream.
    pub path: &'a str,
    pub route: &'a str,
    pub tenant: &'a str,
    pub subject: &'a str,
    pub scopes: &'a str,
}

/// Signs with the shared secret.
pub struct IdentitySigner(Vec<u8>);

impl IdentitySigner {
    pub fn new(secret: &[u8]) -> IdentitySigner {
        IdentitySigner(secret.to_vec())
    }

    /// The `x-runway-signature` value: `t=<unix seconds>,v1=<base64 of the HMAC>`, the HMAC
    /// over `v1`, `t`, method, path, route, tenant, subject and scopes joined by `\n`.
    pub fn sign(&self, s: &Signed<'_>, now_secs: u64) -> String {
        let message =
            format!("v1\n{now_secs}\n{}\n{}\n{}\n{}\n{}\n{}", s.method, s.path, s.route, s.tenant, s.subject, s.scopes);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(message.as_bytes());
        format!("t={now_secs},v1={}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_every_identity_field_and_the_time() {
        let signer = IdentitySigner::new(b"0123456789abcdef0123456789abcdef");
        let base = Signed { method: "GET", path: "/a?x=1", route: "r", tenant: "t1", subject: "k1", scopes: "s" };
        let sig = signer.sign(&base, 1_700_000_000);
        assert!(sig.starts_with("t=1700000000,v1="), "{sig}");
        assert_eq!(sig, signer.sign(&base, 1_700_000_000), "deterministic");
        assert_ne!(sig, signer.sign(&base, 1_700_000_001));
        let changed = [
            Signed { method: "POST", ..base },
            Signed { path: "/a?x=2", ..base },
            Signed { route: "q", ..base },
            Signed { tenant: "t2", ..base },
            Signed { subject: "k2", ..base },
            Signed { scopes: "s t", ..base },
        ];
        for c in &changed {
            assert_ne!(signer.sign(c, 1_700_000_000), sig);
        }
        // A value moving between fields changes it too (the separator is part of the message).
        let shifted = Signed { tenant: "t1\nk1", subject: "", ..base };
        assert_ne!(signer.sign(&shifted, 1_700_000_000), sig);
        assert_ne!(IdentitySigner::new(b"another secret, also 32 chars long").sign(&base, 1_700_000_000), sig);
    }
}
