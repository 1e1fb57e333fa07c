-- Hash-chained audit log (audit capability). One chain per tenant plus `platform`.
CREATE TABLE audit_entries (
    chain       TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    id          TEXT NOT NULL UNIQUE,
    tenant_id   TEXT,
    at          BIGINT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    request_id  TEXT,
    client_ip   TEXT,
    user_agent  TEXT,
    -- Canonical JSON text exactly as hashed; TEXT, not JSONB, so the bytes never change.
    summary     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_entries_by_tenant_time ON audit_entries (tenant_id, at);

-- The last entry of each chain: the row appends lock, and the witness that catches a
-- truncated tail.
CREATE TABLE audit_heads (
    chain     TEXT PRIMARY KEY,
    tenant_id TEXT,
    seq       BIGINT NOT NULL,
    hash      TEXT NOT NULL
);

ALTER TABLE audit_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_entries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_entries
    USING (current_setting('runway.platform', true) = 'on'
           OR tenant_id = current_setting('runway.tenant_id', true))
    WITH CHECK (current_setting('runway.platform', true) = 'on'
           OR tenant_id = current_setting('runway.tenant_id', true));

ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_heads
    USING (current_setting('runway.platform', true) = 'on'
           OR tenant_id = current_setting('runway.tenant_id', true))
    WITH CHECK (current_setting('runway.platform', true) = 'on'
           OR tenant_id = current_setting('runway.tenant_id', true));
