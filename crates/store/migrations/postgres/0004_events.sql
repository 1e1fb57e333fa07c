-- Event backbone (events capability): event types, the event log, webhook endpoints, and the
-- delivery queue with its attempts.
CREATE TABLE event_types (
    name        TEXT NOT NULL,
    major       BIGINT NOT NULL,
    minor       BIGINT NOT NULL,
    description TEXT NOT NULL,
    -- JSON Schema text; NULL means events of this type are accepted without validation.
    schema      TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (name, major, minor)
);

CREATE TABLE events (
    pos          TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    event_id     TEXT NOT NULL,
    type         TEXT NOT NULL,
    type_version TEXT NOT NULL,
    payload      TEXT NOT NULL,
    event_key    TEXT,
    occurred_at  BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    UNIQUE (tenant_id, event_id)
);
CREATE INDEX events_by_tenant_type ON events (tenant_id, type, pos);

CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    url         TEXT NOT NULL,
    description TEXT NOT NULL,
    event_types TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL,
    rate_limit  BIGINT,
    headers     TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    secret      TEXT NOT NULL,
    -- 'v1' (HMAC with a whsec_ secret) or 'v1a' (Ed25519 with a whsk_ key pair).
    signature_scheme TEXT NOT NULL DEFAULT 'v1',
    -- Deliver events with the same key strictly one after another, in order.
    ordered     BOOLEAN NOT NULL DEFAULT FALSE,
    -- After a rotation the old secret still signs until it expires (both signatures are sent).
    previous_secret            TEXT,
    previous_secret_expires_at BIGINT,
    -- When the current run of failed deliveries began; NULL while deliveries succeed.
    failing_since BIGINT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant_id, id);

-- One row per (event, endpoint): the unit that is retried, dead-lettered and resent.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_pos       TEXT NOT NULL REFERENCES events (pos),
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    lease_token     TEXT,
    last_error      TEXT,
    -- A delivery made by replaying the event log rather than by publishing.
    -- The event's key when the endpoint is ordered: at most one pending delivery per key goes out.
    ordering_key    TEXT,
    replay          BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, id);
CREATE INDEX deliveries_by_lease ON deliveries (lease_token);
CREATE INDEX deliveries_by_ordering_key ON deliveries (endpoint_id, ordering_key, event_pos);

CREATE TABLE delivery_attempts (
    id               TEXT PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    tenant_id        TEXT NOT NULL,
    endpoint_id      TEXT NOT NULL,
    at               BIGINT NOT NULL,
    status_code      BIGINT,
    latency_ms       BIGINT NOT NULL,
    error_kind       TEXT,
    response_excerpt TEXT
);
CREATE INDEX delivery_attempts_by_endpoint ON delivery_attempts (endpoint_id, id);
CREATE INDEX delivery_attempts_by_delivery ON delivery_attempts (delivery_id, id);

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON events
    USING (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true))
    WITH CHECK (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true));
ALTER TABLE webhook_endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_endpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_endpoints
    USING (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true))
    WITH CHECK (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true));
ALTER TABLE deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON deliveries
    USING (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true))
    WITH CHECK (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true));
ALTER TABLE delivery_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE delivery_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON delivery_attempts
    USING (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true))
    WITH CHECK (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true));
