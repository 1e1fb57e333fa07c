//! Loads the one typed config: built-in defaults, then `runway.toml`, then `RUNWAY_*`
//! environment variables, then command-line flags; then validates it.

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use runway_core::config::{Config, ConfigError};
use std::collections::HashMap;
use std::path::Path;

/// Environment variables that name a config key directly, beside the derived `RUNWAY_<KEY>`.
const ALIASES: &[(&str, &str)] = &[("admin_token", "auth.admin_token"), ("otlp_endpoint", "telemetry.otlp_endpoint")];

/// Every leaf key of the config, dotted (`database.url`), derived from the defaults so a new
/// field gets its environment variable without a list to keep.
fn leaf_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk("", &serde_json::to_value(Config::default()).unwrap_or_default(), &mut out);
    out
}

fn env_map() -> HashMap<String, String> {
    let mut map: HashMap<String, String> = leaf_keys().into_iter().map(|k| (k.replace('.', "_"), k)).collect();
    for (env, key) in ALIASES {
        map.insert((*env).to_owned(), (*key).to_owned());
    }
    map
}

/// The environment variable that sets a dotted key.
pub fn env_var_for(key: &str) -> String {
    format!("RUNWAY_{}", key.replace('.', "_").to_uppercase())
}

/// Values given on the command line, applied last.
pub type Overrides = Vec<(&'static str, toml::Value)>;

/// Loads and validates the config. `path` is `--config`; without it `./runway.toml` is read
/// when present.
pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
    let mut fig = Figment::new();
    match path {
        Some(p) => {
            if !p.exists() {
                return Err(ConfigError { key: "--config".into(), reason: format!("{} does not exist", p.display()) });
            }
            fig = fig.merge(Toml::file(p));
        }
        None => fig = fig.merge(Toml::file("runway.toml")),
    }
    let map = env_map();
    fig = fig.merge(
        Env::prefixed("RUNWAY_")
            .filter_map(move |k| map.get(&k.as_str().to_ascii_lowercase()).map(|v| v.clone().into())),
    );
    for (key, value) in overrides {
        fig = fig.merge((key, value));
    }
    let config: Config = fig.extract().map_err(|e| {
        let key = if e.path.is_empty() { "<root>".to_owned() } else { e.path.join(".") };
        ConfigError { key, reason: e.kind.to_string() }
    })?;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_has_an_env_var() {
        let keys = leaf_keys();
        assert!(keys.contains(&"database.url".to_owned()));
        assert!(keys.contains(&"server.listen".to_owned()));
        assert_eq!(env_var_for("database.url"), "RUNWAY_DATABASE_URL");
    }

    #[test]
    fn file_then_overrides() {
        let dir = std::env::temp_dir().join(format!("runway-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("runway.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:9000\"\nbody_limit_bytes = 4096\n").unwrap();
        let c = load(Some(&file), vec![("server.listen", toml::Value::String("127.0.0.1:9001".into()))]).unwrap();
        assert_eq!(c.server.listen.port(), 9001);
        assert_eq!(c.server.body_limit_bytes, 4096);

        std::fs::write(&file, "[server]\nbody_limit_bytes = \"big\"\n").unwrap();
        let e = load(Some(&file), vec![]).unwrap_err();
        assert_eq!(e.key, "server.body_limit_bytes");

        std::fs::write(&file, "[server]\nlisten_on = 1\n").unwrap();
        let e = load(Some(&file), vec![]).unwrap_err();
        assert!(e.reason.contains("listen_on"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn gateway_routes_load_from_the_file_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("runway-cfg-gw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("runway.toml");
        let route = "[[gateway.routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\n\
                     upstream = [{ url = \"http://127.0.0.1:8080\", weight = 2 }]\nauth = \"tenant_key\"\n";
        std::fs::write(&file, route).unwrap();
        let c = load(Some(&file), vec![]).unwrap();
        assert_eq!(c.gateway.routes[0].upstream[0].weight, 2);
        assert_eq!(c.gateway.routes[0].request_timeout_ms, 30_000, "defaults fill what is left out");

        std::fs::write(&file, format!("{route}retries = 3\n")).unwrap();
        let e = load(Some(&file), vec![]).unwrap_err();
        assert!(e.reason.contains("retries"), "an unknown key is named: {e}");
        std::fs::write(&file, route.replace("http://127.0.0.1:8080", "https://svc")).unwrap();
        assert_eq!(load(Some(&file), vec![]).unwrap_err().key, "gateway.routes[0].upstream[0].url");
        std::fs::write(&file, route.replace("tenant_key", "jwt")).unwrap();
        assert_eq!(load(Some(&file), vec![]).unwrap_err().key, "gateway.routes[0].auth", "jwt without issuers");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn environment_variables_map_to_keys() {
        // SAFETY: this test owns these variables; no other test reads them.
        unsafe {
            std::env::set_var("RUNWAY_AUTH_CREDENTIAL_CACHE_MS", "250");
            std::env::set_var("RUNWAY_OTLP_ENDPOINT", "http://collector:4318");
        }
        let c = load(Some(Path::new("/dev/null")), vec![]).unwrap();
        assert_eq!(c.auth.credential_cache_ms, 250);
        assert_eq!(c.telemetry.otlp_endpoint.as_deref(), Some("http://collector:4318"));
        unsafe {
            std::env::remove_var("RUNWAY_AUTH_CREDENTIAL_CACHE_MS");
            std::env::remove_var("RUNWAY_OTLP_ENDPOINT");
        }
    }
}
