//! Policy as code for the gateway: Rego policies, run by `regorus`, decide per request whether
//! it may pass, and what to change on the way upstream.
//!
//! # The policy contract
//!
//! A policy is one Rego module (Rego v1 syntax: `if`, `contains`, `in`) that declares
//! `package runway.gateway`. For each request the gateway evaluates that package with
//! `input` set to a [`PolicyInput`] (JSON; absent optional fields are *undefined* in Rego, not
//! `null`) and reads these rules, and nothing else:
//!
//! | rule | type | read when | meaning |
//! |---|---|---|---|
//! | `allow` | boolean | always (required) | `true` lets the request pass; `false` or *undefined* refuses it. Write `default allow := false`. |
//! | `deny_reason` | string | refused | why, shown to the client; default `"policy did not allow"` |
//! | `status` | integer 300–599 | refused | the response status (e.g. 451 for residency); default 307 when `location` is defined, else 403 |
//! | `location` | string of visible ASCII | refused | the redirect target; requires a 3xx `status` (or none, meaning 307), and a 3xx `status` requires it |
//! | `set_headers` | object of string → string | allowed | headers to add to, or replace on, the upstream request |
//! | `remove_headers` | set or array of strings | allowed | headers to remove from the upstream request, applied before `set_headers` |
//!
//! Header names are case-insensitive (returned lower-cased in [`Decision`]) and must be HTTP
//! tokens; values must be printable ASCII (space and tab allowed; no CR, LF, NUL). The connection-level
//! headers `host`, `content-length`, `transfer-encoding`, `connection`, `keep-alive`,
//! `proxy-connection`, `te`, `trailer` and `upgrade` may be neither set nor removed. A rule of
//! the wrong type, or a value outside these limits, is a contract violation
//! ([`PolicyError::Contract`]), never a silent allow.
//!
//! **Fail closed.** `allow` undefined means refused (reason `"policy did not allow"`). Anything
//! that stops the evaluation — a rule raising an error (builtin errors are strict: `to_number("x")`
//! or a division by zero is an error, not *undefined*), conflicting values for a complete rule,
//! the evaluation time budget running out, a contract violation — is an `Err(PolicyError)`, which
//! the gateway answers as a 500 problem without forwarding the request.
//!
//! # Evaluation
//!
//! [`Policy::compile`] parses and analyses the source once (syntax errors and unbound variables
//! are reported then, with file, line and column) and adds an internal module that gathers all
//! the rules above in one evaluation. [`Policy::evaluate`] clones that prepared `regorus::Engine`
//! (it shares the compiled policy through `Arc`s; a clone costs about 0.1 µs in release builds,
//! against about a millisecond for the DLP example on a 2 KiB body, and needs no lock, unlike a
//! pool) and evaluates it on the caller's thread.
//!
//! The wall-clock budget ([`DEFAULT_TIME_LIMIT`], 250 ms, or [`Policy::with_time_limit`]) is
//! generous because a wall clock also counts time the process was not scheduled; regorus checks
//! it between evaluation steps, not inside one builtin call (`numbers.range(1, 1e8)` runs to its
//! end).
//!
//! Known gaps of regorus 0.14: it resolves function names only when it calls them, so a misspelt
//! function compiles and then fails each evaluation that reaches it; and it does not detect
//! recursion through *functions* (recursion through rules is an evaluation error), which
//! overflows the stack and aborts the process, as Rust does on stack overflow. Policies are
//! operator code: run their tests (`runway policy test`) before deploying them.
//!
//! `print(...)` output is collected, not written to stderr; [`Policy::run_tests`] shows it for
//! failed tests.
//!
//! # Tests in Rego
//!
//! Following OPA's convention, every rule named `test_*` is a unit test that passes when it
//! evaluates to `true` (failed: *undefined*, `false`, another value, or an error). Tests may sit in
//! the policy's own package (they are inert: the gateway reads only the rules above) or in a
//! companion file such as `package runway.gateway_test`; they usually mock the request with
//! `allow with input as {...}`. [`Policy::run_tests`] and [`test_sources`] run them
//! (`runway policy test <file.rego>`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use serde::{Deserialize, Serialize};

/// The package whose rules make up the contract (see the module documentation).
pub const CONTRACT_PACKAGE: &str = "runway.gateway";

/// Suggested bound for [`PolicyInput::body`], to keep evaluation time bounded; larger bodies go as `None`.
pub const SUGGESTED_MAX_BODY_BYTES: usize = 64 * 1024;

/// Per-evaluation wall-clock budget, so that a runaway policy fails (closed) instead of holding requests.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(250);

/// Example policies `(file name, source)` with their own tests, as starting points for operators.
pub const EXAMPLES: [(&str, &str); 3] = [
    ("residency.rego", include_str!("../policies/residency.rego")),
    ("dlp.rego", include_str!("../policies/dlp.rego")),
    ("plan_gating.rego", include_str!("../policies/plan_gating.rego")),
];

/// Reason given when a policy refuses without a `deny_reason`, e.g. when `allow` is undefined.
pub const DEFAULT_DENY_REASON: &str = "policy did not allow";

/// Headers a policy may neither set nor remove: they frame the connection, not the request.
const PROTECTED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Source path of the internal module that reads the contract's rules in one evaluation.
const CONTRACT_MODULE_PATH: &str = "<runway-contract>";
/// Rule that gathers the contract: each field is `[]` (undefined) or `[value]`.
const CONTRACT_RULE: &str = "data.__runway.contract.decision";
const CONTRACT_MODULE: &str = r#"package __runway.contract

