//! Flags as Runway stores them: one document per flag holding its metadata and every
//! environment's configuration, validated before it is written. Pure; no I/O.

use std::collections::BTreeMap;

use runway_core::ApiError;
use runway_flags_engine::STRATEGIES;
use runway_flags_engine::constraint::{self, IssueKind};
use runway_flags_engine::wire::{ConstraintDef, DependencyDef, FeatureDef, StrategyDef, VariantDef};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Whether a flag answers on/off or picks among variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlagKind {
    #[default]
    Boolean,
    Variant,
}

/// One flag: metadata plus its configuration in each environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagDocument {
    pub key: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub kind: FlagKind,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub archived: bool,
    /// Environments without an entry are off.
    #[serde(default)]
    pub environments: BTreeMap<String, EnvConfig>,
}

/// A flag's configuration in one environment, in Unleash's vocabulary so documents and SDK
/// payloads read the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    /// Whether the flag is on in this environment (then its strategies decide for whom).
    #[serde(default)]
    pub enabled: bool,
    /// Evaluated in order; the first that matches turns the flag on (and picks its variants).
    /// None means on for everyone.
    #[serde(default)]
    #[schema(value_type = Vec<StrategySchema>, max_items = 100)]
    pub strategies: Vec<StrategyDef>,
    /// The flag's variants, picked by weight when no matching strategy has its own.
    #[serde(default)]
    #[schema(value_type = Vec<VariantSchema>, max_items = 100)]
    pub variants: Vec<VariantDef>,
    /// Parent flags that must be on (or on a given variant) for this one to be on.
    #[serde(default)]
    #[schema(value_type = Vec<DependencySchema>, max_items = 20)]
    pub dependencies: Vec<DependencyDef>,
}

/// Tags one flag may carry.
pub const MAX_TAGS: usize = 100;
/// Environments one request may configure a flag in.
pub const MAX_ENVIRONMENTS: usize = 100;
/// Strategies, and variants, in one environment or strategy.
pub const MAX_STRATEGIES: usize = 100;
/// Variants of a flag, or of a strategy.
pub const MAX_VARIANTS: usize = 100;
/// Parent flags one flag may depend on.
pub const MAX_DEPENDENCIES: usize = 20;
/// Constraints in one strategy or segment, segments one strategy references, and parameters
/// of one strategy.
pub const MAX_CONSTRAINTS: usize = 100;
/// Values one constraint or override lists.
pub const MAX_VALUES: usize = 1000;

/// A strategy (Unleash's wire format): who gets the flag when it is on.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct StrategySchema {
    /// `default`, `userWithId`, `gradualRolloutUserId`, `gradualRolloutSessionId`,
    /// `gradualRolloutRandom`, `remoteAddress`, `applicationHostname` or `flexibleRollout`.
    #[schema(example = "flexibleRollout")]
    name: String,
    /// The strategy's settings, such as `rollout` (0 to 100), `stickiness` and `groupId`.
    #[schema(value_type = Option<StrategyParameters>, example = json!({"rollout": "10", "stickiness": "default", "groupId": "new-checkout"}))]
    parameters: Option<Value>,
    /// Conditions on the context; all must hold.
    #[schema(max_items = 100)]
    constraints: Option<Vec<ConstraintSchema>>,
    /// Segments (by id) whose constraints must all hold too.
    #[schema(max_items = 100)]
    segments: Option<Vec<i64>>,
    /// Variants this strategy picks from when it matches, before the flag's own.
    #[schema(max_items = 100)]
    variants: Option<Vec<VariantSchema>>,
}

runway_core::bounded_object_schema!(
    /// A strategy's settings: at most `MAX_CONSTRAINTS` keys.
    pub StrategyParameters,
    MAX_CONSTRAINTS,
    "Strategy settings by name, such as `rollout`, `stickiness` and `groupId` (at most {max})."
);

