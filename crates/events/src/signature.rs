//! Standard Webhooks signatures (`v1`: HMAC-SHA256), pure and free of I/O.
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`; the header value is a
//! space-separated list of `v1,<base64>` entries so that during a secret rotation both the old
//! and the new signature are sent.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Accepts base64 with or without padding, as every Standard Webhooks library does.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

const PREFIX: &str = "whsec_";
/// The spec's bounds on a symmetric secret.
pub const MIN_SECRET_BYTES: usize = 24;
pub const MAX_SECRET_BYTES: usize = 64;
/// How far a receiver lets `webhook-timestamp` stray from its clock.
pub const TOLERANCE_SECS: i64 = 300;

/// A symmetric endpoint secret (`whsec_<base64>`).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(********)")
    }
}

/// Why a string is not a usable endpoint secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
    #[error("the secret is not base64 (optionally prefixed with whsec_)")]
    NotBase64,
    #[error("the secret must decode to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes (a whsk_ key to 64), not {0}")]
    Length(usize),
    #[error("the whsk_ key's public half does not match its seed")]
    KeyMismatch,
}

impl WebhookSecret {
    /// 32 random bytes.
    pub fn generate() -> Self {
        Self(runway_core::secret::random_bytes::<32>().to_vec())
    }

    /// Parses an endpoint secret: `whsec_` optional, padding optional, 24 to 64 bytes as the
    /// spec asks (receiver libraries accept shorter keys; Runway does not hand them out).
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let bytes = decode(s)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(SecretError::Length(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// `whsec_<base64>`: the form shown to the tenant and given to receiver libraries.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// The `v1,<base64>` signature over one delivery.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

const SK_PREFIX: &str = "whsk_";
const PK_PREFIX: &str = "whpk_";

/// An endpoint's signing key: a shared secret (`v1`, HMAC) or an Ed25519 key pair (`v1a`),
/// for endpoints whose receivers should hold only a public key.
#[derive(Clone)]
pub enum SigningKey {
    Symmetric(WebhookSecret),
    Asymmetric(Box<ed25519_dalek::SigningKey>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigningKey::Symmetric(_) => "SigningKey::Symmetric(********)",
            SigningKey::Asymmetric(_) => "SigningKey::Asymmetric(********)",
        })
    }
}

impl SigningKey {
    /// `whsk_<base64 of 32-byte seed ‖ 32-byte public key>` or a symmetric `whsec_` secret.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let Some(body) = s.strip_prefix(SK_PREFIX) else {
            return WebhookSecret::parse(s).map(SigningKey::Symmetric);
        };
        let bytes = LENIENT.decode(body).map_err(|_| SecretError::NotBase64)?;
        let (seed, public): ([u8; 32], [u8; 32]) = match bytes.len() {
            64 => (
                bytes[..32].try_into().map_err(|_| SecretError::Length(64))?,
                bytes[32..].try_into().map_err(|_| SecretError::Length(64))?,
            ),
            n => return Err(SecretError::Length(n)),
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if key.verifying_key().to_bytes() != public {
            return Err(SecretError::KeyMismatch);
        }
        Ok(SigningKey::Asymmetric(Box::new(key)))
    }

    pub fn generate_asymmetric() -> Self {
        SigningKey::Asymmetric(Box::new(ed25519_dalek::SigningKey::from_bytes(
            &runway_core::secret::random_bytes::<32>(),
        )))
    }

    /// The stored form (`whsec_…` or `whsk_…`).
    pub fn expose(&self) -> String {
        match self {
            SigningKey::Symmetric(s) => s.expose(),
            SigningKey::Asymmetric(k) => {
                let mut bytes = k.to_bytes().to_vec();
                bytes.extend_from_slice(&k.verifying_key().to_bytes());
                format!("{SK_PREFIX}{}", STANDARD.encode(bytes))
            }
        }
    }

    /// `whpk_<base64>` for `v1a` keys: what receivers verify with.
    pub fn public_key(&self) -> Option<String> {
        match self {
            SigningKey::Symmetric(_) => None,
            SigningKey::Asymmetric(k) => Some(format!("{PK_PREFIX}{}", STANDARD.encode(k.verifying_key().to_bytes()))),
        }
    }

    /// `v1,<base64 HMAC>` or `v1a,<base64 Ed25519 signature>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        match self {
            SigningKey::Symmetric(s) => s.sign(msg_id, timestamp, body),
            SigningKey::Asymmetric(k) => {
                use ed25519_dalek::Signer;
                let content = signed_content(msg_id, timestamp, body);
                format!("v1a,{}", STANDARD.encode(k.sign(&content).to_bytes()))
            }
        }
    }
}

fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(msg_id.len() + body.len() + 24);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// Verifies a `v1a` delivery with the endpoint's public key (`whpk_…`), as a receiver would.
pub fn verify_asymmetric(
    public_key: &str,
    msg_id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now: Option<i64>,
) -> Result<(), VerifyError> {
    use ed25519_dalek::Verifier;
    let bytes = public_key.strip_prefix(PK_PREFIX).and_then(|b| LENIENT.decode(b).ok()).ok_or(VerifyError::NoMatch)?;
    let key = <[u8; 32]>::try_from(bytes.as_slice())
        .ok()
        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
        .ok_or(VerifyError::NoMatch)?;
    let (msg_id, ts, signatures) = check_headers(msg_id, timestamp, signatures, now)?;
    let content = signed_content(msg_id, ts, body);
    for candidate in signatures.split(' ') {
        let Some(b64) = candidate.strip_prefix("v1a,") else { continue };
        let Some(sig) = LENIENT.decode(b64).ok().and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok()) else {
            continue;
        };
        if key.verify(&content, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

fn check_headers<'a>(
    msg_id: Option<&'a str>,
    timestamp: Option<&str>,
    signatures: Option<&'a str>,
    now: Option<i64>,
) -> Result<(&'a str, i64, &'a str), VerifyError> {
    let msg_id = msg_id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let ts_raw = timestamp.ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let signatures = signatures.ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    let ts: i64 = ts_raw.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    if let Some(now) = now {
        if now - ts > TOLERANCE_SECS {
            return Err(VerifyError::TooOld);
        }
        if ts - now > TOLERANCE_SECS {
            return Err(VerifyError::TooNew);
        }
    }
    Ok((msg_id, ts, signatures))
}

/// The key bytes of a secret string, whatever their length.
pub fn decode(s: &str) -> Result<Vec<u8>, SecretError> {
    let body = s.strip_prefix(PREFIX).unwrap_or(s);
    if body.is_empty() {
        return Err(SecretError::Empty);
    }
    LENIENT.decode(body).map_err(|_| SecretError::NotBase64)
}

/// Why a delivery does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a number")]
    BadTimestamp,
    #[error("webhook-timestamp is too old")]
    TooOld,
    #[error("webhook-timestamp is in the future")]
    TooNew,
    #[error("no signature matches")]
    NoMatch,
}

