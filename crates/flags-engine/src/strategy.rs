//! Activation strategies and stickiness, compiled from their string parameters.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use time::OffsetDateTime;

use crate::Variants;
use crate::constraint::{Constraint, parse_ip_or_net};
use crate::context::{Context, Field};
use crate::wire::StrategyDef;

/// The built-in strategies; any other name evaluates to false.
pub const STRATEGIES: &[&str] = &[
    "default",
    "userWithId",
    "gradualRolloutUserId",
    "gradualRolloutSessionId",
    "gradualRolloutRandom",
    "remoteAddress",
    "applicationHostname",
    "flexibleRollout",
];

/// MurmurHash3 x86 32-bit of `"{group}:{value}"`, without allocating for typical lengths.
pub fn hash(group: &str, value: &str, seed: u32) -> u32 {
    let len = group.len() + 1 + value.len();
    let mut stack = [0u8; 256];
    let mut heap;
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap = vec![0u8; len];
        &mut heap[..]
    };
    buf[..group.len()].copy_from_slice(group.as_bytes());
    buf[group.len()] = b':';
    buf[group.len() + 1..].copy_from_slice(value.as_bytes());
    let mut reader: &[u8] = buf;
    murmur3::murmur3_32(&mut reader, seed).expect("reading from a slice cannot fail")
}

/// Unleash's rollout bucket, 1..=100.
pub fn normalized_hash(group: &str, value: &str) -> u32 {
    hash(group, value, 0) % 100 + 1
}

/// Which context value keeps a user in the same bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stickiness {
    /// userId, then sessionId, then random.
    #[default]
    Default,
    Random,
    Field(Field),
}

impl Stickiness {
    pub fn parse(s: &str) -> Stickiness {
        match s {
            "" | "default" => Stickiness::Default,
            "random" => Stickiness::Random,
            other => Stickiness::Field(Field::parse(other)),
        }
    }

    /// The value to hash for a rollout: `Ok(None)` means "random", `Err` means the field is missing.
    fn rollout_value<'c>(&self, ctx: &'c Context) -> Result<Option<&'c str>, ()> {
        match self {
            Stickiness::Default => Ok(ctx.user_id.as_deref().or(ctx.session_id.as_deref())),
            Stickiness::Random => Ok(None),
            Stickiness::Field(f) => ctx.get(f).map(Some).ok_or(()),
        }
    }

    /// The value to hash for a variant pick; `None` means pick at random. Unlike some older SDKs,
    /// default stickiness does not fall back to remoteAddress (Yggdrasil's behaviour).
    pub(crate) fn variant_value<'c>(&self, ctx: &'c Context) -> Option<&'c str> {
        match self {
            Stickiness::Default => ctx.user_id.as_deref().or(ctx.session_id.as_deref()),
            Stickiness::Random => None,
            Stickiness::Field(f) => ctx.get(f),
        }
    }
}

#[derive(Debug)]
enum Kind {
    Default,
    UserWithId(Vec<String>),
    GradualUserId { percentage: u32, group: String },
    GradualSessionId { percentage: u32, group: String },
    GradualRandom { percentage: u32 },
    RemoteAddress(Vec<IpMatch>),
    ApplicationHostname(Vec<String>),
    Flexible { rollout: u32, stickiness: Stickiness, group: String },
    Unknown,
}

#[derive(Debug)]
enum IpMatch {
    Net(IpNet),
    Text(String),
}

/// A compiled strategy with its constraints (segments' constraints included).
#[derive(Debug)]
pub struct Strategy {
    kind: Kind,
    constraints: Vec<Constraint>,
    /// A referenced segment does not exist, or a constraint is unusable as written: as in
    /// Unleash's SDK engine, the whole flag is off.
    broken: bool,
    pub(crate) variants: Variants,
    group_id: String,
}

fn percentage(def: &StrategyDef, key: &str) -> u32 {
    def.param(key).and_then(|p| p.trim().parse::<f64>().ok()).map(|p| p.clamp(0.0, 100.0) as u32).unwrap_or(0)
}

fn list(def: &StrategyDef, key: &str) -> Vec<String> {
    def.param(key)
        .map(|s| s.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect())
        .unwrap_or_default()
}