/// A condition on one context field (Unleash's wire format).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ConstraintSchema {
    /// The context field: `userId`, `sessionId`, `remoteAddress`, `environment`, `appName`,
    /// `currentTime`, or a property such as `country` or `tenantId`.
    #[schema(example = "country")]
    context_name: String,
    /// `IN`, `NOT_IN`, `STR_CONTAINS`, `STR_STARTS_WITH`, `STR_ENDS_WITH`, `NUM_EQ`, `NUM_GT`,
    /// `NUM_GTE`, `NUM_LT`, `NUM_LTE`, `DATE_AFTER`, `DATE_BEFORE`, `SEMVER_EQ`, `SEMVER_GT`,
    /// `SEMVER_LT`, `REGEX` or `IN_CIDR`.
    #[schema(example = "IN")]
    operator: String,
    /// The values list operators compare with.
    #[schema(max_items = 1000, example = json!(["DE", "FR"]))]
    values: Option<Vec<String>>,
    /// The one value single-value operators (numbers, dates, versions, regex) compare with.
    value: Option<String>,
    /// Negate the result.
    inverted: Option<bool>,
    /// Compare strings without regard to case.
    case_insensitive: Option<bool>,
}

/// A weighted variant (Unleash's wire format).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct VariantSchema {
    /// The variant's name, unique among its siblings.
    #[schema(example = "blue")]
    name: String,
    /// Share of the split, relative to the other variants' weights (Unleash uses 0 to 1000).
    #[schema(example = 500)]
    weight: u32,
    /// `variable` or `fix`.
    weight_type: Option<String>,
    /// The context field that keeps a user on one variant (`default`: userId, then sessionId).
    stickiness: Option<String>,
    /// What the variant carries: `{"type": "string"|"json"|"number"|"csv", "value": "…"}`.
    #[schema(value_type = Option<Object>, example = json!({"type": "json", "value": "{\"color\": \"blue\"}"}))]
    payload: Option<Value>,
    /// Context values pinned to this variant: `[{"contextName": "userId", "values": ["42"]}]`.
    #[schema(value_type = Option<Vec<Object>>, max_items = 100)]
    overrides: Option<Vec<Value>>,
}

/// A dependency on a parent flag (Unleash's wire format).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct DependencySchema {
    /// The parent flag's key.
    #[schema(example = "new-checkout")]
    feature: String,
    /// Whether the parent must be on (default) or off.
    enabled: Option<bool>,
    /// The parent must be on one of these variants.
    #[schema(max_items = 100)]
    variants: Option<Vec<String>>,
}

/// Path words under `/v1/flags/` that cannot be flag keys.
const RESERVED_KEYS: &[&str] = &["import", "export", "evaluate", "guards", "stale", "usage"];

pub fn validate_key(key: &str) -> Result<(), ApiError> {
    let bad = |why: &str| Err(ApiError::validation("/key", why.to_owned()));
    if key.trim().is_empty() || key.chars().count() > 200 {
        return bad("must be 1 to 200 characters");
    }
    if key.trim() != key || key.chars().any(|c| c.is_control() || c == '/' || c == '?' || c == '#') {
        return bad("may not contain '/', '?', '#', control characters or surrounding spaces");
    }
    if RESERVED_KEYS.contains(&key) {
        return bad("is a reserved word");
    }
    Ok(())
}

/// What a validation may look up beyond the document itself.
pub struct Known<'a> {
    pub environments: &'a [String],
    pub segments: &'a [i64],
    /// Other live flags, each with the environments in which it has dependencies of its own.
    pub flags: &'a BTreeMap<String, Vec<String>>,
}

/// Something a document holds that Unleash serves but that does not work as written. Imports
/// keep it and list it as a warning; the management API refuses it, unless the flag had it
/// already (so a flag imported with one can still be changed, killed or rolled back).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub warning: ImportWarning,
    item: Item,
}

/// What a finding is about, to tell whether a change brings it or the flag had it before.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Constraint(ConstraintDef),
    Strategy(String),
    Segment(i64),
    Dependency(String),
}

/// An item an import kept although the management API refuses it, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportWarning {
    /// RFC 6901 JSON Pointer into the imported document.
    #[schema(example = "/features/3/strategies/0/constraints/1/operator")]
    pub pointer: String,
    /// What kind of problem it is, stable for clients to branch on (`unknown_operator`, …).
    pub code: WarningCode,
    /// What is wrong and what evaluation does about it (as Unleash's SDKs do).
    pub reason: String,
}

