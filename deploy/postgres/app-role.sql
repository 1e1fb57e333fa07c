-- The least-privilege role the Runway server connects as: not the owner of the schema, not a
-- superuser, no BYPASSRLS, so PostgreSQL's row-level security applies to every query it runs.
-- Run as the role that owns the schema (the one in `database.migration_url`), after
-- `runway migrate`. Safe to run again after later migrations.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'runway_app') THEN
        CREATE ROLE runway_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO runway_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO runway_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO runway_app;

-- The audit log is append-only for the server: entries can be added and read, never changed.
REVOKE UPDATE, DELETE ON audit_entries FROM runway_app;
-- Migrations are the owner's business; the server only reads their state for /readyz.
REVOKE INSERT, UPDATE, DELETE ON _sqlx_migrations FROM runway_app;
