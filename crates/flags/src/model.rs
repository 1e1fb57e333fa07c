//! Flags as Runway stores them: one document per flag holding its metadata and every
//! environment's configuration, validated before it is written. Pure; no I/O.

use std::collections::BTreeMap;

use runway_core::ApiError;
use runway_flags_engine::wire::{ConstraintDef, DependencyDef, FeatureDef, StrategyDef, VariantDef};
use runway_flags_engine::{OPERATORS, STRATEGIES};
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

/// A strategy's settings: at most `MAX_CONSTRAINTS` keys.
pub struct StrategyParameters;

impl utoipa::PartialSchema for StrategyParameters {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        runway_core::bounds::object_schema(
            "Strategy settings by name, such as `rollout`, `stickiness` and `groupId` (at most 100).",
            MAX_CONSTRAINTS,
            None,
        )
    }
}

impl utoipa::ToSchema for StrategyParameters {}

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
    let bad = |why: &str| Err(ApiError::validation("key", why.to_owned()));
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
    /// Other flags and whether each has dependencies of its own.
    pub flags: &'a BTreeMap<String, bool>,
    /// Imports accept what Unleash SDKs tolerate: custom strategies and references to missing
    /// segments, both of which make the strategy evaluate to false.
    pub lenient: bool,
}