/// Kinds of import warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarningCode {
    /// A constraint operator Runway does not know: the flag is off.
    UnknownOperator,
    /// A constraint value that does not parse as the operator needs (a number, date, version,
    /// regular expression or CIDR range); the reason says what evaluation does.
    InvalidConstraintValue,
    /// A custom strategy: it never matches.
    UnknownStrategy,
    /// A reference to a segment that does not exist: the flag is off.
    MissingSegment,
    /// A dependency on a flag that does not exist: the flag is off.
    MissingDependency,
    /// A flag that depends on itself: it is off.
    DependencyOnItself,
    /// A dependency on a flag with dependencies of its own (deeper than one level).
    DependencyTooDeep,
}

impl Finding {
    fn new(pointer: String, code: WarningCode, reason: String, item: Item) -> Finding {
        Finding { warning: ImportWarning { pointer, code, reason }, item }
    }

    /// Whether `doc` holds the item this finding is about (anywhere in any environment).
    fn held_by(&self, doc: &FlagDocument) -> bool {
        let strategies = || doc.environments.values().flat_map(|c| c.strategies.iter());
        match &self.item {
            Item::Constraint(c) => strategies().flat_map(|s| s.constraints.iter().flatten()).any(|x| x == c),
            Item::Strategy(name) => strategies().any(|s| &s.name == name),
            Item::Segment(id) => strategies().flat_map(|s| s.segments.iter().flatten()).any(|x| x == id),
            Item::Dependency(parent) => {
                doc.environments.values().flat_map(|c| c.dependencies.iter()).any(|d| &d.feature == parent)
            }
        }
    }

    /// The management API's answer to it: a 422 naming the pointer.
    pub fn refusal(&self) -> ApiError {
        ApiError::validation(self.warning.pointer.clone(), self.warning.reason.clone())
    }
}

/// The management API refuses findings a change brings; those the flag had before stay.
pub fn refuse_new(findings: &[Finding], before: Option<&FlagDocument>) -> Result<(), ApiError> {
    match findings.iter().find(|f| before.is_none_or(|b| !f.held_by(b))) {
        Some(f) => Err(f.refusal()),
        None => Ok(()),
    }
}

/// The management API's rule for a segment's constraints: it refuses what does not work as
/// written, unless the segment had that constraint already.
pub fn refuse_new_constraints(findings: &[Finding], before: &[ConstraintDef]) -> Result<(), ApiError> {
    match findings.iter().find(|f| !matches!(&f.item, Item::Constraint(c) if before.contains(c))) {
        Some(f) => Err(f.refusal()),
        None => Ok(()),
    }
}

/// Escapes one reference token of an RFC 6901 JSON Pointer.
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

impl FlagDocument {
    /// Refuses what no flag may hold (the first problem, as a 422 naming its JSON pointer) and
    /// returns what Unleash serves but does not work as written (see [`Finding`]).
    pub fn validate(&self, known: &Known<'_>) -> Result<Vec<Finding>, ApiError> {
        validate_key(&self.key)?;
        validate_description(&self.description, "/description")?;
        runway_core::bounds::items("/tags", self.tags.len(), MAX_TAGS)?;
        runway_core::bounds::properties("/environments", self.environments.len(), MAX_ENVIRONMENTS)?;
        for (i, t) in self.tags.iter().enumerate() {
            if t.trim().is_empty() || t.len() > 100 {
                return Err(ApiError::validation(format!("/tags/{i}"), "tags are 1 to 100 characters"));
            }
        }
        let mut findings = Vec::new();
        for (env, cfg) in &self.environments {
            let at = format!("/environments/{}", escape_pointer(env));
            if !known.environments.iter().any(|e| e == env) {
                return Err(ApiError::validation(
                    at,
                    format!("no environment `{env}`; create it first (known: {})", known.environments.join(", ")),
                ));
            }
            findings.extend(cfg.validate(&self.key, env, &at, known)?);
        }
        Ok(findings)
    }

    /// The management API's validation of a new or changed flag: everything [`validate`]
    /// refuses, and the findings the flag did not have `before`.
    ///
    /// [`validate`]: FlagDocument::validate
    pub fn validate_change(&self, before: Option<&FlagDocument>, known: &Known<'_>) -> Result<(), ApiError> {
        refuse_new(&self.validate(known)?, before)
    }

