//! Audit storage: appends serialised per chain, filtered listing, verification and export.

use crate::chain::{EntryFields, GENESIS_HASH, canonical_json, entry_hash};
use crate::{AuditActor, AuditContext, AuditEntry, AuditTarget, Chain, Change};
use runway_core::clock::rfc3339;
use runway_core::page::Cursor;
use runway_core::{AuditEntryId, Clock, Page, TenantId};
use runway_store::{DbScope, Engine, Store, StoreError, Tx, on_conn};
use serde::Serialize;

#[derive(Debug, sqlx::FromRow)]
struct EntryRow {
    chain: String,
    seq: i64,
    id: String,
    tenant_id: Option<String>,
    at: i64,
    actor_kind: String,
    actor_id: String,
    action: String,
    target_kind: String,
    target_id: String,
    request_id: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    summary: String,
    prev_hash: String,
    hash: String,
}

impl EntryRow {
    fn fields(&self) -> EntryFields<'_> {
        EntryFields {
            chain: &self.chain,
            seq: self.seq,
            id: &self.id,
            tenant_id: self.tenant_id.as_deref(),
            at: self.at,
            actor_kind: &self.actor_kind,
            actor_id: &self.actor_id,
            action: &self.action,
            target_kind: &self.target_kind,
            target_id: &self.target_id,
            request_id: self.request_id.as_deref(),
            client_ip: self.client_ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            summary: &self.summary,
            prev_hash: &self.prev_hash,
        }
    }

    fn into_entry(self) -> Result<AuditEntry, StoreError> {
        Ok(AuditEntry {
            summary: runway_store::stored_json("audit summary", &self.summary)?,
            at: rfc3339(self.at),
            actor: AuditActor { kind: self.actor_kind, id: self.actor_id },
            target: AuditTarget { kind: self.target_kind, id: self.target_id },
            id: self.id,
            chain: self.chain,
            seq: self.seq,
            action: self.action,
            request_id: self.request_id,
            client_ip: self.client_ip,
            user_agent: self.user_agent,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

const ENTRY_COLUMNS: &str = "chain, seq, id, tenant_id, at, actor_kind, actor_id, action, target_kind, target_id, request_id, client_ip, user_agent, summary, prev_hash, hash";

/// Appends one entry to `chain` inside the caller's transaction. Appends to one chain are
/// serialised: PostgreSQL locks the chain's head row until the transaction ends; SQLite has a
/// single writer.
pub async fn append(
    tx: &mut Tx,
    clock: &dyn Clock,
    ctx: &AuditContext,
    chain: &Chain,
    change: Change<'_>,
) -> Result<AuditEntry, StoreError> {
    let chain_name = chain.name();
    let tenant_id = chain.tenant().map(TenantId::as_str);
    on_conn!(tx, c => sqlx::query("INSERT INTO audit_heads (chain, tenant_id, seq, hash) VALUES ($1, $2, 0, $3) ON CONFLICT (chain) DO NOTHING")
        .bind(chain_name).bind(tenant_id).bind(GENESIS_HASH).execute(&mut *c).await.map(|_| ()))?;
    let lock_sql = match tx.engine() {
        Engine::Postgres => "SELECT seq, hash FROM audit_heads WHERE chain = $1 FOR UPDATE",
        Engine::Sqlite => "SELECT seq, hash FROM audit_heads WHERE chain = $1",
    };
    let (head_seq, head_hash): (i64, String) =
        on_conn!(tx, c => sqlx::query_as(lock_sql).bind(chain_name).fetch_one(&mut *c).await)?;

    let row = {
        let summary = canonical_json(&change.summary);
        let mut row = EntryRow {
            chain: chain_name.to_owned(),
            seq: head_seq + 1,
            id: AuditEntryId::generate().to_string(),
            tenant_id: tenant_id.map(str::to_owned),
            at: clock.now_micros(),
            actor_kind: ctx.actor_kind.as_str().to_owned(),
            actor_id: ctx.actor_id.clone(),
            action: change.action.to_owned(),
            target_kind: change.target_kind.to_owned(),
            target_id: change.target_id.to_owned(),
            request_id: ctx.request_id.clone(),
            client_ip: ctx.client_ip.clone(),
            user_agent: ctx.user_agent.clone(),
            summary,
            prev_hash: head_hash,
            hash: String::new(),
        };
        row.hash = entry_hash(&row.fields());
        row
    };

    on_conn!(tx, c => sqlx::query(
        "INSERT INTO audit_entries (chain, seq, id, tenant_id, at, actor_kind, actor_id, action, target_kind, target_id, request_id, client_ip, user_agent, summary, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)")
        .bind(&row.chain).bind(row.seq).bind(&row.id).bind(&row.tenant_id).bind(row.at)
        .bind(&row.actor_kind).bind(&row.actor_id).bind(&row.action).bind(&row.target_kind)
        .bind(&row.target_id).bind(&row.request_id).bind(&row.client_ip).bind(&row.user_agent)
        .bind(&row.summary).bind(&row.prev_hash).bind(&row.hash)
        .execute(&mut *c).await.map(|_| ()))?;
    on_conn!(tx, c => sqlx::query("UPDATE audit_heads SET seq = $1, hash = $2 WHERE chain = $3")
        .bind(row.seq).bind(&row.hash).bind(chain_name).execute(&mut *c).await.map(|_| ()))?;
    row.into_entry()
}

/// Filters for listing a tenant's audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor_id: Option<String>,
    /// Inclusive lower bound, microseconds.
    pub from: Option<i64>,
    /// Exclusive upper bound, microseconds.
    pub to: Option<i64>,
}

/// A page of one chain, newest first.
pub async fn list(
    tx: &mut Tx,
    chain: &Chain,
    filter: &AuditFilter,
    cursor: &Cursor,
) -> Result<Page<AuditEntry>, StoreError> {
    let before: Option<i64> = cursor.after.as_deref().and_then(|s| s.parse().ok());
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_entries
         WHERE chain = $1
           AND (CAST($2 AS TEXT) IS NULL OR action = $2)
           AND (CAST($3 AS TEXT) IS NULL OR actor_id = $3)
           AND (CAST($4 AS BIGINT) IS NULL OR at >= $4)
           AND (CAST($5 AS BIGINT) IS NULL OR at < $5)
           AND seq < $6
         ORDER BY seq DESC LIMIT $7"
    );
    let limit = i64::from(cursor.limit) + 1;
    let rows: Vec<EntryRow> = on_conn!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(chain.name()).bind(&filter.action).bind(&filter.actor_id).bind(filter.from).bind(filter.to)
        .bind(before.unwrap_or(i64::MAX)).bind(limit).fetch_all(&mut *c).await)?;
    Page::from_rows(rows, cursor.limit, |r| r.seq.to_string()).try_map(EntryRow::into_entry)
}

