//! The schema as both engines build it, read from their catalogs: the two cannot drift apart
//! unnoticed, every tenant table is under row-level security on PostgreSQL, and each table has
//! one owning crate whose code alone touches it.

use crate::harness::{Database, Engine};
use runway_store::sqlx::{self, Connection, Row};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which crate owns which table: its SQL creates and reads it; every other crate goes through the
/// owner's API. ARCHITECTURE.md shows the same map.
pub const TABLE_OWNERS: &[(&str, &str)] = &[
    ("tenants", "identity"),
    ("api_keys", "identity"),
    ("platform_settings", "identity"),
    ("audit_entries", "audit"),
    ("audit_heads", "audit"),
    ("idempotency_records", "idempotency"),
    ("event_types", "events"),
    ("events", "events"),
    ("webhook_endpoints", "events"),
    ("deliveries", "events"),
    ("delivery_attempts", "events"),
    ("flags", "flags"),
    ("flag_state", "flags"),
    ("flag_versions", "flags"),
    ("flag_environments", "flags"),
    ("flag_segments", "flags"),
    ("flag_schedules", "flags"),
    ("flag_release_plans", "flags"),
    ("flag_guards", "flags"),
    ("flag_usage", "flags"),
    ("flag_clients", "flags"),
    ("gateway_documents", "gateway"),
    ("gateway_document_versions", "gateway"),
    ("gateway_state", "gateway"),
    ("gateway_sli", "gateway"),
    ("slo_documents", "slo"),
    ("slo_document_versions", "slo"),
    ("slo_state", "slo"),
    ("slo_observations", "slo"),
    ("slo_status", "slo"),
    ("slo_alerts", "slo"),
    ("slo_gate_overrides", "slo"),
];

/// Reviewed exceptions to ownership, each with its reason. Migrations are immutable once applied
/// (their checksums are recorded), so a historical step cannot be moved to its owner's file.
const OWNERSHIP_EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "migration 0005_flags",
        "api_keys",
        "adds api_keys.environment (a key bound to a flag environment); applied migrations cannot move",
    ),
    (
        "runway/src/bin/runway-bench.rs",
        "deliveries",
        "the load tool reads a delivery id to seed attempts for the listing benchmark",
    ),
    (
        "runway/src/bin/runway-bench.rs",
        "delivery_attempts",
        "the load tool bulk-inserts attempts for the listing benchmark",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Tables an earlier migration created and a later one dropped, with the capability that owned them.
const DROPPED_TABLES: &[(&str, &str)] = &[
    // Created by 0008; their rows moved into gateway_documents and they were dropped by 0009.
    ("gateway_routes", "gateway"),
    ("gateway_route_versions", "gateway"),
];

fn owner(table: &str) -> Option<&'static str> {
    TABLE_OWNERS.iter().chain(DROPPED_TABLES).find(|(t, _)| *t == table).map(|(_, o)| *o)
}

fn exception(place: &str, table: &str) -> bool {
    OWNERSHIP_EXCEPTIONS.iter().any(|(p, t, _)| *p == place && *t == table)
}