    /// The Unleash client-API view of this flag in one environment.
    pub fn feature(&self, env: &str) -> FeatureDef {
        let cfg = self.environments.get(env).cloned().unwrap_or_default();
        let mut extra = serde_json::Map::new();
        extra.insert("type".into(), json!(if self.kind == FlagKind::Variant { "experiment" } else { "release" }));
        extra.insert("project".into(), json!("default"));
        extra.insert("stale".into(), json!(false));
        FeatureDef {
            name: self.key.clone(),
            description: Some(self.description.clone()),
            enabled: cfg.enabled,
            strategies: Some(cfg.strategies),
            variants: Some(cfg.variants),
            dependencies: (!cfg.dependencies.is_empty()).then_some(cfg.dependencies),
            impression_data: Some(false),
            extra,
        }
    }

    pub fn has_dependencies(&self) -> bool {
        self.environments.values().any(|c| !c.dependencies.is_empty())
    }

    /// The environments in which this flag depends on others.
    pub fn dependent_environments(&self) -> Vec<String> {
        self.environments.iter().filter(|(_, c)| !c.dependencies.is_empty()).map(|(e, _)| e.clone()).collect()
    }
}

pub fn validate_description(description: &str, at: &str) -> Result<(), ApiError> {
    if description.chars().count() > 2000 {
        return Err(ApiError::validation(at.to_owned(), "must be at most 2000 characters"));
    }
    Ok(())
}

fn pointer(base: &str, rest: impl std::fmt::Display) -> String {
    format!("{base}/{rest}")
}

impl EnvConfig {
    /// The config an Unleash feature carries.
    pub fn from_feature(f: &FeatureDef) -> EnvConfig {
        EnvConfig {
            enabled: f.enabled,
            strategies: f.strategies.clone().unwrap_or_default(),
            variants: f.variants.clone().unwrap_or_default(),
            dependencies: f.dependencies.clone().unwrap_or_default(),
        }
    }

    /// On for everyone: enabled, and some strategy with no conditions lets everybody in.
    pub fn fully_on(&self) -> bool {
        self.enabled
            && (self.strategies.is_empty()
                || self.strategies.iter().any(|s| {
                    let unconditioned = s.constraints.as_ref().is_none_or(Vec::is_empty)
                        && s.segments.as_ref().is_none_or(Vec::is_empty);
                    let all_in = match s.name.as_str() {
                        "default" => true,
                        "flexibleRollout" => s.param("rollout").and_then(|r| r.parse::<f64>().ok()) == Some(100.0),
                        "gradualRolloutRandom" => {
                            s.param("percentage").and_then(|r| r.parse::<f64>().ok()) == Some(100.0)
                        }
                        _ => false,
                    };
                    unconditioned && all_in
                }))
    }

