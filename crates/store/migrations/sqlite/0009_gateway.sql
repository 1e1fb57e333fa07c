-- Everything the gateway keeps through the API, in one versioned catalog: routes, Rego
-- policies and OpenAPI documents (`kind` = route | policy | openapi). Each change writes the
-- document row, a version row, its audit entry and the gateway_state revision bump in one
-- transaction; replicas poll the revision and swap routes, policies and documents together.

CREATE TABLE gateway_documents (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    document   TEXT NOT NULL,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);

-- Every version of every document: the whole document after the change (a deletion keeps
-- the last one, so a rollback can bring it back).
CREATE TABLE gateway_document_versions (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    document   TEXT NOT NULL,
    action     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name, version)
);

INSERT INTO gateway_documents (kind, name, version, document, deleted, created_at, updated_at)
    SELECT 'route', name, version, document, deleted, created_at, updated_at FROM gateway_routes;
INSERT INTO gateway_document_versions (kind, name, version, document, action, actor, created_at)
    SELECT 'route', route_name, version, document, action, actor, created_at FROM gateway_route_versions;
DROP TABLE gateway_route_versions;
DROP TABLE gateway_routes;
