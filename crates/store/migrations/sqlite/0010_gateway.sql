-- Of each minute's 4xx answers, the 429s: an SLO decides whether throttled requests count
-- against it, so they are kept apart from the other client errors.
ALTER TABLE gateway_sli ADD COLUMN status_429 BIGINT NOT NULL DEFAULT 0;