    /// Validates flag `flag`'s configuration in environment `env`, whose JSON pointer is `base`
    /// (`/environments/production` in a flag, `/features/3` in an Unleash document, whose
    /// features name `strategies`, `variants` and `dependencies` the same way).
    pub fn validate(&self, flag: &str, env: &str, base: &str, known: &Known<'_>) -> Result<Vec<Finding>, ApiError> {
        use runway_core::bounds::{items, properties};
        items(&pointer(base, "strategies"), self.strategies.len(), MAX_STRATEGIES)?;
        items(&pointer(base, "variants"), self.variants.len(), MAX_VARIANTS)?;
        items(&pointer(base, "dependencies"), self.dependencies.len(), MAX_DEPENDENCIES)?;
        let mut findings = Vec::new();
        for (i, s) in self.strategies.iter().enumerate() {
            let at = pointer(base, format_args!("strategies/{i}"));
            items(&pointer(&at, "constraints"), s.constraints.as_ref().map_or(0, Vec::len), MAX_CONSTRAINTS)?;
            items(&pointer(&at, "segments"), s.segments.as_ref().map_or(0, Vec::len), MAX_CONSTRAINTS)?;
            items(&pointer(&at, "variants"), s.variants.as_ref().map_or(0, Vec::len), MAX_VARIANTS)?;
            properties(&pointer(&at, "parameters"), s.parameters.as_ref().map_or(0, |p| p.len()), MAX_CONSTRAINTS)?;
            if !STRATEGIES.contains(&s.name.as_str()) {
                findings.push(Finding::new(
                    pointer(&at, "name"),
                    WarningCode::UnknownStrategy,
                    format!(
                        "unknown strategy `{}` (known: {}); Runway has no custom strategies, so it never matches, as in Unleash's SDKs without it",
                        s.name,
                        STRATEGIES.join(", ")
                    ),
                    Item::Strategy(s.name.clone()),
                ));
            }
            for p in ["rollout", "percentage"] {
                if let Some(v) = s.param(p) {
                    match v.trim().parse::<f64>() {
                        Ok(n) if (0.0..=100.0).contains(&n) => {}
                        _ => {
                            return Err(ApiError::validation(
                                pointer(&at, format_args!("parameters/{p}")),
                                "must be a number from 0 to 100",
                            ));
                        }
                    }
                }
            }
            if s.name == "flexibleRollout" && s.param("rollout").is_none() {
                return Err(ApiError::validation(
                    pointer(&at, "parameters/rollout"),
                    "flexibleRollout needs a rollout",
                ));
            }
            for (j, c) in s.constraints.iter().flatten().enumerate() {
                findings.extend(constraint_findings(c, &pointer(&at, format_args!("constraints/{j}")))?);
            }
            for (j, id) in s.segments.iter().flatten().enumerate() {
                if !known.segments.contains(id) {
                    findings.push(Finding::new(
                        pointer(&at, format_args!("segments/{j}")),
                        WarningCode::MissingSegment,
                        format!(
                            "no segment with id {id}; while it is missing the flag is off here, as in Unleash's SDKs"
                        ),
                        Item::Segment(*id),
                    ));
                }
            }
            validate_variants(s.variants.as_deref().unwrap_or_default(), &pointer(&at, "variants"))?;
        }
        validate_variants(&self.variants, &pointer(base, "variants"))?;
        for (i, d) in self.dependencies.iter().enumerate() {
            let variants = d.variants.as_ref().map_or(0, Vec::len);
            items(&format!("{base}/dependencies/{i}/variants"), variants, MAX_VARIANTS)?;
            let at = pointer(base, format_args!("dependencies/{i}/feature"));
            let item = Item::Dependency(d.feature.clone());
            let (code, reason) = if d.feature == flag {
                (
                    WarningCode::DependencyOnItself,
                    "a flag cannot depend on itself; Unleash's SDKs evaluate such a flag as off".to_owned(),
                )
            } else {
                match known.flags.get(&d.feature) {
                    None => (
                        WarningCode::MissingDependency,
                        format!(
                            "no flag `{}`; while it is missing this flag is off here, as in Unleash's SDKs",
                            d.feature
                        ),
                    ),
                    Some(envs) if envs.iter().any(|e| e == env) => (
                        WarningCode::DependencyTooDeep,
                        format!(
                            "`{}` has dependencies of its own here; dependencies are one level deep, and Unleash's SDKs evaluate a flag whose parent has them as off",
                            d.feature
                        ),
                    ),
                    Some(envs) if !envs.is_empty() => (
                        WarningCode::DependencyTooDeep,
                        format!(
                            "`{}` has dependencies of its own (in {}); Runway keeps dependencies one level deep in every environment",
                            d.feature,
                            envs.join(", ")
                        ),
                    ),
                    Some(_) => continue,
                }
            };
            findings.push(Finding::new(at, code, reason, item));
        }
        Ok(findings)
    }
}

/// What does not work as written in one constraint at pointer `at`; a missing context name is
/// refused outright (Unleash's server requires one).
pub fn constraint_findings(c: &ConstraintDef, at: &str) -> Result<Vec<Finding>, ApiError> {
    runway_core::bounds::items(&format!("{at}/values"), c.values.as_ref().map_or(0, Vec::len), MAX_VALUES)?;
    if c.context_name.trim().is_empty() {
        return Err(ApiError::validation(pointer(at, "contextName"), "is required"));
    }
    Ok(constraint::check(c)
        .into_iter()
        .map(|issue| {
            let code = match issue.kind {
                IssueKind::UnknownOperator => WarningCode::UnknownOperator,
                IssueKind::InvalidValue => WarningCode::InvalidConstraintValue,
            };
            Finding::new(format!("{at}{}", issue.at), code, issue.reason, Item::Constraint(c.clone()))
        })
        .collect())
}

