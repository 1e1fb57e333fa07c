-- SLOs (issue 12). The SLO documents live in a versioned, audited catalog like the gateway's:
-- each change writes the document, a version row, its audit entry and the slo_state revision
-- bump in one transaction.

CREATE TABLE slo_documents (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    document   TEXT NOT NULL,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE slo_document_versions (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    document   TEXT NOT NULL,
    action     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name, version)
);

-- The catalog revision, and the evaluation lease: one replica evaluates every SLO once a
-- minute; another takes over when the lease runs out.
CREATE TABLE slo_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    revision    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until BIGINT NOT NULL DEFAULT 0
);
INSERT INTO slo_state (id, revision, updated_at) VALUES (1, 1, 0);

-- Pushed counts: per SLO, tenant ('' for none), minute (unix seconds) and source. A second
-- report for the same minute and source replaces the first, so retries are harmless.
CREATE TABLE slo_observations (
    slo_id      TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    minute      BIGINT NOT NULL,
    source      TEXT NOT NULL,
    good        BIGINT NOT NULL,
    total       BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (slo_id, tenant_id, minute, source)
);
CREATE INDEX slo_observations_minute ON slo_observations (minute);

-- The last evaluation of each SLO (and tenant, for per-tenant SLOs), as JSON: what the
-- release gate and the status views read on any replica.
CREATE TABLE slo_status (
    slo_id       TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    evaluated_at BIGINT NOT NULL,
    status       TEXT NOT NULL,
    PRIMARY KEY (slo_id, tenant_id)
);

-- Alerts: one row per firing, from open to resolved.
CREATE TABLE slo_alerts (
    id          TEXT PRIMARY KEY,
    slo_id      TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    alert       TEXT NOT NULL,
    severity    TEXT NOT NULL,
    opened_at   BIGINT NOT NULL,
    resolved_at BIGINT,
    details     TEXT NOT NULL
);
CREATE INDEX slo_alerts_slo ON slo_alerts (slo_id, opened_at);
CREATE INDEX slo_alerts_open ON slo_alerts (resolved_at);

-- Audited exceptions to the release gate's answer, until they expire or are revoked.
CREATE TABLE slo_gate_overrides (
    id          TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    environment TEXT NOT NULL,
    decision    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX slo_gate_overrides_service ON slo_gate_overrides (service, environment);
