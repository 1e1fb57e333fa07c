//! Runway's flag engine: Unleash client-specification semantics, compiled once per state and
//! evaluated without I/O or allocation on the hot path. The server owns storage and transport;
//! this crate only answers "is it on, and which variant" for a context.

pub mod constraint;
pub mod context;
pub mod spec;
pub mod strategy;
pub mod wire;

use rustc_hash::FxHashMap;
use serde::Serialize;
use time::OffsetDateTime;

pub use constraint::{Constraint, OPERATORS};
pub use context::{Context, Field, Properties};
pub use strategy::{STRATEGIES, Stickiness, Strategy, normalized_hash};
use wire::{ClientFeatures, DependencyDef, FeatureDef, Payload, VariantDef};

/// Seed Unleash uses when hashing for variant selection.
pub const VARIANT_SEED: u32 = 86_028_157;

/// A compiled environment state. Cheap to share behind an `Arc`; rebuilt on every change.
#[derive(Debug, Default)]
pub struct Engine {
    features: FxHashMap<String, Feature>,
    /// Feature names in document order, for "evaluate everything" in a stable order.
    order: Vec<String>,
}

#[derive(Debug)]
struct Feature {
    enabled: bool,
    strategies: Vec<Strategy>,
    variants: Variants,
    dependencies: Vec<DependencyDef>,
    /// Whether this feature depends on others; a child of such a parent evaluates to false.
    has_dependencies: bool,
    /// A strategy cannot be evaluated as written (an unknown operator, a value that does not
    /// parse, a missing segment): as in Unleash's SDK engine, the flag is off.
    broken: bool,
    /// The feature name, used as the variant hash group.
    name: String,
}

/// A compiled weighted variant set (feature-level or strategy-level).
#[derive(Debug, Default)]
pub(crate) struct Variants {
    defs: Vec<VariantDef>,
    total_weight: u32,
    /// Overrides flattened: (field, values, variant index).
    overrides: Vec<(Field, Vec<String>, usize)>,
    stickiness: Stickiness,
}

impl Variants {
    pub(crate) fn compile(defs: &[VariantDef]) -> Variants {
        let total_weight = defs.iter().fold(0u32, |acc, v| acc.saturating_add(v.weight));
        let mut overrides = Vec::new();
        for (i, v) in defs.iter().enumerate() {
            for o in v.overrides.iter().flatten() {
                overrides.push((Field::parse(&o.context_name), o.values.clone(), i));
            }
        }
        let stickiness =
            defs.first().and_then(|v| v.stickiness.as_deref()).map(Stickiness::parse).unwrap_or(Stickiness::Default);
        Variants { defs: defs.to_vec(), total_weight, overrides, stickiness }
    }

    fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// Whether the pick is random when the context names neither a user nor a session.
    fn random_without_identity(&self) -> bool {
        self.defs.iter().filter(|v| v.weight > 0).count() > 1 && self.stickiness == Stickiness::Default
    }

    /// Overrides first, then the weighted pick hashed on `group`; the flag says whether the
    /// pick was a weighted split (as opposed to an override).
    fn select(&self, group: &str, ctx: &Context) -> Option<(&VariantDef, bool)> {
        for (field, values, i) in &self.overrides {
            if let Some(v) = ctx.get(field)
                && values.iter().any(|x| x == v)
            {
                return Some((&self.defs[*i], false));
            }
        }
        if self.total_weight == 0 {
            return None;
        }
        let target = match self.stickiness.variant_value(ctx) {
            Some(value) => strategy::hash(group, value, VARIANT_SEED) % self.total_weight + 1,
            None => fastrand::u32(1..=self.total_weight),
        };
        let mut acc: u32 = 0;
        for v in &self.defs {
            acc = acc.saturating_add(v.weight);
            if v.weight > 0 && acc >= target {
                return Some((v, self.defs.len() > 1));
            }
        }
        None
    }
}

/// Why an evaluation came out as it did; maps onto OpenFeature reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The flag is off in this environment, or a parent dependency is unmet.
    Disabled,
    /// On with no strategies: everyone gets it.
    Static,
    /// A strategy matched the context.
    TargetingMatch,
    /// A variant was picked by weight (hashing on stickiness).
    Split,
    /// Strategies exist and none matched (or none can: see [`Engine::compile`]).
    Default,
    /// No flag of that name.
    NotFound,
}

/// The variant answer in Unleash's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VariantResult {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    pub enabled: bool,
    pub feature_enabled: bool,
}

impl VariantResult {
    /// The variant SDKs report when there is none to give.
    pub fn disabled(feature_enabled: bool) -> Self {
        VariantResult { name: "disabled".into(), payload: None, enabled: false, feature_enabled }
    }
}

/// Everything one evaluation learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub enabled: bool,
    pub variant: VariantResult,
    pub reason: Reason,
}

