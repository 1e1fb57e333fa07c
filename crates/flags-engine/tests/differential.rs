//! Generates random flags and contexts and checks that Runway's engine answers exactly as
//! `unleash-yggdrasil` (the engine inside Unleash's SDKs) does.
//!
//! The generator mixes in what only imports bring (the management API refuses it): unknown
//! operators, values that do not parse as numbers, dates, versions, regular expressions or
//! CIDR ranges, custom strategies and references to missing segments, on which Yggdrasil turns
//! a whole flag off or makes one constraint false. It stays away from what cannot be compared
//! run against run (random stickiness) and from rollouts over 100, which imports refuse.

use proptest::prelude::*;
use runway_flags_engine::wire::{
    ClientFeatures, ConstraintDef, FeatureDef, Payload, SegmentDef, StrategyDef, VariantDef,
};
use runway_flags_engine::{Context, Engine};
use serde_json::json;
use unleash_yggdrasil::{EngineState, UpdateMessage};

const PROPS: &[&str] = &["plan", "country", "version", "tenantId", "clientId"];

fn valid_value_for(op: &str) -> BoxedStrategy<String> {
    match op {
        o if o.starts_with("NUM_") => (0i32..20).prop_map(|n| n.to_string()).boxed(),
        o if o.starts_with("SEMVER_") => {
            (0u8..3, 0u8..3, 0u8..3, prop::option::of(prop::sample::select(vec!["alpha", "beta.1", "rc.2"])))
                .prop_map(|(a, b, c, pre)| match pre {
                    Some(p) => format!("{a}.{b}.{c}-{p}"),
                    None => format!("{a}.{b}.{c}"),
                })
                .boxed()
        }
        o if o.starts_with("DATE_") => (0u32..28).prop_map(|d| format!("2026-03-{:02}T12:00:00.000Z", d + 1)).boxed(),
        "IN_CIDR" => prop::sample::select(vec!["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32", "10.1.2.3"])
            .prop_map(String::from)
            .boxed(),
        "REGEX" => prop::sample::select(vec!["^a", "b$", "[0-9]+", "gold|silver"]).prop_map(String::from).boxed(),
        _ => prop::sample::select(vec!["a", "b", "gold", "silver", "1", "abc", "A"]).prop_map(String::from).boxed(),
    }
}

/// Values an Unleash server can serve that do not parse for the operator.
fn malformed_value_for(op: &str) -> Vec<&'static str> {
    match op {
        o if o.starts_with("NUM_") => vec!["abc", ".5", "1,5", "inf", "12 apples", "1.2.3", "2026-03-01T12:00:00.000Z"],
        o if o.starts_with("SEMVER_") => vec!["one", "v1.2.3", "1.2", "01.2.3", "1.2.3.4"],
        o if o.starts_with("DATE_") => {
            vec![
                "yesterday",
                "2026-03-01",
                "2026-03-01T12:00:00",
                "2026-03-01T12:00:00.123456Z",
                "2026-13-01T12:00:00Z",
                "12",
                "1.0.0",
            ]
        }
        "IN_CIDR" => vec!["nope", "10.0.0.0/33", "999.1.1.1"],
        "REGEX" => vec!["((", "[z-a]", "a{2,1}"],
        _ => vec![],
    }
}

fn value_for(op: &str) -> BoxedStrategy<String> {
    let bad = malformed_value_for(op);
    if bad.is_empty() {
        return valid_value_for(op);
    }
    prop_oneof![6 => valid_value_for(op), 1 => prop::sample::select(bad).prop_map(String::from)].boxed()
}

fn constraint() -> impl Strategy<Value = ConstraintDef> {
    let mut ops = runway_flags_engine::OPERATORS.to_vec();
    ops.push("NOT_AN_OPERATOR");
    (prop::sample::select(ops), prop::sample::select(vec!["userId", "plan", "country", "version", "remoteAddress"]))
        .prop_flat_map(|(op, field)| {
            (Just(op), Just(field), prop::collection::vec(value_for(op), 1..3), any::<bool>(), any::<bool>())
        })
        .prop_map(|(op, field, values, inverted, ci)| {
            let single = matches!(op, o if o.starts_with("NUM_") || o.starts_with("SEMVER_") || o.starts_with("DATE_") || o == "REGEX" || o == "NOT_AN_OPERATOR");
            ConstraintDef {
                context_name: field.into(),
                operator: op.into(),
                value: single.then(|| values[0].clone()),
                values: (!single).then_some(values),
                inverted,
                case_insensitive: ci,
            }
        })
}

fn variants(max: usize) -> impl Strategy<Value = Vec<VariantDef>> {
    prop::collection::vec((1u32..5, any::<bool>()), 0..max).prop_map(|ws| {
        ws.into_iter()
            .enumerate()
            .map(|(i, (w, payload))| VariantDef {
                name: format!("v{i}"),
                weight: w * 100,
                payload: payload.then(|| Payload { kind: "string".into(), value: format!("p{i}") }),
                ..Default::default()
            })
            .collect()
    })
}

