//! Runs every case of every file in `../shared/conformance/unleash-client-spec/` against the
//! engine and prints per-file counts; any failure fails the test with the case's description.

use std::path::PathBuf;

use runway_flags_engine::wire::{ClientFeatures, DeltaDocument};
use runway_flags_engine::{Context, Engine};
use serde::Deserialize;
use serde_json::Value;

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/unleash-client-spec")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    name: String,
    state: Value,
    #[serde(default)]
    tests: Vec<EnabledCase>,
    #[serde(default)]
    variant_tests: Vec<VariantCase>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnabledCase {
    description: String,
    context: Context,
    toggle_name: String,
    expected_result: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VariantCase {
    description: String,
    context: Context,
    toggle_name: String,
    expected_result: Value,
}

fn load_state(state: Value) -> ClientFeatures {
    if state.get("events").is_some() {
        let delta: DeltaDocument = serde_json::from_value(state).expect("delta document parses");
        let mut doc = ClientFeatures::default();
        doc.apply_delta(&delta.events);
        doc
    } else {
        serde_json::from_value(state).expect("client features document parses")
    }
}

#[test]
fn every_client_specification_case_passes() {
    let index: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(spec_dir().join("index.json")).expect("index.json is readable"))
            .unwrap();
    assert!(index.len() >= 18, "the specification index lists its files");
    let mut failures = Vec::new();
    let mut total = 0;
    for file in &index {
        let text = std::fs::read_to_string(spec_dir().join(file)).unwrap();
        let spec: SpecFile = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let engine = Engine::compile(&load_state(spec.state));
        let mut passed = 0;
        for case in &spec.tests {
            let got = engine.is_enabled(&case.toggle_name, &case.context);
            if got == case.expected_result {
                passed += 1;
            } else {
                failures.push(format!("{file}: {} (expected {}, got {got})", case.description, case.expected_result));
            }
        }
        for case in &spec.variant_tests {
            let got = serde_json::to_value(engine.variant(&case.toggle_name, &case.context)).unwrap();
            let mut expected = case.expected_result.clone();
            // Older files spell it `feature_enabled`; some omit it. Compare what the file states.
            let obj = expected.as_object_mut().unwrap();
            if let Some(v) = obj.remove("featureEnabled") {
                obj.insert("feature_enabled".into(), v);
            }
            let mut got_cmp = got.clone();
            let got_obj = got_cmp.as_object_mut().unwrap();
            got_obj.retain(|k, _| obj.contains_key(k));
            if got_cmp == expected {
                passed += 1;
            } else {
                failures.push(format!("{file}: {} (expected {expected}, got {got})", case.description));
            }
        }
        let cases = spec.tests.len() + spec.variant_tests.len();
        total += cases;
        println!("{:<45} {passed:>3}/{cases}", spec.name);
    }
    println!("total cases: {total}");
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
}
