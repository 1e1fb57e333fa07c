//! Route matching and the path sent upstream: pure, free of I/O.

use runway_core::config::RouteConfig;

/// The routes of one configuration, ready to match requests.
pub struct RouteTable {
    routes: Vec<Route>,
}

/// A route as matched (its pool, balancing and resilience state live in `pool.rs`).
pub struct Route {
    pub config: RouteConfig,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig]) -> RouteTable {
        let routes = routes.iter().map(|r| Route { config: r.clone() }).collect();
        RouteTable { routes }
    }

    /// The position of the route named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.config.name == name)
    }

    /// The config of the route at `i` (a position [`RouteTable::find`] or `position` gave).
    pub fn config(&self, i: usize) -> &RouteConfig {
        &self.routes[i].config
    }

    /// The route for a request: host (if the route names hosts), method (if it names methods)
    /// and path prefix at a `/` boundary must match; the longest prefix wins, then the first
    /// declared. Also its position, under which per-route state (clients, bulkheads) is kept.
    pub fn find(&self, host: Option<&str>, method: &str, path: &str) -> Option<(usize, &Route)> {
        let host = host.map(|h| strip_port(h).to_ascii_lowercase());
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                let c = &r.config;
                (c.hosts.is_empty()
                    || host.as_deref().is_some_and(|h| c.hosts.iter().any(|x| x.eq_ignore_ascii_case(h))))
                    && (c.methods.is_empty() || c.methods.iter().any(|m| m == method))
                    && prefix_matches(&c.path_prefix, path)
                    && c.path_pattern.as_deref().is_none_or(|p| pattern_matches(p, path))
            })
            .fold(None, |best: Option<(usize, &Route)>, (i, r)| {
                let rank = |r: &Route| (r.config.path_prefix.len(), r.config.path_pattern.is_some());
                match best {
                    Some((_, b)) if rank(b) >= rank(r) => best,
                    _ => Some((i, r)),
                }
            })
    }
}

impl Route {
    /// The path sent upstream: without the prefix when the route strips it (never empty).
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.config.strip_prefix {
            return path.into();
        }
        let prefix = self.config.path_prefix.trim_end_matches('/');
        let rest = path.strip_prefix(prefix).unwrap_or(path);
        if rest.starts_with('/') { rest.into() } else { format!("/{rest}").into() }
    }
}

/// Whether `path` matches a `path_pattern` whole: literal segments equal, `{name}` any one
/// non-empty segment, `{*rest}` (last) anything after, nothing included.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/').skip(1);
    let mut got = path.split('/').skip(1);
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), _) if w.starts_with("{*") => return true,
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    let prefix = prefix.trim_end_matches('/');
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { host })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runway_core::config::{RouteAuth, UpstreamTarget};

    fn route(name: &str, prefix: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            hosts: vec![],
            path_prefix: prefix.into(),
            path_pattern: None,
            methods: vec![],
            strip_prefix: false,
            upstream: vec![UpstreamTarget { url: "http://127.0.0.1:1".into(), weight: 1 }],
            auth: RouteAuth::Anonymous,
            scopes: vec![],
            connect_timeout_ms: 1,
            request_timeout_ms: 1,
            idle_timeout_ms: 60_000,
            body_limit_bytes: 1,
            max_concurrent_requests: None,
            rate_limit: None,
            resilience: Default::default(),
            idempotency: Default::default(),
            idempotency_ttl_secs: 86_400,
            idempotency_max_response_bytes: 1 << 20,
            openapi_file: None,
            openapi: None,
            policies: vec![],
        }
    }

    #[test]
    fn the_longest_prefix_at_a_segment_boundary_wins() {
        let t = RouteTable::new(&[route("all", "/"), route("api", "/api"), route("v2", "/api/v2/")]);
        let name = |p: &str| t.find(None, "GET", p).map(|(_, r)| r.config.name.clone());
        assert_eq!(name("/api/v2/x").as_deref(), Some("v2"));
        assert_eq!(name("/api/v2").as_deref(), Some("v2"));
        assert_eq!(name("/api/v1").as_deref(), Some("api"));
        assert_eq!(name("/api").as_deref(), Some("api"));
        assert_eq!(name("/apiary").as_deref(), Some("all"), "a prefix matches whole segments only");
        let none = RouteTable::new(&[route("api", "/api")]);
        assert!(none.find(None, "GET", "/other").is_none());
    }

    #[test]
    fn hosts_and_methods_narrow_a_route() {
        let mut a = route("a", "/");
        a.hosts = vec!["api.example.com".into()];
        a.methods = vec!["GET".into()];
        let t = RouteTable::new(&[a]);
        assert!(t.find(Some("API.example.com:8080"), "GET", "/x").is_some(), "case and port do not matter");
        assert!(t.find(Some("other.example.com"), "GET", "/x").is_none());
        assert!(t.find(None, "GET", "/x").is_none());
        assert!(t.find(Some("api.example.com"), "POST", "/x").is_none());
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn patterns_match_whole_paths_and_win_at_the_same_prefix() {
        assert!(pattern_matches("/orders/{id}/items", "/orders/7/items"));
        assert!(!pattern_matches("/orders/{id}/items", "/orders/7"));
        assert!(!pattern_matches("/orders/{id}/items", "/orders//items"));
        assert!(!pattern_matches("/orders/{id}/items", "/orders/7/items/1"));
        assert!(pattern_matches("/files/{*rest}", "/files/a/b/c"));
        assert!(pattern_matches("/files/{*rest}", "/files/"));
        let mut items = route("items", "/orders");
        items.path_pattern = Some("/orders/{id}/items".into());
        let t = RouteTable::new(&[route("orders", "/orders"), items]);
        assert_eq!(t.find(None, "GET", "/orders/7/items").unwrap().1.config.name, "items");
        assert_eq!(t.find(None, "GET", "/orders/7").unwrap().1.config.name, "orders");
    }

    #[test]
    fn a_stripped_prefix_leaves_a_rooted_path() {
        let mut r = route("s", "/svc/");
        r.strip_prefix = true;
        let t = RouteTable::new(&[r]);
        let (_, route) = t.find(None, "GET", "/svc/orders/1").unwrap();
        assert_eq!(route.upstream_path("/svc/orders/1"), "/orders/1");
        assert_eq!(route.upstream_path("/svc"), "/");
    }
}
