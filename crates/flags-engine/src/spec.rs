//! The test files of Unleash's client specification (`../shared/conformance/unleash-client-spec`):
//! their format, the state a file describes, and how an answer is checked against a case. The
//! engine's conformance test runs them here; the server's runs the same cases over HTTP and must
//! pass as many, so both read the files through this module. Pure; the callers read the files.

use serde::Deserialize;
use serde_json::Value;

use crate::wire::{ClientFeatures, DeltaDocument};
use crate::{Context, Engine};

/// One specification file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecFile {
    pub name: String,
    /// An Unleash client features document, or a delta document (`{events}`).
    pub state: Value,
    #[serde(default)]
    tests: Vec<RawCase>,
    #[serde(default)]
    variant_tests: Vec<RawCase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCase {
    description: String,
    context: Value,
    toggle_name: String,
    expected_result: Value,
}

/// One case: a flag, a context, and the answer Unleash's SDKs give.
#[derive(Debug, Clone)]
pub struct Case {
    pub description: String,
    /// The context as the file spells it (Unleash's shape: `userId`, …, `properties`).
    pub context: Value,
    pub toggle_name: String,
    pub expected: Expected,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// `isEnabled`.
    Enabled(bool),
    /// `getVariant`: `{name, payload?, enabled, feature_enabled?}`; only the keys stated count.
    Variant(Value),
}

impl SpecFile {
    pub fn parse(text: &str) -> Result<SpecFile, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Every case, is-enabled checks first, in file order.
    pub fn cases(&self) -> Result<Vec<Case>, String> {
        let enabled = self.tests.iter().map(|c| match c.expected_result.as_bool() {
            Some(b) => Ok(Case::from_raw(c, Expected::Enabled(b))),
            None => Err(format!("{}: `{}` expects no boolean", self.name, c.description)),
        });
        let variants =
            self.variant_tests.iter().map(|c| Ok(Case::from_raw(c, Expected::Variant(c.expected_result.clone()))));
        enabled.chain(variants).collect()
    }

    /// The state the file describes: the document itself, or its delta events applied in order
    /// to an empty state.
    pub fn client_features(&self) -> Result<ClientFeatures, serde_json::Error> {
        if self.state.get("events").is_some() {
            let delta: DeltaDocument = serde_json::from_value(self.state.clone())?;
            let mut doc = ClientFeatures::default();
            doc.apply_delta(&delta.events);
            Ok(doc)
        } else {
            serde_json::from_value(self.state.clone())
        }
    }
}

impl Case {
    fn from_raw(c: &RawCase, expected: Expected) -> Case {
        Case {
            description: c.description.clone(),
            context: c.context.clone(),
            toggle_name: c.toggle_name.clone(),
            expected,
        }
    }

    /// Checks an answer: `enabled` for is-enabled cases; the variant in Unleash's shape
    /// (`{name, payload?, enabled, feature_enabled}`) for variant cases. `Err` says what differs.
    pub fn check(&self, enabled: bool, variant: &Value) -> Result<(), String> {
        match &self.expected {
            Expected::Enabled(want) if *want == enabled => Ok(()),
            Expected::Enabled(want) => Err(format!("expected enabled {want}, got {enabled}")),
            Expected::Variant(want) if variant_matches(want, variant) => Ok(()),
            Expected::Variant(want) => Err(format!("expected variant {want}, got {variant}")),
        }
    }
}

/// Whether a variant answer has what the expected one states. Files spell the flag state
/// `feature_enabled` or `featureEnabled`, and some leave it out, so only the stated keys count;
/// a stated key the answer lacks (such as `payload`) must be absent or null there too.
pub fn variant_matches(expected: &Value, got: &Value) -> bool {
    let Some(want) = expected.as_object() else {
        return false;
    };
    want.iter().all(|(k, v)| {
        let key = if k == "featureEnabled" { "feature_enabled" } else { k.as_str() };
        got.get(key).unwrap_or(&Value::Null) == v
    })
}

/// What running a file's cases gave.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub cases: usize,
    pub passed: usize,
    /// One line per failing case: its description and what differed.
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn record(&mut self, case: &Case, result: Result<(), String>) {
        self.cases += 1;
        match result {
            Ok(()) => self.passed += 1,
            Err(why) => self.failures.push(format!("{}: {why}", case.description)),
        }
    }
}

/// Runs every case of a file on the engine directly.
pub fn run_engine(spec: &SpecFile) -> Result<Outcome, String> {
    let engine = Engine::compile(&spec.client_features().map_err(|e| format!("{}: state: {e}", spec.name))?);
    let mut outcome = Outcome::default();
    for case in spec.cases()? {
        let ctx: Context =
            serde_json::from_value(case.context.clone()).map_err(|e| format!("{}: context: {e}", case.description))?;
        let eval = engine.evaluate(&case.toggle_name, &ctx);
        let variant = serde_json::to_value(&eval.variant).map_err(|e| e.to_string())?;
        outcome.record(&case, case.check(eval.enabled, &variant));
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_stated_variant_keys_count() {
        let got = json!({"name": "a", "enabled": true, "feature_enabled": true});
        assert!(variant_matches(&json!({"name": "a", "enabled": true}), &got));
        assert!(variant_matches(&json!({"name": "a", "featureEnabled": true}), &got));
        assert!(variant_matches(&json!({"name": "a", "payload": null}), &got));
        assert!(!variant_matches(&json!({"name": "a", "payload": {"type": "string", "value": "x"}}), &got));
        assert!(!variant_matches(&json!({"name": "b"}), &got));
        assert!(!variant_matches(&json!("a"), &got));
    }

    #[test]
    fn a_file_runs_on_the_engine() {
        let file = json!({
            "name": "tiny",
            "state": {"events": [{"type": "hydration", "eventId": 1, "features": [{"name": "on", "enabled": true, "strategies": [{"name": "default"}]}]}]},
            "tests": [{"description": "on", "context": {}, "toggleName": "on", "expectedResult": true},
                      {"description": "wrong", "context": {}, "toggleName": "off", "expectedResult": true}],
            "variantTests": [{"description": "v", "context": {"userId": "1"}, "toggleName": "on",
                              "expectedResult": {"name": "disabled", "enabled": false, "feature_enabled": true}}]
        });
        let spec = SpecFile::parse(&file.to_string()).unwrap();
        let outcome = run_engine(&spec).unwrap();
        assert_eq!((outcome.cases, outcome.passed), (3, 2));
        assert!(outcome.failures[0].starts_with("wrong:"), "{:?}", outcome.failures);
    }
}