impl FlagDocument {
    pub fn validate(&self, known: &Known<'_>) -> Result<(), ApiError> {
        validate_key(&self.key)?;
        if self.description.chars().count() > 2000 {
            return Err(ApiError::validation("description", "must be at most 2000 characters"));
        }
        runway_core::bounds::items("/tags", self.tags.len(), MAX_TAGS)?;
        runway_core::bounds::properties("/environments", self.environments.len(), MAX_ENVIRONMENTS)?;
        for (i, t) in self.tags.iter().enumerate() {
            if t.trim().is_empty() || t.len() > 100 {
                return Err(ApiError::validation(format!("tags/{i}"), "tags are 1 to 100 characters"));
            }
        }
        for (env, cfg) in &self.environments {
            if !known.environments.iter().any(|e| e == env) {
                return Err(ApiError::validation(
                    format!("environments/{env}"),
                    format!("no environment `{env}`; create it first (known: {})", known.environments.join(", ")),
                ));
            }
            cfg.validate(&self.key, &format!("environments/{env}"), known)?;
        }
        Ok(())
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

    pub fn validate(&self, flag: &str, base: &str, known: &Known<'_>) -> Result<(), ApiError> {
        use runway_core::bounds::{items, properties};
        let root = format!("/{base}");
        items(&pointer(&root, "strategies"), self.strategies.len(), MAX_STRATEGIES)?;
        items(&pointer(&root, "variants"), self.variants.len(), MAX_VARIANTS)?;
        items(&pointer(&root, "dependencies"), self.dependencies.len(), MAX_DEPENDENCIES)?;
        for (i, s) in self.strategies.iter().enumerate() {
            let at = pointer(base, format_args!("strategies/{i}"));
            let here = format!("/{at}");
            items(&pointer(&here, "constraints"), s.constraints.as_ref().map_or(0, Vec::len), MAX_CONSTRAINTS)?;
            items(&pointer(&here, "segments"), s.segments.as_ref().map_or(0, Vec::len), MAX_CONSTRAINTS)?;
            items(&pointer(&here, "variants"), s.variants.as_ref().map_or(0, Vec::len), MAX_VARIANTS)?;
            properties(&pointer(&here, "parameters"), s.parameters.as_ref().map_or(0, |p| p.len()), MAX_CONSTRAINTS)?;
            if !STRATEGIES.contains(&s.name.as_str()) && !known.lenient {
                return Err(ApiError::validation(
                    pointer(&at, "name"),
                    format!("unknown strategy `{}`; known: {}", s.name, STRATEGIES.join(", ")),
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
                validate_constraint(c, &pointer(&at, format_args!("constraints/{j}")))?;
            }
            for (j, id) in s.segments.iter().flatten().enumerate() {
                if !known.segments.contains(id) && !known.lenient {
                    return Err(ApiError::validation(
                        pointer(&at, format_args!("segments/{j}")),
                        format!("no segment with id {id}"),
                    ));
                }
            }
            validate_variants(s.variants.as_deref().unwrap_or_default(), &pointer(&at, "variants"))?;
        }
        validate_variants(&self.variants, &pointer(base, "variants"))?;
        for (i, d) in self.dependencies.iter().enumerate() {
            let variants = d.variants.as_ref().map_or(0, Vec::len);
            items(&format!("{root}/dependencies/{i}/variants"), variants, MAX_VARIANTS)?;
            let at = pointer(base, format_args!("dependencies/{i}/feature"));
            if d.feature == flag {
                return Err(ApiError::validation(at, "a flag cannot depend on itself"));
            }
            match known.flags.get(&d.feature) {
                None => return Err(ApiError::validation(at, format!("no flag `{}`", d.feature))),
                Some(true) => {
                    return Err(ApiError::validation(
                        at,
                        format!("`{}` has dependencies of its own; dependencies are one level deep", d.feature),
                    ));
                }
                Some(false) => {}
            }
        }
        Ok(())
    }
}

pub fn validate_constraint(c: &ConstraintDef, at: &str) -> Result<(), ApiError> {
    runway_core::bounds::items(&format!("/{at}/values"), c.values.as_ref().map_or(0, Vec::len), MAX_VALUES)?;
    if c.context_name.trim().is_empty() {
        return Err(ApiError::validation(pointer(at, "contextName"), "is required"));
    }
    if !OPERATORS.contains(&c.operator.as_str()) {
        return Err(ApiError::validation(
            pointer(at, "operator"),
            format!("unknown operator `{}`; known: {}", c.operator, OPERATORS.join(", ")),
        ));
    }
    let single = c.value.clone().or_else(|| c.values.as_ref().and_then(|v| v.first().cloned()));
    let need = |ok: bool, what: &str| {
        if ok { Ok(()) } else { Err(ApiError::validation(pointer(at, "value"), what.to_owned())) }
    };
    let op = c.operator.as_str();
    if op.starts_with("NUM_") {
        need(single.as_deref().is_some_and(|v| v.trim().parse::<f64>().is_ok()), "must be a number")?;
    } else if op.starts_with("SEMVER_") {
        need(
            single.as_deref().is_some_and(|v| semver::Version::parse(v.trim()).is_ok()),
            "must be a semantic version",
        )?;
    } else if op.starts_with("DATE_") {
        let ok = single.as_deref().is_some_and(|v| {
            time::OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc3339).is_ok()
        });
        need(ok, "must be an RFC 3339 date-time")?;
    } else if op == "REGEX" {
        need(single.as_deref().is_some_and(|v| regex::Regex::new(v).is_ok()), "must be a valid regular expression")?;
    } else if op == "IN_CIDR" {
        for (i, v) in c.values.iter().flatten().enumerate() {
            if v.parse::<ipnet::IpNet>().is_err() && v.parse::<std::net::IpAddr>().is_err() {
                return Err(ApiError::validation(
                    pointer(at, format_args!("values/{i}")),
                    "must be an IP or CIDR range",
                ));
            }
        }
    }
    Ok(())
}

fn validate_variants(variants: &[VariantDef], at: &str) -> Result<(), ApiError> {
    let mut names = std::collections::HashSet::new();
    for (i, v) in variants.iter().enumerate() {
        let here = pointer(at, i);
        let overrides = v.overrides.as_deref().unwrap_or_default();
        runway_core::bounds::items(&format!("/{here}/overrides"), overrides.len(), MAX_VARIANTS)?;
        for (j, o) in overrides.iter().enumerate() {
            runway_core::bounds::items(&format!("/{here}/overrides/{j}/values"), o.values.len(), MAX_VALUES)?;
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

    #[test]
    fn validation_points_at_the_bad_field() {
        let flags = BTreeMap::from([("parent".to_string(), true)]);
        let envs = vec!["production".to_string()];
        let known = Known { environments: &envs, segments: &[1], flags: &flags, lenient: false };
        let mut doc = FlagDocument {
            key: "checkout".into(),
            description: String::new(),
            kind: FlagKind::Boolean,
            tags: vec![],
            owner: None,
            archived: false,
            environments: BTreeMap::new(),
        };
        let mut cfg = EnvConfig {
            enabled: true,
            strategies: vec![strategy("flexibleRollout", &[("rollout", "150")])],
            ..Default::default()
        };
        doc.environments.insert("production".into(), cfg.clone());
        let e = doc.validate(&known).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environments/production/strategies/0/parameters/rollout"));
        cfg.strategies = vec![strategy("default", &[])];
        cfg.strategies[0].constraints = Some(vec![ConstraintDef {
            context_name: "version".into(),
            operator: "SEMVER_GT".into(),
            value: Some("not-a-version".into()),
            ..Default::default()
        }]);
        doc.environments.insert("production".into(), cfg.clone());
        let e = doc.validate(&known).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environments/production/strategies/0/constraints/0/value"));
        cfg.strategies[0].constraints = None;
        cfg.dependencies = vec![DependencyDef { feature: "parent".into(), ..Default::default() }];
        doc.environments.insert("production".into(), cfg);
        let e = doc.validate(&known).unwrap_err();
        assert!(e.detail.contains("one level"), "{}", e.detail);
        doc.environments.insert("staging".into(), EnvConfig::default());
        doc.environments.remove("production");
        assert!(doc.validate(&known).unwrap_err().detail.contains("no environment `staging`"));
        assert!(validate_key("import").is_err() && validate_key("a/b").is_err() && validate_key("Feature.Ä").is_ok());
    }
}
