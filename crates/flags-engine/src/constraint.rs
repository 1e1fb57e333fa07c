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
        cmp: Cmp,
        at: OffsetDateTime,
    },
    Semver {
        cmp: Cmp,
        version: semver::Version,
    },
    /// `None`: the pattern does not compile, so no value matches (`inverted` still applies).
    Regex(Option<Regex>),
    InCidr(Vec<IpNet>),
    /// Never holds, whatever `inverted` says (a version written `v1.2.3`, as Unleash's SDKs do).
    False,
    /// Unusable as written (an unknown operator, a number, date or version that does not
    /// parse): as in Unleash's SDK engine, every flag using it is off.
    Broken,
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

/// Something in a constraint that does not work as written, found by the same parsers that
/// compile it, with what evaluation makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where, as a JSON pointer relative to the constraint: `/operator`, `/value`, `/values/{i}`.
    pub at: String,
    pub kind: IssueKind,
    pub effect: Effect,
    /// What is wrong and what evaluation does about it, in a sentence.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueKind {
    UnknownOperator,
    InvalidValue,
}

/// What evaluation does with a constraint that does not work as written. These follow Unleash's
/// SDK engine (Yggdrasil), which Runway matches where Unleash's SDKs differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Every flag using the constraint is off (in that environment).
    FlagOff,
    /// The constraint never holds, `inverted` or not.
    AlwaysFalse,
    /// No value matches; `inverted` turns that into every value.
    NeverMatches,
    /// Every value matches (an empty regular expression).
    MatchesAll,
    /// The value is compared as another kind of value than the operator names (a version
    /// operator with a plain number compares numbers).
    Reinterpreted,
    /// The value is left out; the others still count.
    ValueIgnored,
}

/// What is wrong with a constraint as written; empty when nothing is. Pure.
pub fn check(def: &ConstraintDef) -> Vec<Issue> {
    Constraint::compile_checked(def).1
}

/// The one value a NUM, DATE, SEMVER or REGEX constraint compares with (`value`, else the
/// first of `values`) and its pointer.
fn single(def: &ConstraintDef) -> (Option<&str>, String) {
    match (&def.value, def.values.as_deref()) {
        (Some(v), _) => (Some(v.as_str()), "/value".to_owned()),
        (None, Some([first, ..])) => (Some(first.as_str()), "/values/0".to_owned()),
        (None, _) => (None, "/value".to_owned()),
    }
}