impl Strategy {
    pub fn compile(def: &StrategyDef, feature: &str, segments: &FxHashMap<i64, Vec<Constraint>>) -> Strategy {
        let group = def.param("groupId").unwrap_or_else(|| feature.to_owned());
        let kind = match def.name.as_str() {
            "default" => Kind::Default,
            "userWithId" => Kind::UserWithId(list(def, "userIds")),
            "gradualRolloutUserId" => {
                Kind::GradualUserId { percentage: percentage(def, "percentage"), group: group.clone() }
            }
            "gradualRolloutSessionId" => {
                Kind::GradualSessionId { percentage: percentage(def, "percentage"), group: group.clone() }
            }
            "gradualRolloutRandom" => Kind::GradualRandom { percentage: percentage(def, "percentage") },
            "remoteAddress" => Kind::RemoteAddress(
                list(def, "IPs")
                    .into_iter()
                    .map(|ip| match parse_ip_or_net(&ip) {
                        Some(net) => IpMatch::Net(net),
                        None => IpMatch::Text(ip),
                    })
                    .collect(),
            ),
            "applicationHostname" => {
                Kind::ApplicationHostname(list(def, "hostNames").into_iter().map(|h| h.to_lowercase()).collect())
            }
            "flexibleRollout" => Kind::Flexible {
                rollout: percentage(def, "rollout"),
                stickiness: Stickiness::parse(def.param("stickiness").as_deref().unwrap_or("default")),
                group: group.clone(),
            },
            _ => Kind::Unknown,
        };
        let mut constraints: Vec<Constraint> = Vec::new();
        let mut missing_segment = false;
        for id in def.segments.iter().flatten() {
            match segments.get(id) {
                Some(cs) => constraints.extend(cs.iter().cloned()),
                None => missing_segment = true,
            }
        }
        constraints.extend(def.constraints.iter().flatten().map(Constraint::compile));
        let broken = missing_segment || constraints.iter().any(Constraint::breaks_flag);
        let mut variants = Variants::compile(def.variants.as_deref().unwrap_or_default());
        // Strategy variants hash on the strategy's own stickiness, not the first variant's.
        if let Some(stickiness) = def.param("stickiness") {
            variants.stickiness = Stickiness::parse(&stickiness);
        }
        Strategy { kind, constraints, broken, variants, group_id: group }
    }

    /// Whether a flag with this strategy is off whatever the context (see `broken`).
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether this strategy's answer is picked at random when the context names neither a user
    /// nor a session: a partial rollout on default stickiness. (A user list, a rollout by user or
    /// session id, or stickiness on a named field is simply off without one.)
    pub(crate) fn random_without_identity(&self) -> bool {
        match &self.kind {
            Kind::Flexible { rollout, stickiness: Stickiness::Default, .. } => (1..100).contains(rollout),
            _ => false,
        }
    }

    /// The hash group for this strategy's variants.
    pub(crate) fn group_id(&self) -> &str {
        &self.group_id
    }

    pub fn is_enabled(&self, ctx: &Context, now: &impl Fn() -> OffsetDateTime) -> bool {
        if self.broken || !self.constraints.iter().all(|c| c.holds(ctx, now)) {
            return false;
        }
        match &self.kind {
            Kind::Default => true,
            Kind::UserWithId(ids) => ctx.user_id.as_deref().is_some_and(|u| ids.iter().any(|id| id == u)),
            Kind::GradualUserId { percentage, group } => {
                ctx.user_id.as_deref().is_some_and(|u| *percentage > 0 && normalized_hash(group, u) <= *percentage)
            }
            Kind::GradualSessionId { percentage, group } => {
                ctx.session_id.as_deref().is_some_and(|s| *percentage > 0 && normalized_hash(group, s) <= *percentage)
            }
            Kind::GradualRandom { percentage } => *percentage > 0 && fastrand::u32(1..=100) <= *percentage,
            Kind::RemoteAddress(matches) => match ctx.remote_address.as_deref() {
                None => false,
                Some(addr) => {
                    let ip = addr.trim().parse::<IpAddr>().ok();
                    matches.iter().any(|m| match m {
                        IpMatch::Net(net) => ip.is_some_and(|ip| net.contains(&ip)),
                        IpMatch::Text(t) => t == addr,
                    })
                }
            },
            Kind::ApplicationHostname(hosts) => {
                ctx.properties.get("hostname").is_some_and(|h| hosts.iter().any(|x| x.eq_ignore_ascii_case(h)))
            }
            Kind::Flexible { rollout, stickiness, group } => match stickiness.rollout_value(ctx) {
                Err(()) => false,
                Ok(_) if *rollout == 0 => false,
                Ok(Some(value)) => normalized_hash(group, value) <= *rollout,
                Ok(None) => fastrand::u32(1..=100) <= *rollout,
            },
            Kind::Unknown => false,
        }
    }
}