/// Verifies a delivery as a receiver would: any `v1` entry matching suffices, other versions are
/// skipped, and the timestamp must be within [`TOLERANCE_SECS`] of `now` (unless `now` is None).
pub fn verify(
    secret: &WebhookSecret,
    msg_id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now: Option<i64>,
) -> Result<(), VerifyError> {
    let (msg_id, ts, signatures) = check_headers(msg_id, timestamp, signatures, now)?;
    let expected = secret.sign(msg_id, ts, body);
    let expected = expected.as_bytes();
    for candidate in signatures.split(' ') {
        if candidate.starts_with("v1,") && subtle::ConstantTimeEq::ct_eq(candidate.as_bytes(), expected).into() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn conformance(file: &str) -> Value {
        let path = format!("{}/../../../shared/conformance/standard-webhooks/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn payload(v: &Value) -> Vec<u8> {
        match v.get("payload") {
            Some(p) => p.as_str().unwrap().as_bytes().to_vec(),
            None => {
                let g = &v["payload_generator"];
                let ch = g["repeat_char"].as_str().unwrap().as_bytes()[0];
                vec![ch; g["count"].as_u64().unwrap() as usize]
            }
        }
    }

    fn ts(v: &Value) -> i64 {
        match &v["timestamp"] {
            Value::Number(n) => n.as_i64().unwrap(),
            Value::String(s) => s.parse().unwrap(),
            _ => panic!("timestamp"),
        }
    }

    #[test]
    fn signs_every_hmac_vector() {
        let data = conformance("signing_vectors.json");
        let mut checked = 0;
        for v in data["signing_vectors"].as_array().unwrap() {
            if !v["scheme"].as_str().unwrap().starts_with("v1 ") {
                continue;
            }
            let secret = WebhookSecret::parse(v["secret"].as_str().unwrap()).unwrap();
            let sig = secret.sign(v["msg_id"].as_str().unwrap(), ts(v), &payload(v));
            assert_eq!(sig, v["expected_signature"].as_str().unwrap(), "{}", v["id"]);
            let body = payload(v);
            verify(&secret, v["msg_id"].as_str(), Some(&ts(v).to_string()), Some(&sig), &body, None).unwrap();
            checked += 1;
        }
        assert_eq!(checked, 5);
    }

    #[test]
    fn verification_cases_behave_as_the_reference_libraries() {
        let vectors = conformance("signing_vectors.json");
        let find =
            |id: &str| vectors["signing_vectors"].as_array().unwrap().iter().find(|v| v["id"] == id).unwrap().clone();
        let now = 1_700_000_000i64;
        let cases = conformance("verification_cases.json");
        let mut checked = 0;
        for c in cases["cases"].as_array().unwrap() {
            let id = c["id"].as_str().unwrap();
            let base_id = c["base"]
                .as_str()
                .and_then(|b| b.split(' ').next())
                .filter(|b| b.starts_with("sw-"))
                .unwrap_or("sw-hmac-1");
            let base = find(base_id);
            let secret = WebhookSecret::parse(base["secret"].as_str().unwrap()).unwrap();
            let msg_id = base["msg_id"].as_str().unwrap();
            let mut body = payload(&base);
            let mut ts_header = now.to_string();
            let mut enforce = true;
            match id {
                "timestamp-too-old" => ts_header = (now - 301).to_string(),
                "timestamp-too-new" => ts_header = (now + 301).to_string(),
                "old-timestamp-ignored-when-not-enforced" => {
                    ts_header = (now - 300).to_string();
                    enforce = false;
                }
                "non-numeric-timestamp" => ts_header = "hello".into(),
                "empty-payload" => body = Vec::new(),
                _ => {}
            }
            let valid = secret.sign(msg_id, ts_header.parse().unwrap_or(now), &body);
            let sig_header = match c.get("webhook-signature").and_then(Value::as_str) {
                Some(h) if h.starts_with("<first 8") => valid[..8].to_owned(),
                Some(h) => h.replace("<VALID_SIG>", &valid),
                None => valid.clone(),
            };
            let (mid, tsh, sigh) = match id {
                "missing-webhook-id" => (None, Some(ts_header.as_str()), Some(sig_header.as_str())),
                "missing-webhook-timestamp" => (Some(msg_id), None, Some(sig_header.as_str())),
                "missing-webhook-signature" => (Some(msg_id), Some(ts_header.as_str()), None),
                _ => (Some(msg_id), Some(ts_header.as_str()), Some(sig_header.as_str())),
            };
            let result = verify(&secret, mid, tsh, sigh, &body, enforce.then_some(now));
            let expect_valid = c["expect"].as_str().unwrap().starts_with("valid");
            assert_eq!(result.is_ok(), expect_valid, "{id}: {result:?}");
            checked += 1;
        }
        assert!(checked >= 15, "{checked}");
    }

    #[test]
    fn signs_and_verifies_the_ed25519_vector() {
        let data = conformance("signing_vectors.json");
        let v = data["signing_vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["scheme"].as_str().unwrap().starts_with("v1a"))
            .unwrap();
        let key = SigningKey::parse(v["secret"].as_str().unwrap()).unwrap();
        assert_eq!(key.public_key().unwrap(), v["public_key"].as_str().unwrap());
        let sig = key.sign(v["msg_id"].as_str().unwrap(), ts(v), &payload(v));
        assert_eq!(sig, v["expected_signature"].as_str().unwrap());
        let pk = key.public_key().unwrap();
        let t = ts(v).to_string();
        verify_asymmetric(&pk, v["msg_id"].as_str(), Some(&t), Some(&sig), &payload(v), None).unwrap();
        assert_eq!(
            verify_asymmetric(&pk, v["msg_id"].as_str(), Some(&t), Some(&sig), b"tampered", None),
            Err(VerifyError::NoMatch)
        );
        // A generated key round-trips through its stored form.
        let g = SigningKey::generate_asymmetric();
        assert_eq!(SigningKey::parse(&g.expose()).unwrap().public_key(), g.public_key());
        // A public key is not a signing key; a truncated whsk_ is refused.
        assert!(SigningKey::parse(v["public_key"].as_str().unwrap()).is_err());
        assert!(
            SigningKey::parse(
                "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kv"
            )
            .is_err()
        );
    }

    #[test]
    fn secret_parsing_follows_the_spec_bounds() {
        assert_eq!(WebhookSecret::parse(""), Err(SecretError::Empty));
        assert_eq!(WebhookSecret::parse("whsec_"), Err(SecretError::Empty));
        let a = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(a, WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap());
        assert_eq!(
            decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS").unwrap(),
            decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS=").unwrap()
        );
        assert_eq!(
            decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr").unwrap(),
            decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr==").unwrap()
        );
        // 23 bytes: readable, but below the spec's minimum for a secret Runway keeps.
        assert_eq!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS"), Err(SecretError::Length(23)));
        assert_eq!(WebhookSecret::parse("whsec_bm90LXZhbGlkCg=="), Err(SecretError::Length(10)));
        // Every case of the conformance file: accepted ones decode (and are kept when 24 to 64
        // bytes long); rejected ones are refused as endpoint secrets.
        let cases = conformance("secret_parsing_cases.json");
        for c in cases["cases"].as_array().unwrap() {
            let expect = c["expect"].as_str().unwrap();
            for secret in c["secret"].as_str().unwrap().split(" / ") {
                if expect.starts_with("accept") {
                    let n = decode(secret).unwrap_or_else(|e| panic!("{secret}: {e}")).len();
                    assert_eq!(
                        WebhookSecret::parse(secret).is_ok(),
                        (MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&n),
                        "{secret}"
                    );
                } else {
                    assert!(WebhookSecret::parse(secret).is_err(), "{secret} must be refused");
                }
            }
        }
        let g = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse(&g.expose()).unwrap(), g);
    }
}
