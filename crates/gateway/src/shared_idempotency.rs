//! Edge idempotency records in Redis (with `gateway.redis_url`), so every replica sees the same
//! keys with one round trip per step: a claim, a stored answer, a release — each one Lua script,
//! atomic on Redis. A record is a hash under `runway:gw:idem:<sha256(credential, key)>`: while
//! in flight it expires after the API's in-flight lease (a request that died frees its key),
//! once done after the route's `idempotency_ttl_secs`.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, StatusCode};
use sha2::{Digest, Sha256};

use crate::shared_limits::RedisLink;

/// KEYS: the record. ARGV: request hash, in-flight lease (ms). Returns `{0}` claimed, `{1}` in
/// flight, `{2}` another request, `{3, status, headers, body}` the stored answer.
const BEGIN: &str = r"
local r = redis.call('HMGET', KEYS[1], 'hash', 'state')
if not r[1] then
  redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'state', 'in_flight')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0}
end
if r[2] == 'in_flight' then return {1} end
if r[1] ~= ARGV[1] then return {2} end
local v = redis.call('HMGET', KEYS[1], 'status', 'headers', 'body')
return {3, v[1], v[2], v[3]}
";

/// KEYS: the record. ARGV: request hash, status, headers (JSON), body, ttl (ms). Stores the
/// answer only under this request's own claim (not one that took over after the lease).
const COMPLETE: &str = r"
if redis.call('HGET', KEYS[1], 'hash') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'headers', ARGV[3], 'body', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// KEYS: the record. ARGV: request hash. Releases the key if it is still this request's claim.
const RELEASE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'hash', 'state')
if r[1] == ARGV[1] and r[2] == 'in_flight' then redis.call('DEL', KEYS[1]) end
return 1
";

/// What a claim found.
pub enum Begin {
    /// The key is this request's now.
    Proceed,
    /// The first request is still running.
    InFlight,
    /// The key was used with another request.
    Reused,
    /// The stored answer: status, kept headers (JSON), body.
    Stored { status: i64, headers: String, body: Vec<u8> },
    /// Redis did not answer; `gateway.redis_failure` decides.
    Unreachable,
}

/// The records' scripts on the gateway's Redis link.
pub struct SharedIdempotency {
    link: Arc<RedisLink>,
    begin: redis::Script,
    complete: redis::Script,
    release: redis::Script,
}

/// The Redis key of a credential's idempotency key (hashed: keys are any visible ASCII).
fn record_key(credential: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(credential.as_bytes());
    h.update(b"\n");
    h.update(key.as_bytes());
    format!("runway:gw:idem:{}", hex::encode(h.finalize()))
}

impl SharedIdempotency {
    pub fn new(link: Arc<RedisLink>) -> SharedIdempotency {
        SharedIdempotency {
            link,
            begin: redis::Script::new(BEGIN),
            complete: redis::Script::new(COMPLETE),
            release: redis::Script::new(RELEASE),
        }
    }

    /// The link, for its failure mode.
    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// Claims the key for this request, or says what holds it.
    pub async fn begin(&self, credential: &str, key: &str, hash: &str) -> Begin {
        let mut inv = self.begin.prepare_invoke();
        inv.key(record_key(credential, key)).arg(hash).arg(runway_idempotency::IN_FLIGHT_LEASE_MICROS / 1000);
        let Some(answer) = self.link.invoke::<redis::Value>(&inv).await else {
            metrics::counter!("runway_gateway_idempotency_redis_total", "result" => "unreachable").increment(1);
            return Begin::Unreachable;
        };
        let parts: Vec<redis::Value> = match answer {
            redis::Value::Array(v) => v,
            _ => Vec::new(),
        };
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => Some(*n),
            Some(redis::Value::BulkString(b)) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
            _ => None,
        };
        let bytes = |v: Option<&redis::Value>| match v {
            Some(redis::Value::BulkString(b)) => b.clone(),
            _ => Vec::new(),
        };
        match int(parts.first()) {
            Some(0) => Begin::Proceed,
            Some(1) => Begin::InFlight,
            Some(2) => Begin::Reused,
            Some(3) => Begin::Stored {
                status: int(parts.get(1)).unwrap_or(0),
                headers: String::from_utf8(bytes(parts.get(2))).unwrap_or_else(|_| "[]".into()),
                body: bytes(parts.get(3)),
            },
            _ => {
                tracing::error!("the idempotency claim script answered in an unknown shape");
                Begin::Unreachable
            }
        }
    }

    /// Stores the answer for the route's ttl; when Redis does not take it, releases the key.
    #[allow(clippy::too_many_arguments)]
    pub async fn complete(
        &self,
        credential: &str,
        key: &str,
        hash: &str,
        ttl_secs: u64,
        status: StatusCode,
        headers: &HeaderMap,
        kept: &[HeaderName],
        body: &[u8],
    ) {
        let mut inv = self.complete.prepare_invoke();
        inv.key(record_key(credential, key))
            .arg(hash)
            .arg(status.as_u16())
            .arg(runway_idempotency::kept_json(headers, kept))
            .arg(body)
            .arg(ttl_secs.saturating_mul(1000).max(1));
        if self.link.invoke::<i64>(&inv).await.is_none() {
            tracing::error!("could not store the idempotent response in Redis; a retry will run again");
            self.release(credential, key, hash).await;
        }
    }

    /// Releases the key if it is still this request's claim.
    pub async fn release(&self, credential: &str, key: &str, hash: &str) {
        let mut inv = self.release.prepare_invoke();
        inv.key(record_key(credential, key)).arg(hash);
        if self.link.invoke::<i64>(&inv).await.is_none() {
            tracing::error!("could not release an idempotency key in Redis; it frees itself after the in-flight lease");
        }
    }
}
