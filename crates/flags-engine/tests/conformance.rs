//! Runs every case of every file in `../shared/conformance/unleash-client-spec/` against the
//! engine and prints per-file counts; any failure fails the test with the case's description.
//! The server's HTTP test (`crates/runway/tests/it/flags.rs`) runs the same cases over HTTP.

use std::path::PathBuf;

use runway_flags_engine::spec::{SpecFile, run_engine};

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/unleash-client-spec")
}

#[test]
fn every_client_specification_case_passes() {
    let index: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(spec_dir().join("index.json")).expect("index.json is readable"))
            .expect("index.json lists file names");
    assert!(index.len() >= 18, "the specification index lists its files");
    let mut failures = Vec::new();
    let (mut total, mut passed) = (0, 0);
    for file in &index {
        let text = std::fs::read_to_string(spec_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let spec = SpecFile::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let outcome = run_engine(&spec).unwrap_or_else(|e| panic!("{file}: {e}"));
        println!("{:<45} {:>3}/{}", spec.name, outcome.passed, outcome.cases);
        total += outcome.cases;
        passed += outcome.passed;
        failures.extend(outcome.failures.iter().map(|f| format!("{file}: {f}")));
    }
    println!("passed {passed} of {total} cases");
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
}
