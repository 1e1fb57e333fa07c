//! The Unleash client features document (`/api/client/features`) and delta events, as they
//! travel on the wire. Unknown fields are kept so an import followed by an export loses nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{version, features, segments}`: the whole state of one environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientFeatures {
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default)]
    pub features: Vec<FeatureDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<SegmentDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

fn one() -> u32 {
    1
}

/// One flag in one environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategies: Option<Vec<StrategyDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<VariantDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<DependencyDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impression_data: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An activation strategy; `parameters` values may be strings or numbers on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StrategyDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Vec<ConstraintDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<VariantDef>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StrategyDef {
    /// A parameter as text, whether it arrived as a string or a number.
    pub fn param(&self, key: &str) -> Option<String> {
        match self.parameters.as_ref()?.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// A condition on one context field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConstraintDef {
    pub context_name: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default)]
    pub inverted: bool,
    #[serde(default)]
    pub case_insensitive: bool,
}

/// A weighted variant with an optional payload and overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VariantDef {
    pub name: String,
    #[serde(default)]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Vec<OverrideDef>>,
}

/// A variant payload: `type` is string, json, number or csv; the value is always text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// Pins listed context values to a variant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverrideDef {
    pub context_name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// A dependency on a parent flag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyDef {
    pub feature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<String>>,
}

/// A reusable, named constraint set referenced by id from strategies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentDef {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub constraints: Vec<ConstraintDef>,
}

/// A delta document: `{events: [...]}` from Unleash's delta API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeltaDocument {
    pub events: Vec<DeltaEvent>,
}

/// One delta event; applied in order to a state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeltaEvent {
    #[serde(rename_all = "camelCase")]
    Hydration {
        event_id: i64,
        #[serde(default)]
        features: Vec<FeatureDef>,
        #[serde(default)]
        segments: Vec<SegmentDef>,
    },
    #[serde(rename_all = "camelCase")]
    FeatureUpdated { event_id: i64, feature: FeatureDef },
    #[serde(rename_all = "camelCase")]
    FeatureRemoved {
        event_id: i64,
        feature_name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    SegmentUpdated { event_id: i64, segment: SegmentDef },
    #[serde(rename_all = "camelCase")]
    SegmentRemoved { event_id: i64, segment_id: i64 },
}

/// Where each feature and segment of a state came from after [`ClientFeatures::apply_delta_traced`]:
/// the JSON pointer, in the delta document, of the event item that last set it, or `None` for
/// what no event touched. Parallel to the state's `features` and `segments`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    pub features: Vec<Option<String>>,
    pub segments: Vec<Option<String>>,
}

impl ClientFeatures {
    /// Applies delta events in order: hydration replaces everything, the others upsert or remove.
    pub fn apply_delta(&mut self, events: &[DeltaEvent]) {
        self.apply_delta_traced(events);
    }

    /// [`apply_delta`](Self::apply_delta), saying which event set each feature and segment.
    pub fn apply_delta_traced(&mut self, events: &[DeltaEvent]) -> Provenance {
        let mut from = Provenance {
            features: vec![None; self.features.len()],
            segments: vec![None; self.segments.as_ref().map_or(0, Vec::len)],
        };
        for (e, event) in events.iter().enumerate() {
            match event {
                DeltaEvent::Hydration { features, segments, .. } => {
                    self.features = features.clone();
                    self.segments = Some(segments.clone());
                    from.features = (0..features.len()).map(|i| Some(format!("/events/{e}/features/{i}"))).collect();
                    from.segments = (0..segments.len()).map(|i| Some(format!("/events/{e}/segments/{i}"))).collect();
                }
                DeltaEvent::FeatureUpdated { feature, .. } => {
                    let at = Some(format!("/events/{e}/feature"));
                    match self.features.iter().position(|f| f.name == feature.name) {
                        Some(i) => {
                            self.features[i] = feature.clone();
                            from.features[i] = at;
                        }
                        None => {
                            self.features.push(feature.clone());
                            from.features.push(at);
                        }
                    }
                }
                DeltaEvent::FeatureRemoved { feature_name, .. } => {
                    while let Some(i) = self.features.iter().position(|f| &f.name == feature_name) {
                        self.features.remove(i);
                        from.features.remove(i);
                    }
                }
                DeltaEvent::SegmentUpdated { segment, .. } => {
                    let at = Some(format!("/events/{e}/segment"));
                    let segments = self.segments.get_or_insert_with(Vec::new);
                    match segments.iter().position(|s| s.id == segment.id) {
                        Some(i) => {
                            segments[i] = segment.clone();
                            from.segments[i] = at;
                        }
                        None => {
                            segments.push(segment.clone());
                            from.segments.push(at);
                        }
                    }
                }
                DeltaEvent::SegmentRemoved { segment_id, .. } => {
                    if let Some(segments) = self.segments.as_mut() {
                        while let Some(i) = segments.iter().position(|s| s.id == *segment_id) {
                            segments.remove(i);
                            from.segments.remove(i);
                        }
                    }
                }
            }
        }
        from
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_delta_says_which_event_set_what() {
        let mut state: ClientFeatures = serde_json::from_value(json!({
            "features": [{"name": "kept"}, {"name": "gone"}, {"name": "changed"}],
            "segments": [{"id": 1}, {"id": 2}]
        }))
        .unwrap();
        let delta: DeltaDocument = serde_json::from_value(json!({"events": [
            {"type": "feature-updated", "eventId": 1, "feature": {"name": "changed", "enabled": true}},
            {"type": "feature-removed", "eventId": 2, "featureName": "gone"},
            {"type": "feature-updated", "eventId": 3, "feature": {"name": "new"}},
            {"type": "segment-updated", "eventId": 4, "segment": {"id": 2, "constraints": []}},
            {"type": "segment-removed", "eventId": 5, "segmentId": 1}
        ]}))
        .unwrap();
        let from = state.apply_delta_traced(&delta.events);
        let names: Vec<&str> = state.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["kept", "changed", "new"]);
        assert_eq!(from.features, [None, Some("/events/0/feature".into()), Some("/events/2/feature".into())]);
        assert_eq!(from.segments, [Some("/events/3/segment".to_string())]);
        assert!(state.features[1].enabled);

        let hydrate: DeltaDocument = serde_json::from_value(json!({"events": [
            {"type": "hydration", "eventId": 9, "features": [{"name": "a"}, {"name": "b"}], "segments": [{"id": 3}]},
            {"type": "feature-removed", "eventId": 10, "featureName": "a"}
        ]}))
        .unwrap();
        let from = state.apply_delta_traced(&hydrate.events);
        assert_eq!(state.features.len(), 1);
        assert_eq!(from.features, [Some("/events/0/features/1".to_string())]);
        assert_eq!(from.segments, [Some("/events/0/segments/0".to_string())]);
    }
}
