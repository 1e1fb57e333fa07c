//! What the gateway keeps through the API — routes, Rego policies and OpenAPI documents — in
//! one versioned, audited catalog (`runway_audit::catalog` over `gateway_documents`,
//! `gateway_document_versions` and `gateway_state`). Replicas poll the revision and swap
//! routes, policies and documents together ([`crate::Gateway::refresh`]).

pub use runway_audit::catalog::{Edit, Kind, Stored, Version, apply, get, history, list};
use runway_audit::catalog::{Tables, live, revision_in};
use runway_core::ApiError;
use runway_core::config::RouteConfig;
use runway_store::{DbScope, Store};
use serde_json::{Value, json};

use crate::documents::{OpenApiDocument, PolicyDocument};

/// The gateway's catalog tables.
static TABLES: Tables =
    Tables { documents: "gateway_documents", versions: "gateway_document_versions", state: "gateway_state" };

/// Routes kept through the API.
pub struct Routes;

impl Kind for Routes {
    type Doc = RouteConfig;
    const TABLES: &'static Tables = &TABLES;
    const KIND: &'static str = "route";
    const LABEL: &'static str = "gateway route";
    const AUDIT: &'static str = "gateway.route";
    const TARGET: &'static str = "gateway_route";
    fn name(d: &Self::Doc) -> &str {
        &d.name
    }
    fn summary(d: &Self::Doc) -> Value {
        json!({"path_prefix": d.path_prefix, "upstream": d.upstream.iter().map(|t| &t.url).collect::<Vec<_>>()})
    }
}

/// Rego policies kept through the API.
pub struct Policies;

impl Kind for Policies {
    type Doc = PolicyDocument;
    const TABLES: &'static Tables = &TABLES;
    const KIND: &'static str = "policy";
    const LABEL: &'static str = "gateway policy";
    const AUDIT: &'static str = "gateway.policy";
    const TARGET: &'static str = "gateway_policy";
    fn name(d: &Self::Doc) -> &str {
        &d.name
    }
    fn summary(d: &Self::Doc) -> Value {
        json!({"source_bytes": d.source.len()})
    }
}

/// OpenAPI documents kept through the API.
pub struct OpenApiDocuments;

impl Kind for OpenApiDocuments {
    type Doc = OpenApiDocument;
    const TABLES: &'static Tables = &TABLES;
    const KIND: &'static str = "openapi";
    const LABEL: &'static str = "OpenAPI document";
    const AUDIT: &'static str = "gateway.openapi";
    const TARGET: &'static str = "gateway_openapi";
    fn name(d: &Self::Doc) -> &str {
        &d.name
    }
    fn summary(d: &Self::Doc) -> Value {
        json!({"title": d.document.pointer("/info/title"), "api_version": d.document.pointer("/info/version")})
    }
}

/// Every live stored document of every kind, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub revision: i64,
    pub routes: Vec<Stored<RouteConfig>>,
    pub policies: Vec<Stored<PolicyDocument>>,
    pub openapi: Vec<Stored<OpenApiDocument>>,
}

/// The stored revision: moves with every change to any document.
pub async fn revision(store: &Store) -> Result<i64, ApiError> {
    runway_audit::catalog::revision(store, &TABLES).await
}

/// Every live stored document of every kind, with the revision they were read at.
pub async fn load(store: &Store) -> Result<Loaded, ApiError> {
    let mut tx = store.read(DbScope::Platform).await?;
    let revision = revision_in(&mut tx, &TABLES).await?;
    Ok(Loaded {
        revision,
        routes: live::<Routes>(&mut tx).await?,
        policies: live::<Policies>(&mut tx).await?,
        openapi: live::<OpenApiDocuments>(&mut tx).await?,
    })
}
