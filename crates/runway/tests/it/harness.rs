//! Test harness: a real server on a loopback port over SQLite or PostgreSQL, a typed HTTP
//! client, raw SQL as the schema owner, and the `runway` binary.

use reqwest::Method;
use runway_core::config::{Config, DatabaseUrl};
use runway_core::{Clock, SystemClock};
use runway_server::Running;
use runway_store::sqlx::{self, Connection};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The master key test servers seal endpoint secrets with (32 bytes, base64).
pub const MASTER_KEY: &str = "dGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGVzLWxvbmchISE=";

/// The admin token every test server is configured with.
pub const ADMIN: &str = "rw_admin_test_0123456789abcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Clone)]
pub enum Engine {
    Sqlite,
    /// Base URL of a superuser connection without database, e.g. `postgres://postgres@127.0.0.1:5432`.
    Postgres(String),
}

/// Why every PostgreSQL test is `#[ignore]`d by default: a run without PostgreSQL reports them as
/// skipped (not as passed), and `.ci/run` runs them with `--run-ignored all`.
pub const NEEDS_POSTGRES: &str =
    "needs PostgreSQL: set RUNWAY_TEST_POSTGRES and pass --run-ignored all (bash .ci/run does)";

impl Engine {
    /// PostgreSQL from `RUNWAY_TEST_POSTGRES` (as `.ci/run` sets it). A PostgreSQL test that runs
    /// without it fails: it was asked for explicitly, and a silent pass would hide that nothing ran.
    pub fn postgres() -> Engine {
        match std::env::var("RUNWAY_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Engine::Postgres(url.trim_end_matches('/').to_owned()),
            _ => panic!("RUNWAY_TEST_POSTGRES is not set, so this PostgreSQL test cannot run ({NEEDS_POSTGRES})"),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Engine::Postgres(_))
    }
}

/// Runs each listed `async fn name(engine: Engine)` once on SQLite and once on PostgreSQL (the
/// latter ignored unless asked for; see [`NEEDS_POSTGRES`]).
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Engine::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL: set RUNWAY_TEST_POSTGRES and pass --run-ignored all (bash .ci/run does)"]
                async fn $name() {
                    super::$name($crate::harness::Engine::postgres()).await
                }
            )*
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}{}_{n}_{nanos}", std::process::id())
}

/// Where a test's data lives, and how to reach it as the owner.
#[derive(Debug, Clone)]
pub struct Database {
    pub engine: Engine,
    /// What the server connects with (the least-privilege role on PostgreSQL).
    pub app_url: String,
    /// The schema owner; raw SQL in tests uses it to tamper with rows.
    pub owner_url: String,
    pub dir: PathBuf,
}