fn strategy() -> impl Strategy<Value = StrategyDef> {
    let kind = prop::sample::select(vec![
        "default",
        "userWithId",
        "gradualRolloutUserId",
        "gradualRolloutSessionId",
        "remoteAddress",
        "flexibleRollout",
        "myCustomStrategy",
    ]);
    (
        kind,
        0u32..=100,
        prop::sample::select(vec!["default", "userId", "sessionId", "plan"]),
        prop::collection::vec(constraint(), 0..3),
        variants(3),
        prop_oneof![8 => Just(vec![]), 2 => Just(vec![1i64]), 1 => Just(vec![99i64])],
    )
        .prop_map(|(kind, pct, stickiness, constraints, variants, segments)| {
            let params = match kind {
                "userWithId" => json!({"userIds": "u1, u2,u3"}),
                "gradualRolloutUserId" | "gradualRolloutSessionId" => {
                    json!({"percentage": pct.to_string(), "groupId": "g"})
                }
                "remoteAddress" => json!({"IPs": "10.0.0.1, 192.168.1.0/24"}),
                "flexibleRollout" => json!({"rollout": pct.to_string(), "stickiness": stickiness, "groupId": "g"}),
                _ => json!({}),
            };
            StrategyDef {
                name: kind.into(),
                parameters: serde_json::from_value(params).unwrap(),
                constraints: Some(constraints),
                variants: Some(variants),
                segments: Some(segments),
                ..Default::default()
            }
        })
}

fn feature(i: usize) -> impl Strategy<Value = FeatureDef> {
    (
        any::<bool>(),
        prop::collection::vec(strategy(), 0..3),
        variants(4),
        prop::sample::select(vec!["default", "userId", "plan"]),
    )
        .prop_map(move |(enabled, strategies, mut variants, stickiness)| {
            if let Some(v) = variants.first_mut() {
                v.stickiness = Some(stickiness.into());
            }
            FeatureDef {
                name: format!("f{i}"),
                enabled,
                strategies: Some(strategies),
                variants: Some(variants),
                ..Default::default()
            }
        })
}

fn context() -> impl Strategy<Value = Context> {
    (
        prop::sample::select(vec!["u1", "u2", "u7", "abc", "alice"]),
        prop::option::of(prop::sample::select(vec!["s1", "s2", "s9"])),
        prop::option::of(prop::sample::select(vec!["10.0.0.1", "192.168.1.20", "2001:db8::1", "8.8.8.8"])),
        prop::collection::vec((prop::sample::select(PROPS.to_vec()), value_for("STR_CONTAINS")), 0..4),
        prop::option::of(value_for("SEMVER_EQ")),
    )
        .prop_map(|(user, session, addr, props, version)| {
            let mut ctx = Context {
                user_id: Some(user.into()),
                session_id: session.map(String::from),
                remote_address: addr.map(String::from),
                ..Default::default()
            };
            // Properties that variant stickiness reads are always present, so no pick is random.
            ctx.properties.insert("plan", "gold");
            for (k, v) in props {
                ctx.properties.insert(k, v);
            }
            if let Some(v) = version {
                ctx.properties.insert("version", v);
            }
            ctx
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn runway_and_yggdrasil_agree(features in prop::collection::vec(0usize..1, 1..2).prop_flat_map(|_| (feature(0), feature(1), feature(2))), segment in prop::collection::vec(constraint(), 1..3), contexts in prop::collection::vec(context(), 1..6)) {
        // Segment 1 exists (its constraints may be malformed too); segment 99 does not.
        let segments = Some(vec![SegmentDef { id: 1, name: Some("s".into()), constraints: segment }]);
        let doc = ClientFeatures { version: 2, features: vec![features.0, features.1, features.2], segments, ..Default::default() };
        let ours = Engine::compile(&doc);
        let theirs = EngineState::default();
        let text = serde_json::to_string(&doc).unwrap();
        // Yggdrasil warns about the flags it turns off; they must answer the same here.
        let _warnings = theirs.take_state(UpdateMessage::FullResponse(serde_json::from_str(&text).unwrap()));
        for ctx in &contexts {
            let ygg_ctx: unleash_yggdrasil::Context = serde_json::from_value(serde_json::to_value(ctx).unwrap()).unwrap();
            for name in ["f0", "f1", "f2", "missing"] {
                let a = ours.is_enabled(name, ctx);
                let b = theirs.is_enabled(name, &ygg_ctx, &None);
                prop_assert_eq!(a, b, "is_enabled({}) for {:?}\nstate: {}", name, ctx, text);
                let va = serde_json::to_value(ours.variant(name, ctx)).unwrap();
                let vb = theirs.get_variant(name, &ygg_ctx, &None);
                let vb = json!({"name": vb.name, "payload": vb.payload.map(|p| json!({"type": p.payload_type, "value": p.value})), "enabled": vb.enabled, "feature_enabled": vb.feature_enabled});
                let mut va = va;
                if va.get("payload").is_none() { va["payload"] = serde_json::Value::Null; }
                prop_assert_eq!(va, vb, "variant({}) for {:?}\nstate: {}", name, ctx, text);
            }
        }
    }
}
