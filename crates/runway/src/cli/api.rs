//! The one way commands reach Runway: its HTTP API. With `--url` the requests go to that server
//! with the `--token` credential; without, to the same router in this process on the local store
//! (no listener, no background work), acting as the local operator ([`InProcess`]). Either way
//! the server's handlers apply its rules (scopes, PII redaction, validation) and answer, and the
//! commands render what they answered, so local and remote output cannot diverge.

use super::output::Json;
use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use runway_core::SystemClock;
use runway_core::config::Config;
use runway_identity::InProcess;
use runway_server::AppState;
use std::sync::Arc;
use tower::ServiceExt;

const USER_AGENT: &str = concat!("runway-cli/", env!("CARGO_PKG_VERSION"));

/// Most items a list route returns per page.
const PAGE: usize = 100;

/// Query parameters; `None` values are left out.
pub type Query<'a> = [(&'a str, Option<String>)];

enum Transport {
    Remote { http: reqwest::Client, base: String, token: String },
    Local { router: axum::Router, state: AppState },
}

/// A client of the API, remote or in this process.
pub struct Api {
    transport: Transport,
}

/// An error answer as the CLI reports it (`error: <detail> (field `/name`)`), exit code 1.
#[derive(Debug)]
pub struct Problem {
    pub detail: String,
    pub field: Option<String>,
    pub parameter: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)?;
        if let Some(field) = &self.field {
            write!(f, " (field `{field}`)")?;
        }
        if let Some(p) = &self.parameter {
            write!(f, " (parameter `{p}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

/// Characters kept as they are in a path segment: the unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// One path segment from user input, percent-encoded. Empty, `.` and `..` are refused: URL
/// parsers resolve them, so they would reach a different route than the one meant.
pub fn seg(raw: &str) -> anyhow::Result<String> {
    if raw.is_empty() || raw == "." || raw == ".." {
        bail!("`{raw}` cannot name anything here");
    }
    Ok(utf8_percent_encode(raw, SEGMENT).to_string())
}

fn target(path: &str, query: &Query<'_>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in query {
        if let Some(v) = v {
            q.append_pair(k, v);
            any = true;
        }
    }
    if any { format!("{path}?{}", q.finish()) } else { path.to_owned() }
}

impl Api {
    /// A client of the server at `url`, authenticating with `token`.
    pub fn remote(url: &str, token: &str) -> anyhow::Result<Api> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("--url `{url}` is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || parsed.fragment().is_some() {
            bail!("--url must be an http:// or https:// base URL such as https://runway.example.com, not `{url}`");
        }
        if token.trim().is_empty() {
            bail!("--token (RUNWAY_TOKEN) is empty");
        }
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(300))
            .build()
            .context("setting up the HTTP client")?;
        Ok(Api {
            transport: Transport::Remote {
                http,
                base: url.trim_end_matches('/').to_owned(),
                token: token.trim().to_owned(),
            },
        })
    }

    /// The router in this process, on the store `config` names.
    pub async fn local(config: Config) -> anyhow::Result<Api> {
        let state = runway_server::open_local(config, Arc::new(SystemClock)).await.context("opening the store")?;
        let router = runway_server::router(state.clone());
        Ok(Api { transport: Transport::Local { router, state } })
    }

    /// The local store's state, for maintenance that has no API (`events purge`).
    pub fn local_state(&self) -> Option<&AppState> {
        match &self.transport {
            Transport::Local { state, .. } => Some(state),
            Transport::Remote { .. } => None,
        }
    }

    /// Closes the local store; nothing to do for a remote server.
    pub async fn close(self) {
        if let Transport::Local { state, .. } = self.transport {
            state.store.close().await;
        }
    }

    pub async fn get(&self, path: &str, query: &Query<'_>) -> anyhow::Result<Json> {
        self.call(Method::GET, &target(path, query), None).await
    }

    /// A POST; `Json::Null` when the answer has no body (202, 204).
    pub async fn post(&self, path: &str, query: &Query<'_>, body: Option<serde_json::Value>) -> anyhow::Result<Json> {
        self.call(Method::POST, &target(path, query), body).await
    }

    pub async fn put(&self, path: &str, body: serde_json::Value) -> anyhow::Result<Json> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: serde_json::Value) -> anyhow::Result<Json> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Json> {
        self.call(Method::DELETE, path, None).await
    }

    /// The items of a paginated list, following `next_cursor` until the last page or until
    /// `limit` items (all of them without a limit).
    pub async fn pages(&self, path: &str, query: &Query<'_>, limit: Option<usize>) -> anyhow::Result<Vec<Json>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let want = limit.map_or(PAGE, |l| l.saturating_sub(items.len()).clamp(1, PAGE));
            let mut q: Vec<(&str, Option<String>)> = query.to_vec();
            q.push(("limit", Some(want.to_string())));
            q.push(("cursor", cursor.take()));
            let mut page = self.get(path, &q).await?;
            items.extend(page.take("data").into_items());
            cursor = page.take("next_cursor").as_str().map(str::to_owned);
            if cursor.is_none() || limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        if let Some(l) = limit {
            items.truncate(l);
        }
        Ok(items)
    }

    async fn call(&self, method: Method, target: &str, body: Option<serde_json::Value>) -> anyhow::Result<Json> {
        let body = body.map(|b| serde_json::to_vec(&b)).transpose()?;
        let (status, content_type, bytes) = match &self.transport {
            Transport::Remote { http, base, token } => {
                let url = format!("{base}{target}");
                let mut req = http.request(method, &url).bearer_auth(token).header(header::ACCEPT, "application/json");
                if let Some(b) = body {
                    req = req.header(header::CONTENT_TYPE, "application/json").body(b);
                }
                let res = req.send().await.with_context(|| format!("could not reach {base}"))?;
                let status = res.status();
                let ct = res.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let bytes = res.bytes().await.with_context(|| format!("reading the answer from {base}"))?;
                (status, ct, bytes)
            }
            Transport::Local { router, .. } => {
                let mut req = Request::builder()
                    .method(method)
                    .uri(target)
                    .header(header::USER_AGENT, HeaderValue::from_static(USER_AGENT))
                    .header(header::ACCEPT, "application/json");
                if body.is_some() {
                    req = req.header(header::CONTENT_TYPE, "application/json");
                }
                let mut req = req.body(body.map_or_else(Body::empty, Body::from)).context("building the request")?;
                req.extensions_mut().insert(InProcess::cli());
                let res = match router.clone().oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                };
                let status = res.status();
                let ct = res.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.context("reading the answer")?;
                (status, ct, bytes)
            }
        };
        if !status.is_success() {
            return Err(problem(status, content_type.as_deref(), &bytes).into());
        }
        if bytes.is_empty() {
            return Ok(Json::Null);
        }
        serde_json::from_slice(&bytes).with_context(|| {
            let start = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            format!("the answer to {target} is not JSON: {start}")
        })
    }
}

