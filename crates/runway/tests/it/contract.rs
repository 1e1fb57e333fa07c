use crate::harness::{Engine, TestServer};

/// The committed `openapi.json` is exactly what the code generates. Regenerate with
/// `UPDATE_OPENAPI=1 cargo nextest run -p runway openapi`.
#[test]
fn committed_openapi_matches_the_code() {
    let generated = serde_json::to_string_pretty(&runway_server::openapi()).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo nextest run -p runway openapi` and commit it"
    );
}

#[tokio::test]
async fn served_openapi_and_docs_work_offline() {
    let s = TestServer::start(Engine::Sqlite).await;
    let served: serde_json::Value =
        s.http.get(format!("{}/openapi.json", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(served, serde_json::to_value(runway_server::openapi()).unwrap());
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/tenants",
        "/v1/tenants/{tenant}",
        "/v1/tenants/{tenant}/keys",
        "/v1/service-keys",
        "/v1/tenants/{tenant}/audit",
        "/healthz",
        "/readyz",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} is documented");
    }
    let docs = s.http.get(format!("{}/docs", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(docs.contains("/openapi.json"));
    assert!(!docs.contains("<script src"), "no external scripts: the page works offline");
    assert!(!docs.contains("https://"), "no CDN references");
}
