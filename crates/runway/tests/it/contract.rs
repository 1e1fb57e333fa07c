use crate::harness::{Engine, TestServer};
use serde_json::{Value, json};

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
async fn served_openapi_is_the_generated_one() {
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
}

/// `/docs` is an interactive reference served from assets built into the binary: the page and
/// every script, stylesheet and icon it loads come from this server with the right content
/// type, nothing is loaded from elsewhere, and the reference reads `/openapi.json`.
#[tokio::test]
async fn docs_are_an_interactive_reference_served_offline() {
    let s = TestServer::start(Engine::Sqlite).await;
    let page = s.http.get(format!("{}/docs", s.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/openapi.json"), "the page names the contract");
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = part.split('"').next().unwrap();
            assert!(url.starts_with('/'), "`{url}` is not served by Runway itself");
            if url.starts_with("/docs/") {
                assets.push(url.to_owned());
            }
        }
    }
    assert!(assets.iter().any(|a| a.ends_with(".js")) && assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    let mut initializer = String::new();
    for asset in &assets {
        let r = s.http.get(format!("{}{asset}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        let want = match asset.rsplit('.').next() {
            Some("js") => "javascript",
            Some("css") => "text/css",
            Some("png") => "image/png",
            other => panic!("unexpected asset type {other:?}"),
        };
        assert!(ct.contains(want), "{asset} is served as {ct}");
        let body = r.bytes().await.unwrap();
        assert!(body.len() > 100, "{asset} has content");
        if asset.ends_with("swagger-initializer.js") {
            initializer = String::from_utf8(body.to_vec()).unwrap();
        }
    }
    assert!(
        initializer.contains("\"url\": \"/openapi.json\""),
        "the reference loads the served contract: {initializer}"
    );
    assert!(initializer.contains("\"validatorUrl\": \"none\""), "no call to the public validator: {initializer}");
    assert!(!initializer.contains("https://"), "nothing loaded from outside");
    let missing = s.http.get(format!("{}/docs/nothing-here.js", s.base)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// Every operation of the generated document, with its path and method.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(&method.as_str()) {
                out.push((path.clone(), method.clone(), op));
            }
        }
    }
    out
}

/// Follows a local `$ref` (`#/components/…`) to what it names.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

fn openapi_value() -> Value {
    serde_json::to_value(runway_server::openapi()).unwrap()
}

/// Parameters are where the path says: every `{name}` in a path is a path parameter, and no
/// path parameter is missing from its path (query parameters once were declared as path ones).
#[test]
fn parameters_are_where_the_path_says() {
    let doc = openapi_value();
    for (path, method, op) in operations(&doc) {
        let params: Vec<&Value> = op["parameters"].as_array().into_iter().flatten().map(|p| resolve(&doc, p)).collect();
        for p in &params {
            let name = p["name"].as_str().unwrap();
            if p["in"] == "path" {
                assert!(
                    path.contains(&format!("{{{name}}}")),
                    "{method} {path}: path parameter `{name}` is not in the path"
                );
            }
        }
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(['{', '}']);
            assert!(
                params.iter().any(|p| p["in"] == "path" && p["name"] == name),
                "{method} {path}: `{name}` is not declared as a path parameter"
            );
        }
    }
}