decision := {
	"allow": [x | x := data.runway.gateway.allow],
	"deny_reason": [x | x := data.runway.gateway.deny_reason],
	"status": [x | x := data.runway.gateway.status],
	"location": [x | x := data.runway.gateway.location],
	"set_headers": [x | x := data.runway.gateway.set_headers],
	"remove_headers": [x | x := data.runway.gateway.remove_headers],
}
"#;

/// What a policy sees of a request: the `input` document, built by the gateway per request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyInput {
    /// The tenant the request acts for, once authenticated; absent (undefined in Rego) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantInput>,
    /// Who made the request; absent for anonymous requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalInput>,
    /// Name of the matched gateway route.
    pub route: String,
    /// HTTP method, upper case (`GET`).
    pub method: String,
    /// Request path as received, without the query string.
    pub path: String,
    /// Headers on the caller's allowlist only, names lower-case, repeats joined with `, `; never credentials.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Client address as the gateway determined it (after trusted proxies).
    pub client_ip: String,
    /// Region this gateway serves (for residency).
    pub gateway_region: String,
    /// The parsed body, only when JSON and at most [`SUGGESTED_MAX_BODY_BYTES`] (caller decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

/// The tenant part of [`PolicyInput`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantInput {
    /// Tenant id (`ten_…`).
    pub id: String,
    /// Plan name (`free`, `pro`, `enterprise`, …).
    pub plan: String,
    /// Home region of the tenant's data.
    pub region: String,
    /// The tenant's free-form metadata object.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The principal part of [`PolicyInput`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrincipalInput {
    /// What kind of credential authenticated the request.
    pub kind: PrincipalKind,
    /// Key id, user or JWT `sub`.
    pub subject: String,
    /// Granted scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Kinds of principal a policy can tell apart (`input.principal.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A tenant's API key.
    TenantKey,
    /// A platform service key.
    ServiceKey,
    /// An operator.
    Admin,
    /// A bearer JWT from a trusted issuer.
    Jwt,
}

/// What the gateway does with a request, as the policy decided it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the request goes upstream.
    pub allow: bool,
    /// Why it was refused; `None` when allowed.
    pub reason: Option<String>,
    /// Response status when refused (403 default, 451 residency, 307 redirect); `None` when allowed.
    pub status: Option<u16>,
    /// Redirect target, with a 3xx `status`.
    pub location: Option<String>,
    /// Headers (lower-case names) to add or replace upstream, applied after `remove_headers`.
    pub set_headers: BTreeMap<String, String>,
    /// Headers (lower-case, sorted, distinct) to remove from the upstream request.
    pub remove_headers: Vec<String>,
}

/// Why a policy could not be compiled or could not decide; the gateway answers 500 (fail closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The source does not parse or analyse, or lacks `package runway.gateway` or its `allow` rule.
    Compile {
        /// Policy name (file name).
        policy: String,
        /// regorus' message, with file, line and column.
        message: String,
    },
    /// Evaluation stopped: a rule raised an error, or the time budget ran out.
    Eval {
        /// Policy name.
        policy: String,
        /// regorus' message, with the failing rule's location.
        message: String,
    },
    /// The policy produced a value the contract does not accept.
    Contract {
        /// Policy name.
        policy: String,
        /// Which rule, and what is wrong with its value.
        message: String,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compile { policy, message } => write!(f, "policy {policy} does not compile: {message}"),
            Self::Eval { policy, message } => write!(f, "policy {policy} failed to evaluate: {message}"),
            Self::Contract { policy, message } => write!(f, "policy {policy} broke the gateway contract: {message}"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Outcome of one Rego `test_*` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// `data.<package>.<rule>` of the test.
    pub name: String,
    /// Whether the rule evaluated to `true`.
    pub passed: bool,
    /// Why it failed (and what it printed); `None` when passed.
    pub message: Option<String>,
}

/// A compiled gateway policy, shared by all request handlers (`Send + Sync`; see "Evaluation").
#[derive(Clone)]
pub struct Policy {
    name: String,
    engine: Engine,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy").field("name", &self.name).finish_non_exhaustive()
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Policy>();
};

impl Policy {
    /// Parses and analyses `source` (`name` in messages), checking it has `package runway.gateway` and `allow`.
    pub fn compile(name: &str, source: &str) -> Result<Self, PolicyError> {
        let compile_err = |message: String| PolicyError::Compile { policy: name.to_owned(), message };
        if name == CONTRACT_MODULE_PATH {
            return Err(compile_err(format!("the name {CONTRACT_MODULE_PATH} is reserved")));
        }
        let mut engine = new_engine();
        let package = engine.add_policy(name.to_owned(), source.to_owned()).map_err(|e| compile_err(error_text(&e)))?;
        if package != format!("data.{CONTRACT_PACKAGE}") {
            return Err(compile_err(format!(
                "a gateway policy must declare `package {CONTRACT_PACKAGE}`, not `package {}`",
                package.trim_start_matches("data.")
            )));
        }
        let has_allow = engine.has_declared_rule_rooted_at(name, "allow").map_err(|e| compile_err(error_text(&e)))?;
        if !has_allow {
            return Err(compile_err(format!("package {CONTRACT_PACKAGE} declares no `allow` rule")));
        }
        engine
            .add_policy(CONTRACT_MODULE_PATH.to_owned(), CONTRACT_MODULE.to_owned())
            .map_err(|e| compile_err(error_text(&e)))?;
        prepare(&mut engine, CONTRACT_RULE).map_err(compile_err)?;
        Ok(Self { name: name.to_owned(), engine }.with_time_limit(DEFAULT_TIME_LIMIT))
    }

    /// Replaces the per-evaluation wall-clock budget ([`DEFAULT_TIME_LIMIT`] by default).
    #[must_use]
    pub fn with_time_limit(mut self, limit: Duration) -> Self {
        self.engine.set_execution_timer_config(timer(limit));
        self
    }

    /// The name the policy was compiled with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Decides one request; `Err` means the gateway must answer 500 without forwarding it.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Decision, PolicyError> {
        // Through a JSON string: faster than through `serde_json::Value` (measured).
        let input = serde_json::to_string(input)
            .map_err(|e| e.to_string())
            .and_then(|json| Value::from_json_str(&json).map_err(|e| error_text(&e)))
            .map_err(|e| self.eval_err(format!("input does not convert: {e}")))?;
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let out = engine.eval_rule(CONTRACT_RULE.to_owned()).map_err(|e| self.eval_err(error_text(&e)))?;
        read_decision(&out).map_err(|message| PolicyError::Contract { policy: self.name.clone(), message })
    }

    /// Runs every `test_*` rule of the policy's modules (see the module documentation).
    pub fn run_tests(&self) -> Vec<TestResult> {
        run_tests_in(&self.engine)
    }

    fn eval_err(&self, message: String) -> PolicyError {
        PolicyError::Eval { policy: self.name.clone(), message }
    }
}