/// Table names that follow an SQL keyword in `text` and are known tables.
fn tables_named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let words: Vec<&str> =
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
    for pair in words.windows(2) {
        if matches!(pair[0], "FROM" | "JOIN" | "INTO" | "UPDATE" | "TABLE" | "ON") && owner(pair[1]).is_some() {
            out.insert(pair[1].to_owned());
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every crate's SQL touches only its own tables; every migration creates or alters only its
/// capability's tables; every table in the migrations has an owner.
#[test]
fn each_table_is_touched_only_by_its_owner() {
    let crates = root().join("crates");
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let src = entry.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rs_files(&src, &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let place = f.strip_prefix(&crates).unwrap().to_string_lossy().into_owned();
            for t in tables_named(&text) {
                if owner(&t) != Some(name.as_str()) && !exception(&place, &t) {
                    problems.push(format!("{place} touches `{t}`, owned by {}", owner(&t).unwrap_or("nobody")));
                }
            }
        }
    }
    for engine in ["sqlite", "postgres"] {
        let dir = crates.join("store/migrations").join(engine);
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let step = file.trim_end_matches(".sql");
            let capability = step.split_once('_').map(|(_, c)| c).unwrap_or(step);
            for line in text.lines().filter(|l| !l.trim_start().starts_with("--")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                for w in words.windows(3) {
                    if matches!(w[0], "CREATE" | "ALTER") && w[1] == "TABLE" {
                        let t = w[2].trim_end_matches('(');
                        match owner(t) {
                            None => problems.push(format!("{engine}/{file} creates `{t}`, which has no owner")),
                            Some(o) => {
                                let owned = o == capability
                                    || (capability == "delivery_indexes" && o == "events")
                                    || (capability == "idempotency" && o == "server");
                                if !owned && !exception(&format!("migration {step}"), t) {
                                    problems.push(format!("{engine}/{file} changes `{t}`, owned by {o}"));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "table ownership:\n{}", problems.join("\n"));
}

/// One engine's schema as comparable facts.
#[derive(Debug, Default)]
struct Schema {
    /// table → column → (type, not null)
    columns: BTreeMap<String, BTreeMap<String, (String, bool)>>,
    /// `table(cols)` for primary keys, `table(cols) unique|index` for the rest.
    keys: BTreeSet<String>,
    /// `table(cols) -> other(cols) on delete <action>`
    foreign: BTreeSet<String>,
}

async fn sqlite_schema(url: &str) -> Schema {
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut s = Schema::default();
    for t in tables {
        let cols = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info('{t}') ORDER BY pk, cid"
        )))
        .fetch_all(&mut c)
        .await
        .unwrap();
        let mut pk: Vec<(i64, String)> = Vec::new();
        let entry = s.columns.entry(t.clone()).or_default();
        for r in cols {
            let (name, ty, notnull, pkn): (String, String, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
            if pkn > 0 {
                pk.push((pkn, name.clone()));
            }
            entry.insert(name, (ty.to_ascii_lowercase(), notnull == 1 || pkn > 0));
        }
        pk.sort();
        if !pk.is_empty() {
            s.keys.insert(format!("{t}({}) primary", pk.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(",")));
        }
        let idx =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT name, \"unique\", origin FROM pragma_index_list('{t}')")))
                .fetch_all(&mut c)
                .await
                .unwrap();
        for r in idx {
            let (name, unique, origin): (String, i64, String) = (r.get(0), r.get(1), r.get(2));
            if origin == "pk" {
                continue;
            }
            let cols: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT name FROM pragma_index_info('{name}') ORDER BY seqno"
            )))
            .fetch_all(&mut c)
            .await
            .unwrap();
            s.keys.insert(format!("{t}({}) {}", cols.join(","), if unique == 1 { "unique" } else { "index" }));
        }
        let fks = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list('{t}') ORDER BY id, seq"
        )))
        .fetch_all(&mut c)
        .await
        .unwrap();
        let mut by_id: BTreeMap<i64, (String, Vec<String>, Vec<String>, String)> = BTreeMap::new();
        for r in fks {
            let (id, other, from, to, del): (i64, String, String, Option<String>, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let e = by_id.entry(id).or_insert_with(|| (other, Vec::new(), Vec::new(), del.to_ascii_lowercase()));
            e.1.push(from);
            e.2.push(to.unwrap_or_else(|| "id".into()));
        }
        for (_, (other, from, to, del)) in by_id {
            s.foreign.insert(format!("{t}({}) -> {other}({}) on delete {del}", from.join(","), to.join(",")));
        }
    }
    s
}

