//! Encryption at rest of endpoint signing secrets: AES-256-GCM under the master key, with the
//! endpoint id as associated data so a ciphertext copied to another row does not decrypt.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use runway_core::config::{Config, ConfigError};

const PREFIX: &str = "enc1:";

/// Seals and opens secrets with the master key.
pub struct SecretBox(Aes256Gcm);

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        Self(Aes256Gcm::new_from_slice(key).expect("a 32-byte key is valid for AES-256"))
    }

    pub fn seal(&self, plain: &str, aad: &str) -> String {
        let nonce_bytes = runway_core::secret::random_bytes::<12>();
        let nonce = aes_gcm::aead::Nonce::<Aes256Gcm>::from(nonce_bytes);
        let ct = self
            .0
            .encrypt(&nonce, Payload { msg: plain.as_bytes(), aad: aad.as_bytes() })
            .expect("AES-GCM encrypts any short message");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&ct);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    pub fn open(&self, stored: &str, aad: &str) -> Result<String, String> {
        let body = stored.strip_prefix(PREFIX).ok_or("the stored secret is not encrypted")?;
        let bytes = STANDARD.decode(body).map_err(|_| "the stored secret is not base64")?;
        if bytes.len() < 12 + 16 {
            return Err("the stored secret is too short".into());
        }
        let nonce = aes_gcm::aead::Nonce::<Aes256Gcm>::try_from(&bytes[..12]).map_err(|_| "bad nonce")?;
        let plain = self.0.decrypt(&nonce, Payload { msg: &bytes[12..], aad: aad.as_bytes() }).map_err(
            |_| "the stored secret does not decrypt with this master key (wrong key, or moved between rows)",
        )?;
        String::from_utf8(plain).map_err(|_| "the stored secret is not text".into())
    }
}

fn bad(reason: impl Into<String>) -> ConfigError {
    ConfigError { key: "crypto.master_key".into(), reason: reason.into() }
}

/// The master key: from config, or on SQLite from (or into) `master.key` beside the database.
/// `Ok(None)` only when `required` is false and none can be had (PostgreSQL without a key).
pub fn master_key(config: &Config, required: bool) -> Result<Option<[u8; 32]>, ConfigError> {
    if let Some(k) = &config.crypto.master_key {
        let bytes = STANDARD.decode(k.expose().trim()).map_err(|_| bad("must be base64"))?;
        return <[u8; 32]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| bad(format!("must be 32 bytes, not {}", bytes.len())));
    }
    let db = &config.database.url;
    let Some(file) = db.is_sqlite().then(|| runway_store::sqlite_path(&db.0)).flatten() else {
        return if required {
            Err(bad(
                "is required with PostgreSQL: set RUNWAY_CRYPTO_MASTER_KEY to 32 random bytes in base64 (openssl rand -base64 32)",
            ))
        } else {
            Ok(None)
        };
    };
    let path = file.with_file_name("master.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| bad(format!("{} is not base64", path.display())))?;
        return <[u8; 32]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| bad(format!("{} does not hold 32 bytes", path.display())));
    }
    let key = runway_core::secret::random_bytes::<32>();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
    }
    write_private(&path, &STANDARD.encode(key)).map_err(|e| bad(format!("cannot write {}: {e}", path.display())))?;
    Ok(Some(key))
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_its_row() {
        let b = SecretBox::new(&[7u8; 32]);
        let sealed = b.seal("whsec_abc", "ep_1");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("whsec_abc"));
        assert_eq!(b.open(&sealed, "ep_1").unwrap(), "whsec_abc");
        assert!(b.open(&sealed, "ep_2").is_err(), "moved to another row");
        assert!(SecretBox::new(&[8u8; 32]).open(&sealed, "ep_1").is_err(), "another key");
        assert_ne!(b.seal("whsec_abc", "ep_1"), sealed, "fresh nonce each time");
    }

    #[test]
    fn sqlite_gets_a_key_file_once() {
        let dir = std::env::temp_dir().join(format!("runway-seal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Config::default();
        c.database.url = runway_core::config::DatabaseUrl(format!("sqlite://{}/runway.db", dir.display()));
        let k1 = master_key(&c, true).unwrap().unwrap();
        let k2 = master_key(&c, true).unwrap().unwrap();
        assert_eq!(k1, k2);
        c.database.url = runway_core::config::DatabaseUrl("postgres://x@y/z".into());
        assert_eq!(master_key(&c, true).unwrap_err().key, "crypto.master_key");
        assert!(master_key(&c, false).unwrap().is_none());
        c.crypto.master_key = Some(runway_core::secret::SecretString::new("c2hvcnQ="));
        assert!(master_key(&c, true).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