impl Database {
    pub async fn create(engine: &Engine) -> Database {
        let dir = std::env::temp_dir().join(unique("runway-it-"));
        std::fs::create_dir_all(&dir).unwrap();
        match engine {
            Engine::Sqlite => {
                let url = format!("sqlite://{}/runway.db", dir.display());
                Database { engine: engine.clone(), app_url: url.clone(), owner_url: url, dir }
            }
            Engine::Postgres(base) => {
                let name = unique("rwt_");
                let mut admin =
                    sqlx::PgConnection::connect(&format!("{base}/postgres")).await.expect("connect to PostgreSQL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
                admin.close().await.ok();
                let owner_url = format!("{base}/{name}");
                // Migrate as the owner, then create the app role exactly as the README says.
                let cfg =
                    runway_core::config::DatabaseConfig { url: DatabaseUrl(owner_url.clone()), ..Default::default() };
                let store = runway_store::Store::connect(&cfg).await.unwrap();
                store.migrate(&cfg).await.unwrap();
                store.close().await;
                let mut owner = sqlx::PgConnection::connect(&owner_url).await.unwrap();
                let role_sql = include_str!("../../../../deploy/postgres/app-role.sql");
                // Role creation is cluster-wide; concurrent tests may race on it.
                for attempt in 0..5 {
                    match sqlx::raw_sql(role_sql).execute(&mut owner).await {
                        Ok(_) => break,
                        Err(e) if attempt < 4 => {
                            eprintln!("app role setup retry: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("app role setup failed: {e}"),
                    }
                }
                owner.close().await.ok();
                let rest = base.split_once('@').map(|(_, r)| r).unwrap_or("127.0.0.1:5432");
                let app_url = format!("postgres://runway_app@{rest}/{name}");
                Database { engine: engine.clone(), app_url, owner_url, dir }
            }
        }
    }

    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.server.listen = "127.0.0.1:0".parse().unwrap();
        c.server.shutdown_grace_secs = 10;
        c.server.metrics_listen = runway_core::config::MetricsListen::At("127.0.0.1:0".parse().unwrap());
        c.gateway.listen = runway_core::config::MetricsListen::At("127.0.0.1:0".parse().unwrap());
        c.database.url = DatabaseUrl(self.app_url.clone());
        if self.engine.is_postgres() {
            c.database.migration_url = Some(DatabaseUrl(self.owner_url.clone()));
        }
        c.auth.admin_token = Some(runway_core::secret::SecretString::new(ADMIN));
        c.crypto.master_key = Some(runway_core::secret::SecretString::new(MASTER_KEY));
        c.auth.last_used_flush_ms = 200;
        // Tests fire many requests quickly; the rate-limit test sets its own plan.
        c.tenants.default_plan = "enterprise".into();
        c.log.level = "warn".into();
        c
    }

    /// Runs SQL as the owner; returns rows affected.
    pub async fn exec(&self, sql: &str) -> u64 {
        match self.engine {
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.owner_url).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.unwrap().rows_affected()
            }
            Engine::Postgres(_) => {
                let mut c = sqlx::PgConnection::connect(&self.owner_url).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.unwrap().rows_affected()
            }
        }
    }

    /// One integer from a query run as the owner.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match self.engine {
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.owner_url).await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut c).await.unwrap()
            }
            Engine::Postgres(_) => {
                let mut c = sqlx::PgConnection::connect(&self.owner_url).await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut c).await.unwrap()
            }
        }
    }
}

/// A running server and a client for it.
pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub db: Database,
    pub running: Option<Running>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json body with this status and code, and returns it.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "expected {status} {code}, got: {}", self.text);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.text);
        assert_eq!(self.body["code"], code, "{}", self.text);
        assert_eq!(self.body["type"], format!("https://runway.dev/problems/{code}"));
        assert_eq!(self.body["status"], status);
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        &self.body
    }

    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected response: {}", self.text);
        &self.body
    }
}

impl TestServer {
    pub async fn start(engine: Engine) -> TestServer {
        Self::start_with(engine, |_| {}).await
    }

    pub async fn start_with(engine: Engine, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let db = Database::create(&engine).await;
        let mut config = db.config();
        tweak(&mut config);
        Self::start_on(db, config, Arc::new(SystemClock)).await
    }

    /// Starts a server on an existing database (a second replica, or a custom clock).
    pub async fn start_on(db: Database, config: Config, clock: Arc<dyn Clock>) -> TestServer {
        // As the binary does: tracing with W3C trace context (once per process).
        runway_server::telemetry::init(&config);
        let running = runway_server::start(config, clock).await.expect("server starts");
        let base = format!("http://{}", running.addr);
        TestServer { base, http: reqwest::Client::new(), db, running: Some(running) }
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::read(req.send().await.expect("request sent")).await
    }

    pub async fn read(res: reqwest::Response) -> Resp {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, text, body }
    }

    /// The Prometheus text from the metrics listener.
    pub async fn metrics_text(&self) -> String {
        let addr = self.running.as_ref().and_then(|r| r.metrics_addr).expect("the metrics listener is on");
        self.http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// A counter or gauge from `/metrics` without labels; `None` until it is first recorded.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Creates a tenant as the admin; returns its JSON.
    pub async fn tenant(&self, slug: &str) -> Value {
        self.post("/v1/tenants", ADMIN, json!({"slug": slug, "name": format!("Tenant {slug}")})).await.ok(201).clone()
    }

    /// Mints a tenant key as the admin; returns (token, key id).
    pub async fn tenant_key(&self, tenant: &str, scopes: &[&str]) -> (String, String) {
        let r =
            self.post(&format!("/v1/tenants/{tenant}/keys"), ADMIN, json!({"name": "test", "scopes": scopes})).await;
        let b = r.ok(201);
        (b["token"].as_str().unwrap().to_owned(), b["id"].as_str().unwrap().to_owned())
    }

    /// Mints a service key as the admin; returns (token, key id).
    pub async fn service_key(&self, scopes: &[&str]) -> (String, String) {
        let r = self.post("/v1/service-keys", ADMIN, json!({"name": "svc", "scopes": scopes})).await;
        let b = r.ok(201);
        (b["token"].as_str().unwrap().to_owned(), b["id"].as_str().unwrap().to_owned())
    }
}