async fn postgres_schema(url: &str) -> Schema {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let mut s = Schema::default();
    let cols = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%' ORDER BY table_name, ordinal_position",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for r in cols {
        let (t, name, ty, nullable): (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        s.columns.entry(t).or_default().insert(name, (ty, nullable == "NO"));
    }
    let idx = sqlx::query(
        "SELECT t.relname::text, ix.indisprimary, ix.indisunique,
                array_agg(a.attname::text ORDER BY k.n) AS cols
         FROM pg_index ix
         JOIN pg_class t ON t.oid = ix.indrelid
         JOIN pg_class i ON i.oid = ix.indexrelid
         JOIN pg_namespace ns ON ns.oid = t.relnamespace
         JOIN LATERAL unnest(ix.indkey) WITH ORDINALITY AS k(attnum, n) ON true
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
         WHERE ns.nspname = 'public' AND t.relname NOT LIKE '\\_sqlx%'
         GROUP BY t.relname, i.relname, ix.indisprimary, ix.indisunique",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for r in idx {
        let (t, primary, unique, cols): (String, bool, bool, Vec<String>) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let kind = if primary {
            "primary"
        } else if unique {
            "unique"
        } else {
            "index"
        };
        s.keys.insert(format!("{t}({}) {kind}", cols.join(",")));
    }
    let fks = sqlx::query(
        "SELECT t.relname::text, o.relname::text,
                (SELECT array_agg(a.attname::text ORDER BY k.n) FROM unnest(con.conkey) WITH ORDINALITY k(attnum, n)
                   JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
                (SELECT array_agg(a.attname::text ORDER BY k.n) FROM unnest(con.confkey) WITH ORDINALITY k(attnum, n)
                   JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum),
                con.confdeltype::text
         FROM pg_constraint con
         JOIN pg_class t ON t.oid = con.conrelid
         JOIN pg_class o ON o.oid = con.confrelid
         WHERE con.contype = 'f'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for r in fks {
        let (t, other, from, to, del): (String, String, Vec<String>, Vec<String>, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let del = match del.as_str() {
            "c" => "cascade",
            "n" => "set null",
            "r" => "restrict",
            "d" => "set default",
            _ => "no action",
        };
        s.foreign.insert(format!("{t}({}) -> {other}({}) on delete {del}", from.join(","), to.join(",")));
    }
    s
}

/// Column types that mean the same on the two engines (PostgreSQL, SQLite).
const SAME_TYPE: &[(&str, &str)] = &[
    ("text", "text"),
    ("bigint", "bigint"),
    ("bigint", "integer"),
    ("integer", "integer"),
    ("boolean", "integer"),
    ("boolean", "boolean"),
    ("jsonb", "text"),
    ("bytea", "blob"),
    ("double precision", "real"),
];

/// Reviewed differences between the engines' schemas; anything else fails the test, and an entry
/// that no longer differs fails it too, so the list only shrinks to what is true.
const ENGINE_DIFFERENCES: &[(&str, &str)] = &[];

fn differences(pg: &Schema, lite: &Schema) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let tables: BTreeSet<&String> = pg.columns.keys().chain(lite.columns.keys()).collect();
    for t in tables {
        match (pg.columns.get(t), lite.columns.get(t)) {
            (Some(_), None) => {
                out.insert(format!("table {t} only on postgres"));
            }
            (None, Some(_)) => {
                out.insert(format!("table {t} only on sqlite"));
            }
            (Some(p), Some(l)) => {
                let names: BTreeSet<&String> = p.keys().chain(l.keys()).collect();
                for n in names {
                    match (p.get(n), l.get(n)) {
                        (Some(_), None) => {
                            out.insert(format!("column {t}.{n} only on postgres"));
                        }
                        (None, Some(_)) => {
                            out.insert(format!("column {t}.{n} only on sqlite"));
                        }
                        (Some((pt, pn)), Some((lt, ln))) => {
                            if !SAME_TYPE.contains(&(pt.as_str(), lt.as_str())) {
                                out.insert(format!("column {t}.{n} is {pt} on postgres, {lt} on sqlite"));
                            }
                            if pn != ln {
                                out.insert(format!("column {t}.{n} not null: postgres {pn}, sqlite {ln}"));
                            }
                        }
                        (None, None) => {}
                    }
                }
            }
            (None, None) => {}
        }
    }
    for k in pg.keys.symmetric_difference(&lite.keys) {
        let side = if pg.keys.contains(k) { "postgres" } else { "sqlite" };
        out.insert(format!("key {k} only on {side}"));
    }
    for f in pg.foreign.symmetric_difference(&lite.foreign) {
        let side = if pg.foreign.contains(f) { "postgres" } else { "sqlite" };
        out.insert(format!("foreign key {f} only on {side}"));
    }
    out
}

crate::both_engines!(every_tenant_table_is_under_row_level_security);

/// Migrates a database (SQLite here; PostgreSQL ones are migrated by `Database::create`).
async fn migrate(url: &str) {
    let cfg = runway_core::config::DatabaseConfig {
        url: runway_core::config::DatabaseUrl(url.to_owned()),
        ..Default::default()
    };
    let store = runway_store::Store::connect(&cfg).await.unwrap();
    store.migrate(&cfg).await.unwrap();
    store.close().await;
}

/// Both engines, migrated from scratch, have the same tables, columns, keys, indexes and foreign
/// keys, but for the reviewed differences above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set RUNWAY_TEST_POSTGRES and pass --run-ignored all (bash .ci/run does)"]
async fn postgres_and_sqlite_schemas_do_not_drift() {
    let pg = Database::create(&Engine::postgres()).await;
    let lite = Database::create(&Engine::Sqlite).await;
    migrate(&lite.owner_url).await;
    let (p, l) = (postgres_schema(&pg.owner_url).await, sqlite_schema(&lite.owner_url).await);
    assert!(p.columns.len() >= TABLE_OWNERS.len(), "the catalog was read: {:?}", p.columns.keys());
    let found = differences(&p, &l);
    let allowed: BTreeSet<String> = ENGINE_DIFFERENCES.iter().map(|(d, _)| (*d).to_owned()).collect();
    let unexpected: Vec<_> = found.difference(&allowed).collect();
    let stale: Vec<_> = allowed.difference(&found).collect();
    assert!(
        unexpected.is_empty(),
        "the engines' schemas differ:\n{}",
        unexpected.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert!(stale.is_empty(), "allowlisted differences that no longer exist: {stale:?}");
    for t in p.columns.keys() {
        assert!(owner(t).is_some(), "table `{t}` has no owner in TABLE_OWNERS");
    }
}

/// On PostgreSQL every table with a `tenant_id` column (and `tenants` itself) has row-level
/// security enabled and forced, with a policy. Read from the catalog, so a new table is covered.
/// On SQLite there is no row-level security; the test checks the tables exist the same way.
async fn every_tenant_table_is_under_row_level_security(engine: Engine) {
    let db = Database::create(&engine).await;
    if !engine.is_postgres() {
        migrate(&db.owner_url).await;
        let s = sqlite_schema(&db.owner_url).await;
        let tenant_tables: Vec<_> =
            s.columns.iter().filter(|(_, c)| c.contains_key("tenant_id")).map(|(t, _)| t).collect();
        assert!(tenant_tables.len() >= 6, "{tenant_tables:?}");
        return;
    }
    let mut c = sqlx::PgConnection::connect(&db.owner_url).await.unwrap();
    let rows = sqlx::query(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
                (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r'
           AND (c.relname = 'tenants' OR EXISTS (
                SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(rows.len() >= 7, "tenant tables found: {}", rows.len());
    let mut bad = Vec::new();
    for r in rows {
        let (t, enabled, forced, policies): (String, bool, bool, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        if !(enabled && forced && policies > 0) {
            bad.push(format!("{t}: enabled {enabled}, forced {forced}, policies {policies}"));
        }
    }
    assert!(bad.is_empty(), "tenant tables without forced row-level security:\n{}", bad.join("\n"));
}