/// Loads policy and test files `(name, source)` together and runs all their `test_*` rules (the CLI's job).
pub fn test_sources(sources: &[(String, String)]) -> Result<Vec<TestResult>, PolicyError> {
    let mut engine = new_engine();
    let mut seen = BTreeSet::new();
    for (name, source) in sources {
        let compile_err = |message: String| PolicyError::Compile { policy: name.clone(), message };
        if name == CONTRACT_MODULE_PATH {
            return Err(compile_err(format!("the name {CONTRACT_MODULE_PATH} is reserved")));
        }
        if !seen.insert(name.as_str()) {
            return Err(compile_err("two sources have this name".to_owned()));
        }
        engine.add_policy(name.clone(), source.clone()).map_err(|e| compile_err(error_text(&e)))?;
    }
    let names = seen.iter().copied().collect::<Vec<_>>().join(", ");
    let compile_err = |message: String| PolicyError::Compile { policy: names.clone(), message };
    // Analyse the whole set once, so that e.g. an unbound variable is a compile error, not a failed test.
    engine
        .add_policy(CONTRACT_MODULE_PATH.to_owned(), "package __runway.contract\n\nready := true\n".to_owned())
        .map_err(|e| compile_err(error_text(&e)))?;
    prepare(&mut engine, "data.__runway.contract.ready").map_err(compile_err)?;
    Ok(run_tests_in(&engine))
}

/// Budget of one Rego test: tests may be heavier than a request, but must not hang the CLI.
const TEST_TIME_LIMIT: Duration = Duration::from_secs(10);

fn timer(limit: Duration) -> ExecutionTimerConfig {
    // Work units between clock reads: cheap enough, and fine-grained for budgets in milliseconds.
    ExecutionTimerConfig { limit, check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN) }
}

fn new_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_strict_builtin_errors(true);
    engine.set_gather_prints(true);
    engine
}

/// Analyses the loaded modules (the work regorus would otherwise do on the first evaluation), so
/// that clones of `engine` start evaluating at once.
fn prepare(engine: &mut Engine, rule: &str) -> Result<(), String> {
    engine.compile_with_entrypoint(&rule.into()).map(drop).map_err(|e| error_text(&e))
}

/// regorus' messages start with a newline and carry a source excerpt; keep them, trimmed.
fn error_text(e: &impl fmt::Display) -> String {
    e.to_string().trim().to_owned()
}

fn run_tests_in(engine: &Engine) -> Vec<TestResult> {
    let (Ok(packages), Ok(sources)) = (engine.get_policy_package_components(), engine.get_policies()) else {
        return vec![TestResult {
            name: "<policy>".to_owned(),
            passed: false,
            message: Some("could not list the policy's modules".to_owned()),
        }];
    };
    let mut results = Vec::new();
    for (package, source) in packages.iter().zip(&sources) {
        let path = source.get_path();
        if path == CONTRACT_MODULE_PATH {
            continue;
        }
        let prefix = rule_path(&package.components);
        for test in test_rule_candidates(source.get_contents()) {
            // The scan finds identifiers; regorus confirms which are rules declared in this module.
            if !matches!(engine.has_declared_rule_rooted_at(path, test), Ok(true)) {
                continue;
            }
            let name = format!("{prefix}.{test}");
            let mut run = engine.clone();
            run.set_execution_timer_config(timer(TEST_TIME_LIMIT));
            let outcome = run.eval_rule(name.clone());
            let prints = run.take_prints().unwrap_or_default();
            let failure = match outcome {
                Ok(Value::Bool(true)) => None,
                Ok(Value::Undefined) => Some("undefined (a condition did not hold)".to_owned()),
                Ok(other) => Some(format!("evaluated to {other}, not true")),
                Err(e) => Some(format!("error: {}", error_text(&e))),
            };
            let message = failure.map(|mut m| {
                for line in prints {
                    m.push_str("\nprint: ");
                    m.push_str(&line);
                }
                m
            });
            results.push(TestResult { name, passed: message.is_none(), message });
        }
    }
    results
}

