//! Verification of JWTs minted by external identity providers (Auth0, Clerk, Okta, Keycloak…),
//! with their public keys fetched from each issuer's JWKS.
//!
//! A token is matched to an [`IssuerConfig`] by its (unverified) `iss`, its key is found by `kid`
//! in that issuer's cached JWKS, and only then is anything in it trusted: the signature, the
//! algorithm (allowed by the config and matching the key), `iss`, `aud`, `exp`, `nbf` and `iat`
//! are checked against the caller's clock. The pure parts (base64url, header parsing, claim paths,
//! scopes, time checks, the refetch rate limit) are plain functions with unit tests.
//!
//! **Invariant:** keys come only from the configured `jwks_url`. The token's `jku`, `x5u`, `x5c`
//! and `jwk` headers are never read, symmetric algorithms (`HS*`) and `none` are never accepted,
//! and `oct` keys in a JWKS are skipped, so no shared secret with an IdP can verify anything.
//! **Invariant:** a JWKS fetch happens at most once per [`REFETCH_MIN_INTERVAL_SECS`] per issuer,
//! whatever tokens arrive, and a failed fetch never drops keys already cached.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

use serde_json::Value;
use tokio::sync::Mutex;

/// Least time between two JWKS fetches of one issuer, so garbage `kid`s cannot hammer the IdP.
pub const REFETCH_MIN_INTERVAL_SECS: i64 = 10;
/// Upper bound of [`IssuerConfig::leeway_secs`]: more skew than this hides a broken clock.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// How long one JWKS fetch may take, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest JWKS body read; a real one is a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Largest token looked at; anything bigger is refused before decoding.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Bounds for `cache_secs`: below the refetch interval is pointless, above a day keeps revoked keys.
const CACHE_SECS_RANGE: std::ops::RangeInclusive<u64> = 10..=86_400;
/// Most segments in a claim path such as `org.id`.
const MAX_CLAIM_PATH_SEGMENTS: usize = 16;
/// Longest client-supplied string (`kid`, `alg`) kept in an error.
const MAX_ECHO_CHARS: usize = 64;

/// One trusted identity provider: the config's `gateway.jwt_issuers` entries.
pub use runway_core::config::JwtIssuer as IssuerConfig;

/// A config with every optional field at its default, for code and tests that build one.
#[cfg(test)]
pub fn issuer_config(issuer: impl Into<String>, jwks_url: impl Into<String>, audiences: Vec<String>) -> IssuerConfig {
    let (issuer, jwks_url) = (issuer.into(), jwks_url.into());
    serde_json::from_value(serde_json::json!({"issuer": issuer, "jwks_url": jwks_url, "audiences": audiences}))
        .unwrap_or_else(|_| unreachable!("the required fields are present"))
}

/// Validates the config, naming the first bad field and why, for the fail-fast config step.
pub fn check_issuer(c: &IssuerConfig) -> Result<(), (String, String)> {
    let bad = |field: &str, reason: String| Err((field.to_owned(), reason));
    if c.issuer.is_empty() {
        return bad("issuer", "must not be empty".into());
    }
    if c.issuer.trim() != c.issuer {
        return bad("issuer", "must not start or end with whitespace (it is compared exactly)".into());
    }
    match reqwest::Url::parse(&c.jwks_url) {
        Err(e) => return bad("jwks_url", format!("not a URL: {e}")),
        Ok(url) => {
            if !matches!(url.scheme(), "http" | "https") {
                return bad("jwks_url", "must be http:// or https://".into());
            }
            if url.host_str().is_none_or(str::is_empty) {
                return bad("jwks_url", "must name a host".into());
            }
        }
    }
    if c.audiences.iter().any(|a| a.is_empty()) {
        return bad("audiences", "must not contain an empty audience".into());
    }
    if c.algorithms.is_empty() {
        return bad("algorithms", "must allow at least one algorithm".into());
    }
    for name in &c.algorithms {
        if let Err(reason) = allowed_algorithm(name) {
            return bad("algorithms", reason);
        }
    }
    if c.leeway_secs > MAX_LEEWAY_SECS {
        return bad("leeway_secs", format!("must be at most {MAX_LEEWAY_SECS}"));
    }
    if let Err(reason) = check_claim_path(&c.tenant_claim) {
        return bad("tenant_claim", reason);
    }
    if let Err(reason) = check_claim_path(&c.scopes_claim) {
        return bad("scopes_claim", reason);
    }
    if !CACHE_SECS_RANGE.contains(&c.cache_secs) {
        let (lo, hi) = (CACHE_SECS_RANGE.start(), CACHE_SECS_RANGE.end());
        return bad("cache_secs", format!("must be between {lo} and {hi}"));
    }
    Ok(())
}

/// Maps a configured algorithm name to the ones this module accepts: asymmetric only.
fn allowed_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("`none` would accept unsigned tokens".into());
    }
    let alg: Algorithm = name.parse().map_err(|_| format!("unknown algorithm `{name}` (names are case-sensitive)"))?;
    if alg.family() == AlgorithmFamily::Hmac {
        return Err(format!("`{name}` needs a secret shared with the IdP; use an asymmetric algorithm"));
    }
    Ok(alg)
}

fn check_claim_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.split('.').count() > MAX_CLAIM_PATH_SEGMENTS {
        return Err(format!("at most {MAX_CLAIM_PATH_SEGMENTS} dot-separated segments"));
    }
    if path.starts_with('.') || path.ends_with('.') || path.contains("..") {
        return Err("empty segment in dotted path".into());
    }
    Ok(())
}

/// What a verified token says, for the gateway to authorize and forward.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: String,
    /// The Runway tenant named by the issuer's `tenant_claim`, if the token carries one.
    pub tenant: Option<String>,
    /// Scopes from the issuer's `scopes_claim`, in token order, without duplicates.
    pub scopes: Vec<String>,
    /// `exp` in unix seconds, so callers can bound any cache of this result.
    pub expires_at: i64,
    /// Every claim of the token, for routes that need more than the above.
    pub claims: Value,
}

/// Why a token was refused. `Display` is short and safe to show to the client; details meant
/// for logs only (the JWKS error) are in the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not a well-formed JWS compact token; the text says which part (never echoes the token).
    Malformed(String),
    /// `iss` names no configured issuer.
    UnknownIssuer,
    /// No key of the issuer's JWKS has this `kid` (or, without `kid`, no single key fits).
    UnknownKey {
        kid: Option<String>,
    },
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    /// The `alg` is not allowed for this issuer, or does not fit the key's `kty`/`crv`/`alg`.
    AlgorithmNotAllowed(String),
    /// A claim this module requires (`iss`, `sub`, `exp`) is absent or of the wrong type.
    MissingClaim(&'static str),
    /// No key is cached and the JWKS could not be fetched; the text is for logs (a 503, not a 401).
    JwksUnavailable(String),
}

impl JwtError {
    /// A stable snake_case name, for metrics labels and problem+json codes.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed",
            JwtError::UnknownIssuer => "unknown_issuer",
            JwtError::UnknownKey { .. } => "unknown_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            JwtError::MissingClaim(_) => "missing_claim",
            JwtError::JwksUnavailable(_) => "jwks_unavailable",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::UnknownIssuer => f.write_str("token issuer is not trusted"),
            JwtError::UnknownKey { .. } => f.write_str("token signing key is unknown"),
            JwtError::BadSignature => f.write_str("token signature is invalid"),
            JwtError::Expired => f.write_str("token has expired"),
            JwtError::NotYetValid => f.write_str("token is not valid yet"),
            JwtError::WrongAudience => f.write_str("token audience is not accepted"),
            JwtError::AlgorithmNotAllowed(alg) => write!(f, "token algorithm `{alg}` is not allowed"),
            JwtError::MissingClaim(claim) => write!(f, "token lacks a valid `{claim}` claim"),
            JwtError::JwksUnavailable(_) => f.write_str("signing keys are unavailable, try again later"),
        }
    }
}

impl std::error::Error for JwtError {}