fn validate_variants(variants: &[VariantDef], at: &str) -> Result<(), ApiError> {
    let mut names = std::collections::HashSet::new();
    for (i, v) in variants.iter().enumerate() {
        let here = pointer(at, i);
        let overrides = v.overrides.as_deref().unwrap_or_default();
        runway_core::bounds::items(&format!("{here}/overrides"), overrides.len(), MAX_VARIANTS)?;
        for (j, o) in overrides.iter().enumerate() {
            runway_core::bounds::items(&format!("{here}/overrides/{j}/values"), o.values.len(), MAX_VALUES)?;
        }
        if v.name.trim().is_empty() || !names.insert(v.name.as_str()) {
            return Err(ApiError::validation(pointer(&here, "name"), "variant names are required and unique"));
        }
        if v.weight > 1_000_000 {
            return Err(ApiError::validation(
                pointer(&here, "weight"),
                "must be at most 1000000 (Unleash uses 0 to 1000)",
            ));
        }
        if let Some(p) = &v.payload {
            let ok = match p.kind.as_str() {
                "string" | "csv" => true,
                "json" => serde_json::from_str::<Value>(&p.value).is_ok(),
                "number" => p.value.trim().parse::<f64>().is_ok(),
                _ => false,
            };
            if !ok {
                return Err(ApiError::validation(
                    pointer(&here, "payload"),
                    "payload type is string, json, number or csv, and its value must parse as that type",
                ));
            }
        }
    }
    if !variants.is_empty() && variants.iter().all(|v| v.weight == 0) {
        return Err(ApiError::validation(at.to_owned(), "at least one variant needs a weight above 0"));
    }
    Ok(())
}

