-- Stored responses for Idempotency-Key, scoped per credential (server's API conventions).
CREATE TABLE idempotency_records (
    credential_id    TEXT NOT NULL,
    idem_key         TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    status_code      BIGINT,
    response_headers TEXT,
    response_body    BLOB,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    PRIMARY KEY (credential_id, idem_key)
);

CREATE INDEX idempotency_records_by_expiry ON idempotency_records (expires_at);