/// Keeps a client-supplied string short and printable before it goes into an error or a log.
fn echo(s: &str) -> String {
    s.chars().take(MAX_ECHO_CHARS).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

// ---------------------------------------------------------------------------------------------
// Pure parts: base64url, token splitting, claims.
// ---------------------------------------------------------------------------------------------

/// Decodes unpadded base64url (RFC 7515 §2), refusing padding and non-canonical trailing bits.
fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'-' => Some(62),
            b'_' => Some(63),
            _ => None,
        }
    }
    let bytes = input.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in bytes {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero, or two encodings would decode to the same bytes.
    (acc == 0).then_some(out)
}

/// The parts of a token read before its signature is checked: only for routing, never trusted.
#[derive(Debug, PartialEq)]
struct Unverified {
    alg: String,
    kid: Option<String>,
    claims: Value,
}

fn decode_json_object(segment: &str, what: &str) -> Result<Value, JwtError> {
    let bytes = b64url_decode(segment).ok_or_else(|| JwtError::Malformed(format!("{what} is not base64url")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
    }
}

/// Splits a compact JWS and reads its header and claims without verifying anything.
fn parse_unverified(token: &str) -> Result<Unverified, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed("token is too large".into()));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated segments".into()));
    };
    let header = decode_json_object(header, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(JwtError::Malformed("header lacks a string `alg`".into())),
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::Malformed("`kid` is not a string".into())),
    };
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; we understand none.
    if header.get("crit").is_some() {
        return Err(JwtError::Malformed("unsupported `crit` header".into()));
    }
    let claims = decode_json_object(payload, "payload")?;
    Ok(Unverified { alg, kid, claims })
}

/// Finds a claim by name or dotted path. At each level the longest key matching a prefix of the
/// remaining path wins, so `https://runway.dev/tenant` and `org.id` both work.
fn claim_at_path<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    let object = claims.as_object()?;
    if let Some(v) = object.get(path) {
        return Some(v);
    }
    // Split points from the right: longer prefixes first.
    for (i, _) in path.match_indices('.').collect::<Vec<_>>().into_iter().rev() {
        let (head, rest) = (&path[..i], &path[i + 1..]);
        if let Some(found) = object.get(head).and_then(|inner| claim_at_path(inner, rest)) {
            return Some(found);
        }
    }
    None
}

/// Scopes from a space-separated string or an array of strings, deduplicated in order.
/// Anything else (absent, number, object) gives no scopes.
fn parse_scopes(value: Option<&Value>) -> Vec<String> {
    let raw: Vec<&str> = match value {
        Some(Value::String(s)) => s.split_ascii_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).filter(|s| !s.is_empty()).collect(),
        _ => Vec::new(),
    };
    let mut scopes: Vec<String> = Vec::with_capacity(raw.len());
    for s in raw {
        if !scopes.iter().any(|have| have == s) {
            scopes.push(s.to_owned());
        }
    }
    scopes
}

/// The tenant claim: a non-empty string or an integer id; absent or null is `None`.
fn parse_tenant(value: Option<&Value>) -> Result<Option<String>, JwtError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(JwtError::Malformed("tenant claim is not a string".into())),
    }
}

/// Reads a NumericDate claim; fractions round towards refusal (`exp` down, `nbf`/`iat` up).
fn numeric_date(claims: &Value, name: &'static str, round_up: bool) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if n.is_u64() {
                Ok(Some(i64::MAX))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() => Ok(Some(if round_up { f.ceil() } else { f.floor() } as i64)),
                    _ => Err(JwtError::MissingClaim(name)),
                }
            }
        }
        Some(_) => Err(JwtError::MissingClaim(name)),
    }
}

/// Checks `exp` (required), `nbf` and `iat` against `now` with `leeway`; returns `exp`.
fn check_times(claims: &Value, now: i64, leeway_secs: u64) -> Result<i64, JwtError> {
    let leeway = i64::try_from(leeway_secs.min(MAX_LEEWAY_SECS)).unwrap_or(0);
    let exp = numeric_date(claims, "exp", false)?.ok_or(JwtError::MissingClaim("exp"))?;
    // RFC 7519 §4.1.4: the current time must be before `exp`.
    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf", true)?
        && now < nbf.saturating_sub(leeway)
    {
        return Err(JwtError::NotYetValid);
    }
    if let Some(iat) = numeric_date(claims, "iat", true)?
        && iat > now.saturating_add(leeway)
    {
        return Err(JwtError::NotYetValid);
    }
    Ok(exp)
}

/// `aud` (a string or an array) must contain one of `accepted`; an empty `accepted` skips the check.
fn check_audience(claims: &Value, accepted: &[String]) -> Result<(), JwtError> {
    if accepted.is_empty() {
        return Ok(());
    }
    let matches = |v: &Value| v.as_str().is_some_and(|aud| accepted.iter().any(|a| a == aud));
    let ok = match claims.get("aud") {
        Some(aud @ Value::String(_)) => matches(aud),
        Some(Value::Array(auds)) => auds.iter().any(matches),
        _ => false,
    };
    if ok { Ok(()) } else { Err(JwtError::WrongAudience) }
}

/// The rate limit on fetches: true when none happened within `min_interval` seconds. A clock that
/// jumped back by more than the interval also allows one, so it cannot stall refreshes for long.
fn may_refetch(last_attempt: Option<i64>, now: i64, min_interval: i64) -> bool {
    last_attempt.is_none_or(|last| now.saturating_sub(last).saturating_abs() >= min_interval)
}

/// Whether the periodic refresh should fetch: the keys are older than `cache_secs` (or there are
/// none) and the rate limit allows a fetch.
fn refresh_is_due(last_success: Option<i64>, last_attempt: Option<i64>, now: i64, cache_secs: u64) -> bool {
    let cache = i64::try_from(cache_secs).unwrap_or(i64::MAX);
    let stale = last_success.is_none_or(|at| now.saturating_sub(at) >= cache);
    stale && may_refetch(last_attempt, now, REFETCH_MIN_INTERVAL_SECS)
}

// ---------------------------------------------------------------------------------------------
// Keys.
// ---------------------------------------------------------------------------------------------

