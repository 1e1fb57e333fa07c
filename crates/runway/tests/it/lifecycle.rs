use crate::harness::{ADMIN, Database, Engine, TestServer};
use serde_json::json;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

crate::both_engines!(
    graceful_shutdown_finishes_a_request_in_flight,
    readiness_follows_store_and_migrations,
    metrics_show_red_and_pool_gauges,
    an_open_event_stream_does_not_hold_up_shutdown,
);

async fn graceful_shutdown_finishes_a_request_in_flight(engine: Engine) {
    let mut s = TestServer::start(engine).await;
    let addr = s.running.as_ref().unwrap().addr;
    let body = json!({"slug": "inflight", "name": "In flight"}).to_string();
    let head = format!(
        "POST /v1/tenants HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ADMIN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body.as_bytes()[..10]).await.unwrap();
    conn.flush().await.unwrap();
    // Give the server a moment to start reading the request, then ask it to stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let running = s.running.take().unwrap();
    running.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no new connections while draining");
    conn.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "the in-flight request completed: {response}");
    let drain =
        tokio::time::timeout(Duration::from_secs(20), running.wait()).await.expect("server stopped after draining");
    assert_eq!(drain, runway_server::Drain::Clean);
    assert_eq!(s.db.scalar("SELECT COUNT(*) FROM tenants WHERE slug = 'inflight'").await, 1);
}