impl Engine {
    /// Compiles a client features document. Never fails: what cannot be evaluated as written
    /// compiles to what Unleash's SDK engine makes of it. Custom strategies never match; an
    /// unknown operator, a number, date or version that does not parse, or a missing segment
    /// turns the flag off; see [`constraint::check`] for the rest.
    pub fn compile(doc: &ClientFeatures) -> Engine {
        let segments: FxHashMap<i64, Vec<Constraint>> = doc
            .segments
            .iter()
            .flatten()
            .map(|s| (s.id, s.constraints.iter().map(Constraint::compile).collect()))
            .collect();
        let mut features = FxHashMap::default();
        let mut order = Vec::with_capacity(doc.features.len());
        for f in &doc.features {
            order.push(f.name.clone());
            features.insert(f.name.clone(), Feature::compile(f, &segments));
        }
        Engine { features, order }
    }

    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Flag names in document order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.features.contains_key(name)
    }

    /// Unleash's `isEnabled`: unknown flags are off.
    pub fn is_enabled(&self, name: &str, ctx: &Context) -> bool {
        self.evaluate(name, ctx).enabled
    }

    /// Unleash's `getVariant`.
    pub fn variant(&self, name: &str, ctx: &Context) -> VariantResult {
        self.evaluate(name, ctx).variant
    }

    /// One evaluation: on/off, variant and reason.
    pub fn evaluate(&self, name: &str, ctx: &Context) -> Evaluation {
        let now = || match ctx.current_time.as_deref().and_then(constraint::parse_date) {
            Some(t) => t,
            None => OffsetDateTime::now_utc(),
        };
        let Some(feature) = self.features.get(name) else {
            return Evaluation { enabled: false, variant: VariantResult::disabled(false), reason: Reason::NotFound };
        };
        if !self.dependencies_met(feature, ctx, &now) {
            return Evaluation { enabled: false, variant: VariantResult::disabled(false), reason: Reason::Disabled };
        }
        feature.evaluate(ctx, &now)
    }

    /// Whether the answer for this flag is picked at random when the context names neither a
    /// user nor a session: a partial rollout or a weighted split on default stickiness, which
    /// falls back to random. OFREP reports a missing targeting key only for such flags; elsewhere
    /// Unleash's answer without one is well defined (a user list, or a rollout by user id, is off).
    pub fn needs_targeting_key(&self, name: &str) -> bool {
        self.features.get(name).is_some_and(|f| {
            f.enabled
                && !f.broken
                && (f.strategies.iter().any(|s| s.random_without_identity() || s.variants.random_without_identity())
                    || f.variants.random_without_identity())
        })
    }

    fn dependencies_met(&self, feature: &Feature, ctx: &Context, now: &impl Fn() -> OffsetDateTime) -> bool {
        feature.dependencies.iter().all(|dep| {
            let Some(parent) = self.features.get(&dep.feature) else {
                return false;
            };
            if parent.has_dependencies {
                return false;
            }
            let parent_eval = parent.evaluate(ctx, now);
            if dep.enabled.unwrap_or(true) {
                parent_eval.enabled
                    && match &dep.variants {
                        Some(names) if !names.is_empty() => names.contains(&parent_eval.variant.name),
                        _ => true,
                    }
            } else {
                !parent_eval.enabled
            }
        })
    }
}

impl Feature {
    fn compile(def: &FeatureDef, segments: &FxHashMap<i64, Vec<Constraint>>) -> Feature {
        let strategies: Vec<Strategy> =
            def.strategies.iter().flatten().map(|s| Strategy::compile(s, &def.name, segments)).collect();
        let dependencies = def.dependencies.clone().unwrap_or_default();
        Feature {
            enabled: def.enabled,
            broken: strategies.iter().any(Strategy::is_broken),
            strategies,
            variants: Variants::compile(def.variants.as_deref().unwrap_or_default()),
            has_dependencies: !dependencies.is_empty(),
            dependencies,
            name: def.name.clone(),
        }
    }

    fn evaluate(&self, ctx: &Context, now: &impl Fn() -> OffsetDateTime) -> Evaluation {
        if !self.enabled {
            return Evaluation { enabled: false, variant: VariantResult::disabled(false), reason: Reason::Disabled };
        }
        if self.broken {
            return Evaluation { enabled: false, variant: VariantResult::disabled(false), reason: Reason::Default };
        }
        let (matched, reason) = if self.strategies.is_empty() {
            (None, Reason::Static)
        } else {
            match self.strategies.iter().find(|s| s.is_enabled(ctx, now)) {
                Some(s) => (Some(s), Reason::TargetingMatch),
                None => {
                    return Evaluation {
                        enabled: false,
                        variant: VariantResult::disabled(false),
                        reason: Reason::Default,
                    };
                }
            }
        };
        let picked = match matched {
            Some(s) if !s.variants.is_empty() => s.variants.select(s.group_id(), ctx),
            _ => self.variants.select(&self.name, ctx),
        };
        let variant = match picked {
            Some((v, _)) => {
                VariantResult { name: v.name.clone(), payload: v.payload.clone(), enabled: true, feature_enabled: true }
            }
            None => VariantResult::disabled(true),
        };
        let reason = if picked.is_some_and(|(_, split)| split) { Reason::Split } else { reason };
        Evaluation { enabled: true, variant, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_targeting_key_is_needed_only_where_its_absence_makes_the_answer_random() {
        let doc: ClientFeatures = serde_json::from_value(json!({"features": [
            {"name": "users", "enabled": true, "strategies": [{"name": "userWithId", "parameters": {"userIds": "a,b"}}]},
            {"name": "by-user", "enabled": true, "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "userId"}}]},
            {"name": "gradual", "enabled": true, "strategies": [{"name": "gradualRolloutUserId", "parameters": {"percentage": "50"}}]},
            {"name": "half", "enabled": true, "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "default"}}]},
            {"name": "all", "enabled": true, "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "100", "stickiness": "default"}}]},
            {"name": "split", "enabled": true, "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]},
            {"name": "split-off", "enabled": false, "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}
        ]}))
        .unwrap();
        let engine = Engine::compile(&doc);
        let needs: Vec<&str> = engine.names().filter(|n| engine.needs_targeting_key(n)).collect();
        assert_eq!(needs, ["half", "split"]);
        // Without a user, Unleash's answer for the others is simply off.
        let nobody = Context::default();
        assert!(!engine.is_enabled("users", &nobody) && !engine.is_enabled("by-user", &nobody));
        assert!(!engine.is_enabled("gradual", &nobody) && engine.is_enabled("all", &nobody));
    }
}