/// Unleash's SDK engine reads these values as tokens of its rule language, where spaces and
/// tabs around a token do not count.
fn token(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// A number as Unleash's SDK engine accepts it: `[+-]digits[.digits][e[+-]digits]`.
pub(crate) fn parse_number_value(s: &str) -> Option<f64> {
    let s = token(s);
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    if !digits(&mut i) {
        return None;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        digits(&mut i);
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Whether a value has the shape of a date in Unleash's SDK engine (`YYYY-MM-DDTHH:MM:SS`,
/// optional milliseconds of exactly three digits, then `Z` or `±HH:MM`), and if so the instant
/// it names (`None` when there is none, such as month 13).
fn date_shaped(s: &str) -> Option<Option<OffsetDateTime>> {
    let s = token(s);
    let b = s.as_bytes();
    let shape = |pattern: &[u8], at: usize| {
        pattern.iter().enumerate().all(|(j, p)| {
            b.get(at + j).is_some_and(|c| match p {
                b'9' => c.is_ascii_digit(),
                b'?' => *c == b'+' || *c == b'-',
                _ => c == p,
            })
        })
    };
    if !shape(b"9999-99-99T99:99:99", 0) {
        return None;
    }
    let mut i = 19;
    if shape(b".999", i) {
        i += 4;
    }
    let end = match b.get(i) {
        Some(b'Z') => i + 1,
        _ if shape(b"?99:99", i) => i + 6,
        _ => return None,
    };
    if end != b.len() {
        return None;
    }
    Some(OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
}

/// Which kind of value an ordinal operator names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Number,
    Date,
    Version,
}

impl Family {
    fn what(self) -> &'static str {
        match self {
            Family::Number => "a number",
            Family::Date => {
                "an RFC 3339 date-time with seconds, optional milliseconds and `Z` or an offset (2024-05-01T12:00:00.000Z)"
            }
            Family::Version => "a semantic version (such as 1.2.3 or 2.0.0-beta.1)",
        }
    }
}

/// The comparison a NUM_, DATE_ or SEMVER_ operator asks for; `None` for any other operator.
fn ordinal(op: &str) -> Option<(Family, Cmp)> {
    if let Some(rest) = op.strip_prefix("NUM_") {
        return cmp_of(rest).map(|c| (Family::Number, c));
    }
    if let Some(rest) = op.strip_prefix("SEMVER_") {
        return cmp_of(rest).map(|c| (Family::Version, c));
    }
    match op {
        "DATE_AFTER" => Some((Family::Date, Cmp::Gt)),
        "DATE_BEFORE" => Some((Family::Date, Cmp::Lt)),
        _ => None,
    }
}

/// A value an ordinal constraint compares with, read by its shape.
enum Ordinal {
    Date(OffsetDateTime),
    Version(semver::Version),
    Number(f64),
}

impl Ordinal {
    fn family(&self) -> Family {
        match self {
            Ordinal::Date(_) => Family::Date,
            Ordinal::Version(_) => Family::Version,
            Ordinal::Number(_) => Family::Number,
        }
    }
}

/// Reads an ordinal value as Unleash's SDK engine does: by its shape, whatever the operator
/// says, trying a date, then a version, then a number. A value shaped like a date or a version
/// that is not a real one (month 13, a leading zero) reads as nothing.
fn ordinal_value(s: &str) -> Option<Ordinal> {
    if let Some(shaped) = date_shaped(s) {
        return shaped.map(Ordinal::Date);
    }
    if version_shaped(token(s)) {
        let mut v = semver::Version::parse(token(s)).ok()?;
        v.build = semver::BuildMetadata::EMPTY;
        return Some(Ordinal::Version(v));
    }
    parse_number_value(s).map(Ordinal::Number)
}

/// `digits.digits.digits`, then optional `-fragment` and `+fragment`, where a fragment is
/// dot-separated runs of letters, digits and `-`.
fn version_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    for part in 0..3 {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || (part < 2 && b.get(i) != Some(&b'.')) {
            return false;
        }
        if part < 2 {
            i += 1;
        }
    }
    let fragment = |i: &mut usize| {
        loop {
            let start = *i;
            while *i < b.len() && (b[*i].is_ascii_alphanumeric() || b[*i] == b'-') {
                *i += 1;
            }
            if *i == start {
                return false;
            }
            if b.get(*i) != Some(&b'.') {
                return true;
            }
            *i += 1;
        }
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
        if !fragment(&mut i) {
            return false;
        }
    }
    if b.get(i) == Some(&b'+') {
        i += 1;
        if !fragment(&mut i) {
            return false;
        }
    }
    i == b.len()
}

impl Constraint {
    pub fn compile(def: &ConstraintDef) -> Constraint {
        Self::compile_checked(def).0
    }

    /// Whether a flag using this constraint is off, whatever the context.
    pub fn breaks_flag(&self) -> bool {
        matches!(self.op, Op::Broken)
    }

    /// Compiles, and says what does not work as written. Unusable values never fail the
    /// compilation: they compile to what Unleash's SDK engine makes of them.
    pub fn compile_checked(def: &ConstraintDef) -> (Constraint, Vec<Issue>) {
        let mut issues = Vec::new();
        let mut issue = |at: String, kind: IssueKind, effect: Effect, reason: String| {
            issues.push(Issue { at, kind, effect, reason });
        };
        let values = || -> Vec<String> {
            let mut v = def.values.clone().unwrap_or_default();
            if v.is_empty()
                && let Some(single) = &def.value
            {
                v.push(single.clone());
            }
            v
        };
        let (value, value_at) = single(def);
        let off = "a flag using this constraint is off, as in Unleash's SDKs";
        let op_name = def.operator.as_str();
        let op = match (op_name, ordinal(op_name)) {
            ("IN", _) => Op::In(values()),
            ("NOT_IN", _) => Op::NotIn(values()),
            ("STR_CONTAINS" | "STR_STARTS_WITH" | "STR_ENDS_WITH", _) => {
                let kind = match op_name {
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
            (_, Some((family, cmp))) => match value {
                Some(v) if family == Family::Version && v.starts_with('v') => {
                    let reason = format!(
                        "`{v}` starts with `v`, which is not a semantic version; the constraint never holds, `inverted` or not, as in Unleash's SDKs"
                    );
                    issue(value_at.clone(), IssueKind::InvalidValue, Effect::AlwaysFalse, reason);
                    Op::False
                }
                Some(v) => match ordinal_value(v) {
                    Some(read) => {
                        if read.family() != family {
                            let reason = format!(
                                "`{v}` is not {}; Unleash's SDKs compare it as {}, and so does Runway",
                                family.what(),
                                read.family().what()
                            );
                            issue(value_at.clone(), IssueKind::InvalidValue, Effect::Reinterpreted, reason);
                        }
                        match read {
                            Ordinal::Date(at) => Op::Date { cmp, at },
                            Ordinal::Version(version) => Op::Semver { cmp, version },
                            Ordinal::Number(value) => Op::Num { cmp, value },
                        }
                    }
                    None => {
                        let reason = format!("`{v}` is not {}; {off}", family.what());
                        issue(value_at.clone(), IssueKind::InvalidValue, Effect::FlagOff, reason);
                        Op::Broken
                    }
                },
                None => {
                    let reason = format!("{} is required; without one {off}", family.what());
                    issue(value_at.clone(), IssueKind::InvalidValue, Effect::FlagOff, reason);
                    Op::Broken
                }
            },
            ("REGEX", _) => {
                let pattern = value.unwrap_or_default();
                if value.is_none() {
                    let reason = "no pattern given; the empty pattern matches every value".to_owned();
                    issue(value_at.clone(), IssueKind::InvalidValue, Effect::MatchesAll, reason);
                }
                match regex::RegexBuilder::new(pattern).case_insensitive(def.case_insensitive).build() {
                    Ok(re) => Op::Regex(Some(re)),
                    Err(e) => {
                        let why = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
                        let reason = format!(
                            "`{pattern}` is not a regular expression ({why}); no value matches it (`inverted`: every value does), as in Unleash's SDKs"
                        );
                        issue(value_at.clone(), IssueKind::InvalidValue, Effect::NeverMatches, reason);
                        Op::Regex(None)
                    }
                }
            }
            ("IN_CIDR", _) => {
                let from_values = def.values.as_ref().is_some_and(|v| !v.is_empty());
                let mut nets = Vec::new();
                for (i, v) in values().iter().enumerate() {
                    match parse_ip_or_net(v) {
                        Some(net) => nets.push(net),
                        None => {
                            let at = if from_values { format!("/values/{i}") } else { "/value".to_owned() };
                            let reason = format!("`{v}` is not an IP address or CIDR range; it is left out");
                            issue(at, IssueKind::InvalidValue, Effect::ValueIgnored, reason);
                        }
                    }
                }
                Op::InCidr(nets)
            }
            _ => {
                let reason = format!("unknown operator `{op_name}` (known: {}); {off}", OPERATORS.join(", "));
                issue("/operator".to_owned(), IssueKind::UnknownOperator, Effect::FlagOff, reason);
                Op::Broken
            }
        };
        (Constraint { field: Field::parse(&def.context_name), op, inverted: def.inverted }, issues)
    }
}

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
    pub fn holds(&self, ctx: &Context, now: &impl Fn() -> OffsetDateTime) -> bool {
        if matches!(self.op, Op::False | Op::Broken) {
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
            Op::Date { cmp, at } => {
                let t = match value {
                    Some(v) => parse_date(v),
                    None if self.field == Field::CurrentTime => Some(now()),
                    None => None,
                };
                match t {
                    Some(t) => cmp.holds(t.cmp(at)),
                    None => false,
                }
            }
            Op::Semver { cmp, version } => match value.and_then(parse_semver) {
                Some(v) => cmp.holds(v.cmp(version)),
                None => false,
            },
            Op::Regex(Some(re)) => value.is_some_and(|v| re.is_match(v)),
            Op::Regex(None) => false,
            Op::InCidr(nets) => match value.and_then(|v| v.trim().parse::<IpAddr>().ok()) {
                Some(ip) => nets.iter().any(|n| n.contains(&ip)),
                None => false,
            },
            Op::False | Op::Broken => false,
        };
        raw != self.inverted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(op: &str, value: Option<&str>, values: &[&str], inverted: bool) -> ConstraintDef {
        ConstraintDef {
            context_name: "x".into(),
            operator: op.into(),
            value: value.map(String::from),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
            inverted,
            case_insensitive: false,
        }
    }

    fn holds(d: &ConstraintDef, x: Option<&str>) -> bool {
        let mut ctx = Context::default();
        if let Some(x) = x {
            ctx.properties.insert("x", x);
        }
        Constraint::compile(d).holds(&ctx, &OffsetDateTime::now_utc)
    }

    #[test]
    fn numbers_are_read_as_unleash_reads_them() {
        for ok in ["12", "-1.5", "+3", "1e3", "2E-2", "5.", " 7\t"] {
            assert!(parse_number_value(ok).is_some(), "{ok}");
        }
        for bad in ["", "abc", ".5", "1,5", "inf", "NaN", "1e", "0x10", "1 2", "\n7"] {
            assert!(parse_number_value(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn dates_are_read_as_unleash_reads_them() {
        for ok in [
            "2022-01-29T13:00:00.000Z",
            "2022-01-29T13:00:00Z",
            "2022-01-22T13:00:00.000+02:00",
            "2022-01-22T13:00:00-05:30",
        ] {
            assert!(matches!(date_shaped(ok), Some(Some(_))), "{ok}");
        }
        for bad in [
            "2022-01-01",
            "2022-01-01T00:00:00",
            "2022-01-01T00:00:00.123456Z",
            "2022-01-01 00:00:00Z",
            "2022-13-01T00:00:00Z",
            "2022-01-01T00:00:00+0200",
            "2022-01-01T00:00:00Zjunk",
            "yesterday",
        ] {
            assert!(!matches!(date_shaped(bad), Some(Some(_))), "{bad}");
        }
    }

    #[test]
    fn unusable_constraints_say_where_and_what_happens() {
        let cases: &[(ConstraintDef, &str, IssueKind, Effect)] = &[
            (def("LIKE", None, &["a"], false), "/operator", IssueKind::UnknownOperator, Effect::FlagOff),
            (def("NUM_XX", Some("1"), &[], false), "/operator", IssueKind::UnknownOperator, Effect::FlagOff),
            (def("NUM_GT", Some("abc"), &[], false), "/value", IssueKind::InvalidValue, Effect::FlagOff),
            (def("NUM_GT", None, &[], false), "/value", IssueKind::InvalidValue, Effect::FlagOff),
            (def("DATE_AFTER", None, &["2022-01-01"], false), "/values/0", IssueKind::InvalidValue, Effect::FlagOff),
            (def("SEMVER_EQ", Some("one"), &[], false), "/value", IssueKind::InvalidValue, Effect::FlagOff),
            (def("SEMVER_EQ", Some("01.2.3"), &[], false), "/value", IssueKind::InvalidValue, Effect::FlagOff),
            (def("SEMVER_EQ", Some("v1.2.3"), &[], true), "/value", IssueKind::InvalidValue, Effect::AlwaysFalse),
            (def("SEMVER_EQ", Some("1.2"), &[], false), "/value", IssueKind::InvalidValue, Effect::Reinterpreted),
            (def("NUM_GT", Some("1.2.3"), &[], false), "/value", IssueKind::InvalidValue, Effect::Reinterpreted),
            (def("DATE_AFTER", Some("12"), &[], false), "/value", IssueKind::InvalidValue, Effect::Reinterpreted),
            (
                def("DATE_AFTER", Some("2022-13-01T00:00:00Z"), &[], false),
                "/value",
                IssueKind::InvalidValue,
                Effect::FlagOff,
            ),
            (def("REGEX", Some("(("), &[], false), "/value", IssueKind::InvalidValue, Effect::NeverMatches),
            (def("REGEX", None, &[], false), "/value", IssueKind::InvalidValue, Effect::MatchesAll),
            (
                def("IN_CIDR", None, &["10.0.0.0/8", "nope"], false),
                "/values/1",
                IssueKind::InvalidValue,
                Effect::ValueIgnored,
            ),
        ];
        for (d, at, kind, effect) in cases {
            let (compiled, issues) = Constraint::compile_checked(d);
            assert_eq!(issues.len(), 1, "{d:?}: {issues:?}");
            assert_eq!((issues[0].at.as_str(), issues[0].kind, issues[0].effect), (*at, *kind, *effect), "{d:?}");
            assert!(!issues[0].reason.is_empty());
            assert_eq!(compiled.breaks_flag(), *effect == Effect::FlagOff, "{d:?}");
        }
        for fine in [
            def("IN", None, &["a"], false),
            def("NUM_LTE", Some(" 12.5 "), &[], false),
            def("SEMVER_GT", Some("2.0.0-beta.1+build.5"), &[], false),
            def("DATE_BEFORE", Some("2022-01-29T13:00:00.000Z"), &[], false),
            def("REGEX", Some("^a.*z$"), &[], false),
            def("IN_CIDR", None, &["10.0.0.0/8", "2001:db8::1"], false),
        ] {
            assert!(check(&fine).is_empty(), "{fine:?}");
        }
    }

    #[test]
    fn unusable_constraints_evaluate_as_unleash_does() {
        // An invalid regex matches nothing, and inverted everything.
        assert!(!holds(&def("REGEX", Some("(("), &[], false), Some("a")));
        assert!(holds(&def("REGEX", Some("(("), &[], true), Some("a")));
        // A `v` version never holds, inverted or not.
        assert!(!holds(&def("SEMVER_LT", Some("v9.0.0"), &[], true), Some("1.0.0")));
        // CIDR values that do not parse are left out; the others still match.
        assert!(holds(&def("IN_CIDR", None, &["nope", "10.0.0.0/8"], false), Some("10.1.2.3")));
        // Unusable constraints do not hold here; the strategy turns the whole flag off.
        assert!(!holds(&def("NOPE", None, &["a"], true), Some("a")));
        assert!(holds(&def("NUM_GT", Some("1e1"), &[], false), Some("11")));
        // The value's shape decides the comparison, as in Unleash's SDK engine.
        assert!(holds(&def("SEMVER_GT", Some("1.2"), &[], false), Some("1.5")));
        assert!(holds(&def("NUM_LT", Some("1.10.0"), &[], false), Some("1.9.0")));
    }
}
