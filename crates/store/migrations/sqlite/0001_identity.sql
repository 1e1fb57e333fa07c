-- Tenants and credentials (identity capability).
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL,
    region      TEXT NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}',
    state       TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'deleted')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('service', 'tenant')),
    tenant_id    TEXT REFERENCES tenants (id),
    name         TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT,
    CHECK ((kind = 'tenant') = (tenant_id IS NOT NULL))
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);

-- Operator-level settings such as the admin token's hash; not tenant data.
CREATE TABLE platform_settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