/// What changed between two versions of a document, as `{path, from, to}` entries.
pub fn diff(before: &Value, after: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<Value>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                walk(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push(json!({"path": if path.is_empty() { "/" } else { path }, "from": a, "to": b})),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(name: &str, params: &[(&str, &str)]) -> StrategyDef {
        StrategyDef {
            name: name.into(),
            parameters: Some(params.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn fully_on_means_everyone_gets_it() {
        let mut c = EnvConfig { enabled: true, ..Default::default() };
        assert!(c.fully_on(), "no strategies = everyone");
        c.strategies = vec![strategy("flexibleRollout", &[("rollout", "50")])];
        assert!(!c.fully_on());
        c.strategies.push(strategy("flexibleRollout", &[("rollout", "100")]));
        assert!(c.fully_on());
        c.enabled = false;
        assert!(!c.fully_on());
    }

    #[test]
    fn diff_names_the_changed_paths() {
        let a = json!({"environments": {"production": {"enabled": false}}, "tags": ["a"]});
        let b = json!({"environments": {"production": {"enabled": true}}, "tags": ["a"]});
        assert_eq!(diff(&a, &b), vec![json!({"path": "/environments/production/enabled", "from": false, "to": true})]);
        assert!(diff(&a, &a).is_empty());
    }

    fn doc(envs: &[(&str, EnvConfig)]) -> FlagDocument {
        FlagDocument {
            key: "checkout".into(),
            description: String::new(),
            kind: FlagKind::Boolean,
            tags: vec![],
            owner: None,
            archived: false,
            environments: envs.iter().map(|(e, c)| (e.to_string(), c.clone())).collect(),
        }
    }

    fn constrained(c: ConstraintDef) -> EnvConfig {
        let mut s = strategy("default", &[]);
        s.constraints = Some(vec![c]);
        EnvConfig { enabled: true, strategies: vec![s], ..Default::default() }
    }

    fn semver_gt(value: &str) -> ConstraintDef {
        ConstraintDef {
            context_name: "version".into(),
            operator: "SEMVER_GT".into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    #[test]
    fn validation_points_at_the_bad_field() {
        let flags = BTreeMap::from([("parent".to_string(), vec!["production".to_string()])]);
        let envs = vec!["production".to_string(), "staging".to_string()];
        let known = Known { environments: &envs, segments: &[1], flags: &flags };
        let rollout =
            EnvConfig { strategies: vec![strategy("flexibleRollout", &[("rollout", "150")])], ..Default::default() };
        let e = doc(&[("production", rollout)]).validate(&known).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/environments/production/strategies/0/parameters/rollout"));
        let e = doc(&[("nowhere/else", EnvConfig::default())]).validate(&known).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/environments/nowhere~1else"), "pointer tokens are escaped");
        assert!(e.detail.contains("no environment `nowhere/else`"));
        let mut tagged = doc(&[]);
        tagged.tags = vec!["ok".into(), " ".into()];
        assert_eq!(tagged.validate(&known).unwrap_err().field.as_deref(), Some("/tags/1"));
        assert_eq!(validate_key("import").unwrap_err().field.as_deref(), Some("/key"));
        assert!(validate_key("a/b").is_err() && validate_key("Feature.Ä").is_ok());
    }

    #[test]
    fn what_unleash_serves_but_does_not_work_is_found_not_refused() {
        let flags = BTreeMap::from([
            ("parent".to_string(), vec!["production".to_string()]),
            ("elsewhere".to_string(), vec!["staging".to_string()]),
            ("plain".to_string(), vec![]),
        ]);
        let envs = vec!["production".to_string(), "staging".to_string()];
        let known = Known { environments: &envs, segments: &[1], flags: &flags };
        let mut cfg = constrained(ConstraintDef {
            context_name: "x".into(),
            operator: "LIKE".into(),
            values: Some(vec!["a".into()]),
            ..Default::default()
        });
        cfg.strategies.push(strategy("myCustom", &[]));
        cfg.strategies.push(StrategyDef { segments: Some(vec![1, 7]), ..strategy("default", &[]) });
        cfg.dependencies = ["parent", "elsewhere", "plain", "ghost", "checkout"]
            .iter()
            .map(|f| DependencyDef { feature: f.to_string(), ..Default::default() })
            .collect();
        let found = cfg.validate("checkout", "production", "/features/3", &known).unwrap();
        let got: Vec<(&str, WarningCode)> =
            found.iter().map(|f| (f.warning.pointer.as_str(), f.warning.code)).collect();
        assert_eq!(
            got,
            [
                ("/features/3/strategies/0/constraints/0/operator", WarningCode::UnknownOperator),
                ("/features/3/strategies/1/name", WarningCode::UnknownStrategy),
                ("/features/3/strategies/2/segments/1", WarningCode::MissingSegment),
                ("/features/3/dependencies/0/feature", WarningCode::DependencyTooDeep),
                ("/features/3/dependencies/1/feature", WarningCode::DependencyTooDeep),
                ("/features/3/dependencies/3/feature", WarningCode::MissingDependency),
                ("/features/3/dependencies/4/feature", WarningCode::DependencyOnItself),
            ]
        );
        assert!(found[3].warning.reason.contains("evaluate a flag whose parent has them as off"));
        assert!(found[4].warning.reason.contains("in staging"));
        // A missing context name is refused even in an import.
        let blank = constrained(ConstraintDef { operator: "IN".into(), ..Default::default() });
        let e = blank.validate("checkout", "production", "/features/0", &known).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/features/0/strategies/0/constraints/0/contextName"));
    }

    #[test]
    fn the_management_api_refuses_only_what_a_change_brings() {
        let flags = BTreeMap::new();
        let envs = vec!["production".to_string(), "staging".to_string()];
        let known = Known { environments: &envs, segments: &[], flags: &flags };
        let imported = doc(&[("production", constrained(semver_gt("one")))]);
        let e = imported.validate_change(None, &known).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/environments/production/strategies/0/constraints/0/value"));
        // Killing it, or copying its configuration, keeps what it had: allowed.
        let mut killed = imported.clone();
        killed.environments.values_mut().for_each(|c| c.enabled = false);
        killed.validate_change(Some(&imported), &known).unwrap();
        let mut copied = imported.clone();
        copied.environments.insert("staging".into(), constrained(semver_gt("one")));
        copied.validate_change(Some(&imported), &known).unwrap();
        // A new unusable constraint is refused, naming it.
        let mut worse = imported.clone();
        worse.environments.insert("staging".into(), constrained(semver_gt("two")));
        let e = worse.validate_change(Some(&imported), &known).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/environments/staging/strategies/0/constraints/0/value"));
        assert!(e.detail.contains("`two` is not a semantic version"), "{}", e.detail);
        // Segments: the same rule against the segment's constraints.
        let findings = constraint_findings(&semver_gt("one"), "/constraints/0").unwrap();
        assert!(refuse_new_constraints(&findings, &[semver_gt("one")]).is_ok());
        assert_eq!(refuse_new_constraints(&findings, &[]).unwrap_err().field.as_deref(), Some("/constraints/0/value"));
    }
}
