-- Edge gateway routes managed through the API (routes declared in runway.toml are not stored).
-- Every change writes a version row and bumps gateway_state.revision in the same transaction;
-- each replica polls the revision and swaps its route table, so a change is live everywhere
-- within a second without dropping connections.

CREATE TABLE gateway_routes (
    name       TEXT PRIMARY KEY,
    version    BIGINT NOT NULL,
    document   TEXT NOT NULL,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Every version of every route: the whole document after the change (a deletion keeps the
-- last document, so a rollback can bring the route back).
CREATE TABLE gateway_route_versions (
    route_name TEXT NOT NULL,
    version    BIGINT NOT NULL,
    document   TEXT NOT NULL,
    action     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (route_name, version)
);

CREATE TABLE gateway_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    revision   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO gateway_state (id, revision, updated_at) VALUES (1, 1, 0);

-- Per route, tenant and minute: requests by status class, a latency histogram (counts per
-- bucket, upper bounds in ms inclusive, lat_inf above the last) and bytes. Written in batches
-- by each replica, adding to the row (so replicas and flushes merge); read by the SLO and
-- metering capabilities. `tenant_id` is `-` for anonymous requests and `other` for tenants
-- beyond the per-flush key bound.
CREATE TABLE gateway_sli (
    route      TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    minute     BIGINT NOT NULL,
    status_1xx BIGINT NOT NULL DEFAULT 0,
    status_2xx BIGINT NOT NULL DEFAULT 0,
    status_3xx BIGINT NOT NULL DEFAULT 0,
    status_4xx BIGINT NOT NULL DEFAULT 0,
    status_5xx BIGINT NOT NULL DEFAULT 0,
    bytes_in   BIGINT NOT NULL DEFAULT 0,
    bytes_out  BIGINT NOT NULL DEFAULT 0,
    lat_le_1 BIGINT NOT NULL DEFAULT 0,
    lat_le_2 BIGINT NOT NULL DEFAULT 0,
    lat_le_5 BIGINT NOT NULL DEFAULT 0,
    lat_le_10 BIGINT NOT NULL DEFAULT 0,
    lat_le_25 BIGINT NOT NULL DEFAULT 0,
    lat_le_50 BIGINT NOT NULL DEFAULT 0,
    lat_le_100 BIGINT NOT NULL DEFAULT 0,
    lat_le_200 BIGINT NOT NULL DEFAULT 0,
    lat_le_250 BIGINT NOT NULL DEFAULT 0,
    lat_le_300 BIGINT NOT NULL DEFAULT 0,
    lat_le_500 BIGINT NOT NULL DEFAULT 0,
    lat_le_1000 BIGINT NOT NULL DEFAULT 0,
    lat_le_2500 BIGINT NOT NULL DEFAULT 0,
    lat_le_5000 BIGINT NOT NULL DEFAULT 0,
    lat_le_10000 BIGINT NOT NULL DEFAULT 0,
    lat_le_30000 BIGINT NOT NULL DEFAULT 0,
    lat_inf BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (route, tenant_id, minute)
);
CREATE INDEX gateway_sli_minute ON gateway_sli (minute);
ALTER TABLE gateway_sli ENABLE ROW LEVEL SECURITY;
ALTER TABLE gateway_sli FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON gateway_sli
    USING (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true))
    WITH CHECK (current_setting('runway.platform', true) = 'on' OR tenant_id = current_setting('runway.tenant_id', true));