/// Every scope a tenant key may hold.
pub const TENANT_SCOPES: &[&str] = &["tenants:read", "keys:read", "keys:write", "audit:read"];

/// Runs the `runway` binary against `db` with extra arguments; returns (exit ok, stdout, stderr).
pub fn cli(db: &Database, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(args)
        .env("RUNWAY_DATABASE_URL", &db.app_url)
        .env("RUNWAY_CRYPTO_MASTER_KEY", MASTER_KEY)
        .env_remove("RUNWAY_ADMIN_TOKEN")
        .env_remove("RUNWAY_URL")
        .env_remove("RUNWAY_TOKEN")
        .current_dir(&db.dir)
        .output()
        .expect("runway binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the `runway` binary against the server's HTTP API (`--url`, `--token`), with no way to
/// reach the store: its database URL names a file that cannot exist. Returns (exit ok, stdout,
/// stderr).
pub fn cli_remote(s: &TestServer, token: &str, args: &[&str]) -> (bool, String, String) {
    let (code, stdout, stderr) = cli_remote_code(s, token, args);
    (code == Some(0), stdout, stderr)
}

/// [`cli_remote`] with the exit code itself (commands such as `gate check` speak through it).
pub fn cli_remote_code(s: &TestServer, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(["--url", &s.base, "--token", token])
        .args(args)
        .env("RUNWAY_DATABASE_URL", "sqlite:///nonexistent-runway-dir/runway.db")
        .env_remove("RUNWAY_CRYPTO_MASTER_KEY")
        .env_remove("RUNWAY_ADMIN_TOKEN")
        .env_remove("RUNWAY_URL")
        .env_remove("RUNWAY_TOKEN")
        .current_dir(&s.db.dir)
        .output()
        .expect("runway binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a test receiver does with each delivery it gets.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    Ok,
    /// Answer 500 to the first `n` requests, then 200.
    FailFirst(usize),
    AlwaysFail,
    /// Answer 500 to every third request.
    FailEveryThird,
    /// Take this many milliseconds to answer 200.
    Slow(u64),
}

/// Deliveries a receiver got: headers and body of each.
pub type Deliveries = Arc<std::sync::Mutex<Vec<(reqwest::header::HeaderMap, Vec<u8>)>>>;

/// A real HTTP server that records every webhook delivery it receives.
pub struct Receiver {
    pub url: String,
    pub got: Deliveries,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Receiver {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, StatusCode};
        let got: Deliveries = Default::default();
        let sink = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let sink = sink.clone();
                async move {
                    let n = {
                        let mut g = sink.lock().unwrap();
                        g.push((headers, body.to_vec()));
                        g.len()
                    };
                    if let Behaviour::Slow(ms) = behaviour {
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                    let ok = match behaviour {
                        Behaviour::Ok | Behaviour::Slow(_) => true,
                        Behaviour::FailEveryThird => n % 3 != 0,
                        Behaviour::FailFirst(k) => n > k,
                        Behaviour::AlwaysFail => false,
                    };
                    if ok {
                        (StatusCode::OK, "thanks")
                    } else {
                        (StatusCode::INTERNAL_SERVER_ERROR, "receiver is down")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url: format!("http://{addr}/hook"), got }
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

/// Polls `check` until it holds, failing after 20 s.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(std::time::Duration::from_secs(20), what, check).await
}

/// Polls `check` until it holds, failing after `limit`.
pub async fn eventually_within<F, Fut>(limit: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