/// `data.a.b` for package `a.b`, with bracket notation for components that are not identifiers.
fn rule_path(components: &[String]) -> String {
    let mut path = "data".to_owned();
    for c in components {
        let ident = c.chars().next().is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
            && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if ident {
            path.push('.');
            path.push_str(c);
        } else {
            path.push_str(&format!("[{}]", serde_json::Value::String(c.clone())));
        }
    }
    path
}

/// Distinct identifiers starting with `test_`, in order of first appearance.
fn test_rule_candidates(source: &str) -> Vec<&str> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found: Vec<&str> = Vec::new();
    let mut rest = source;
    let mut prev_ident = false;
    while let Some(c) = rest.chars().next() {
        if !prev_ident && rest.starts_with("test_") {
            let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            let ident = &rest[..end];
            if !found.contains(&ident) {
                found.push(ident);
            }
            rest = &rest[end..];
            prev_ident = true;
            continue;
        }
        prev_ident = is_ident(c);
        rest = &rest[c.len_utf8()..];
    }
    found
}

/// Reads the contract module's output into a [`Decision`], checking every field.
fn read_decision(out: &Value) -> Result<Decision, String> {
    let field = |key: &str| -> Result<Option<&Value>, String> {
        let list = out[key].as_array().map_err(|_| "internal error: contract module output".to_owned())?;
        Ok(list.first())
    };
    let allow = match field("allow")? {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("`allow` must be a boolean, got {other}")),
    };
    if allow {
        let items: Vec<&Value> = match field("remove_headers")? {
            None => Vec::new(),
            Some(Value::Set(set)) => set.iter().collect(),
            Some(Value::Array(array)) => array.iter().collect(),
            Some(other) => return Err(format!("`remove_headers` must be a set or array of strings, got {other}")),
        };
        let mut remove_headers = Vec::with_capacity(items.len());
        for item in items {
            let Value::String(name) = item else {
                return Err(format!("`remove_headers` must hold strings, got {item}"));
            };
            remove_headers.push(header_name("remove_headers", name)?);
        }
        remove_headers.sort();
        remove_headers.dedup();
        let mut set_headers = BTreeMap::new();
        match field("set_headers")? {
            None => {}
            Some(Value::Object(obj)) => {
                for (k, v) in obj.iter() {
                    let (Value::String(name), Value::String(value)) = (k, v) else {
                        return Err(format!("`set_headers` must map strings to strings, got {k}: {v}"));
                    };
                    let name = header_name("set_headers", name)?;
                    if !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
                        return Err(format!("`set_headers` value of {name} is not printable ASCII"));
                    }
                    if set_headers.insert(name.clone(), value.to_string()).is_some() {
                        return Err(format!("`set_headers` names {name} twice (names are case-insensitive)"));
                    }
                }
            }
            Some(other) => return Err(format!("`set_headers` must be an object of strings, got {other}")),
        }
        return Ok(Decision { allow, reason: None, status: None, location: None, set_headers, remove_headers });
    }

    let reason = match field("deny_reason")? {
        None => DEFAULT_DENY_REASON.to_owned(),
        Some(Value::String(s)) => s.to_string(),
        Some(other) => return Err(format!("`deny_reason` must be a string, got {other}")),
    };
    let location = match field("location")? {
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()) => Some(s.to_string()),
        Some(other) => return Err(format!("`location` must be a non-empty string of visible ASCII, got {other}")),
    };
    let status = match field("status")? {
        None if location.is_some() => 307,
        None => 403,
        Some(v) => match v.as_u16() {
            Ok(s) if (300..=599).contains(&s) => s,
            _ => return Err(format!("`status` must be an integer from 300 to 599, got {v}")),
        },
    };
    match (status, &location) {
        (300..=399, None) => return Err(format!("`status` {status} is a redirect but `location` is undefined")),
        (400..=599, Some(_)) => return Err(format!("`location` needs a 3xx `status`, got {status}")),
        _ => {}
    }
    Ok(Decision {
        allow,
        reason: Some(reason),
        status: Some(status),
        location,
        set_headers: BTreeMap::new(),
        remove_headers: Vec::new(),
    })
}

