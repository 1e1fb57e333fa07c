-- Fair delivery (issue 10): an endpoint's own cap on sends in flight (it can only lower its
-- plan's), and since when the workers found most of its recent sends failing.
ALTER TABLE webhook_endpoints ADD COLUMN max_in_flight BIGINT;
ALTER TABLE webhook_endpoints ADD COLUMN degraded_since BIGINT;
-- Claims look up each endpoint's oldest due deliveries, so one endpoint's backlog is never
-- scanned to find another's.
CREATE INDEX deliveries_pending_by_endpoint ON deliveries (endpoint_id, next_attempt_at, id) WHERE status = 'pending';