/// One usable verification key from a JWKS.
struct Key {
    kid: Option<String>,
    family: AlgorithmFamily,
    /// The JWK's `alg`, when it names one.
    alg: Option<String>,
    curve: Option<EllipticCurve>,
    key: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`: same family, same curve, and the
    /// JWK's own `alg` (if any) equal to it.
    fn accepts(&self, alg: Algorithm, name: &str) -> bool {
        if self.family != alg.family() {
            return false;
        }
        if self.alg.as_deref().is_some_and(|own| own != name) {
            return false;
        }
        match alg {
            Algorithm::ES256 => self.curve == Some(EllipticCurve::P256),
            Algorithm::ES384 => self.curve == Some(EllipticCurve::P384),
            Algorithm::EdDSA => self.curve == Some(EllipticCurve::Ed25519),
            _ => true,
        }
    }
}

/// Turns one JWK into a [`Key`]: `Ok(None)` for keys that are not for us (encryption, `oct`,
/// unknown `kty`), `Err` for signing keys that are broken.
fn parse_jwk(raw: &Value) -> Result<Option<Key>, String> {
    let text = |name: &str| raw.get(name).and_then(Value::as_str);
    if text("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = raw.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|op| op.as_str() == Some("verify"))
    {
        return Ok(None);
    }
    let family = match text("kty") {
        Some("RSA") => AlgorithmFamily::Rsa,
        Some("EC") => AlgorithmFamily::Ec,
        Some("OKP") => AlgorithmFamily::Ed,
        _ => return Ok(None), // `oct` (shared secrets) and anything unknown
    };
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("unreadable JWK: {e}"))?;
    let curve = match &jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) => Some(p.curve.clone()),
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => Some(p.curve.clone()),
        _ => None,
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable JWK: {e}"))?;
    Ok(Some(Key { kid: text("kid").map(str::to_owned), family, alg: text("alg").map(str::to_owned), curve, key }))
}

/// Parses a JWKS document. A document without one usable key is an error, so that a broken
/// response never replaces keys that work.
fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let Some(raw_keys) = doc.get("keys").and_then(Value::as_array) else {
        return Err("JWKS has no `keys` array".into());
    };
    let mut keys = Vec::with_capacity(raw_keys.len());
    for raw in raw_keys {
        match parse_jwk(raw) {
            Ok(Some(key)) => keys.push(Arc::new(key)),
            Ok(None) => {}
            Err(e) => tracing::debug!(kid = ?raw.get("kid"), error = %e, "skipping JWK"),
        }
    }
    if keys.is_empty() {
        return Err("JWKS holds no usable signing key".into());
    }
    Ok(keys)
}

enum Lookup {
    Found(Arc<Key>),
    /// Nothing with this `kid` (or no key at all): a refetch may help.
    Missing,
    /// Keys with this `kid` exist but none fits the token's `alg`.
    Incompatible,
    /// No `kid` and several keys fit: refusing beats trying each.
    Ambiguous,
}

fn lookup(keys: &[Arc<Key>], kid: Option<&str>, alg: Algorithm, name: &str) -> Lookup {
    match kid {
        Some(kid) => {
            let mut named = keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).peekable();
            if named.peek().is_none() {
                return Lookup::Missing;
            }
            named.find(|k| k.accepts(alg, name)).map_or(Lookup::Incompatible, |k| Lookup::Found(Arc::clone(k)))
        }
        None => {
            let mut fitting = keys.iter().filter(|k| k.accepts(alg, name));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Lookup::Found(Arc::clone(k)),
                (None, _) => Lookup::Missing,
                (Some(_), Some(_)) => Lookup::Ambiguous,
            }
        }
    }
}

/// Fetches and parses a JWKS within [`FETCH_TIMEOUT`] and [`MAX_JWKS_BYTES`].
async fn fetch_keys(http: &reqwest::Client, url: &str) -> Result<Vec<Arc<Key>>, String> {
    let body = tokio::time::timeout(FETCH_TIMEOUT, fetch_body(http, url))
        .await
        .map_err(|_| format!("timed out after {} s", FETCH_TIMEOUT.as_secs()))??;
    parse_jwks(&body)
}

async fn fetch_body(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut resp = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let too_big = || format!("body exceeds {MAX_JWKS_BYTES} bytes");
    if resp.content_length().is_some_and(|len| len > MAX_JWKS_BYTES as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading body failed: {e}"))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// The verifier.
// ---------------------------------------------------------------------------------------------

/// Bookkeeping of an issuer's fetches; its mutex also makes concurrent fetches one.
#[derive(Default)]
struct FetchState {
    last_attempt: Option<i64>,
    last_success: Option<i64>,
    last_error: Option<String>,
}

struct IssuerState {
    config: IssuerConfig,
    /// The allowed algorithms, with their configured (JWA) names.
    algorithms: Vec<(String, Algorithm)>,
    /// The current key set, swapped whole after a successful fetch; read without awaiting.
    keys: RwLock<Arc<Vec<Arc<Key>>>>,
    fetch: Arc<Mutex<FetchState>>,
}

impl IssuerState {
    fn keys(&self) -> Arc<Vec<Arc<Key>>> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm, name: &str) -> Lookup {
        lookup(&self.keys(), kid, alg, name)
    }

    /// Fetches the JWKS and records the outcome; a failure keeps the keys already cached.
    async fn refetch(&self, http: &reqwest::Client, fetch: &mut FetchState, now: i64) {
        fetch.last_attempt = Some(now);
        let issuer = self.config.issuer.as_str();
        match fetch_keys(http, &self.config.jwks_url).await {
            Ok(keys) => {
                tracing::info!(issuer, keys = keys.len(), "JWKS fetched");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                fetch.last_success = Some(now);
                fetch.last_error = None;
            }
            Err(error) => {
                let cached = self.keys().len();
                tracing::warn!(issuer, url = %self.config.jwks_url, %error, cached, "JWKS fetch failed; keeping cached keys");
                fetch.last_error = Some(error);
            }
        }
    }
}

/// Verifies tokens of the configured issuers; one per gateway, shared behind `Arc`.
pub struct JwtVerifier {
    issuers: HashMap<String, Arc<IssuerState>>,
    http: reqwest::Client,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier").field("issuers", &self.issuers.keys().collect::<Vec<_>>()).finish()
    }
}

impl JwtVerifier {
    /// Builds the verifier; keys are fetched on first use (or by [`Self::refresh_due`]).
    /// Callers run [`IssuerConfig::check`] first; here, as a second line, algorithms that
    /// `check` refuses are dropped, leeway is capped and a duplicate issuer keeps its first entry.
    pub fn new(issuers: Vec<IssuerConfig>, http: reqwest::Client) -> Self {
        let mut map = HashMap::with_capacity(issuers.len());
        for mut config in issuers {
            if map.contains_key(&config.issuer) {
                tracing::warn!(issuer = %config.issuer, "duplicate issuer ignored");
                continue;
            }
            let algorithms: Vec<(String, Algorithm)> = config
                .algorithms
                .iter()
                .filter_map(|name| match allowed_algorithm(name) {
                    Ok(alg) => Some((name.clone(), alg)),
                    Err(reason) => {
                        tracing::warn!(issuer = %config.issuer, alg = %name, %reason, "algorithm dropped");
                        None
                    }
                })
                .collect();
            config.leeway_secs = config.leeway_secs.min(MAX_LEEWAY_SECS);
            let state = IssuerState {
                config,
                algorithms,
                keys: RwLock::new(Arc::new(Vec::new())),
                fetch: Arc::new(Mutex::new(FetchState::default())),
            };
            map.insert(state.config.issuer.clone(), Arc::new(state));
        }
        Self { issuers: map, http }
    }

    /// Picks the issuer by the token's unverified `iss`, finds the key by `kid` in the cached JWKS
    /// (fetching it on first use, and refetching once when the `kid` is unknown — key rotation —
    /// but at most once per 10 s per issuer so garbage kids cannot hammer the IdP), verifies
    /// signature, alg in the allowed list (and matching the JWK's alg/kty), iss, aud, exp, nbf with leeway.
    pub async fn verify(&self, token: &str, now_unix: i64) -> Result<VerifiedToken, JwtError> {
        let unverified = parse_unverified(token)?;
        if unverified.alg.eq_ignore_ascii_case("none") {
            return Err(JwtError::AlgorithmNotAllowed(echo(&unverified.alg)));
        }
        let Some(Value::String(iss)) = unverified.claims.get("iss") else {
            return Err(JwtError::MissingClaim("iss"));
        };
        let state = self.issuers.get(iss.as_str()).ok_or(JwtError::UnknownIssuer)?;
        let (name, alg) = state
            .algorithms
            .iter()
            .find(|(name, _)| *name == unverified.alg)
            .ok_or_else(|| JwtError::AlgorithmNotAllowed(echo(&unverified.alg)))?;
        let (name, alg) = (name.as_str(), *alg);
        let key = self.key_for(state, unverified.kid.as_deref(), alg, name, now_unix).await?;

        let mut validation = Validation::new(alg);
        // Time, audience and issuer are checked below against the caller's clock.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims =
            jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| map_decode_error(&e, name))?;
        let claims = claims.claims;

        let config = &state.config;
        if claims.get("iss").and_then(Value::as_str) != Some(config.issuer.as_str()) {
            return Err(JwtError::UnknownIssuer);
        }
        let expires_at = check_times(&claims, now_unix, config.leeway_secs)?;
        check_audience(&claims, &config.audiences)?;
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => return Err(JwtError::MissingClaim("sub")),
        };
        let tenant = parse_tenant(claim_at_path(&claims, &config.tenant_claim))?;
        let scopes = parse_scopes(claim_at_path(&claims, &config.scopes_claim));
        Ok(VerifiedToken { issuer: config.issuer.clone(), subject, tenant, scopes, expires_at, claims })
    }

    /// The key for `kid`, refetching the JWKS once (rate-limited, shared by concurrent callers)
    /// when it is missing. The fetch runs in its own task, so a caller that goes away (a client
    /// disconnecting) neither aborts it nor lets the next caller start another one.
    async fn key_for(
        &self,
        state: &Arc<IssuerState>,
        kid: Option<&str>,
        alg: Algorithm,
        name: &str,
        now: i64,
    ) -> Result<Arc<Key>, JwtError> {
        let settled = |found: Lookup| match found {
            Lookup::Found(key) => Some(Ok(key)),
            Lookup::Incompatible => Some(Err(JwtError::AlgorithmNotAllowed(name.to_owned()))),
            Lookup::Ambiguous => Some(Err(JwtError::UnknownKey { kid: None })),
            Lookup::Missing => None,
        };
        if let Some(done) = settled(state.lookup(kid, alg, name)) {
            return done;
        }
        let mut fetch = Arc::clone(&state.fetch).lock_owned().await;
        // Another caller may have fetched while this one waited.
        if let Some(done) = settled(state.lookup(kid, alg, name)) {
            return done;
        }
        let missing = |fetch: &FetchState| {
            if state.keys().is_empty() {
                let why = fetch.last_error.clone().unwrap_or_else(|| "no keys fetched yet".into());
                JwtError::JwksUnavailable(why)
            } else {
                JwtError::UnknownKey { kid: kid.map(echo) }
            }
        };
        if !may_refetch(fetch.last_attempt, now, REFETCH_MIN_INTERVAL_SECS) {
            return Err(missing(&fetch));
        }
        let task_state = Arc::clone(state);
        let http = self.http.clone();
        let task = tokio::spawn(async move {
            task_state.refetch(&http, &mut fetch, now).await;
            fetch
        });
        let fetch = task.await.map_err(|e| JwtError::JwksUnavailable(format!("fetch task failed: {e}")))?;
        settled(state.lookup(kid, alg, name)).unwrap_or_else(|| Err(missing(&fetch)))
    }

    /// Refreshes every issuer's JWKS whose cache_secs elapsed (the caller runs it periodically).
    /// Issuers are fetched concurrently; failures keep the old keys and are logged.
    pub async fn refresh_due(&self, now_unix: i64) {
        let mut tasks = tokio::task::JoinSet::new();
        for state in self.issuers.values() {
            let state = Arc::clone(state);
            let http = self.http.clone();
            tasks.spawn(async move {
                let mut fetch = state.fetch.lock().await;
                if refresh_is_due(fetch.last_success, fetch.last_attempt, now_unix, state.config.cache_secs) {
                    state.refetch(&http, &mut fetch, now_unix).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "JWKS refresh task failed");
            }
        }
    }
}

fn map_decode_error(e: &jsonwebtoken::errors::Error, alg: &str) -> JwtError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            JwtError::AlgorithmNotAllowed(alg.to_owned())
        }
        // The JWKS key itself is unusable: the token cannot be proven, so it is refused as such.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => {
            tracing::warn!(error = %e, "JWKS key could not verify");
            JwtError::BadSignature
        }
        ErrorKind::Base64(_) => JwtError::Malformed("segment is not base64url".into()),
        _ => JwtError::Malformed("token could not be decoded".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::time::Instant;

    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    // Test key pairs, generated once with
    // `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048` and
    // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
    // JWK components: `openssl rsa -noout -modulus` (hex → base64url) for `n`; for EC, the last
    // 65 bytes of `openssl pkey -pubout -outform DER` are 04‖x‖y.
    const RSA1_PEM: &str = include_str!("../testdata/rsa1.pem");
    const RSA1_N: &str = include_str!("../testdata/rsa1.n");
    const RSA2_PEM: &str = include_str!("../testdata/rsa2.pem");
    const RSA2_N: &str = include_str!("../testdata/rsa2.n");
    const EC1_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIxb8Heavw12T02QB
ZbctHOYoR+PvPC35W91t0skBG4ihRANCAAS3nQUA1TicGpFnWWc13bznWsVqU1os
xvYZNUhy7BdbecV+x/DKMQ2JG+vaDcoe3D5mckJKQjrrGAaWx2UsCv0X
-----END PRIVATE KEY-----
";
    const EC1_X: &str = "t50FANU4nBqRZ1lnNd2851rFalNaLMb2GTVIcuwXW3k";
    const EC1_Y: &str = "xX7H8MoxDYkb69oNyh7cPmZyQkpCOusYBpbHZSwK_Rc";

    const ISS: &str = "https://idp.example/";
    const AUD: &str = "runway-api";
    const NOW: i64 = 1_800_000_000;

    fn rsa_jwk(kid: &str, n: &str) -> Value {
        json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": "AQAB" })
    }

    fn ec_jwk(kid: &str) -> Value {
        json!({ "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": kid, "x": EC1_X, "y": EC1_Y })
    }

    fn jwks(keys: &[Value]) -> Value {
        json!({ "keys": keys })
    }

    fn claims() -> Value {
        json!({
            "iss": ISS, "sub": "user-1", "aud": AUD, "iat": NOW, "exp": NOW + 300,
            "tenant_id": "acme", "scope": "jobs:read jobs:write",
        })
    }

    /// `claims()` with top-level fields replaced; a null removes the field.
    fn claims_with(patch: Value) -> Value {
        let mut c = claims();
        let map = c.as_object_mut().unwrap();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn sign_with(pem: &str, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let key = match alg.family() {
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, &key).unwrap()
    }

    fn rs256(claims: &Value) -> String {
        sign_with(RSA1_PEM, Algorithm::RS256, Some("k1"), claims)
    }

    fn b64url_encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    /// A stand-in identity provider serving a JWKS that tests can swap, break and count.
    struct Idp {
        jwks: std::sync::Mutex<Value>,
        fetches: AtomicUsize,
        mode: AtomicU8,
    }

    const SERVE: u8 = 0;
    const FAIL: u8 = 1;
    const SLOW: u8 = 2;
    const HUGE: u8 = 3;
    const DELAYED: u8 = 4;

    impl Idp {
        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
        fn set_keys(&self, keys: Value) {
            *self.jwks.lock().unwrap() = keys;
        }
        fn set_mode(&self, mode: u8) {
            self.mode.store(mode, Ordering::SeqCst);
        }
    }

    async fn serve_jwks(State(idp): State<Arc<Idp>>) -> Response {
        idp.fetches.fetch_add(1, Ordering::SeqCst);
        let body = idp.jwks.lock().unwrap().to_string();
        let json = [(header::CONTENT_TYPE, "application/json")];
        match idp.mode.load(Ordering::SeqCst) {
            FAIL => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            SLOW => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                (json, body).into_response()
            }
            HUGE => (json, format!("{}{body}", " ".repeat(MAX_JWKS_BYTES))).into_response(),
            DELAYED => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                (json, body).into_response()
            }
            _ => (json, body).into_response(),
        }
    }

    async fn start_idp(keys: Value) -> (Arc<Idp>, String) {
        let idp = Arc::new(Idp {
            jwks: std::sync::Mutex::new(keys),
            fetches: AtomicUsize::new(0),
            mode: AtomicU8::new(SERVE),
        });
        let app = axum::Router::new().route("/jwks.json", axum::routing::get(serve_jwks)).with_state(Arc::clone(&idp));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (idp, url)
    }

    fn verifier_for(url: &str, tweak: impl FnOnce(&mut IssuerConfig)) -> JwtVerifier {
        let mut config = issuer_config(ISS, url, vec![AUD.to_owned()]);
        config.algorithms = vec!["RS256".into(), "ES256".into()];
        tweak(&mut config);
        check_issuer(&config).unwrap();
        JwtVerifier::new(vec![config], reqwest::Client::new())
    }

    async fn standard() -> (Arc<Idp>, JwtVerifier) {
        let (idp, url) = start_idp(jwks(&[rsa_jwk("k1", RSA1_N), ec_jwk("e1")])).await;
        (idp, verifier_for(&url, |_| {}))
    }

    // --- Pure parts ---------------------------------------------------------------------------

    #[test]
    fn b64url_decodes_rfc4648_vectors_and_refuses_the_rest() {
        for (enc, dec) in [("", ""), ("Zg", "f"), ("Zm8", "fo"), ("Zm9v", "foo"), ("Zm9vYmFy", "foobar")] {
            assert_eq!(b64url_decode(enc).unwrap(), dec.as_bytes(), "{enc}");
        }
        assert_eq!(b64url_decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(b64url_decode("Zg=="), None, "padding");
        assert_eq!(b64url_decode("+/8"), None, "standard alphabet");
        assert_eq!(b64url_decode("Z"), None, "impossible length");
        assert_eq!(b64url_decode("Zh"), None, "non-zero trailing bits");
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(b64url_decode(&b64url_encode(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn parse_unverified_reads_header_and_claims() {
        let token = rs256(&claims());
        let u = parse_unverified(&token).unwrap();
        assert_eq!(u.alg, "RS256");
        assert_eq!(u.kid.as_deref(), Some("k1"));
        assert_eq!(u.claims, claims());
    }

    #[test]
    fn parse_unverified_refuses_malformed_tokens() {
        let h = |v: Value| b64url_encode(v.to_string().as_bytes());
        let p = b64url_encode(claims().to_string().as_bytes());
        let good_header = h(json!({ "alg": "RS256" }));
        let cases = [
            (format!("{good_header}.{p}"), "two segments"),
            (format!("{good_header}.{p}.sig.extra"), "four segments"),
            (format!("{}.{p}.sig", b64url_encode(b"not json")), "header not JSON"),
            (format!("{}.{p}.sig", h(json!("RS256"))), "header not an object"),
            (format!("{}.{p}.sig", h(json!({ "typ": "JWT" }))), "no alg"),
            (format!("{}.{p}.sig", h(json!({ "alg": 256 }))), "alg not a string"),
            (format!("{}.{p}.sig", h(json!({ "alg": "RS256", "kid": 7 }))), "kid not a string"),
            (format!("{}.{p}.sig", h(json!({ "alg": "RS256", "crit": ["exp"] }))), "crit"),
            (format!("{good_header}.{}.sig", b64url_encode(b"[1]")), "payload not an object"),
            (format!("{good_header}.{p}==.sig"), "payload padded"),
            (format!("{good_header}.{}.sig", "A".repeat(MAX_TOKEN_BYTES)), "too large"),
        ];
        for (token, why) in cases {
            assert!(matches!(parse_unverified(&token), Err(JwtError::Malformed(_))), "{why}");
        }
    }

    #[test]
    fn claim_at_path_walks_dots_and_prefers_literal_keys() {
        let c = json!({
            "tenant_id": "t1",
            "org": { "id": "o1", "meta": { "slug": "acme" } },
            "https://runway.dev/tenant": "ns1",
            "a.b": { "c": "literal-prefix" },
            "a": { "b": "nested" },
        });
        assert_eq!(claim_at_path(&c, "tenant_id"), Some(&json!("t1")));
        assert_eq!(claim_at_path(&c, "org.id"), Some(&json!("o1")));
        assert_eq!(claim_at_path(&c, "org.meta.slug"), Some(&json!("acme")));
        assert_eq!(claim_at_path(&c, "https://runway.dev/tenant"), Some(&json!("ns1")));
        assert_eq!(claim_at_path(&c, "a.b.c"), Some(&json!("literal-prefix")));
        assert_eq!(claim_at_path(&c, "a.b"), Some(&json!({ "c": "literal-prefix" })), "literal key wins");
        assert_eq!(claim_at_path(&json!({ "a": { "b": "nested" } }), "a.b"), Some(&json!("nested")));
        assert_eq!(claim_at_path(&c, "org.missing"), None);
        assert_eq!(claim_at_path(&c, "tenant_id.x"), None, "strings have no fields");
        assert_eq!(claim_at_path(&json!("scalar"), "x"), None);
    }

    #[test]
    fn scopes_come_from_a_string_or_an_array() {
        assert_eq!(parse_scopes(Some(&json!("a b  c\tb"))), ["a", "b", "c"]);
        assert_eq!(parse_scopes(Some(&json!(["x", "y", 3, "", "x"]))), ["x", "y"]);
        assert!(parse_scopes(Some(&json!(""))).is_empty());
        assert!(parse_scopes(Some(&json!(42))).is_empty());
        assert!(parse_scopes(Some(&json!({ "a": 1 }))).is_empty());
        assert!(parse_scopes(None).is_empty());
    }

    #[test]
    fn tenant_is_a_string_or_an_integer() {
        assert_eq!(parse_tenant(Some(&json!("acme"))), Ok(Some("acme".into())));
        assert_eq!(parse_tenant(Some(&json!(42))), Ok(Some("42".into())));
        assert_eq!(parse_tenant(Some(&json!(""))), Ok(None));
        assert_eq!(parse_tenant(Some(&Value::Null)), Ok(None));
        assert_eq!(parse_tenant(None), Ok(None));
        assert!(matches!(parse_tenant(Some(&json!(["acme"]))), Err(JwtError::Malformed(_))));
        assert!(matches!(parse_tenant(Some(&json!(1.5))), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn time_checks_apply_leeway_at_the_boundaries() {
        let t = |c: Value| check_times(&c, NOW, 60);
        assert_eq!(t(json!({ "exp": NOW + 1 })), Ok(NOW + 1));
        assert_eq!(t(json!({ "exp": NOW - 59 })), Ok(NOW - 59), "within leeway");
        assert_eq!(t(json!({ "exp": NOW - 60 })), Err(JwtError::Expired), "exp + leeway == now");
        assert_eq!(t(json!({ "exp": NOW - 3600 })), Err(JwtError::Expired));
        assert_eq!(check_times(&json!({ "exp": NOW }), NOW, 0), Err(JwtError::Expired));
        assert_eq!(t(json!({ "exp": (NOW - 59) as f64 - 0.5 })), Err(JwtError::Expired), "fraction rounds down");
        assert_eq!(t(json!({ "exp": NOW + 10, "nbf": NOW + 60 })), Ok(NOW + 10));
        assert_eq!(t(json!({ "exp": NOW + 10, "nbf": NOW + 61 })), Err(JwtError::NotYetValid));
        assert_eq!(t(json!({ "exp": NOW + 10, "iat": NOW + 60 })), Ok(NOW + 10));
        assert_eq!(t(json!({ "exp": NOW + 10, "iat": NOW + 61 })), Err(JwtError::NotYetValid));
        assert_eq!(t(json!({})), Err(JwtError::MissingClaim("exp")));
        assert_eq!(t(json!({ "exp": "tomorrow" })), Err(JwtError::MissingClaim("exp")));
        assert_eq!(t(json!({ "exp": NOW + 10, "nbf": "now" })), Err(JwtError::MissingClaim("nbf")));
        assert_eq!(t(json!({ "exp": u64::MAX })), Ok(i64::MAX), "huge exp saturates");
        assert_eq!(check_times(&json!({ "exp": NOW - 400 }), NOW, 10_000), Err(JwtError::Expired), "leeway capped");
    }

    #[test]
    fn audience_must_intersect_unless_none_configured() {
        let accepted = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(check_audience(&json!({ "aud": "b" }), &accepted), Ok(()));
        assert_eq!(check_audience(&json!({ "aud": ["x", "a"] }), &accepted), Ok(()));
        assert_eq!(check_audience(&json!({ "aud": "x" }), &accepted), Err(JwtError::WrongAudience));
        assert_eq!(check_audience(&json!({ "aud": [] }), &accepted), Err(JwtError::WrongAudience));
        assert_eq!(check_audience(&json!({}), &accepted), Err(JwtError::WrongAudience));
        assert_eq!(check_audience(&json!({ "aud": 1 }), &accepted), Err(JwtError::WrongAudience));
        assert_eq!(check_audience(&json!({ "aud": "anything" }), &[]), Ok(()));
    }

    #[test]
    fn refetch_is_rate_limited_to_one_per_interval() {
        assert!(may_refetch(None, NOW, 10));
        assert!(!may_refetch(Some(NOW), NOW, 10));
        assert!(!may_refetch(Some(NOW - 9), NOW, 10));
        assert!(may_refetch(Some(NOW - 10), NOW, 10));
        assert!(!may_refetch(Some(NOW + 5), NOW, 10), "small clock step back");
        assert!(may_refetch(Some(NOW + 3600), NOW, 10), "clock jumped back an hour");
        assert!(may_refetch(Some(i64::MIN), i64::MAX, 10), "no overflow");
    }

    #[test]
    fn refresh_is_due_when_stale_and_not_rate_limited() {
        assert!(refresh_is_due(None, None, NOW, 600), "never fetched");
        assert!(!refresh_is_due(Some(NOW - 599), Some(NOW - 599), NOW, 600));
        assert!(refresh_is_due(Some(NOW - 600), Some(NOW - 600), NOW, 600));
        assert!(!refresh_is_due(Some(NOW - 900), Some(NOW - 5), NOW, 600), "failed 5 s ago");
        assert!(refresh_is_due(Some(NOW - 900), Some(NOW - 10), NOW, 600));
        assert!(!refresh_is_due(None, Some(NOW - 1), NOW, 600));
    }

    #[test]
    fn issuer_config_check_names_the_bad_field() {
        let base = issuer_config(ISS, "https://idp.example/.well-known/jwks.json", vec![AUD.into()]);
        assert_eq!(check_issuer(&base), Ok(()));
        let field = |tweak: fn(&mut IssuerConfig)| {
            let mut c = base.clone();
            tweak(&mut c);
            check_issuer(&c).map_err(|(field, _)| field)
        };
        assert_eq!(field(|c| c.issuer = String::new()), Err("issuer".into()));
        assert_eq!(field(|c| c.issuer = " https://idp/".into()), Err("issuer".into()));
        assert_eq!(field(|c| c.jwks_url = "ftp://idp.example/jwks".into()), Err("jwks_url".into()));
        assert_eq!(field(|c| c.jwks_url = "idp.example/jwks".into()), Err("jwks_url".into()));
        assert_eq!(field(|c| c.jwks_url = "http://127.0.0.1:8080/jwks".into()), Ok(()));
        assert_eq!(field(|c| c.audiences = vec![String::new()]), Err("audiences".into()));
        assert_eq!(field(|c| c.audiences = vec![]), Ok(()));
        assert_eq!(field(|c| c.algorithms = vec![]), Err("algorithms".into()));
        assert_eq!(field(|c| c.algorithms = vec!["none".into()]), Err("algorithms".into()));
        assert_eq!(field(|c| c.algorithms = vec!["RS256".into(), "NONE".into()]), Err("algorithms".into()));
        assert_eq!(field(|c| c.algorithms = vec!["HS256".into()]), Err("algorithms".into()));
        assert_eq!(field(|c| c.algorithms = vec!["rs256".into()]), Err("algorithms".into()));
        let all = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];
        let mut c = base.clone();
        c.algorithms = all.iter().map(|a| (*a).to_owned()).collect();
        assert_eq!(check_issuer(&c), Ok(()));
        assert_eq!(field(|c| c.leeway_secs = 300), Ok(()));
        assert_eq!(field(|c| c.leeway_secs = 301), Err("leeway_secs".into()));
        assert_eq!(field(|c| c.tenant_claim = String::new()), Err("tenant_claim".into()));
        assert_eq!(field(|c| c.tenant_claim = "org..id".into()), Err("tenant_claim".into()));
        assert_eq!(field(|c| c.tenant_claim = "https://runway.dev/tenant".into()), Ok(()));
        assert_eq!(field(|c| c.scopes_claim = ".scp".into()), Err("scopes_claim".into()));
        assert_eq!(field(|c| c.cache_secs = 0), Err("cache_secs".into()));
        assert_eq!(field(|c| c.cache_secs = 86_401), Err("cache_secs".into()));
        let (_, reason) = {
            let mut c = base.clone();
            c.algorithms = vec!["HS512".into()];
            check_issuer(&c).unwrap_err()
        };
        assert!(reason.contains("secret"), "{reason}");
    }

    #[test]
    fn issuer_config_serde_defaults_and_strictness() {
        let minimal = json!({ "issuer": ISS, "jwks_url": "https://idp.example/jwks", "audiences": [AUD] });
        let c: IssuerConfig = serde_json::from_value(minimal.clone()).unwrap();
        assert_eq!(c, issuer_config(ISS, "https://idp.example/jwks", vec![AUD.into()]));
        assert_eq!((c.algorithms.as_slice(), c.leeway_secs, c.cache_secs), (&["RS256".to_owned()][..], 60, 600));
        assert_eq!((c.tenant_claim.as_str(), c.scopes_claim.as_str()), ("tenant_id", "scope"));
        let round: IssuerConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(round, c);
        let mut unknown = minimal.clone();
        unknown["audience"] = json!("typo");
        assert!(serde_json::from_value::<IssuerConfig>(unknown).is_err(), "deny_unknown_fields");
        let mut no_aud = minimal;
        no_aud.as_object_mut().unwrap().remove("audiences");
        assert!(serde_json::from_value::<IssuerConfig>(no_aud).is_err(), "audiences must be explicit");
    }

    #[test]
    fn jwks_parsing_keeps_only_usable_signing_keys() {
        let doc = jwks(&[
            rsa_jwk("k1", RSA1_N),
            json!({ "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc", "n": RSA2_N, "e": "AQAB" }),
            json!({ "kty": "oct", "kid": "secret", "k": "c2VjcmV0" }),
            json!({ "kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": RSA2_N, "e": "AQAB" }),
            json!({ "kty": "EC", "kid": "broken", "crv": "P-256", "x": EC1_X }),
            json!({ "kty": "XYZ", "kid": "future" }),
            ec_jwk("e1"),
        ]);
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["k1", "e1"]);
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err(), "no usable key");
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err(), "secrets only");
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(br#"{"jwks":[]}"#).is_err());
    }

    #[test]
    fn keys_accept_only_matching_algorithms() {
        let keys = parse_jwks(jwks(&[rsa_jwk("k1", RSA1_N), ec_jwk("e1")]).to_string().as_bytes()).unwrap();
        let (rsa, ec) = (&keys[0], &keys[1]);
        assert!(rsa.accepts(Algorithm::RS256, "RS256"));
        assert!(!rsa.accepts(Algorithm::RS512, "RS512"), "JWK says RS256");
        assert!(!rsa.accepts(Algorithm::ES256, "ES256"));
        assert!(ec.accepts(Algorithm::ES256, "ES256"));
        assert!(!ec.accepts(Algorithm::ES384, "ES384"), "P-256 key");
        assert!(!ec.accepts(Algorithm::RS256, "RS256"));
        let no_alg = json!({ "kty": "RSA", "kid": "k", "n": RSA1_N, "e": "AQAB" });
        let key = parse_jwk(&no_alg).unwrap().unwrap();
        assert!(key.accepts(Algorithm::PS256, "PS256") && key.accepts(Algorithm::RS512, "RS512"));
        assert!(matches!(lookup(&keys, Some("k1"), Algorithm::RS256, "RS256"), Lookup::Found(_)));
        assert!(matches!(lookup(&keys, Some("k1"), Algorithm::ES256, "ES256"), Lookup::Incompatible));
        assert!(matches!(lookup(&keys, Some("zz"), Algorithm::RS256, "RS256"), Lookup::Missing));
        assert!(matches!(lookup(&keys, None, Algorithm::ES256, "ES256"), Lookup::Found(_)));
        assert!(matches!(lookup(&[], None, Algorithm::ES256, "ES256"), Lookup::Missing));
        let two = parse_jwks(jwks(&[rsa_jwk("a", RSA1_N), rsa_jwk("b", RSA2_N)]).to_string().as_bytes()).unwrap();
        assert!(matches!(lookup(&two, None, Algorithm::RS256, "RS256"), Lookup::Ambiguous));
    }

    #[test]
    fn error_display_is_short_and_hides_internal_detail() {
        let e = JwtError::JwksUnavailable("request to http://10.0.0.7/jwks failed".into());
        assert!(!e.to_string().contains("10.0.0.7"), "{e}");
        assert_eq!(e.code(), "jwks_unavailable");
        assert_eq!(JwtError::Expired.to_string(), "token has expired");
        assert_eq!(echo(&format!("{}\n", "x".repeat(100))), "x".repeat(MAX_ECHO_CHARS));
        assert_eq!(echo("RS\u{0}256"), "RS?256");
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<JwtVerifier>();
        assert_send_sync::<JwtError>();
    }

    #[test]
    fn tls_client_builds_with_the_one_crypto_provider() {
        // RUST-NOTES pitfall 1: a second provider would make this panic.
        reqwest::Client::builder().https_only(true).build().unwrap();
    }

    // --- Against a JWKS server ----------------------------------------------------------------

    #[tokio::test]
    async fn rs256_token_verifies_and_keys_are_cached() {
        let (idp, v) = standard().await;
        let token = rs256(&claims());
        let verified = v.verify(&token, NOW).await.unwrap();
        assert_eq!(
            verified,
            VerifiedToken {
                issuer: ISS.into(),
                subject: "user-1".into(),
                tenant: Some("acme".into()),
                scopes: vec!["jobs:read".into(), "jobs:write".into()],
                expires_at: NOW + 300,
                claims: claims(),
            }
        );
        v.verify(&token, NOW + 1).await.unwrap();
        assert_eq!(idp.fetches(), 1, "the JWKS is fetched once and cached");
    }

    #[tokio::test]
    async fn es256_token_verifies() {
        let (_, v) = standard().await;
        let token = sign_with(EC1_PEM, Algorithm::ES256, Some("e1"), &claims());
        assert_eq!(v.verify(&token, NOW).await.unwrap().subject, "user-1");
    }

    #[tokio::test]
    async fn expiry_is_checked_with_leeway() {
        let (_, v) = standard().await;
        let beyond = rs256(&claims_with(json!({ "exp": NOW - 61 })));
        assert_eq!(v.verify(&beyond, NOW).await, Err(JwtError::Expired));
        let within = rs256(&claims_with(json!({ "exp": NOW - 30 })));
        assert_eq!(v.verify(&within, NOW).await.unwrap().expires_at, NOW - 30);
        let no_exp = rs256(&claims_with(json!({ "exp": null })));
        assert_eq!(v.verify(&no_exp, NOW).await, Err(JwtError::MissingClaim("exp")));
    }

    #[tokio::test]
    async fn nbf_in_the_future_is_refused() {
        let (_, v) = standard().await;
        let later = rs256(&claims_with(json!({ "nbf": NOW + 120 })));
        assert_eq!(v.verify(&later, NOW).await, Err(JwtError::NotYetValid));
        assert!(v.verify(&later, NOW + 60).await.is_ok(), "valid once within leeway");
        let soon = rs256(&claims_with(json!({ "nbf": NOW + 30 })));
        assert!(v.verify(&soon, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_audience_is_refused() {
        let (_, v) = standard().await;
        let other = rs256(&claims_with(json!({ "aud": "billing-api" })));
        assert_eq!(v.verify(&other, NOW).await, Err(JwtError::WrongAudience));
        let none = rs256(&claims_with(json!({ "aud": null })));
        assert_eq!(v.verify(&none, NOW).await, Err(JwtError::WrongAudience));
        let among = rs256(&claims_with(json!({ "aud": ["billing-api", AUD] })));
        assert!(v.verify(&among, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn unknown_issuer_is_refused_without_fetching() {
        let (idp, v) = standard().await;
        let token = rs256(&claims_with(json!({ "iss": "https://evil.example/" })));
        assert_eq!(v.verify(&token, NOW).await, Err(JwtError::UnknownIssuer));
        let no_iss = rs256(&claims_with(json!({ "iss": null })));
        assert_eq!(v.verify(&no_iss, NOW).await, Err(JwtError::MissingClaim("iss")));
        assert_eq!(idp.fetches(), 0);
    }

    #[tokio::test]
    async fn algorithm_not_allowed_is_refused_before_fetching() {
        let (idp, url) = start_idp(jwks(&[rsa_jwk("k1", RSA1_N), ec_jwk("e1")])).await;
        let v = verifier_for(&url, |c| c.algorithms = vec!["RS256".into()]);
        let token = sign_with(EC1_PEM, Algorithm::ES256, Some("e1"), &claims());
        assert_eq!(v.verify(&token, NOW).await, Err(JwtError::AlgorithmNotAllowed("ES256".into())));
        assert_eq!(idp.fetches(), 0);
        assert!(v.verify(&rs256(&claims()), NOW).await.is_ok());
    }

    #[tokio::test]
    async fn algorithm_must_match_the_key() {
        let (_, v) = standard().await;
        // An ES256 token naming the RSA key's kid: the key's kty/alg do not fit.
        let token = sign_with(EC1_PEM, Algorithm::ES256, Some("k1"), &claims());
        assert_eq!(v.verify(&token, NOW).await, Err(JwtError::AlgorithmNotAllowed("ES256".into())));
    }

    #[tokio::test]
    async fn alg_none_and_unsigned_tokens_are_refused() {
        let (idp, v) = standard().await;
        let payload = b64url_encode(claims().to_string().as_bytes());
        for alg in ["none", "None", "NONE"] {
            let header = b64url_encode(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes());
            for token in [format!("{header}.{payload}."), format!("{header}.{payload}.c2ln")] {
                assert_eq!(v.verify(&token, NOW).await, Err(JwtError::AlgorithmNotAllowed(alg.into())), "{token}");
            }
        }
        assert_eq!(idp.fetches(), 0);
        // An RS256 header with the signature stripped.
        let signed = rs256(&claims());
        let unsigned = &signed[..=signed.rfind('.').unwrap()];
        assert_eq!(v.verify(unsigned, NOW).await, Err(JwtError::BadSignature));
    }

    #[tokio::test]
    async fn symmetric_tokens_are_refused_even_if_configured() {
        // Config check refuses HS256; `new` drops it as a second line, and `oct` keys are skipped,
        // so neither an IdP secret nor the RSA public key used as an HMAC secret verifies.
        let oct = json!({ "kty": "oct", "kid": "h1", "alg": "HS256", "k": b64url_encode(b"0123456789abcdef0123456789abcdef") });
        let (_, url) = start_idp(jwks(&[rsa_jwk("k1", RSA1_N), oct])).await;
        let mut config = issuer_config(ISS, url, vec![AUD.into()]);
        config.algorithms = vec!["HS256".into(), "RS256".into()];
        assert!(check_issuer(&config).is_err());
        let v = JwtVerifier::new(vec![config], reqwest::Client::new());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("h1".into());
        let token = encode(&header, &claims(), &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef")).unwrap();
        assert_eq!(v.verify(&token, NOW).await, Err(JwtError::AlgorithmNotAllowed("HS256".into())));
        header.kid = Some("k1".into());
        let confused = encode(&header, &claims(), &EncodingKey::from_secret(RSA1_N.as_bytes())).unwrap();
        assert_eq!(v.verify(&confused, NOW).await, Err(JwtError::AlgorithmNotAllowed("HS256".into())));
        assert!(v.verify(&rs256(&claims()), NOW).await.is_ok());
    }

    #[tokio::test]
    async fn tampered_or_wrongly_signed_tokens_are_refused() {
        let (_, v) = standard().await;
        let genuine = rs256(&claims());
        let forged_claims = b64url_encode(claims_with(json!({ "sub": "admin" })).to_string().as_bytes());
        let parts: Vec<&str> = genuine.split('.').collect();
        let tampered = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(v.verify(&tampered, NOW).await, Err(JwtError::BadSignature));
        // Signed by another key that claims to be k1.
        let impostor = sign_with(RSA2_PEM, Algorithm::RS256, Some("k1"), &claims());
        assert_eq!(v.verify(&impostor, NOW).await, Err(JwtError::BadSignature));
        assert!(v.verify(&genuine, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn rotated_key_is_accepted_after_exactly_one_refetch() {
        let (idp, v) = standard().await;
        assert!(v.verify(&rs256(&claims()), NOW).await.is_ok());
        assert_eq!(idp.fetches(), 1);
        idp.set_keys(jwks(&[rsa_jwk("k2", RSA2_N)]));
        let rotated = sign_with(RSA2_PEM, Algorithm::RS256, Some("k2"), &claims());
        let verified = v.verify(&rotated, NOW + 11).await.unwrap();
        assert_eq!(verified.subject, "user-1");
        assert_eq!(idp.fetches(), 2, "exactly one refetch");
        v.verify(&rotated, NOW + 12).await.unwrap();
        assert_eq!(idp.fetches(), 2, "the new key is cached");
        // The old key left the JWKS and the cache with it.
        let old = v.verify(&rs256(&claims()), NOW + 13).await;
        assert_eq!(old, Err(JwtError::UnknownKey { kid: Some("k1".into()) }));
        assert_eq!(idp.fetches(), 2, "within 10 s of the last fetch");
    }

    #[tokio::test]
    async fn unknown_kid_refetches_at_most_once_per_ten_seconds() {
        let (idp, v) = standard().await;
        assert!(v.verify(&rs256(&claims()), NOW).await.is_ok());
        let garbage = sign_with(RSA1_PEM, Algorithm::RS256, Some("garbage"), &claims());
        let unknown = Err(JwtError::UnknownKey { kid: Some("garbage".into()) });
        assert_eq!(v.verify(&garbage, NOW + 5).await, unknown, "too soon after the first fetch");
        assert_eq!(idp.fetches(), 1);
        assert_eq!(v.verify(&garbage, NOW + 20).await, unknown);
        assert_eq!(idp.fetches(), 2);
        assert_eq!(v.verify(&garbage, NOW + 29).await, unknown);
        assert_eq!(idp.fetches(), 2, "second unknown kid within 10 s: no refetch");
        assert_eq!(v.verify(&garbage, NOW + 30).await, unknown);
        assert_eq!(idp.fetches(), 3);
        assert!(v.verify(&rs256(&claims()), NOW + 31).await.is_ok(), "good tokens unaffected");
    }

    #[tokio::test]
    async fn jwks_outage_keeps_cached_keys() {
        let (idp, v) = standard().await;
        let token = rs256(&claims_with(json!({ "exp": NOW + 7200 })));
        assert!(v.verify(&token, NOW).await.is_ok());
        idp.set_mode(FAIL);
        v.refresh_due(NOW + 600).await;
        assert_eq!(idp.fetches(), 2, "the refresh was attempted");
        let garbage =
            sign_with(RSA1_PEM, Algorithm::RS256, Some("garbage"), &claims_with(json!({ "exp": NOW + 7200 })));
        assert_eq!(v.verify(&garbage, NOW + 615).await, Err(JwtError::UnknownKey { kid: Some("garbage".into()) }));
        assert_eq!(idp.fetches(), 3, "the refetch was attempted");
        assert_eq!(v.verify(&token, NOW + 616).await.unwrap().subject, "user-1", "stale keys still verify");
        // Bad content is a failure too: it must not replace working keys.
        idp.set_mode(SERVE);
        idp.set_keys(json!({ "keys": [] }));
        v.refresh_due(NOW + 1300).await;
        assert_eq!(idp.fetches(), 4);
        assert!(v.verify(&token, NOW + 1301).await.is_ok());
    }

    #[tokio::test]
    async fn no_keys_and_no_jwks_is_unavailable_and_rate_limited() {
        let (idp, v) = standard().await;
        idp.set_mode(FAIL);
        let token = rs256(&claims());
        let err = v.verify(&token, NOW).await.unwrap_err();
        assert!(matches!(&err, JwtError::JwksUnavailable(why) if why.contains("503")), "{err:?}");
        assert!(matches!(v.verify(&token, NOW + 9).await, Err(JwtError::JwksUnavailable(_))));
        assert_eq!(idp.fetches(), 1, "failed fetches are rate limited too");
        idp.set_mode(SERVE);
        assert!(v.verify(&token, NOW + 10).await.is_ok(), "recovers once the IdP is back");
        assert_eq!(idp.fetches(), 2);

        // Nothing listening at all.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
        drop(closed);
        let v = verifier_for(&url, |_| {});
        assert!(matches!(v.verify(&token, NOW).await, Err(JwtError::JwksUnavailable(_))));
    }

    #[tokio::test]
    async fn tenant_comes_from_a_dotted_claim_path() {
        let (_, url) = start_idp(jwks(&[rsa_jwk("k1", RSA1_N)])).await;
        let v = verifier_for(&url, |c| c.tenant_claim = "org.id".into());
        let token = rs256(&claims_with(json!({ "org": { "id": "org_7", "name": "Acme" } })));
        assert_eq!(v.verify(&token, NOW).await.unwrap().tenant.as_deref(), Some("org_7"));
        assert_eq!(v.verify(&rs256(&claims()), NOW).await.unwrap().tenant, None, "no org claim");

        let v = verifier_for(&url, |c| c.tenant_claim = "https://runway.dev/tenant".into());
        let token = rs256(&claims_with(json!({ "https://runway.dev/tenant": "acme" })));
        assert_eq!(v.verify(&token, NOW).await.unwrap().tenant.as_deref(), Some("acme"));
    }

    #[tokio::test]
    async fn scopes_come_from_scope_string_or_scp_array() {
        let (_, url) = start_idp(jwks(&[rsa_jwk("k1", RSA1_N)])).await;
        let v = verifier_for(&url, |_| {});
        let token = rs256(&claims_with(json!({ "scope": "a b c" })));
        assert_eq!(v.verify(&token, NOW).await.unwrap().scopes, ["a", "b", "c"]);

        let v = verifier_for(&url, |c| c.scopes_claim = "scp".into());
        let token = rs256(&claims_with(json!({ "scope": null, "scp": ["jobs:read", "jobs:write"] })));
        assert_eq!(v.verify(&token, NOW).await.unwrap().scopes, ["jobs:read", "jobs:write"]);
    }

    #[tokio::test]
    async fn missing_subject_is_refused() {
        let (_, v) = standard().await;
        let token = rs256(&claims_with(json!({ "sub": null })));
        assert_eq!(v.verify(&token, NOW).await, Err(JwtError::MissingClaim("sub")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_verifies_share_one_fetch() {
        let (idp, v) = standard().await;
        idp.set_mode(DELAYED);
        let v = Arc::new(v);
        let token = rs256(&claims());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (v, token) = (Arc::clone(&v), token.clone());
            tasks.spawn(async move { v.verify(&token, NOW).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert!(result.unwrap().is_ok());
        }
        assert_eq!(idp.fetches(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_verify_does_not_abort_the_shared_fetch() {
        let (idp, v) = standard().await;
        idp.set_mode(DELAYED);
        let token = rs256(&claims());
        let cancelled = tokio::time::timeout(Duration::from_millis(50), v.verify(&token, NOW)).await;
        assert!(cancelled.is_err(), "the first caller gave up mid-fetch");
        assert!(v.verify(&token, NOW).await.is_ok(), "the fetch finished anyway");
        assert_eq!(idp.fetches(), 1);
    }

    #[tokio::test]
    async fn refresh_due_fetches_only_stale_issuers() {
        let (idp, v) = standard().await;
        v.refresh_due(NOW).await;
        assert_eq!(idp.fetches(), 1, "never fetched: due");
        v.refresh_due(NOW + 599).await;
        assert_eq!(idp.fetches(), 1, "fresh");
        idp.set_keys(jwks(&[rsa_jwk("k2", RSA2_N)]));
        v.refresh_due(NOW + 600).await;
        assert_eq!(idp.fetches(), 2, "cache_secs elapsed");
        let rotated = sign_with(RSA2_PEM, Algorithm::RS256, Some("k2"), &claims_with(json!({ "exp": NOW + 7200 })));
        assert!(v.verify(&rotated, NOW + 601).await.is_ok());
        assert_eq!(idp.fetches(), 2, "the refresh brought the new key");
    }

    #[tokio::test]
    async fn slow_jwks_times_out_after_two_seconds() {
        let (idp, v) = standard().await;
        idp.set_mode(SLOW);
        let started = Instant::now();
        let err = v.verify(&rs256(&claims()), NOW).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(&err, JwtError::JwksUnavailable(why) if why.contains("timed out")), "{err:?}");
        assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(4), "{took:?}");
    }

    #[tokio::test]
    async fn oversized_jwks_is_refused() {
        let (idp, v) = standard().await;
        idp.set_mode(HUGE);
        let err = v.verify(&rs256(&claims()), NOW).await.unwrap_err();
        assert!(matches!(&err, JwtError::JwksUnavailable(why) if why.contains("exceeds")), "{err:?}");
    }

    #[tokio::test]
    async fn oversized_chunked_jwks_is_refused() {
        // A body without Content-Length: the cap must hold while reading.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..40 {
                let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if socket.write_all(&frame).await.is_err() {
                    return; // the client hung up, as it should
                }
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        });
        let v = verifier_for(&url, |_| {});
        let err = v.verify(&rs256(&claims()), NOW).await.unwrap_err();
        assert!(matches!(&err, JwtError::JwksUnavailable(why) if why.contains("exceeds")), "{err:?}");
    }
}
