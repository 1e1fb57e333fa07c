//! The `gateway` scenario of `runway-bench`: in one run, on loopback, with the same load tool
//! (`wrk`, 2 threads, 64 keep-alive connections) and the same upstream (an nginx server block
//! answering 200): the upstream direct; Runway's gateway with key authentication, GCRA and
//! the bulkheads; nginx as a plain proxy; nginx with `limit_req` and a key `map` (the closest
//! nginx comes to the same work); Runway's gateway with the limits in Redis. Beside them, to
//! show where the time goes: the gateway on an anonymous route (no key, no limits) and a bare
//! proxy of the same building blocks (hyper-util's client behind axum on the gateway's thread
//! per core listener, no gateway work), each with its CPU time per request. Then one
//! connection's p50 (direct and through the gateway) and the gateway's RSS holding 1,000 idle
//! keep-alive connections. Needs `wrk` and `nginx` (Debian: `apt-get install wrk nginx-light`).

use anyhow::Context;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// What `wrk --latency` reported.
pub struct WrkRun {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `wrk`'s latency figures (`1.23ms`, `456.00us`, `1.20s`) in milliseconds.
fn millis(v: &str) -> Option<f64> {
    let (num, unit) = v.trim().split_at(v.trim().find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Runs wrk and reads its report.
pub fn wrk(url: &str, threads: u32, connections: u32, seconds: u64, key: Option<&str>) -> anyhow::Result<WrkRun> {
    let mut cmd = std::process::Command::new("wrk");
    cmd.args(["-t", &threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{seconds}s"), "--latency"]);
    if let Some(k) = key {
        cmd.args(["-H", &format!("Authorization: Bearer {k}")]);
    }
    let out = cmd.arg(url).output().context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
            .map(|r| r.split_whitespace().next().unwrap_or(""))
    };
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok()).context("wrk printed no Requests/sec")?;
    let p50_ms = field("50%").and_then(millis).context("wrk printed no p50")?;
    let p99_ms = field("99%").and_then(millis).context("wrk printed no p99")?;
    // Non-2xx answers and socket errors both count as errors.
    let non2xx: u64 = field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let socket: u64 = text
        .lines()
        .find(|l| l.contains("Socket errors:"))
        .map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Ok(WrkRun { rps, p50_ms, p99_ms, errors: non2xx + socket })
}

/// Waits until something accepts connections on `port` (nginx after its start), for at most 10 s.
async fn listening(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("nothing listens on 127.0.0.1:{port} after 10 s (see nginx's error.log)")
}

/// nginx as the upstream (one server block answering 200) and as the two proxies to compare.
struct Nginx {
    child: std::process::Child,
}

impl Nginx {
    fn start(dir: &Path, upstream: u16, proxy: u16, limited: u16, key: &str) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(dir)?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 2;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  map_hash_bucket_size 256;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;\n\
               uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n\
               upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n\
               map $http_authorization $tenant {{ default \"\"; \"Bearer {key}\" \"acme\"; }}\n\
               limit_req_zone $tenant zone=tenants:10m rate=10000000r/s;\n\
               server {{ listen 127.0.0.1:{upstream}; location / {{ return 200 \"ok\\n\"; }} }}\n\
               server {{ listen 127.0.0.1:{proxy}; location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
               server {{ listen 127.0.0.1:{limited}; location / {{\n\
                 if ($tenant = \"\") {{ return 401; }}\n\
                 limit_req zone=tenants burst=10000000 nodelay;\n\
                 proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = std::process::Command::new("nginx")
            .args(["-c", &dir.join("nginx.conf").display().to_string(), "-g", "daemon off;"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx-light)")?;
        Ok(Nginx { child })
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (SIGKILL would leave them running).
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// A `runway serve` process with one gateway route to the upstream.
struct Gateway {
    child: std::process::Child,
    api: String,
    gateway: String,
}

impl Gateway {
    fn start(dir: &Path, upstream: u16, redis: Option<&str>, admin: &str) -> anyhow::Result<Gateway> {
        use std::io::{BufRead, BufReader};
        let exe = std::env::current_exe()?.with_file_name("runway");
        std::fs::create_dir_all(dir)?;
        let redis = redis.map(|r| format!("redis_url = \"{r}\"\n")).unwrap_or_default();
        std::fs::write(
            dir.join("runway.toml"),
            format!(
                "[log]\nlevel = \"error\"\n[tenants]\ndefault_plan = \"bench\"\n[auth]\nservice_key_plan = \"bench\"\n\
                 [plans.bench]\nrequests_per_second = 10000000\nburst = 10000000\nmax_concurrent_requests = 100000\n\
                 [gateway]\nsli_flush_ms = 10000\n{redis}\
                 [[gateway.routes]]\nname = \"bench\"\npath_prefix = \"/\"\nauth = \"tenant_key\"\n\
                 max_concurrent_requests = 100000\nupstream = [{{ url = \"http://127.0.0.1:{upstream}\" }}]\n\
                 [[gateway.routes]]\nname = \"anon\"\npath_prefix = \"/anon\"\nauth = \"anonymous\"\n\
                 upstream = [{{ url = \"http://127.0.0.1:{upstream}\" }}]\n"
            ),
        )?;
        let mut child = std::process::Command::new(&exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--gateway-listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env("RUNWAY_CONFIG", dir.join("runway.toml"))
            .env("RUNWAY_DATABASE_URL", format!("sqlite://{}/runway.db", dir.display()))
            .env("RUNWAY_ADMIN_TOKEN", admin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let (mut api, mut gateway) = (None, None);
        for line in lines.by_ref() {
            let line = line?;
            if let Some((_, a)) = line.split_once("listening on ") {
                api = Some(a.trim().to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("Gateway") {
                gateway = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.contains("Ctrl-C") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Gateway { child, api: api.context("no API address")?, gateway: gateway.context("no gateway address")? })
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }
}

/// User and system CPU time of a process so far, in clock ticks (1/100 s on Linux).
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces): utime and stime are the
            // 12th and 13th of them.
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Runs `wrk` against `url` and measures the CPU time `pid` spent per request meanwhile (µs).
fn wrk_with_cpu(pid: u32, url: &str, seconds: u64, key: Option<&str>) -> anyhow::Result<(WrkRun, f64)> {
    let before = cpu_ticks(pid);
    let run = wrk(url, 2, 64, seconds, key)?;
    let ticks = cpu_ticks(pid).saturating_sub(before);
    let requests = (run.rps * seconds as f64).max(1.0);
    Ok((run, ticks as f64 * 10_000.0 / requests))
}

/// A proxy of the gateway's building blocks alone: hyper-util's pooled client per thread,
/// behind an axum fallback, on the gateway's thread per core listener; no authentication,
/// limits, records or header work. Its speed is the ceiling the gateway's own work lowers.
async fn bare_proxy(
    upstream: u16,
) -> anyhow::Result<(String, runway_gateway::listener::Listening, tokio::sync::watch::Sender<bool>)> {
    use hyper_util::client::legacy::{Client, connect::HttpConnector};
    type Bare = Client<HttpConnector, axum::body::Body>;
    thread_local! {
        static CLIENT: Bare = {
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            Client::builder(hyper_util::rt::TokioExecutor::new()).pool_max_idle_per_host(256).build(c)
        };
    }
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| async move {
        let (mut parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        parts.uri = format!("http://127.0.0.1:{upstream}{pq}").parse().expect("a valid URI");
        let client = CLIENT.with(Clone::clone);
        match client.request(axum::http::Request::from_parts(parts, body)).await {
            Ok(res) => res.map(axum::body::Body::new),
            Err(_) => axum::http::Response::builder().status(502).body(axum::body::Body::empty()).expect("a response"),
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let listening = runway_gateway::listener::start(listener, app, None, 0, stopped)?;
    Ok((format!("http://{}/", listening.addr), listening, stop))
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// A tenant and a tenant key on the gateway's store.
async fn tenant_key(api: &str, admin: &str) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    http.post(format!("{api}/v1/tenants"))
        .bearer_auth(admin)
        .json(&json!({"slug": "acme", "name": "Acme"}))
        .send()
        .await?;
    let key: Value = http
        .post(format!("{api}/v1/tenants/acme/keys"))
        .bearer_auth(admin)
        .json(&json!({"name": "bench", "scopes": ["events:read"]}))
        .send()
        .await?
        .json()
        .await?;
    key["token"].as_str().map(str::to_owned).context("no key token")
}

/// Opens `n` keep-alive connections, each carrying one proxied request, and keeps them.
async fn hold_idle(gateway: &str, key: &str, n: usize) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gateway.trim_start_matches("http://");
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /idle HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = [0u8; 1024];
        let got = s.read(&mut buf).await?;
        anyhow::ensure!(got > 0 && buf.starts_with(b"HTTP/1.1 200"), "an idle connection's request failed");
        held.push(s);
    }
    Ok(held)
}

pub async fn run(seconds: u64, admin: &str) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("runway-bench-gateway-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (upstream, proxy, limited) = (free_port()?, free_port()?, free_port()?);
    // The key nginx's map knows must be the gateway's key: start the gateway first.
    let gw = Gateway::start(&dir.join("runway"), upstream, None, admin)?;
    let key = tenant_key(&gw.api, admin).await?;
    let _nginx = Nginx::start(&dir.join("nginx"), upstream, proxy, limited, &key)?;
    for port in [upstream, proxy, limited] {
        listening(port).await?;
    }
    let target = |port: u16| format!("http://127.0.0.1:{port}/");
    let gw_url = format!("{}/", gw.gateway);
    // Warm-up: pools filled, code paged in.
    wrk(&gw_url, 2, 64, 2, Some(&key))?;
    wrk(&target(limited), 2, 64, 2, Some(&key))?;

    let mut rows = Vec::new();
    let mut row = |name: &str, r: &WrkRun| {
        rows.push(format!("| {name} | {:.0} | {:.3} | {:.3} | {} |", r.rps, r.p50_ms, r.p99_ms, r.errors));
    };
    let direct = wrk(&target(upstream), 2, 64, seconds, None)?;
    row("upstream direct (nginx `return 200`)", &direct);
    let gw_pid = gw.child.id();
    let (ours, ours_cpu) = wrk_with_cpu(gw_pid, &gw_url, seconds, Some(&key))?;
    row("Runway gateway: tenant key, GCRA per tenant and key, tenant and route bulkheads", &ours);
    let (anon, anon_cpu) = wrk_with_cpu(gw_pid, &format!("{gw_url}anon/"), seconds, None)?;
    row("Runway gateway, anonymous route (no key, no limits)", &anon);
    let (bare_url, bare_listening, bare_stop) = bare_proxy(upstream).await?;
    wrk(&bare_url, 2, 64, 2, None)?;
    let (bare, bare_cpu) = wrk_with_cpu(std::process::id(), &bare_url, seconds, None)?;
    row("bare hyper-util + axum proxy, thread per core (no gateway work)", &bare);
    let _ = bare_stop.send(true);
    let _ = bare_listening.served.await;
    let plain = wrk(&target(proxy), 2, 64, seconds, None)?;
    row("nginx proxy_pass (keep-alive), no limits", &plain);
    let theirs = wrk(&target(limited), 2, 64, seconds, Some(&key))?;
    row("nginx proxy_pass + limit_req + key map", &theirs);

    let one_direct = wrk(&target(upstream), 1, 1, seconds.min(5), None)?;
    let one_gw = wrk(&gw_url, 1, 1, seconds.min(5), Some(&key))?;
    let rss_before = gw.rss_kib();
    let held = hold_idle(&gw.gateway, &key, 1000).await?;
    // Every connection has answered; this pause only lets the allocator's deferred work settle
    // before the RSS is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = gw.rss_kib();
    drop(held);
    drop(gw);

    // The same gateway with its limits in Redis (the machine's Redis on 6379).
    let redis_gw = Gateway::start(&dir.join("runway-redis"), upstream, Some("redis://127.0.0.1:6379"), admin)?;
    let rkey = tenant_key(&redis_gw.api, admin).await?;
    wrk(&format!("{}/", redis_gw.gateway), 2, 64, 2, Some(&rkey))?;
    let redis = wrk(&format!("{}/", redis_gw.gateway), 2, 64, seconds, Some(&rkey))?;
    row("Runway gateway, limits shared through Redis", &redis);
    drop(redis_gw);

    println!("wrk, 2 threads, 64 keep-alive connections, {seconds} s each, loopback, one machine");
    println!();
    println!("| target | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!(
        "Runway gateway vs nginx with its limits: {:.2}× the req/s; p99 {:.3} ms vs {:.3} ms",
        ours.rps / theirs.rps,
        ours.p99_ms,
        theirs.p99_ms
    );
    println!(
        "CPU per proxied request: gateway {ours_cpu:.1} µs (tenant key), {anon_cpu:.1} µs (anonymous); bare hyper-util proxy {bare_cpu:.1} µs"
    );
    println!(
        "One connection: p50 direct {:.3} ms, through the gateway {:.3} ms (added {:.0} µs)",
        one_direct.p50_ms,
        one_gw.p50_ms,
        (one_gw.p50_ms - one_direct.p50_ms) * 1000.0
    );
    println!(
        "Gateway RSS: {:.1} MiB after the runs, {:.1} MiB holding 1,000 idle keep-alive connections",
        rss_before as f64 / 1024.0,
        rss_idle as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