/// Every operation documents the errors its shape can produce, each as problem+json; new routes
/// are covered without editing this test.
#[test]
fn every_operation_documents_its_errors() {
    let doc = openapi_value();
    let problem = json!({"$ref": "#/components/schemas/Problem"});
    let mut failures = Vec::new();
    for (path, method, op) in operations(&doc) {
        let public = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r == &json!({})));
        let params: Vec<&Value> = op["parameters"].as_array().into_iter().flatten().map(|p| resolve(&doc, p)).collect();
        let mut want = vec!["414", "431"];
        if !public {
            want.extend(["401", "403", "429", "503"]);
        }
        if path.contains('{') {
            want.extend(["400", "404"]);
        }
        if params.iter().any(|p| p["in"] == "query") {
            want.push("400");
        }
        if op.get("requestBody").is_some() {
            want.extend(["400", "413", "415", "422"]);
        }
        if method == "post" && !public {
            want.extend(["400", "409", "422"]);
            if !params.iter().any(|p| p["in"] == "header" && p["name"] == "Idempotency-Key") {
                failures.push(format!("{method} {path}: no Idempotency-Key header parameter"));
            }
        }
        let responses = op["responses"].as_object().expect("responses");
        for status in want {
            if !responses.contains_key(status) {
                failures.push(format!("{method} {path}: {status} is not documented"));
            }
        }
        for (status, resp) in responses {
            if status.as_str() >= "400" {
                let resp = resolve(&doc, resp);
                if resp["content"]["application/problem+json"]["schema"] != problem {
                    failures.push(format!("{method} {path}: {status} is not application/problem+json"));
                }
                if resp["description"].as_str().is_none_or(str::is_empty) {
                    failures.push(format!("{method} {path}: {status} has no description"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "the contract is missing error responses:\n{}", failures.join("\n"));
}

/// Walks a schema and reports every property without a description, at its JSON path.
fn undescribed(
    doc: &Value,
    at: &str,
    schema: &Value,
    seen: &mut std::collections::HashSet<String>,
    out: &mut Vec<String>,
) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        if seen.insert(r.to_owned()) {
            undescribed(doc, r, resolve(doc, schema), seen, out);
        }
        return;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            if p.get("description").and_then(Value::as_str).is_none_or(|d| d.trim().is_empty()) {
                out.push(format!("{at}/properties/{name}"));
            }
            undescribed(doc, &format!("{at}/properties/{name}"), p, seen, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = schema.get(key).filter(|v| v.is_object()) {
            undescribed(doc, &format!("{at}/{key}"), sub, seen, out);
        }
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for (i, sub) in schema.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            undescribed(doc, &format!("{at}/{key}/{i}"), sub, seen, out);
        }
    }
}

/// Every operation has a summary, every parameter and response a description, and every
/// property of every schema they use a description; new routes and DTOs are covered without
/// editing this test.
#[test]
fn every_operation_and_field_is_described() {
    let doc = openapi_value();
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (path, method, op) in operations(&doc) {
        let at = format!("{method} {path}");
        if op["summary"].as_str().is_none_or(|s| s.trim().is_empty()) {
            missing.push(format!("{at}: summary"));
        }
        for p in op["parameters"].as_array().into_iter().flatten() {
            let p = resolve(&doc, p);
            if p["description"].as_str().is_none_or(|d| d.trim().is_empty()) {
                missing.push(format!("{at}: parameter `{}`", p["name"].as_str().unwrap_or("?")));
            }
        }
        for (status, resp) in op["responses"].as_object().into_iter().flatten() {
            let resp = resolve(&doc, resp);
            if resp["description"].as_str().is_none_or(|d| d.trim().is_empty()) {
                missing.push(format!("{at}: response {status}"));
            }
            for media in resp["content"].as_object().into_iter().flatten().map(|(_, m)| m) {
                let mut found = Vec::new();
                undescribed(&doc, &format!("{at} {status}"), &media["schema"], &mut seen, &mut found);
                missing.extend(found);
            }
        }
        for media in op["requestBody"]["content"].as_object().into_iter().flatten().map(|(_, m)| m) {
            let mut found = Vec::new();
            undescribed(&doc, &format!("{at} body"), &media["schema"], &mut seen, &mut found);
            missing.extend(found);
        }
    }
    assert!(missing.is_empty(), "{} things lack a description:\n{}", missing.len(), missing.join("\n"));
}

/// Reports every array without `maxItems` and every map (an object with `additionalProperties`)
/// without `maxProperties` reachable from a schema.
fn unbounded(
    doc: &Value,
    at: &str,
    schema: &Value,
    seen: &mut std::collections::HashSet<String>,
    out: &mut Vec<String>,
) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        if seen.insert(r.to_owned()) {
            unbounded(doc, r, resolve(doc, schema), seen, out);
        }
        return;
    }
    let is = |t: &str| schema["type"] == t || schema["type"].as_array().is_some_and(|ts| ts.iter().any(|x| x == t));
    if is("array") && schema.get("maxItems").is_none() {
        out.push(format!("{at}: array without maxItems"));
    }
    if schema.get("additionalProperties").is_some_and(|a| a != &json!(false)) && schema.get("maxProperties").is_none() {
        out.push(format!("{at}: map without maxProperties"));
    }
    for (name, p) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        unbounded(doc, &format!("{at}/properties/{name}"), p, seen, out);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = schema.get(key).filter(|v| v.is_object()) {
            unbounded(doc, &format!("{at}/{key}"), sub, seen, out);
        }
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for (i, sub) in schema.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            unbounded(doc, &format!("{at}/{key}/{i}"), sub, seen, out);
        }
    }
}

/// Every array and map a request can carry has an upper bound in the contract (`maxItems`,
/// `maxProperties`); `bounds.rs` checks the server enforces each.
#[test]
fn request_collections_are_bounded() {
    let doc = openapi_value();
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (path, method, op) in operations(&doc) {
        for media in op["requestBody"]["content"].as_object().into_iter().flatten().map(|(_, m)| m) {
            unbounded(&doc, &format!("{method} {path} body"), &media["schema"], &mut seen, &mut out);
        }
    }
    assert!(out.is_empty(), "unbounded request collections:\n{}", out.join("\n"));
}