/// Reads an error answer: problem+json as Runway sends it (the wire type of the one error
/// table), or whatever a proxy in between said.
fn problem(status: StatusCode, content_type: Option<&str>, bytes: &[u8]) -> Problem {
    let parsed = content_type
        .is_some_and(|ct| ct.contains("json"))
        .then(|| serde_json::from_slice::<runway_core::error::Problem>(bytes).ok())
        .flatten();
    match parsed {
        Some(p) => Problem { detail: p.detail, field: p.field, parameter: p.parameter },
        None => {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim().to_owned();
            let detail =
                if body.is_empty() { format!("the server answered {status}") } else { format!("{status}: {body}") };
            Problem { detail, field: None, parameter: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_and_dot_segments_refused() {
        assert_eq!(seg("acme-co").unwrap(), "acme-co");
        assert_eq!(seg("a/b?c d").unwrap(), "a%2Fb%3Fc%20d");
        assert!(seg("..").is_err() && seg(".").is_err() && seg("").is_err());
    }

    #[test]
    fn targets_leave_out_absent_parameters() {
        assert_eq!(target("/v1/tenants", &[("state", None)]), "/v1/tenants");
        assert_eq!(
            target("/v1/flags", &[("tag", Some("a b&c".into())), ("archived", None), ("limit", Some("5".into()))]),
            "/v1/flags?tag=a+b%26c&limit=5"
        );
    }

    #[test]
    fn problems_name_their_field_or_parameter() {
        let body = br#"{"type":"t","title":"x","status":422,"detail":"must be 1 to 200 characters","code":"validation_failed","field":"/name"}"#;
        let p = problem(StatusCode::UNPROCESSABLE_ENTITY, Some("application/problem+json"), body);
        assert_eq!(p.to_string(), "must be 1 to 200 characters (field `/name`)");
        let p = problem(StatusCode::BAD_GATEWAY, Some("text/html"), b"<h1>bad gateway</h1>");
        assert_eq!(p.to_string(), "502 Bad Gateway: <h1>bad gateway</h1>");
    }
}