fn header_name(rule: &str, name: &str) -> Result<String, String> {
    const TCHAR: &str = "!#$%&'*+-.^_`|~";
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || TCHAR.contains(c)) {
        return Err(format!("`{rule}` has an invalid header name {name:?}"));
    }
    let name = name.to_ascii_lowercase();
    if PROTECTED_HEADERS.contains(&name.as_str()) {
        return Err(format!("`{rule}` may not touch the connection header {name}"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::json;

    use super::*;

    const RESIDENCY: &str = EXAMPLES[0].1;
    const DLP: &str = EXAMPLES[1].1;
    const PLAN_GATING: &str = EXAMPLES[2].1;

    fn tenant(plan: &str, region: &str) -> TenantInput {
        TenantInput {
            id: "ten_1".to_owned(),
            plan: plan.to_owned(),
            region: region.to_owned(),
            metadata: serde_json::Map::new(),
        }
    }

    fn request(route: &str, path: &str) -> PolicyInput {
        PolicyInput {
            route: route.to_owned(),
            method: "POST".to_owned(),
            path: path.to_owned(),
            client_ip: "203.0.113.9".to_owned(),
            gateway_region: "eu".to_owned(),
            ..PolicyInput::default()
        }
    }

    /// Compiles with a time limit far above the default: debug builds on a loaded machine are slow,
    /// and only `runaway_policy_is_cut_off_by_the_time_limit` is about the limit.
    fn compile(name: &str, source: &str) -> Policy {
        Policy::compile(name, source).unwrap_or_else(|e| panic!("{e}")).with_time_limit(Duration::from_secs(30))
    }

    fn allowed() -> Decision {
        Decision { allow: true, ..Decision::default() }
    }

    fn refused(status: u16, reason: &str) -> Decision {
        Decision { allow: false, reason: Some(reason.to_owned()), status: Some(status), ..Decision::default() }
    }

    fn assert_all_pass(results: &[TestResult], expected: usize) {
        let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
        assert!(failed.is_empty(), "failed tests: {failed:#?}");
        assert_eq!(results.len(), expected, "{results:#?}");
    }

    /// A ~2 KiB JSON body of orders; the card number, when wanted, is in the last item.
    fn orders_body(card: Option<&str>) -> serde_json::Value {
        let mut items: Vec<serde_json::Value> = (0..32)
            .map(|i| json!({"sku": format!("SKU-{i:05}"), "qty": i % 5 + 1, "note": "gift wrap", "price": 1999 + i}))
            .collect();
        if let Some(card) = card {
            items.push(json!({"payment": {"method": "card", "number": card}}));
        }
        json!({"customer": {"id": "cus_42", "email": "a@example.com", "phone": "+33 1 23 45 67 89"}, "items": items})
    }

    // --- residency ---

    #[test]
    fn residency_allows_home_region_and_tenantless_requests() {
        let policy = compile("residency.rego", RESIDENCY);
        let mut input = request("orders", "/v1/orders");
        assert_eq!(policy.evaluate(&input).unwrap(), allowed(), "no tenant");
        input.tenant = Some(tenant("free", "eu"));
        assert_eq!(policy.evaluate(&input).unwrap(), allowed(), "home region");
    }

    #[test]
    fn residency_refuses_other_region_with_451() {
        let policy = compile("residency.rego", RESIDENCY);
        let input = PolicyInput { tenant: Some(tenant("free", "us")), ..request("orders", "/v1/orders") };
        assert_eq!(
            policy.evaluate(&input).unwrap(),
            refused(451, "tenant ten_1 keeps its data in region us; this gateway serves region eu")
        );
    }

    #[test]
    fn residency_redirects_other_region_when_switched_on() {
        let source = RESIDENCY.replacen("redirect := false", "redirect := true", 1);
        assert_ne!(source, RESIDENCY, "the switch line moved");
        let policy = compile("residency.rego", &source);
        let input = PolicyInput { tenant: Some(tenant("free", "us")), ..request("orders", "/v1/orders/7") };
        let decision = policy.evaluate(&input).unwrap();
        assert_eq!(
            decision,
            Decision {
                location: Some("https://us.api.example.com/v1/orders/7".to_owned()),
                ..refused(307, "tenant ten_1 keeps its data in region us; this gateway serves region eu")
            }
        );
        // With the switch flipped, the policy's own 451 test is the one that fails.
        let failed: Vec<String> = policy.run_tests().into_iter().filter(|r| !r.passed).map(|r| r.name).collect();
        assert_eq!(failed, ["data.runway.gateway.test_other_region_refused_451"]);
    }

    // --- dlp ---

    #[test]
    fn dlp_refuses_card_numbers_anywhere_in_the_body() {
        let policy = compile("dlp.rego", DLP);
        for card in ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", " 6011111111111117 "] {
            let input = PolicyInput { body: Some(orders_body(Some(card))), ..request("orders", "/v1/orders") };
            assert_eq!(
                policy.evaluate(&input).unwrap(),
                refused(403, "request body carries a payment card number at /items/32/payment/number"),
                "{card}"
            );
        }
        let input = PolicyInput { body: Some(json!([{"pan": 4_111_111_111_111_111_u64}])), ..request("o", "/") };
        assert_eq!(
            policy.evaluate(&input).unwrap(),
            refused(403, "request body carries a payment card number at /0/pan")
        );
        let input = PolicyInput { body: Some(json!("4111111111111111")), ..request("o", "/") };
        assert!(!policy.evaluate(&input).unwrap().allow, "a bare string body");
    }

    #[test]
    fn dlp_allows_bodies_without_card_numbers() {
        let policy = compile("dlp.rego", DLP);
        let not_cards = [
            "4111 1111 1111 1112",        // Luhn fails
            "4111 1111 111",              // 11 digits
            "4111 1111 1111 1111 1111 2", // 21 digits
            "0000 0000 0000 0000",        // leading zero
            "4111/1111/1111/1111",        // other separators
            "card 4111 1111 1111 1111",   // embedded in text: not checked (documented)
        ];
        for s in not_cards {
            let input = PolicyInput { body: Some(orders_body(Some(s))), ..request("orders", "/v1/orders") };
            assert_eq!(policy.evaluate(&input).unwrap(), allowed(), "{s}");
        }
        assert_eq!(policy.evaluate(&request("orders", "/v1/orders")).unwrap(), allowed(), "no body");
        let input = PolicyInput { body: Some(json!({"n": 4_111_111_111_111_112_u64, "f": 1.5})), ..request("o", "/") };
        assert_eq!(policy.evaluate(&input).unwrap(), allowed());
    }

    // --- plan gating ---

    #[test]
    fn plan_gating_refuses_analytics_below_pro() {
        let policy = compile("plan_gating.rego", PLAN_GATING);
        let input = PolicyInput { tenant: Some(tenant("free", "eu")), ..request("analytics-export", "/v1/a") };
        assert_eq!(
            policy.evaluate(&input).unwrap(),
            refused(403, "route analytics-export needs plan pro or enterprise; the tenant's plan is free")
        );
        let input = request("analytics", "/v1/a");
        assert_eq!(
            policy.evaluate(&input).unwrap(),
            refused(403, "route analytics needs plan pro or enterprise; the tenant's plan is none")
        );
    }

    #[test]
    fn plan_gating_allows_and_sets_the_plan_header() {
        let policy = compile("plan_gating.rego", PLAN_GATING);
        for (route, plan) in [("analytics", "pro"), ("analytics-export", "enterprise"), ("orders", "free")] {
            let input = PolicyInput { tenant: Some(tenant(plan, "eu")), ..request(route, "/v1/x") };
            let expected =
                Decision { set_headers: BTreeMap::from([("x-plan".to_owned(), plan.to_owned())]), ..allowed() };
            assert_eq!(policy.evaluate(&input).unwrap(), expected, "{route} {plan}");
        }
        let expected = Decision { remove_headers: vec!["x-plan".to_owned()], ..allowed() };
        assert_eq!(policy.evaluate(&request("orders", "/v1/x")).unwrap(), expected, "no tenant");
    }

    // --- Rego tests of the examples ---

    #[test]
    fn example_policies_pass_their_own_tests() {
        let residency = compile("residency.rego", RESIDENCY).run_tests();
        assert_all_pass(&residency, 4);
        assert_eq!(residency[0].name, "data.runway.gateway.test_home_region_allowed");
        assert_all_pass(&compile("dlp.rego", DLP).run_tests(), 6);
        assert_all_pass(&compile("plan_gating.rego", PLAN_GATING).run_tests(), 5);
    }

    #[test]
    fn test_sources_runs_companion_test_files_and_reports_failures() {
        let tests = r#"package runway.gateway_test

    import data.runway.gateway

    test_get_allowed if {
    	gateway.allow with input as {"method": "GET"}
    }

    # Deliberately wrong: POST is refused.
    test_post_allowed if {
    	print("method under test:", "POST")
    	gateway.allow with input as {"method": "POST"}
    }

    test_not_a_boolean := 7

    test_errors if {
    	1 / count([]) == 0
    }

    # A rule that only mentions test_ in a comment or string is not a test.
    helper := "test_nothing"
    "#;
        let sources = [
            ("policy.rego".to_owned(), "package runway.gateway\n\nallow if input.method == \"GET\"\n".to_owned()),
            ("policy_test.rego".to_owned(), tests.to_owned()),
        ];
        let results = test_sources(&sources).unwrap();
        let summary: Vec<(&str, bool)> = results.iter().map(|r| (r.name.as_str(), r.passed)).collect();
        assert_eq!(
            summary,
            [
                ("data.runway.gateway_test.test_get_allowed", true),
                ("data.runway.gateway_test.test_post_allowed", false),
                ("data.runway.gateway_test.test_not_a_boolean", false),
                ("data.runway.gateway_test.test_errors", false),
            ]
        );
        assert_eq!(results[0].message, None);
        let post = results[1].message.as_deref().unwrap();
        assert!(post.contains("undefined") && post.contains("method under test: POST"), "{post}");
        assert!(results[2].message.as_deref().unwrap().contains("evaluated to 7"), "{:?}", results[2]);
        assert!(results[3].message.as_deref().unwrap().contains("divide by zero"), "{:?}", results[3]);

        // The same through Policy::run_tests, with the tests in the policy's own source.
        let own = "package runway.gateway\n\nallow if input.method == \"GET\"\n\ntest_ok if allow with input as {\"method\": \"GET\"}\n\ntest_bad if allow with input as {\"method\": \"PUT\"}\n";
        let results = compile("own.rego", own).run_tests();
        let summary: Vec<(&str, bool)> = results.iter().map(|r| (r.name.as_str(), r.passed)).collect();
        assert_eq!(summary, [("data.runway.gateway.test_ok", true), ("data.runway.gateway.test_bad", false)]);
    }

    #[test]
    fn test_sources_reports_compile_errors() {
        let bad = [("a.rego".to_owned(), "package a\n\ntest_x if {\n".to_owned())];
        assert!(matches!(test_sources(&bad), Err(PolicyError::Compile { policy, .. }) if policy == "a.rego"));
        let dup = [("a.rego".to_owned(), "package a".to_owned()), ("a.rego".to_owned(), "package b".to_owned())];
        assert!(matches!(test_sources(&dup), Err(PolicyError::Compile { .. })));
    }

    // --- compile and evaluation errors ---

    #[test]
    fn syntax_error_fails_to_compile_with_location() {
        let source = "package runway.gateway\n\ndefault allow := false\n\nallow if {\n\tinput.method ==\n}\n";
        let Err(PolicyError::Compile { policy, message }) = Policy::compile("broken.rego", source) else {
            panic!("compiled");
        };
        assert_eq!(policy, "broken.rego");
        assert!(message.contains("broken.rego:7:1") && message.contains("expecting expression"), "{message}");
    }

    #[test]
    fn compile_checks_the_contract_and_analysis() {
        let cases = [
            ("package other\n\nallow := true\n", "declare `package runway.gateway`"),
            ("package runway.gateway\n\nallowed := true\n", "no `allow` rule"),
            ("package runway.gateway\n\nallow := true\n\nstatus := 1 if {\n", "p.rego:6"),
            ("package runway.gateway\n\nallow if y == 1\n", "y"),
        ];
        for (source, expected) in cases {
            match Policy::compile("p.rego", source) {
                Err(PolicyError::Compile { message, .. }) => assert!(message.contains(expected), "{message}"),
                other => panic!("{source}: {:?}", other.map(|p| p.name)),
            }
        }
        // regorus resolves function names when it calls them: a misspelt function compiles, and fails
        // (closed) on evaluation.
        let policy = compile("p.rego", "package runway.gateway\n\nallow if nonexistent_fn(1)\n");
        match policy.evaluate(&request("r", "/")) {
            Err(PolicyError::Eval { message, .. }) => assert!(message.contains("nonexistent_fn"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rule_error_during_evaluation_is_an_error() {
        let source = "package runway.gateway\n\ndefault allow := false\n\nallow if 100 / count(input.headers) > 1\n";
        let policy = compile("div.rego", source);
        let mut input = request("r", "/");
        input.headers.insert("accept".to_owned(), "*/*".to_owned());
        assert_eq!(policy.evaluate(&input).unwrap(), allowed());
        input.headers.clear();
        match policy.evaluate(&input) {
            Err(PolicyError::Eval { policy, message }) => {
                assert_eq!(policy, "div.rego");
                assert!(message.contains("divide by zero") && message.contains("div.rego:5"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Conflicting values for a complete rule are an error too, not a pick.
        let conflict = compile(
            "c.rego",
            "package runway.gateway\n\nallow := true\n\nstatus := 401 if true\n\nstatus := 402 if true\n",
        );
        assert!(matches!(conflict.evaluate(&input), Err(PolicyError::Eval { .. })), "conflict");
    }

    #[test]
    fn undefined_allow_denies() {
        let policy = compile("get.rego", "package runway.gateway\n\nallow if input.method == \"GET\"\n");
        assert_eq!(policy.evaluate(&request("r", "/")).unwrap(), refused(403, DEFAULT_DENY_REASON));
        let get = PolicyInput { method: "GET".to_owned(), ..request("r", "/") };
        assert_eq!(policy.evaluate(&get).unwrap(), allowed());
    }

    #[test]
    fn runaway_policy_is_cut_off_by_the_time_limit() {
        let source = "package runway.gateway\n\nallow if count([1 | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000); x == y]) > 0\n";
        let with_default = Policy::compile("slow.rego", source).unwrap();
        let short = with_default.clone().with_time_limit(Duration::from_millis(20));
        for (policy, limit) in [(short, Duration::from_millis(20)), (with_default, DEFAULT_TIME_LIMIT)] {
            let started = Instant::now();
            match policy.evaluate(&request("r", "/")) {
                Err(PolicyError::Eval { message, .. }) => assert!(message.contains("exceeded time limit"), "{message}"),
                other => panic!("{other:?}"),
            }
            let took = started.elapsed();
            assert!(took >= limit && took < limit + Duration::from_secs(2), "{took:?}");
        }
    }

    // --- decision fields and the contract ---

    #[test]
    fn decision_fields_are_read() {
        let source = r#"package runway.gateway

    allow if input.method == "GET"

    set_headers := {"X-Tenant": "ten_1", "x-route": input.route} if allow

    remove_headers := ["Cookie", "x-debug", "cookie"]

    status := 302 if not allow

    location := "https://login.example.com/?next=/x" if not allow

    deny_reason := "sign in first"
    "#;
        let policy = compile("fields.rego", source);
        let get = PolicyInput { method: "GET".to_owned(), ..request("orders", "/") };
        assert_eq!(
            policy.evaluate(&get).unwrap(),
            Decision {
                set_headers: BTreeMap::from([
                    ("x-route".to_owned(), "orders".to_owned()),
                    ("x-tenant".to_owned(), "ten_1".to_owned()),
                ]),
                remove_headers: vec!["cookie".to_owned(), "x-debug".to_owned()],
                ..allowed()
            }
        );
        assert_eq!(
            policy.evaluate(&request("orders", "/")).unwrap(),
            Decision {
                location: Some("https://login.example.com/?next=/x".to_owned()),
                ..refused(302, "sign in first")
            }
        );
        // A location alone means 307.
        let policy = compile("loc.rego", "package runway.gateway\n\nallow := false\n\nlocation := \"/elsewhere\"\n");
        assert_eq!(policy.evaluate(&request("r", "/")).unwrap().status, Some(307));
    }

    #[test]
    fn contract_violations_are_errors() {
        let cases = [
            ("allow := \"yes\"", "`allow` must be a boolean"),
            ("allow := false\nstatus := 200", "`status` must be an integer from 300 to 599"),
            ("allow := false\nstatus := 403.5", "`status` must be an integer"),
            ("allow := false\nstatus := 302", "`location` is undefined"),
            ("allow := false\nlocation := \"/x\"\nstatus := 403", "needs a 3xx `status`"),
            ("allow := false\nlocation := \"/x\\r\\nset-cookie: a=b\"", "visible ASCII"),
            ("allow := false\nlocation := \"/caf\u{e9}\"", "visible ASCII"),
            ("allow := false\ndeny_reason := 42", "`deny_reason` must be a string"),
            ("allow := true\nset_headers := {\"x-a\": \"1\\n2\"}", "not printable ASCII"),
            ("allow := true\nset_headers := {\"x-a\": \"caf\u{e9}\"}", "not printable ASCII"),
            ("allow := true\nset_headers := {\"x a\": \"1\"}", "invalid header name"),
            ("allow := true\nset_headers := {\"x-a\": 1}", "must map strings to strings"),
            ("allow := true\nset_headers := {\"X-A\": \"1\", \"x-a\": \"2\"}", "twice"),
            ("allow := true\nset_headers := {\"Host\": \"evil\"}", "connection header host"),
            ("allow := true\nremove_headers := {\"content-length\"}", "connection header content-length"),
            ("allow := true\nremove_headers := \"cookie\"", "set or array of strings"),
        ];
        for (rules, expected) in cases {
            let policy = compile("c.rego", &format!("package runway.gateway\n\n{rules}\n"));
            match policy.evaluate(&request("r", "/")) {
                Err(PolicyError::Contract { message, .. }) => assert!(message.contains(expected), "{rules}: {message}"),
                other => panic!("{rules}: {other:?}"),
            }
        }
        // Fields of the other outcome are not read: a bad status does not matter when allowed.
        let policy = compile("c.rego", "package runway.gateway\n\nallow := true\n\nstatus := 200\n");
        assert_eq!(policy.evaluate(&request("r", "/")).unwrap(), allowed());
    }

    // --- input document and sharing ---

    #[test]
    fn input_document_shape() {
        let input = PolicyInput {
            tenant: Some(TenantInput {
                metadata: serde_json::from_value(json!({"tier": "gold"})).unwrap(),
                ..tenant("pro", "eu")
            }),
            principal: Some(PrincipalInput {
                kind: PrincipalKind::TenantKey,
                subject: "key_1".to_owned(),
                scopes: vec!["orders:read".to_owned()],
            }),
            headers: BTreeMap::from([("accept".to_owned(), "application/json".to_owned())]),
            body: Some(json!({"a": [1, null]})),
            ..request("orders", "/v1/orders")
        };
        assert_eq!(
            serde_json::to_value(&input).unwrap(),
            json!({
                "tenant": {"id": "ten_1", "plan": "pro", "region": "eu", "metadata": {"tier": "gold"}},
                "principal": {"kind": "tenant_key", "subject": "key_1", "scopes": ["orders:read"]},
                "route": "orders", "method": "POST", "path": "/v1/orders",
                "headers": {"accept": "application/json"},
                "client_ip": "203.0.113.9", "gateway_region": "eu",
                "body": {"a": [1, null]},
            })
        );
        let bare = serde_json::to_value(request("r", "/")).unwrap();
        assert!(bare.get("tenant").is_none() && bare.get("principal").is_none() && bare.get("body").is_none());

        // What the policy sees is that document.
        let echo = "package runway.gateway\n\nallow := false\n\ndeny_reason := json.marshal([input.principal.kind, input.tenant.metadata.tier, input.body.a[1], input.headers.accept])\n";
        let decision = compile("echo.rego", echo).evaluate(&input).unwrap();
        assert_eq!(decision.reason.as_deref(), Some(r#"["tenant_key","gold",null,"application/json"]"#));
    }

    #[test]
    fn one_policy_serves_many_threads() {
        let policy = Arc::new(compile("plan_gating.rego", PLAN_GATING));
        std::thread::scope(|s| {
            for t in 0..4 {
                let policy = Arc::clone(&policy);
                s.spawn(move || {
                    for i in 0..25 {
                        let plan = if (t + i) % 2 == 0 { "pro" } else { "free" };
                        let input = PolicyInput { tenant: Some(tenant(plan, "eu")), ..request("analytics", "/") };
                        assert_eq!(policy.evaluate(&input).unwrap().allow, plan == "pro");
                    }
                });
            }
        });
    }

    #[test]
    fn test_rule_candidates_scan() {
        let src = "package p\ntest_a if true\nmy_test_b := 1\ntest_a2 := test_a\nx := \"test_c\"\n";
        assert_eq!(test_rule_candidates(src), ["test_a", "test_a2", "test_c"]);
        assert_eq!(rule_path(&["runway".to_owned(), "gate-way".to_owned()]), r#"data.runway["gate-way"]"#);
    }

    /// Not asserted: prints evaluate() cost for the DLP policy on a ~2 KiB body, as the median and
    /// the best of 9 batches (`cargo test [--release] evaluate_timing -- --nocapture`).
    #[test]
    fn evaluate_timing() {
        let policy = compile("dlp.rego", DLP);
        let clean = PolicyInput { body: Some(orders_body(None)), ..request("orders", "/v1/orders") };
        let card =
            PolicyInput { body: Some(orders_body(Some("4111 1111 1111 1111"))), ..request("orders", "/v1/orders") };
        let size = serde_json::to_vec(clean.body.as_ref().unwrap()).unwrap().len();
        let batch = if cfg!(debug_assertions) { 20 } else { 200 };
        let time = |f: &mut dyn FnMut()| {
            f();
            let mut per: Vec<Duration> = (0..9)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..batch {
                        f();
                    }
                    t.elapsed() / batch
                })
                .collect();
            per.sort();
            format!("{:?} (best {:?})", per[4], per[0])
        };
        let allow = time(&mut || assert!(policy.evaluate(&clean).unwrap().allow));
        let deny = time(&mut || assert!(!policy.evaluate(&card).unwrap().allow));
        let clone = time(&mut || drop(std::hint::black_box(policy.engine.clone())));
        // What a pool would save at most: the clone (one engine reused, no lock).
        let mut reused = policy.engine.clone();
        let value = Value::from_json_str(&serde_json::to_string(&clean).unwrap()).unwrap();
        let reuse = time(&mut || {
            reused.set_input(value.clone());
            reused.eval_rule(CONTRACT_RULE.to_owned()).unwrap();
        });
        let convert = time(&mut || {
            let v = Value::from_json_str(&serde_json::to_string(&clean).unwrap()).unwrap();
            drop(std::hint::black_box(v));
        });
        let build = if cfg!(debug_assertions) { "debug" } else { "release" };
        println!(
            "evaluate_timing ({build}, body {size} B): evaluate allow {allow}, deny {deny}; engine clone {clone}; \
             reused engine without clone (pool) {reuse}; input conversion {convert}"
        );
    }
}