/// Streams a whole chain, oldest first, to `sink` (for `runway audit export`).
pub async fn export_chain(
    store: &Store,
    chain: &Chain,
    mut sink: impl FnMut(AuditEntry) -> std::io::Result<()>,
) -> Result<u64, StoreError> {
    let mut after = 0i64;
    let mut n = 0;
    loop {
        let batch = fetch_batch(store, chain.name(), after).await?;
        let Some(last) = batch.last() else {
            return Ok(n);
        };
        after = last.seq;
        for row in batch {
            n += 1;
            sink(row.into_entry()?).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        }
    }
}

const BATCH: i64 = 1_000;

async fn fetch_batch(store: &Store, chain: &str, after_seq: i64) -> Result<Vec<EntryRow>, StoreError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3");
    let rows = on_conn!(&mut tx, c => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(chain).bind(after_seq).bind(BATCH).fetch_all(&mut *c).await)?;
    Ok(rows)
}

/// The outcome of walking one chain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChainReport {
    /// `platform` or the tenant's ID.
    pub chain: String,
    /// How many entries the chain holds.
    pub entries: u64,
    /// True when every entry's hash and link check out and the end matches the chain head.
    pub ok: bool,
    /// Sequence number of the first entry that does not check out.
    pub first_broken_seq: Option<i64>,
    /// What is wrong at that entry (edited, reordered, missing, or a head that does not match).
    pub reason: Option<String>,
}

/// The outcome of walking every chain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// True when every chain checks out.
    pub ok: bool,
    /// One report per chain: the platform chain and each tenant's.
    pub chains: Vec<ChainReport>,
}

/// Walks every chain from its first entry, recomputing each hash and link, and compares the end
/// with the chain head. Names the first broken entry of each chain.
pub async fn verify(store: &Store) -> Result<VerifyReport, StoreError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let chains: Vec<(String, i64, String)> = on_conn!(&mut tx, c => sqlx::query_as(
        "SELECT chain, seq, hash FROM audit_heads
         UNION SELECT DISTINCT chain, -1, '' FROM audit_entries WHERE chain NOT IN (SELECT chain FROM audit_heads)
         ORDER BY 1").fetch_all(&mut *c).await)?;
    drop(tx);
    let mut reports = Vec::with_capacity(chains.len());
    for (chain, head_seq, head_hash) in chains {
        reports.push(verify_chain(store, chain, head_seq, &head_hash).await?);
    }
    Ok(VerifyReport { ok: reports.iter().all(|r| r.ok), chains: reports })
}

async fn verify_chain(store: &Store, chain: String, head_seq: i64, head_hash: &str) -> Result<ChainReport, StoreError> {
    let mut expected_seq = 1i64;
    let mut prev = GENESIS_HASH.to_owned();
    let mut entries = 0u64;
    let broken = |chain: String, entries, seq, reason: String| ChainReport {
        chain,
        entries,
        ok: false,
        first_broken_seq: Some(seq),
        reason: Some(reason),
    };
    let mut after = 0i64;
    if head_seq < 0 {
        return Ok(broken(chain, 0, 1, "chain has entries but no head".into()));
    }
    loop {
        let batch = fetch_batch(store, &chain, after).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for row in batch {
            entries += 1;
            if row.seq != expected_seq {
                let reason = format!("entry {expected_seq} is missing (next entry found is {})", row.seq);
                return Ok(broken(chain, entries, expected_seq, reason));
            }
            if row.prev_hash != prev {
                let reason = format!("entry {} does not link to entry {} (prev_hash differs)", row.seq, row.seq - 1);
                return Ok(broken(chain, entries, row.seq, reason));
            }
            if entry_hash(&row.fields()) != row.hash {
                let reason = format!("entry {} was altered (its contents do not match its hash)", row.seq);
                return Ok(broken(chain, entries, row.seq, reason));
            }
            prev = row.hash;
            expected_seq += 1;
        }
    }
    let last_seq = expected_seq - 1;
    if last_seq != head_seq || (head_seq > 0 && prev != head_hash) {
        let reason = format!("chain ends at entry {last_seq} but its head records entry {head_seq}");
        return Ok(broken(chain, entries, last_seq + 1, reason));
    }
    Ok(ChainReport { chain, entries, ok: true, first_broken_seq: None, reason: None })
}
