//! Planning an Unleash import, pure: what an import writes in one environment (features and
//! segments) and which flags leave it, each item with its JSON pointer in the document sent, so
//! refusals and warnings point into that document. `Flags::import` carries a plan out in one
//! transaction.

use std::collections::HashSet;

use runway_core::ApiError;
use runway_flags_engine::wire::{ClientFeatures, DeltaDocument, FeatureDef, SegmentDef};

use crate::model;

/// What `POST /v1/flags/import` accepts.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// `{version, features, segments}`: features are stored, others are left alone.
    Full(ClientFeatures),
    /// `{events}`: applied to the stored state of the environment; only what an event sets is
    /// stored, and features the events remove leave the environment.
    Delta(DeltaDocument),
}

/// An item of the document and its JSON pointer there.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub item: T,
    pub at: String,
}

/// What one import does to one environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub segments: Vec<Sourced<SegmentDef>>,
    pub features: Vec<Sourced<FeatureDef>>,
    /// Flags whose configuration in the environment goes (a delta removed them).
    pub removed: Vec<String>,
}

/// The plan for a full document.
pub fn plan_full(doc: &ClientFeatures) -> Result<Plan, ApiError> {
    let plan = Plan {
        segments: doc
            .segments
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| Sourced { item: s.clone(), at: format!("/segments/{i}") })
            .collect(),
        features: doc
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| Sourced { item: f.clone(), at: format!("/features/{i}") })
            .collect(),
        removed: Vec::new(),
    };
    check(&plan)?;
    Ok(plan)
}

/// The plan for a delta document applied to `current`, the stored state of the environment.
pub fn plan_delta(delta: &DeltaDocument, current: &ClientFeatures) -> Result<Plan, ApiError> {
    let mut next = current.clone();
    let from = next.apply_delta_traced(&delta.events);
    let removed = current
        .features
        .iter()
        .filter(|c| !next.features.iter().any(|f| f.name == c.name))
        .map(|c| c.name.clone())
        .collect();
    let features =
        next.features.into_iter().zip(from.features).filter_map(|(item, at)| Some(Sourced { item, at: at? })).collect();
    let segments = next
        .segments
        .unwrap_or_default()
        .into_iter()
        .zip(from.segments)
        .filter_map(|(item, at)| Some(Sourced { item, at: at? }))
        .collect();
    let plan = Plan { segments, features, removed };
    check(&plan)?;
    Ok(plan)
}

/// Refuses what no flag may be: bad names, names or segment ids twice, overlong descriptions.
fn check(plan: &Plan) -> Result<(), ApiError> {
    let mut names = HashSet::new();
    for f in &plan.features {
        let at = format!("{}/name", f.at);
        model::validate_key(&f.item.name).map_err(|e| ApiError::validation(at.clone(), e.detail))?;
        if !names.insert(f.item.name.as_str()) {
            return Err(ApiError::validation(at, format!("`{}` appears twice", f.item.name)));
        }
        if let Some(d) = &f.item.description {
            model::validate_description(d, &format!("{}/description", f.at))?;
        }
    }
    let mut ids = HashSet::new();
    for s in &plan.segments {
        if !ids.insert(s.item.id) {
            return Err(ApiError::validation(format!("{}/id", s.at), format!("segment {} appears twice", s.item.id)));
        }
    }
    Ok(())
}

/// A serde path (`features[3].enabled`) as an RFC 6901 JSON Pointer (`/features/3/enabled`).
pub fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(format!("/{index}")),
            Segment::Map { key } => Some(format!("/{}", model::escape_pointer(key))),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn features(v: serde_json::Value) -> ClientFeatures {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_full_document_points_at_its_features() {
        let plan =
            plan_full(&features(json!({"features": [{"name": "a"}, {"name": "b"}], "segments": [{"id": 4}]}))).unwrap();
        assert_eq!(plan.features[1].at, "/features/1");
        assert_eq!(plan.segments[0].at, "/segments/0");
        assert!(plan.removed.is_empty());
        let twice = plan_full(&features(json!({"features": [{"name": "a"}, {"name": "a"}]}))).unwrap_err();
        assert_eq!(twice.field.as_deref(), Some("/features/1/name"));
        let bad = plan_full(&features(json!({"features": [{"name": "import"}]}))).unwrap_err();
        assert_eq!(bad.field.as_deref(), Some("/features/0/name"));
        let seg = plan_full(&features(json!({"segments": [{"id": 1}, {"id": 1}]}))).unwrap_err();
        assert_eq!(seg.field.as_deref(), Some("/segments/1/id"));
    }

    #[test]
    fn a_delta_stores_what_its_events_set_and_removes_what_they_remove() {
        let current =
            features(json!({"features": [{"name": "kept"}, {"name": "old"}, {"name": "f1"}], "segments": [{"id": 1}]}));
        let delta: DeltaDocument = serde_json::from_value(json!({"events": [
            {"type": "feature-updated", "eventId": 1, "feature": {"name": "f1", "enabled": true}},
            {"type": "feature-removed", "eventId": 2, "featureName": "old"},
            {"type": "segment-updated", "eventId": 3, "segment": {"id": 2}}
        ]}))
        .unwrap();
        let plan = plan_delta(&delta, &current).unwrap();
        let stored: Vec<(&str, &str)> = plan.features.iter().map(|f| (f.item.name.as_str(), f.at.as_str())).collect();
        assert_eq!(stored, [("f1", "/events/0/feature")], "untouched flags are not stored again");
        assert_eq!(plan.removed, ["old"]);
        assert_eq!(
            plan.segments.iter().map(|s| (s.item.id, s.at.as_str())).collect::<Vec<_>>(),
            [(2, "/events/2/segment")]
        );
        let bad: DeltaDocument = serde_json::from_value(
            json!({"events": [{"type": "feature-updated", "eventId": 1, "feature": {"name": "a/b"}}]}),
        )
        .unwrap();
        assert_eq!(plan_delta(&bad, &current).unwrap_err().field.as_deref(), Some("/events/0/feature/name"));
    }

    #[test]
    fn serde_paths_become_pointers() {
        let err = serde_path_to_error::deserialize::<_, ClientFeatures>(
            json!({"features": [{"name": "x", "enabled": "yes"}]}),
        )
        .unwrap_err();
        assert_eq!(pointer_of(err.path()), "/features/0/enabled");
    }
}
