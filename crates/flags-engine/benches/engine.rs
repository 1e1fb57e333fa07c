//! Runway's engine beside `unleash-yggdrasil` (the engine inside Unleash's SDKs), same inputs,
//! same run: `cargo bench -p runway-flags-engine`. BENCHMARKS.md records the figures and ratios.

use runway_flags_engine::wire::ClientFeatures;
use runway_flags_engine::{Context, Engine};
use serde_json::{Value, json};
use unleash_yggdrasil::{EngineState, UpdateMessage};

fn main() {
    divan::main();
}

/// A realistic flag: a 25 % rollout to German and French users on app version 2.1.0 or later.
fn realistic(name: &str) -> Value {
    json!({"name": name, "enabled": true, "strategies": [{
        "name": "flexibleRollout",
        "parameters": {"rollout": "25", "stickiness": "default", "groupId": name},
        "constraints": [
            {"contextName": "country", "operator": "IN", "values": ["DE", "FR", "NL"]},
            {"contextName": "appVersion", "operator": "SEMVER_GTE", "value": "2.1.0"}
        ]}],
        "variants": [{"name": "a", "weight": 500, "stickiness": "default"}, {"name": "b", "weight": 500, "stickiness": "default"}]})
}

/// `n` flags of mixed shapes, the realistic one among them.
fn state(n: usize) -> String {
    let features: Vec<Value> = (0..n)
        .map(|i| match i % 4 {
            0 => realistic(&format!("flag-{i}")),
            1 => json!({"name": format!("flag-{i}"), "enabled": true, "strategies": [
                {"name": "userWithId", "parameters": {"userIds": "u1,u2,u3,u4"}},
                {"name": "default", "constraints": [{"contextName": "plan", "operator": "IN", "values": ["enterprise"]}]}]}),
            2 => json!({"name": format!("flag-{i}"), "enabled": i % 3 != 0, "strategies": [
                {"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "userId", "groupId": format!("flag-{i}")},
                 "constraints": [{"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"], "caseInsensitive": true}]}]}),
            _ => json!({"name": format!("flag-{i}"), "enabled": true, "strategies": []}),
        })
        .collect();
    json!({"version": 2, "features": features}).to_string()
}

fn context() -> Context {
    let mut c = Context { user_id: Some("user-4711".into()), session_id: Some("s-1".into()), ..Default::default() };
    c.properties.insert("country", "DE");
    c.properties.insert("appVersion", "2.4.1");
    c.properties.insert("plan", "pro");
    c.properties.insert("email", "Ann@Example.com");
    c
}

fn ygg_context() -> unleash_yggdrasil::Context {
    serde_json::from_value(serde_json::to_value(context()).unwrap()).unwrap()
}

fn runway(text: &str) -> Engine {
    Engine::compile(&serde_json::from_str::<ClientFeatures>(text).unwrap())
}

fn yggdrasil(text: &str) -> EngineState {
    let e = EngineState::default();
    e.take_state(UpdateMessage::FullResponse(serde_json::from_str(text).unwrap()));
    e
}

mod realistic_flag {
    use super::*;

    #[divan::bench]
    fn runway(b: divan::Bencher) {
        let e = super::runway(&json!({"version": 2, "features": [realistic("checkout")]}).to_string());
        let ctx = context();
        b.bench(|| divan::black_box(e.evaluate(divan::black_box("checkout"), &ctx)));
    }

    #[divan::bench]
    fn yggdrasil(b: divan::Bencher) {
        let e = super::yggdrasil(&json!({"version": 2, "features": [realistic("checkout")]}).to_string());
        let ctx = ygg_context();
        b.bench(|| {
            let on = e.is_enabled(divan::black_box("checkout"), &ctx, &None);
            divan::black_box((on, e.get_variant("checkout", &ctx, &None)))
        });
    }
}

mod one_of_1000 {
    use super::*;

    #[divan::bench]
    fn runway(b: divan::Bencher) {
        let e = super::runway(&state(1000));
        let ctx = context();
        b.bench(|| divan::black_box(e.is_enabled(divan::black_box("flag-500"), &ctx)));
    }

    #[divan::bench]
    fn yggdrasil(b: divan::Bencher) {
        let e = super::yggdrasil(&state(1000));
        let ctx = ygg_context();
        b.bench(|| divan::black_box(e.is_enabled(divan::black_box("flag-500"), &ctx, &None)));
    }
}

mod all_100_flags {
    use super::*;

    #[divan::bench]
    fn runway(b: divan::Bencher) {
        let e = super::runway(&state(100));
        let ctx = context();
        b.bench(|| {
            for name in e.names() {
                divan::black_box(e.evaluate(name, &ctx));
            }
        });
    }

    #[divan::bench]
    fn yggdrasil(b: divan::Bencher) {
        let e = super::yggdrasil(&state(100));
        let ctx = ygg_context();
        b.bench(|| divan::black_box(e.resolve_all(&ctx, &None)));
    }
}

mod load_1000_flags {
    use super::*;

    #[divan::bench]
    fn runway(b: divan::Bencher) {
        let text = state(1000);
        b.bench(|| divan::black_box(super::runway(divan::black_box(&text))));
    }

    #[divan::bench]
    fn yggdrasil(b: divan::Bencher) {
        let text = state(1000);
        b.bench(|| divan::black_box(super::yggdrasil(divan::black_box(&text))));
    }
}
