-- Claims read back the rows they leased by the ids their UPDATE returns, so the lease token
-- needs no index (and a lease update touches no indexed column).
DROP INDEX deliveries_by_lease;
-- Only keyed deliveries to ordered endpoints are ever looked up by key; the rest stay out of it.
DROP INDEX deliveries_by_ordering_key;
CREATE INDEX deliveries_by_ordering_key ON deliveries (endpoint_id, ordering_key, event_pos) WHERE ordering_key IS NOT NULL;
-- Room on each page so a lease update can be heap-only (HOT): no new index entries per claim.
ALTER TABLE deliveries SET (fillfactor = 80);
