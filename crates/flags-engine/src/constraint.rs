//! Constraints, compiled once when a state loads so evaluation parses nothing.

use std::cmp::Ordering;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use time::OffsetDateTime;

use crate::context::{Context, Field};
use crate::wire::ConstraintDef;

/// A compiled constraint.
#[derive(Debug, Clone)]
pub struct Constraint {
    field: Field,
    op: Op,
    inverted: bool,
}

#[derive(Debug, Clone)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Str {
        kind: StrKind,
        values: Vec<String>,
        case_insensitive: bool,
    },
    Num {
        cmp: Cmp,
        value: f64,
    },
    Date {
        after: bool,
        at: OffsetDateTime,
    },
    Semver {
        cmp: Cmp,
        version: semver::Version,
    },
    Regex(Regex),
    InCidr(Vec<IpNet>),
    /// An unknown operator, or a constraint value that does not parse: always false.
    Never,
}

#[derive(Debug, Clone, Copy)]
enum StrKind {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    fn holds(self, ord: Ordering) -> bool {
        match self {
            Cmp::Eq => ord == Ordering::Equal,
            Cmp::Gt => ord == Ordering::Greater,
            Cmp::Gte => ord != Ordering::Less,
            Cmp::Lt => ord == Ordering::Less,
            Cmp::Lte => ord != Ordering::Greater,
        }
    }
}

fn cmp_of(suffix: &str) -> Option<Cmp> {
    Some(match suffix {
        "EQ" => Cmp::Eq,
        "GT" => Cmp::Gt,
        "GTE" => Cmp::Gte,
        "LT" => Cmp::Lt,
        "LTE" => Cmp::Lte,
        _ => return None,
    })
}

/// The operators Runway understands, for validation messages and generators.
pub const OPERATORS: &[&str] = &[
    "IN",
    "NOT_IN",
    "STR_CONTAINS",
    "STR_STARTS_WITH",
    "STR_ENDS_WITH",
    "NUM_EQ",
    "NUM_GT",
    "NUM_GTE",
    "NUM_LT",
    "NUM_LTE",
    "DATE_AFTER",
    "DATE_BEFORE",
    "SEMVER_EQ",
    "SEMVER_GT",
    "SEMVER_GTE",
    "SEMVER_LT",
    "SEMVER_LTE",
    "REGEX",
    "IN_CIDR",
];

/// Parses a semantic version the way SDKs do: strict semver 2.0, build metadata ignored.
pub(crate) fn parse_semver(s: &str) -> Option<semver::Version> {
    let mut v = semver::Version::parse(s.trim()).ok()?;
    v.build = semver::BuildMetadata::EMPTY;
    Some(v)
}

pub(crate) fn parse_date(s: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    // Dates without an offset, e.g. "2024-01-01T00:00:00" or "2024-01-01", are read as UTC.
    let fmt_dt =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");
    if let Ok(t) = time::PrimitiveDateTime::parse(s, &fmt_dt) {
        return Some(t.assume_utc());
    }
    let fmt_d = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt_d).ok().map(|d| d.midnight().assume_utc())
}

fn parse_num(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

pub(crate) fn parse_ip_or_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

impl Constraint {
    pub fn compile(def: &ConstraintDef) -> Constraint {
        let values = || -> Vec<String> {
            let mut v = def.values.clone().unwrap_or_default();
            if v.is_empty()
                && let Some(single) = &def.value
            {
                v.push(single.clone());
            }
            v
        };
        let single = || def.value.clone().or_else(|| def.values.as_ref().and_then(|v| v.first().cloned()));
        let op = match def.operator.as_str() {
            "IN" => Op::In(values()),
            "NOT_IN" => Op::NotIn(values()),
            "STR_CONTAINS" | "STR_STARTS_WITH" | "STR_ENDS_WITH" => {
                let kind = match def.operator.as_str() {
                    "STR_CONTAINS" => StrKind::Contains,
                    "STR_STARTS_WITH" => StrKind::StartsWith,
                    _ => StrKind::EndsWith,
                };
                let mut values = values();
                if def.case_insensitive {
                    values.iter_mut().for_each(|v| *v = v.to_lowercase());
                }
                Op::Str { kind, values, case_insensitive: def.case_insensitive }
            }
            op if op.starts_with("NUM_") => match (cmp_of(&op[4..]), single().as_deref().and_then(parse_num)) {
                (Some(cmp), Some(value)) => Op::Num { cmp, value },
                _ => Op::Never,
            },
            "DATE_AFTER" | "DATE_BEFORE" => match single().as_deref().and_then(parse_date) {
                Some(at) => Op::Date { after: def.operator == "DATE_AFTER", at },
                None => Op::Never,
            },
            op if op.starts_with("SEMVER_") => match (cmp_of(&op[7..]), single().as_deref().and_then(parse_semver)) {
                (Some(cmp), Some(version)) => Op::Semver { cmp, version },
                _ => Op::Never,
            },
            "REGEX" => {
                let pattern = single().unwrap_or_default();
                match regex::RegexBuilder::new(&pattern).case_insensitive(def.case_insensitive).build() {
                    Ok(re) => Op::Regex(re),
                    Err(_) => Op::Never,
                }
            }
            "IN_CIDR" => Op::InCidr(values().iter().filter_map(|v| parse_ip_or_net(v)).collect()),
            _ => Op::Never,
        };
        Constraint { field: Field::parse(&def.context_name), op, inverted: def.inverted }
    }

    pub fn holds(&self, ctx: &Context, now: &impl Fn() -> OffsetDateTime) -> bool {
        if matches!(self.op, Op::Never) {
            return false;
        }
        let value = ctx.get(&self.field);
        let raw = match &self.op {
            Op::In(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            Op::NotIn(values) => !value.is_some_and(|v| values.iter().any(|x| x == v)),
            Op::Str { kind, values, case_insensitive } => match value {
                None => false,
                Some(v) => {
                    let lowered;
                    let v = if *case_insensitive {
                        lowered = v.to_lowercase();
                        lowered.as_str()
                    } else {
                        v
                    };
                    values.iter().any(|x| match kind {
                        StrKind::Contains => v.contains(x.as_str()),
                        StrKind::StartsWith => v.starts_with(x.as_str()),
                        StrKind::EndsWith => v.ends_with(x.as_str()),
                    })
                }
            },
            Op::Num { cmp, value: wanted } => match value.and_then(parse_num) {
                Some(v) => cmp.holds(v.partial_cmp(wanted).unwrap_or(Ordering::Less)) && !v.is_nan(),
                None => false,
            },
            Op::Date { after, at } => {
                let t = match value {
                    Some(v) => parse_date(v),
                    None if self.field == Field::CurrentTime => Some(now()),
                    None => None,
                };
                match t {
                    Some(t) if *after => t > *at,
                    Some(t) => t < *at,
                    None => false,
                }
            }
            Op::Semver { cmp, version } => match value.and_then(parse_semver) {
                Some(v) => cmp.holds(v.cmp(version)),
                None => false,
            },
            Op::Regex(re) => value.is_some_and(|v| re.is_match(v)),
            Op::InCidr(nets) => match value.and_then(|v| v.trim().parse::<IpAddr>().ok()) {
                Some(ip) => nets.iter().any(|n| n.contains(&ip)),
                None => false,
            },
            Op::Never => false,
        };
        raw != self.inverted
    }
}
