//! Policies and OpenAPI documents managed through the API: their wire shape (which is also
//! what the catalog stores) and the checks a write must pass before it is stored.

use runway_core::ApiError;
use serde::{Deserialize, Serialize};

use crate::{policy, validate};

/// Largest Rego source accepted through the API.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;

/// A Rego policy (`package runway.gateway`) kept through the API. Routes name it in
/// `policies`, as they name those of `gateway.policies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// What routes call it by: 1 to 64 of a-z, 0-9, `-` and `_`, not a name of `gateway.policies`.
    #[schema(example = "plan-gate")]
    pub name: String,
    /// What it is for, for the people who read the catalog.
    #[serde(default)]
    pub description: Option<String>,
    /// The Rego module. Its own `test_*` rules must pass for the write to be stored.
    pub source: String,
}

/// An OpenAPI 3.0/3.1 document (JSON) kept through the API; routes name it in `openapi`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenApiDocument {
    /// What routes call it by: 1 to 64 of a-z, 0-9, `-` and `_`.
    #[schema(example = "orders-v1")]
    pub name: String,
    /// What it describes, for the people who read the catalog.
    #[serde(default)]
    pub description: Option<String>,
    /// The OpenAPI document itself, describing the upstream's paths after the route's
    /// `strip_prefix`.
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
}

fn check_common(name: &str, description: Option<&str>) -> Result<(), ApiError> {
    if !runway_core::config::valid_route_name(name) {
        return Err(ApiError::validation("/name", "1 to 64 of a-z, 0-9, `-` and `_`"));
    }
    if description.is_some_and(|d| d.len() > 1024) {
        return Err(ApiError::validation("/description", "at most 1024 bytes"));
    }
    Ok(())
}

/// Compiles the policy and runs its own tests; a 422 names what fails.
pub fn check_policy(p: &PolicyDocument) -> Result<policy::Policy, ApiError> {
    check_common(&p.name, p.description.as_deref())?;
    if p.source.len() > MAX_POLICY_BYTES {
        return Err(ApiError::validation("/source", format!("at most {MAX_POLICY_BYTES} bytes")));
    }
    let compiled =
        policy::Policy::compile(&p.name, &p.source).map_err(|e| ApiError::validation("/source", e.to_string()))?;
    let failed: Vec<String> = compiled
        .run_tests()
        .into_iter()
        .filter(|t| !t.passed)
        .map(|t| match t.message {
            Some(m) => format!("{} ({m})", t.name),
            None => t.name,
        })
        .collect();
    if !failed.is_empty() {
        return Err(ApiError::validation("/source", format!("its own tests fail: {}", failed.join("; "))));
    }
    Ok(compiled)
}

/// Compiles the document as the validator will use it; a 422 names what it cannot use.
pub fn check_openapi(d: &OpenApiDocument) -> Result<validate::ApiSpec, ApiError> {
    check_common(&d.name, d.description.as_deref())?;
    validate::ApiSpec::compile(&d.document).map_err(|e| ApiError::validation("/document", e.to_string()))
}
