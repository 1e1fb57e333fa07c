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
mod fault;
mod flags;
mod isolation;
mod lifecycle;
mod tenants;
