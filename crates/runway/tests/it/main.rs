//! Integration tests: a real server on a loopback port, spoken to over HTTP, on SQLite and (with
//! `RUNWAY_TEST_POSTGRES` set) PostgreSQL; the CLI as a real process.

mod harness;

mod audit;
mod bounds;
mod cli;
mod contract;
mod conventions;
mod credentials;
mod events;
mod fairness;
mod fault;
mod flags;
mod gateway;
mod hostile;
mod isolation;
mod jwt_keys;
mod lifecycle;
mod schema;
mod slo;
mod tenants;

/// A green CI must mean the PostgreSQL suite ran: under CI (`CI` set) a missing
/// `RUNWAY_TEST_POSTGRES` fails the run instead of leaving every PostgreSQL test skipped.
#[test]
fn ci_runs_the_postgres_suite() {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        assert!(
            std::env::var("RUNWAY_TEST_POSTGRES").is_ok_and(|v| !v.is_empty()),
            "CI is set but RUNWAY_TEST_POSTGRES is not: the PostgreSQL suite would not run"
        );
    }
}