/// An OpenFeature client holding the OFREP event stream open does not hold up a shutdown: the
/// stream ends when the drain begins, so the drain is clean rather than cut off at the grace.
async fn an_open_event_stream_does_not_hold_up_shutdown(engine: Engine) {
    let mut s = TestServer::start(engine).await;
    let key =
        s.post("/v1/service-keys", ADMIN, json!({"name": "sse", "scopes": ["flags:evaluate"]})).await.ok(201)["token"]
            .as_str()
            .unwrap()
            .to_owned();
    let stream = s.http.get(format!("{}/ofrep/v1/events", s.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let running = s.running.take().unwrap();
    let drain = tokio::time::timeout(Duration::from_secs(30), running.shutdown()).await.expect("the server stopped");
    assert_eq!(drain, runway_server::Drain::Clean, "the open stream ended with the drain");
    // The client sees its stream end (no more events), not a connection left hanging.
    let rest = tokio::time::timeout(Duration::from_secs(5), stream.bytes()).await.expect("the stream ended");
    assert!(rest.is_ok(), "{rest:?}");
}

async fn readiness_follows_store_and_migrations(engine: Engine) {
    let s = TestServer::start(engine).await;
    let http = &s.http;
    let ok = http.get(format!("{}/readyz", s.base)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(http.get(format!("{}/healthz", s.base)).send().await.unwrap().status(), 200);
    // Forget one applied migration: the schema is no longer known to be current.
    let max = s.db.scalar("SELECT MAX(version) FROM _sqlx_migrations").await;
    s.db.exec(&format!("DELETE FROM _sqlx_migrations WHERE version = {max}")).await;
    let r = TestServer::read(http.get(format!("{}/readyz", s.base)).send().await.unwrap()).await;
    assert!(r.problem(503, "unavailable")["detail"].as_str().unwrap().contains("pending"));
    assert_eq!(http.get(format!("{}/healthz", s.base)).send().await.unwrap().status(), 200, "still alive");
}

async fn metrics_show_red_and_pool_gauges(engine: Engine) {
    let s = TestServer::start(engine).await;
    s.tenant("m").await;
    s.get("/v1/tenants/m", "nope").await;
    let text = s.metrics_text().await;
    assert!(
        text.contains(r#"runway_http_requests_total{route="/v1/tenants",method="POST",status_class="2xx"}"#),
        "{text}"
    );
    assert!(text.contains(r#"route="/v1/tenants/{tenant}",method="GET",status_class="4xx""#), "{text}");
    assert!(text.contains("runway_http_request_duration_seconds_bucket{route=\"/v1/tenants\""), "{text}");
    assert!(text.contains("runway_store_pool_connections{pool="), "{text}");
    assert!(text.contains("runway_store_pool_max_connections{pool="), "{text}");
}

fn spawn_serve(dir: &std::path::Path, extra_env: &[(&str, &str)]) -> (std::process::Child, String, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runway"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--gateway-listen",
        "127.0.0.1:0",
    ])
    .current_dir(dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .env_remove("RUNWAY_ADMIN_TOKEN")
    .env_remove("RUNWAY_DATABASE_URL");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout);
    let mut base = String::new();
    // The banner always ends with the Ctrl-C line.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(rest) = line.strip_prefix("Runway ") {
            base = rest.split("listening on ").nth(1).unwrap().trim().to_owned();
        }
        let done = line.contains("Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = reader.read_to_string(&mut sink);
    });
    (child, base, lines)
}

fn line_has_token(lines: &[String]) -> bool {
    lines.iter().any(|l| l.trim_start().starts_with("rw_admin_"))
}

fn sigterm(child: &std::process::Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
}

/// Zero-config start of the real binary: SQLite under ./runway-data, the token printed on the
/// first start only, and exit 0 on SIGTERM.
#[test]
fn binary_starts_with_zero_config_and_exits_cleanly_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("runway-zero-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let (mut child, base, lines) = spawn_serve(&dir, &[]);
    let banner = lines.join("");
    assert!(banner.contains("/docs") && banner.contains("/metrics") && banner.contains("/healthz"), "{banner}");
    assert!(banner.contains("sqlite://./runway-data/runway.db"), "{banner}");
    let token = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("rw_admin_"))
        .expect("first start prints the admin token")
        .to_owned();
    assert!(dir.join("runway-data/runway.db").exists());
    let key =
        std::fs::metadata(dir.join("runway-data/master.key")).expect("a master key is generated beside the database");
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600,
        "readable by its owner only"
    );
    let status = reqwest::blocking_get(&format!("{base}/v1/tenants"), &token);
    assert_eq!(status, 200, "the printed token works");
    sigterm(&child);
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit code 0 after SIGTERM, got {exit:?}");

    let (mut child, _, lines) = spawn_serve(&dir, &[]);
    assert!(!line_has_token(&lines), "the token is printed on the first start only: {lines:?}");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Invalid configuration fails at start, naming the key; `runway config` masks secrets.
#[tokio::test]
async fn config_errors_name_the_key_and_secrets_are_masked() {
    let db = Database::create(&Engine::Sqlite).await;
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runway"));
        cmd.args(args).current_dir(&db.dir).env_remove("RUNWAY_DATABASE_URL").env_remove("RUNWAY_ADMIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&[("RUNWAY_SERVER_BODY_LIMIT_BYTES", "lots")], &["serve"]);
    assert!(!ok);
    assert!(err.contains("server.body_limit_bytes"), "{err}");
    let (ok, _, err) = run(&[("RUNWAY_TENANTS_DEFAULT_PLAN", "gold")], &["config"]);
    assert!(!ok && err.contains("tenants.default_plan") && err.contains("gold"), "{err}");
    std::fs::write(db.dir.join("runway.toml"), "[database]\nurl = \"mysql://x\"\n").unwrap();
    let (ok, _, err) = run(&[], &["config"]);
    assert!(!ok && err.contains("database.url"), "{err}");
    std::fs::write(db.dir.join("runway.toml"), "[server]\nbody_limit_bytes = 4096\n").unwrap();
    let (ok, out, err) = run(
        &[
            ("RUNWAY_DATABASE_URL", "postgres://app:hunter2@db.internal/runway"),
            ("RUNWAY_ADMIN_TOKEN", "rw_admin_supersecretsupersecretsupersecret"),
        ],
        &["config"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("body_limit_bytes = 4096"), "file applied: {out}");
    assert!(out.contains("postgres://app:****@db.internal/runway"), "{out}");
    assert!(!out.contains("hunter2") && !out.contains("supersecret"), "{out}");
    let (ok, out, _) = run(&[], &["--json", "config"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["server"]["body_limit_bytes"], 4096);
    let (ok, out, _) = run(&[], &["version"]);
    assert!(ok && out.starts_with("runway "));
}

mod reqwest {
    /// A tiny blocking GET for the process test, which has no runtime of its own.
    pub fn blocking_get(url: &str, token: &str) -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            ::reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().status().as_u16()
        })
    }
}

/// A second signal while draining ends the process at once (exit 130), even with a request
/// still in flight; the first one alone waits for that request.
#[test]
fn second_signal_exits_at_once() {
    let dir = std::env::temp_dir().join(format!("runway-sig2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, base, lines) = spawn_serve(&dir, &[]);
    let token = lines.iter().map(|l| l.trim()).find(|l| l.starts_with("rw_admin_")).unwrap().to_owned();
    let addr = base.trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /v1/tenants HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"slug\":"
    );
    std::io::Write::write_all(&mut conn, head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&child);
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "the first signal waits for the request in flight");
    sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "the second signal exits at once");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With RUNWAY_OTLP_ENDPOINT set, spans reach a real OTLP/HTTP receiver; with a dead endpoint,
/// requests are unaffected.
#[test]
fn otlp_export_reaches_a_collector_and_its_failure_breaks_nothing() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let received: std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>> = Default::default();
    let sink = received.clone();
    let collector = rt.block_on(async move {
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let sink = sink.clone();
                async move {
                    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    sink.lock().unwrap().push((ct, body.len()));
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    });

    for (endpoint, expect_export) in [(collector.as_str(), true), ("http://127.0.0.1:9", false)] {
        let dir = std::env::temp_dir().join(format!("runway-otlp-{}-{expect_export}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (mut child, base, lines) = spawn_serve(&dir, &[("RUNWAY_OTLP_ENDPOINT", endpoint)]);
        let token = lines.iter().map(|l| l.trim()).find(|l| l.starts_with("rw_admin_")).unwrap().to_owned();
        for _ in 0..5 {
            assert_eq!(reqwest::blocking_get(&format!("{base}/v1/tenants"), &token), 200);
        }
        sigterm(&child);
        assert!(child.wait().unwrap().success(), "clean exit with endpoint {endpoint}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    let got = received.lock().unwrap().clone();
    assert!(!got.is_empty(), "the collector received spans");
    assert!(got.iter().all(|(ct, len)| ct == "application/x-protobuf" && *len > 0), "{got:?}");
}
