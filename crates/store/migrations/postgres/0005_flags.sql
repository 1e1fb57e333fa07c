-- Feature flags: platform-level configuration (flags belong to the startup, tenants are a
-- targeting dimension). Every change bumps flag_state.revision in the same transaction; each
-- replica polls it and reloads, so a change reaches evaluation everywhere within a second.

ALTER TABLE api_keys ADD COLUMN environment TEXT;

CREATE TABLE flag_environments (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);

-- One row per flag; `document` holds metadata and every environment's configuration.
CREATE TABLE flags (
    key        TEXT PRIMARY KEY,
    version    BIGINT NOT NULL,
    document   TEXT NOT NULL,
    archived   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Every version of every flag: the whole document after the change, and what changed.
CREATE TABLE flag_versions (
    flag_key   TEXT NOT NULL,
    version    BIGINT NOT NULL,
    document   TEXT NOT NULL,
    diff       TEXT NOT NULL,
    action     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (flag_key, version)
);

CREATE TABLE flag_segments (
    id          BIGINT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    constraints TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE flag_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    revision   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO flag_state (id, revision, updated_at) VALUES (1, 1, 0);

CREATE TABLE flag_schedules (
    id          TEXT PRIMARY KEY,
    flag_key    TEXT NOT NULL,
    environment TEXT NOT NULL,
    change      TEXT NOT NULL,
    apply_at    BIGINT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'failed', 'cancelled')),
    error       TEXT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    applied_at  BIGINT
);
CREATE INDEX flag_schedules_due ON flag_schedules (status, apply_at);

CREATE TABLE flag_release_plans (
    id          TEXT PRIMARY KEY,
    flag_key    TEXT NOT NULL,
    environment TEXT NOT NULL,
    strategy    BIGINT NOT NULL,
    milestones  TEXT NOT NULL,
    current     BIGINT NOT NULL,
    last_safe   BIGINT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'paused', 'completed', 'rolled_back', 'cancelled')),
    next_at     BIGINT,
    reason      TEXT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX flag_release_plans_due ON flag_release_plans (status, next_at);

CREATE TABLE flag_guards (
    id         TEXT PRIMARY KEY,
    plan_id    TEXT NOT NULL REFERENCES flag_release_plans (id),
    name       TEXT NOT NULL,
    alertname  TEXT,
    state      TEXT NOT NULL CHECK (state IN ('ok', 'tripped')),
    reason     TEXT,
    updated_at BIGINT NOT NULL,
    UNIQUE (plan_id, name)
);

CREATE TABLE flag_usage (
    flag_key          TEXT NOT NULL,
    environment       TEXT NOT NULL,
    variant           TEXT NOT NULL,
    yes_count         BIGINT NOT NULL,
    no_count          BIGINT NOT NULL,
    last_evaluated_at BIGINT NOT NULL,
    PRIMARY KEY (flag_key, environment, variant)
);

CREATE TABLE flag_clients (
    app_name    TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    sdk_version TEXT NOT NULL,
    strategies  TEXT NOT NULL,
    started_at  TEXT,
    interval_ms BIGINT,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (app_name, instance_id, environment)
);
