//! Request validation against a route's OpenAPI 3.0 / 3.1 document, at the edge, before the
//! upstream sees the request. [`ApiSpec::compile`] does all the work that does not depend on a
//! request (route table, every schema compiled once); [`ApiSpec::check`] only matches and validates,
//! and lists every violation with a JSON Pointer (`/path/id`, `/query/limit`, `/header/x-tenant-region`,
//! `/body/items/0/qty`) so the gateway can answer one 400 naming all of them.
//!
//! Decisions, each deliberate:
//!
//! - **One dialect, JSON Schema 2020-12.** OpenAPI 3.1 schemas are 2020-12 already. OpenAPI 3.0
//!   schemas are rewritten once, in a private copy of the document, into their 2020-12 meaning:
//!   `nullable: true` adds `"null"` to `type` (and to `enum`); on a schema built from
//!   `allOf`/`anyOf`/`oneOf`/`not` or on a `$ref` it becomes `anyOf: [{type: null}, <schema>]`
//!   (lenient: the common "nullable reference" idiom accepts null); boolean
//!   `exclusiveMinimum`/`exclusiveMaximum` become the numeric keywords; siblings of `$ref` are
//!   dropped (3.0 ignores them); a `readOnly` property is taken out of `required` (3.0: required
//!   applies to responses only). Draft 4 would have handled the boolean bounds natively, but one
//!   dialect gives both versions the same formats and the same messages.
//! - **Formats are asserted** (`date-time`, `date`, `uuid`, `email`, …); formats JSON Schema does not
//!   know (`int32`, `int64`, `byte`, `binary`, `password`) are annotations and pass.
//! - **`$ref`s resolve through a registry.** The (rewritten) document is registered as one resource
//!   under `urn:runway:openapi`, and each schema is compiled as `{"$ref": "urn:runway:openapi#<pointer>"}`
//!   (the pattern jsonschema documents for OpenAPI); every local `$ref` (`#/components/schemas/…`,
//!   or any other pointer) then resolves against the whole document, with no rewriting of refs.
//!   Only local refs are accepted: a gateway does not fetch schemas. Every `$ref` reachable from an
//!   operation is resolved at compile time so that a [`SpecError`] names the `$ref` itself.
//! - **Parameters** are coerced from strings by the schema's type: `integer` (an `i64`/`u64`),
//!   `number`, `boolean` (`true`/`false`), else the string stays a string (so `limit=abc` is reported as
//!   "not of type integer"). Arrays: query `form` with `explode` (the default) takes one item per
//!   occurrence (`?tag=a&tag=b`), `explode: false` splits on `,`, `spaceDelimited`/`pipeDelimited` on
//!   ` `/`|`; path and header (`simple`) split on `,`. Items are coerced by `items`' type. Object
//!   parameters, `deepObject`, `label`/`matrix` and `content`-described parameters are only checked
//!   for presence. A scalar query parameter given more than once is a violation (parameter
//!   pollution: upstreams disagree on which one wins); a repeated header is joined with `", "`.
//!   Cookie parameters are not checked; header parameters named `Accept`, `Content-Type` or
//!   `Authorization` are ignored, as OpenAPI says.
//! - **Unknown query parameters and headers are allowed**: OpenAPI does not forbid them.
//! - **Bodies**: checked when the operation declares a `requestBody`. The media type is chosen by
//!   `Content-Type` (exact, then `type/*`, then `*/*`); one the operation does not list is a violation
//!   at `/header/content-type`. JSON media types (`application/json`, `application/*+json`) are parsed
//!   and validated; others pass unchecked. Without a `Content-Type`, a body is taken as JSON when the
//!   operation accepts JSON. An empty body counts as absent.
//! - **Matching**: a path is matched segment by segment after percent-decoding; a template matches
//!   one non-empty segment; a literal segment wins over a partial template (`{id}.json`), which wins
//!   over a whole-segment template, leftmost segment first. The path is chosen before the method:
//!   a method the chosen path does not declare is [`Check::NoOperation`].
//! - **Messages do not echo request values** (jsonschema's masked messages: "value is not of type
//!   …"), so a 400 reflects little the client sent into responses or logs (only the names of
//!   unexpected properties, which `additionalProperties: false` reports). At most
//!   [`MAX_VIOLATIONS`] are listed, then one marker at pointer `""`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use jsonschema::{Draft, Registry, ValidationOptions, Validator};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::{Map, Value, json};

/// Bounds the answer (and the work) for a body with thousands of faults; a marker says more exist.
pub const MAX_VIOLATIONS: usize = 100;

/// The URI the document is registered under, so that every local `$ref` resolves against it.
const DOC_URI: &str = "urn:runway:openapi";

/// Marks the `anyOf` that the 3.0 rewrite wrapped around a nullable schema, so that a compile error
/// inside it can be reported at the pointer of the document as given.
const NULLABLE_MARK: &str = "x-runway-nullable";

/// The operation keys of a path item, in the order used to index [`Route::operations`].
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// What a JSON Pointer must escape to travel as a URI fragment.
const FRAGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// A route's OpenAPI document, compiled once (routes sorted, every schema compiled) and shared
/// between requests; `Send + Sync`.
pub struct ApiSpec {
    /// Routes by number of path segments, most specific first.
    routes: Vec<Vec<Route>>,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Valid,
    /// No path in the document matches, or the matched path lacks the method: the caller decides
    /// (404, or pass through, by a route flag).
    NoOperation,
    /// Every violation found (up to [`MAX_VIOLATIONS`]), in the order path, query, header, body.
    Invalid(Vec<Violation>),
}

/// One problem with a request, located by a JSON Pointer into the request: `/path/<name>`,
/// `/query/<name>[/i]`, `/header/<name>[/i]` or `/body<instance path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

/// Why a document cannot be compiled, and where: `pointer` is a JSON Pointer into the document as
/// given (the bad schema keyword, the unresolvable `$ref`, the malformed parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub pointer: String,
    pub message: String,
}

impl SpecError {
    fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError { pointer: pointer.into(), message: message.into() }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "OpenAPI document: {}", self.message)
        } else {
            write!(f, "OpenAPI document at {}: {}", self.pointer, self.message)
        }
    }
}

impl std::error::Error for SpecError {}

impl fmt::Debug for ApiSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: usize = self.routes.iter().map(Vec::len).sum();
        let operations: usize =
            self.routes.iter().flatten().map(|r| r.operations.iter().filter(|o| o.is_some()).count()).sum();
        f.debug_struct("ApiSpec").field("paths", &routes).field("operations", &operations).finish()
    }
}

impl ApiSpec {
    /// Compiles an OpenAPI 3.0.x or 3.1.x document (JSON). Fails on what would make checks wrong
    /// or impossible: an unsupported version, a malformed path template, a parameter without
    /// `name`/`in`, an unresolvable or non-local `$ref`, a schema JSON Schema 2020-12 rejects.
    pub fn compile(doc: &Value) -> Result<ApiSpec, SpecError> {
        let root = doc.as_object().ok_or_else(|| SpecError::new("", "must be a JSON object"))?;
        let version = version(root)?;
        // Pass 1, on the document as given, so that errors name its pointers.
        let (paths, embedded) = collect_paths(doc)?;

        let mut rewritten = doc.clone();
        if version == Version::V30 {
            rewrite_document_30(&mut rewritten);
        }
        let indexing = |e| SpecError::new("", format!("cannot index the document for $ref resolution: {e}"));
        let mut builder = Registry::new()
            .draft(Draft::Draft202012)
            .add(DOC_URI, Draft::Draft202012.create_resource_ref(&rewritten))
            .map_err(indexing)?;
        for (id, at) in &embedded {
            let schema = rewritten.pointer(at).unwrap_or(&Value::Null);
            builder = builder
                .add(id, Draft::Draft202012.create_resource_ref(schema))
                .map_err(|e| SpecError::new(join(at, "$id"), format!("not a usable URI: {e}")))?;
        }
        let registry = builder.prepare().map_err(indexing)?;
        let mut compiler = Compiler {
            doc: &rewritten,
            options: jsonschema::options()
                .with_draft(Draft::Draft202012)
                .with_registry(&registry)
                .should_validate_formats(true),
            cache: HashMap::new(),
        };

        let mut routes: Vec<Vec<Route>> = Vec::new();
        for path in paths {
            let mut operations: [Option<Operation>; 8] = Default::default();
            for (method, op) in path.operations {
                operations[method] = Some(compiler.operation(op)?);
            }
            let n = path.segments.len();
            if routes.len() <= n {
                routes.resize_with(n + 1, Vec::new);
            }
            let rank = path.segments.iter().map(Segment::rank).collect();
            routes[n].push(Route { segments: path.segments, rank, operations });
        }
        for list in &mut routes {
            sort_routes(list);
        }
        Ok(ApiSpec { routes })
    }

    /// Finds the operation for method + path (templated segments match one segment; literal
    /// segments win over templates, as OpenAPI says) and checks path params, query params (form
    /// style, explode for arrays: `?tag=a&tag=b`; strings coerced to the schema's type), headers
    /// (case-insensitive), and the JSON body (when the operation declares one; a missing required
    /// body; a body that is not JSON when JSON is expected → `/body` "not JSON").
    ///
    /// `path` is the path the document's `paths` describe (any route prefix or `servers` base path
    /// already stripped), still percent-encoded; `query` is the raw query string without `?`;
    /// `headers` have lower-case names (compared case-insensitively anyway).
    pub fn check(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &[(String, String)],
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Check {
        let Some(method) = METHODS.iter().position(|m| m.eq_ignore_ascii_case(method)) else {
            return Check::NoOperation;
        };
        let Some(raw) = path.strip_prefix('/') else { return Check::NoOperation };
        let segments: Vec<Cow<'_, str>> = raw.split('/').map(|s| percent_decode_str(s).decode_utf8_lossy()).collect();
        let Some(candidates) = self.routes.get(segments.len()) else { return Check::NoOperation };
        let mut captures = Vec::new();
        let Some(route) = candidates.iter().find(|r| {
            captures.clear();
            r.matches(&segments, &mut captures)
        }) else {
            return Check::NoOperation;
        };
        let Some(op) = &route.operations[method] else { return Check::NoOperation };

        let mut sink = Sink::default();
        let query_pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = match query {
            Some(q) if op.has_query => form_urlencoded::parse(q.strip_prefix('?').unwrap_or(q).as_bytes()).collect(),
            _ => Vec::new(),
        };
        let mut values: Vec<&str> = Vec::new();
        for p in &op.params {
            values.clear();
            match p.location {
                Location::Path => values.extend(captures.iter().filter(|(n, _)| *n == p.name).map(|(_, v)| *v)),
                Location::Query => {
                    values.extend(query_pairs.iter().filter(|(n, _)| *n == p.name).map(|(_, v)| v.as_ref()))
                }
                Location::Header => values
                    .extend(headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(&p.name)).map(|(_, v)| v.as_str())),
            }
            p.check(&values, &mut sink);
        }
        if let Some(spec) = &op.body {
            spec.check(content_type, body, &mut sink);
        }
        sink.finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled form

struct Route {
    segments: Vec<Segment>,
    /// Per segment: 0 literal, 1 partial template, 2 whole-segment template; sorted ascending.
    rank: Vec<u8>,
    operations: [Option<Operation>; 8],
}

enum Segment {
    Literal(String),
    Param(String),
    Mixed(Vec<Piece>),
}

enum Piece {
    Literal(String),
    Param(String),
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Mixed(_) => 1,
            Segment::Param(_) => 2,
        }
    }
}

/// Stable: paths of the same shape keep document order (OpenAPI calls them ambiguous).
fn sort_routes(list: &mut [Route]) {
    list.sort_by(|a, b| a.rank.cmp(&b.rank));
}

impl Route {
    fn matches<'r, 's>(&'r self, segments: &'s [Cow<'s, str>], out: &mut Vec<(&'r str, &'s str)>) -> bool {
        self.segments.iter().zip(segments).all(|(template, seg)| match template {
            Segment::Literal(l) => l == seg,
            Segment::Param(name) => {
                out.push((name, seg.as_ref()));
                !seg.is_empty()
            }
            Segment::Mixed(pieces) => match_mixed(pieces, seg, out),
        })
    }
}

/// `report-{date}.{ext}`: each template takes the shortest non-empty run up to the next literal.
fn match_mixed<'r, 's>(pieces: &'r [Piece], seg: &'s str, out: &mut Vec<(&'r str, &'s str)>) -> bool {
    let mut rest = seg;
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Literal(l) => match rest.strip_prefix(l.as_str()) {
                Some(r) => rest = r,
                None => return false,
            },
            Piece::Param(name) => {
                let end = match pieces.get(i + 1) {
                    Some(Piece::Literal(next)) => {
                        // At least one character, then up to the next literal.
                        let Some(first) = rest.chars().next() else { return false };
                        match rest[first.len_utf8()..].find(next.as_str()) {
                            Some(at) => at + first.len_utf8(),
                            None => return false,
                        }
                    }
                    _ => rest.len(),
                };
                if end == 0 {
                    return false;
                }
                out.push((name, &rest[..end]));
                rest = &rest[end..];
            }
        }
    }
    rest.is_empty()
}

struct Operation {
    params: Vec<Param>,
    has_query: bool,
    body: Option<Body>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Location {
    Path,
    Query,
    Header,
}

impl Location {
    fn noun(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
        }
    }
}

/// How the items of an array parameter are serialized.
#[derive(Clone, Copy, Debug)]
enum Style {
    /// One item per occurrence (`?tag=a&tag=b`).
    Exploded,
    /// Items joined by a delimiter in one value (`?tag=a,b`, `X-Ids: 1, 2`, `/orders/1,2`).
    Delimited(char),
    /// A style not checked (`deepObject`, `label`, `matrix`): presence only.
    Unsupported,
}

/// What a raw parameter value becomes before validation.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Skip,
    Scalar(Types),
    Array { items: Types, style: Style },
}

struct Param {
    name: String,
    location: Location,
    required: bool,
    shape: Shape,
    validator: Option<Arc<Validator>>,
    /// `/query/limit`, precomputed.
    pointer: String,
}

impl Param {
    fn check(&self, values: &[&str], sink: &mut Sink) {
        if values.is_empty() {
            if self.required {
                sink.push(self.pointer.clone(), format!("required {} parameter is missing", self.location.noun()));
            }
            return;
        }
        let Some(validator) = &self.validator else { return };
        let instance = match self.shape {
            Shape::Skip => return,
            Shape::Scalar(types) => match values {
                [one] => coerce(one, types),
                _ if self.location == Location::Header => coerce(&values.join(", "), types),
                _ => {
                    sink.push(self.pointer.clone(), format!("given {} times; expected one value", values.len()));
                    return;
                }
            },
            Shape::Array { items, style } => {
                let header = self.location == Location::Header;
                Value::Array(match style {
                    Style::Exploded => values.iter().map(|v| coerce(v, items)).collect(),
                    Style::Delimited(d) => values
                        .iter()
                        .filter(|v| !v.is_empty())
                        .flat_map(|v| v.split(d))
                        .map(|s| coerce(if header { s.trim_matches([' ', '\t']) } else { s }, items))
                        .collect(),
                    Style::Unsupported => return,
                })
            }
        };
        for e in validator.iter_errors(&instance) {
            if !sink.push(format!("{}{}", self.pointer, e.instance_path()), e.masked().to_string()) {
                break;
            }
        }
    }
}

struct Body {
    required: bool,
    media: Vec<Media>,
}

struct Media {
    /// The media-type key, lower-case, parameters removed: `application/json`, `application/*`.
    range: String,
    /// Present for a JSON (or wildcard) media type with a schema.
    validator: Option<Arc<Validator>>,
}

impl Body {
    fn check(&self, content_type: Option<&str>, body: Option<&[u8]>, sink: &mut Sink) {
        let Some(body) = body.filter(|b| !b.is_empty()) else {
            if self.required {
                sink.push("/body".into(), "request body is required".into());
            }
            return;
        };
        if self.media.is_empty() {
            return;
        }
        let (media, json) = match content_type {
            Some(ct) => {
                let essence = essence(ct);
                match self.media_for(&essence) {
                    Some(m) => (m, is_json(&essence)),
                    None => {
                        let accepted: Vec<&str> = self.media.iter().map(|m| m.range.as_str()).collect();
                        sink.push(
                            "/header/content-type".into(),
                            format!("media type not accepted here; expected one of: {}", accepted.join(", ")),
                        );
                        return;
                    }
                }
            }
            None => match self.media.iter().find(|m| is_json(&m.range)) {
                Some(m) => (m, true),
                None => return,
            },
        };
        if !json {
            return;
        }
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                sink.push("/body".into(), format!("not JSON: {e}"));
                return;
            }
        };
        if let Some(validator) = &media.validator {
            for e in validator.iter_errors(&value) {
                if !sink.push(format!("/body{}", e.instance_path()), e.masked().to_string()) {
                    break;
                }
            }
        }
    }

    fn media_for(&self, essence: &str) -> Option<&Media> {
        let major = essence.split('/').next().unwrap_or_default();
        self.media
            .iter()
            .find(|m| m.range == essence)
            .or_else(|| self.media.iter().find(|m| m.range.strip_suffix("/*") == Some(major)))
            .or_else(|| self.media.iter().find(|m| m.range == "*/*"))
    }
}

/// `Application/JSON; charset=utf-8` → `application/json`.
fn essence(media_type: &str) -> String {
    media_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn is_json(essence: &str) -> bool {
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A media range whose schema is compiled: JSON, or a wildcard a JSON request may match.
fn may_be_json(range: &str) -> bool {
    is_json(range) || range == "application/*" || range == "*/*"
}

#[derive(Default)]
struct Sink {
    list: Vec<Violation>,
    dropped: bool,
}

impl Sink {
    /// False once full: stop looking.
    fn push(&mut self, pointer: String, message: String) -> bool {
        if self.list.len() >= MAX_VIOLATIONS {
            self.dropped = true;
            return false;
        }
        self.list.push(Violation { pointer, message });
        true
    }

    fn finish(mut self) -> Check {
        if self.list.is_empty() {
            return Check::Valid;
        }
        if self.dropped {
            self.list.push(Violation {
                pointer: String::new(),
                message: format!("more violations not listed (at most {MAX_VIOLATIONS} are)"),
            });
        }
        Check::Invalid(self.list)
    }
}

// ---------------------------------------------------------------------------------------------
// Coercion of parameter strings

/// A set of JSON types, as bits.
type Types = u8;
const INTEGER: Types = 1;
const NUMBER: Types = 2;
const BOOLEAN: Types = 4;
const STRING: Types = 8;
const ARRAY: Types = 16;
const OBJECT: Types = 32;
const NULL: Types = 64;

fn type_bit(name: &str) -> Types {
    match name {
        "integer" => INTEGER,
        "number" => NUMBER,
        "boolean" => BOOLEAN,
        "string" => STRING,
        "array" => ARRAY,
        "object" => OBJECT,
        "null" => NULL,
        _ => 0,
    }
}

fn value_type(v: &Value) -> Types {
    match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Number(n) if n.is_i64() || n.is_u64() => INTEGER,
        Value::Number(_) => NUMBER,
        Value::String(_) => STRING,
        Value::Array(_) => ARRAY,
        Value::Object(_) => OBJECT,
    }
}

/// The types a schema admits, as far as coercion needs: `type`, else the union over
/// `allOf`/`anyOf`/`oneOf`, else the types of `enum`/`const` values; `$ref`s followed. 0: unknown.
fn types_of(doc: &Value, schema: &Value, depth: u8) -> Types {
    if depth > 16 {
        return 0;
    }
    let schema = resolve_schema(doc, schema);
    let mut t = match schema.get("type") {
        Some(Value::String(s)) => type_bit(s),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).fold(0, |t, s| t | type_bit(s)),
        _ => 0,
    };
    if t == 0 {
        for key in ["allOf", "anyOf", "oneOf"] {
            for sub in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
                t |= types_of(doc, sub, depth + 1);
            }
        }
    }
    if t == 0 {
        t = schema.get("enum").and_then(Value::as_array).into_iter().flatten().fold(0, |t, v| t | value_type(v));
        t |= schema.get("const").map_or(0, value_type);
    }
    t
}

/// The `items` schema of an array parameter's schema, looking through refs and compositions.
fn items_of<'a>(doc: &'a Value, schema: &'a Value, depth: u8) -> Option<&'a Value> {
    if depth > 16 {
        return None;
    }
    let schema = resolve_schema(doc, schema);
    if let Some(items) = schema.get("items") {
        return Some(items);
    }
    ["allOf", "anyOf", "oneOf"]
        .iter()
        .flat_map(|k| schema.get(*k).and_then(Value::as_array).into_iter().flatten())
        .find_map(|sub| items_of(doc, sub, depth + 1))
}

fn resolve_schema<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match schema.get("$ref").and_then(Value::as_str).and_then(local_pointer).and_then(|p| doc.pointer(&p)) {
            Some(target) => schema = target,
            None => break,
        }
    }
    schema
}

fn shape_of(doc: &Value, schema: &Value, style: Style) -> Shape {
    if matches!(style, Style::Unsupported) {
        return Shape::Skip;
    }
    let t = types_of(doc, schema, 0);
    if t & OBJECT != 0 {
        Shape::Skip
    } else if t & ARRAY != 0 {
        let items = items_of(doc, schema, 0).map_or(0, |i| types_of(doc, i, 0));
        Shape::Array { items, style }
    } else {
        Shape::Scalar(t)
    }
}

/// A parameter string as the JSON value its schema expects; left a string when it does not parse,
/// so the validator reports the type mismatch.
fn coerce(raw: &str, types: Types) -> Value {
    if types & (INTEGER | NUMBER) != 0 {
        if let Ok(i) = raw.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(u) = raw.parse::<u64>() {
            return Value::from(u);
        }
    }
    if types & NUMBER != 0
        && let Some(n) = raw.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
    {
        return Value::Number(n);
    }
    if types & BOOLEAN != 0 {
        match raw {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::String(raw.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Compilation, pass 1: the document's structure, on the document as given

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Version {
    V30,
    V31,
}

fn version(root: &Map<String, Value>) -> Result<Version, SpecError> {
    let v = root.get("openapi").and_then(Value::as_str).unwrap_or_default();
    let version = match v.split('.').take(2).collect::<Vec<_>>().as_slice() {
        ["3", "0"] => Version::V30,
        ["3", "1"] => Version::V31,
        _ => return Err(SpecError::new("/openapi", "expected an OpenAPI version \"3.0.x\" or \"3.1.x\"")),
    };
    if let Some(dialect) = root.get("jsonSchemaDialect") {
        let ok = dialect.as_str().is_some_and(|d| {
            matches!(
                d.trim_end_matches('#'),
                "https://spec.openapis.org/oas/3.1/dialect/base" | "https://json-schema.org/draft/2020-12/schema"
            )
        });
        if !ok {
            return Err(SpecError::new(
                "/jsonSchemaDialect",
                "only the OpenAPI 3.1 base dialect (JSON Schema 2020-12)",
            ));
        }
    }
    Ok(version)
}

struct PathDraft {
    segments: Vec<Segment>,
    operations: Vec<(usize, OperationDraft)>,
}

struct OperationDraft {
    params: Vec<ParamDraft>,
    body: Option<BodyDraft>,
}

#[derive(Clone)]
struct ParamDraft {
    name: String,
    location: Location,
    required: bool,
    style: Style,
    /// Pointer to the parameter's `schema`, if it has one.
    schema: Option<String>,
}

struct BodyDraft {
    required: bool,
    /// (media range, pointer to its `schema` when it is one to validate).
    media: Vec<(String, Option<String>)>,
}

fn collect_paths(doc: &Value) -> Result<(Vec<PathDraft>, Embedded), SpecError> {
    let Some(paths) = doc.get("paths") else { return Ok((Vec::new(), Vec::new())) };
    let paths = paths.as_object().ok_or_else(|| SpecError::new("/paths", "must be an object"))?;
    let mut seen = Seen::default();
    let mut out = Vec::with_capacity(paths.len());
    for (key, item) in paths {
        let item_ptr = join("/paths", key);
        let segments = parse_template(key).map_err(|m| SpecError::new(&item_ptr, m))?;
        let mut template_names = HashSet::new();
        for s in &segments {
            match s {
                Segment::Param(n) => _ = template_names.insert(n.as_str()),
                Segment::Mixed(pieces) => {
                    for p in pieces {
                        if let Piece::Param(n) = p {
                            template_names.insert(n.as_str());
                        }
                    }
                }
                Segment::Literal(_) => {}
            }
        }
        let (item, item_ptr) = deref(doc, item, item_ptr)?;
        let item = item.as_object().ok_or_else(|| SpecError::new(&item_ptr, "a path item must be an object"))?;
        let shared = params_of(doc, item.get("parameters"), &item_ptr, &template_names, &mut seen)?;
        let mut operations = Vec::new();
        for (m, method) in METHODS.iter().enumerate() {
            let Some(op) = item.get(*method) else { continue };
            let op_ptr = join(&item_ptr, method);
            let op = op.as_object().ok_or_else(|| SpecError::new(&op_ptr, "an operation must be an object"))?;
            let mut params = shared.clone();
            for p in params_of(doc, op.get("parameters"), &op_ptr, &template_names, &mut seen)? {
                match params.iter_mut().find(|q| q.location == p.location && q.name == p.name) {
                    Some(q) => *q = p,
                    None => params.push(p),
                }
            }
            let body = match op.get("requestBody") {
                Some(b) => Some(body_of(doc, b, join(&op_ptr, "requestBody"), &mut seen)?),
                None => None,
            };
            operations.push((m, OperationDraft { params, body }));
        }
        out.push(PathDraft { segments, operations });
    }
    Ok((out, seen.embedded))
}

fn params_of(
    doc: &Value,
    list: Option<&Value>,
    owner: &str,
    template_names: &HashSet<&str>,
    seen: &mut Seen,
) -> Result<Vec<ParamDraft>, SpecError> {
    let Some(list) = list else { return Ok(Vec::new()) };
    let base = join(owner, "parameters");
    let list = list.as_array().ok_or_else(|| SpecError::new(&base, "must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let (p, ptr) = deref(doc, p, join(&base, &i.to_string()))?;
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| SpecError::new(join(&ptr, "name"), "a parameter needs a string name"))?;
        let location = match p.get("in").and_then(Value::as_str) {
            Some("path") => Location::Path,
            Some("query") => Location::Query,
            Some("header") => Location::Header,
            Some("cookie") => continue,
            _ => return Err(SpecError::new(join(&ptr, "in"), "must be one of path, query, header, cookie")),
        };
        let name = match location {
            Location::Header => {
                let lower = name.to_ascii_lowercase();
                if matches!(lower.as_str(), "accept" | "content-type" | "authorization") {
                    continue;
                }
                lower
            }
            Location::Path if !template_names.contains(name) => {
                return Err(SpecError::new(join(&ptr, "name"), "a path parameter must appear in the path template"));
            }
            _ => name.to_owned(),
        };
        let required = location == Location::Path || bool_at(p, "required", &ptr)?;
        let style = style_of(p, location, &ptr)?;
        let schema = match p.get("schema") {
            Some(_) => {
                let at = join(&ptr, "schema");
                check_schema_refs(doc, &at, seen)?;
                Some(at)
            }
            None => None,
        };
        out.push(ParamDraft { name, location, required, style, schema });
    }
    Ok(out)
}

fn style_of(p: &Value, location: Location, ptr: &str) -> Result<Style, SpecError> {
    let style = match p.get("style") {
        None => None,
        Some(s) => Some(s.as_str().ok_or_else(|| SpecError::new(join(ptr, "style"), "must be a string"))?),
    };
    let explode = match p.get("explode") {
        None => None,
        Some(e) => Some(e.as_bool().ok_or_else(|| SpecError::new(join(ptr, "explode"), "must be a boolean"))?),
    };
    let delimited = |d| if explode.unwrap_or(false) { Style::Exploded } else { Style::Delimited(d) };
    Ok(match (location, style) {
        (Location::Query, None | Some("form")) => {
            if explode.unwrap_or(true) {
                Style::Exploded
            } else {
                Style::Delimited(',')
            }
        }
        (Location::Query, Some("spaceDelimited")) => delimited(' '),
        (Location::Query, Some("pipeDelimited")) => delimited('|'),
        (Location::Path | Location::Header, None | Some("simple")) => Style::Delimited(','),
        _ => Style::Unsupported,
    })
}

fn body_of(doc: &Value, b: &Value, ptr: String, seen: &mut Seen) -> Result<BodyDraft, SpecError> {
    let (b, ptr) = deref(doc, b, ptr)?;
    let required = bool_at(b, "required", &ptr)?;
    let mut media = Vec::new();
    if let Some(content) = b.get("content") {
        let content_ptr = join(&ptr, "content");
        let content = content.as_object().ok_or_else(|| SpecError::new(&content_ptr, "must be an object"))?;
        for (key, m) in content {
            let range = essence(key);
            let schema = match m.get("schema") {
                Some(_) if may_be_json(&range) => {
                    let at = join(&join(&content_ptr, key), "schema");
                    check_schema_refs(doc, &at, seen)?;
                    Some(at)
                }
                _ => None,
            };
            media.push((range, schema));
        }
    }
    Ok(BodyDraft { required, media })
}

fn bool_at(v: &Value, key: &str, ptr: &str) -> Result<bool, SpecError> {
    match v.get(key) {
        None => Ok(false),
        Some(b) => b.as_bool().ok_or_else(|| SpecError::new(join(ptr, key), "must be a boolean")),
    }
}

fn parse_template(key: &str) -> Result<Vec<Segment>, String> {
    let rest = key.strip_prefix('/').ok_or("a path must start with '/'")?;
    rest.split('/').map(parse_segment).collect()
}

fn parse_segment(s: &str) -> Result<Segment, String> {
    if !s.contains(['{', '}']) {
        return Ok(Segment::Literal(percent_decode_str(s).decode_utf8_lossy().into_owned()));
    }
    let mut pieces = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').ok_or("unclosed '{' in the path template")?;
            let name = &after[..end];
            if name.is_empty() || name.contains('{') {
                return Err("a path template needs a name between '{' and '}'".into());
            }
            if matches!(pieces.last(), Some(Piece::Param(_))) {
                return Err("two templates next to each other cannot be told apart".into());
            }
            pieces.push(Piece::Param(name.to_owned()));
            rest = &after[end + 1..];
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            let literal = &rest[..end];
            if literal.contains('}') {
                return Err("'}' without '{' in the path template".into());
            }
            pieces.push(Piece::Literal(percent_decode_str(literal).decode_utf8_lossy().into_owned()));
            rest = &rest[end..];
        }
    }
    Ok(match pieces.as_slice() {
        [Piece::Param(name)] => Segment::Param(name.clone()),
        _ => Segment::Mixed(pieces),
    })
}

/// Follows a Reference Object (`{"$ref": "#/components/parameters/Limit"}`) to what it names;
/// returns the node and its pointer. An error names the `$ref` that fails.
fn deref<'a>(doc: &'a Value, mut node: &'a Value, mut ptr: String) -> Result<(&'a Value, String), SpecError> {
    for _ in 0..32 {
        let Some(r) = node.get("$ref") else { return Ok((node, ptr)) };
        let at = join(&ptr, "$ref");
        let r = r.as_str().ok_or_else(|| SpecError::new(&at, "$ref must be a string"))?;
        let target =
            local_pointer(r).ok_or_else(|| SpecError::new(&at, "only local $refs (\"#/...\") are supported"))?;
        node = doc.pointer(&target).ok_or_else(|| SpecError::new(&at, format!("unresolvable $ref \"{r}\"")))?;
        ptr = target;
    }
    Err(SpecError::new(ptr, "$ref chain too long (a cycle?)"))
}

/// `#/components/schemas/Order` → `/components/schemas/Order` (percent-decoded); `None` for
/// anything else (another document, a plain-name anchor).
fn local_pointer(r: &str) -> Option<String> {
    let fragment = r.strip_prefix('#')?;
    if !fragment.is_empty() && !fragment.starts_with('/') {
        return None;
    }
    Some(percent_decode_str(fragment).decode_utf8_lossy().into_owned())
}

/// Resolves every `$ref` reachable from the schema at `ptr`, so that a bad one is reported at its
/// own pointer (jsonschema only says which target is missing).
fn check_schema_refs(doc: &Value, ptr: &str, seen: &mut Seen) -> Result<(), SpecError> {
    if !seen.walked.insert(ptr.to_owned()) {
        return Ok(());
    }
    match doc.pointer(ptr) {
        Some(schema) => walk_schema_refs(doc, schema, ptr, seen),
        None => Ok(()),
    }
}

fn walk_schema_refs(doc: &Value, schema: &Value, ptr: &str, seen: &mut Seen) -> Result<(), SpecError> {
    let Some(obj) = schema.as_object() else { return Ok(()) };
    if let Some(id) = obj.get("$id") {
        // A schema resource of its own: refs below are relative to it, and jsonschema resolves (or
        // rejects) them at build once it is registered under its `$id`.
        let at = join(ptr, "$id");
        let id = id.as_str().map(|i| i.trim_end_matches('#')).ok_or_else(|| SpecError::new(&at, "must be a string"))?;
        if !is_absolute_uri(id) {
            return Err(SpecError::new(at, "only an absolute URI is supported as $id"));
        }
        seen.embedded.push((id.to_owned(), ptr.to_owned()));
        return Ok(());
    }
    if let Some(r) = obj.get("$ref") {
        let at = join(ptr, "$ref");
        let r = r.as_str().ok_or_else(|| SpecError::new(&at, "$ref must be a string"))?;
        match local_pointer(r) {
            Some(target) => {
                if doc.pointer(&target).is_none() {
                    return Err(SpecError::new(at, format!("unresolvable $ref \"{r}\"")));
                }
                check_schema_refs(doc, &target, seen)?;
            }
            None if r.starts_with('#') => {} // a plain-name anchor: jsonschema resolves it
            None => return Err(SpecError::new(at, "only local $refs (\"#/...\") are supported")),
        }
    }
    for (key, value) in obj {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Some(map) = value.as_object() {
                    let base = join(ptr, key);
                    for (name, sub) in map {
                        walk_schema_refs(doc, sub, &join(&base, name), seen)?;
                    }
                }
            }
            "items" | "prefixItems" | "allOf" | "anyOf" | "oneOf" if value.is_array() => {
                let base = join(ptr, key);
                for (i, sub) in value.as_array().into_iter().flatten().enumerate() {
                    walk_schema_refs(doc, sub, &join(&base, &i.to_string()), seen)?;
                }
            }
            "items"
            | "additionalProperties"
            | "additionalItems"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains"
            | "propertyNames"
            | "unevaluatedItems"
            | "unevaluatedProperties"
            | "contentSchema" => {
                walk_schema_refs(doc, value, &join(ptr, key), seen)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `https://…`, `urn:…`: a scheme, then a colon.
fn is_absolute_uri(s: &str) -> bool {
    s.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// What pass 1 learns about schemas: which were walked (each once), and which name themselves
/// with `$id` (registered under it, so that the refs inside them resolve).
#[derive(Default)]
struct Seen {
    walked: HashSet<String>,
    embedded: Embedded,
}

/// Schemas that are resources of their own: (`$id`, pointer of the schema).
type Embedded = Vec<(String, String)>;

/// Appends one reference token to a JSON Pointer, escaped.
fn join(base: &str, token: &str) -> String {
    let mut s = String::with_capacity(base.len() + token.len() + 1);
    s.push_str(base);
    s.push('/');
    for c in token.chars() {
        match c {
            '~' => s.push_str("~0"),
            '/' => s.push_str("~1"),
            c => s.push(c),
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Compilation, pass 2: OpenAPI 3.0 schemas in 2020-12 terms, and the validators

/// Rewrites every schema of a 3.0 document in place: the roots a request can reach, and
/// everything below them through the schema keywords.
fn rewrite_document_30(doc: &mut Value) {
    fn each_schema_of_content(content: Option<&mut Value>) {
        for media in content.and_then(Value::as_object_mut).into_iter().flat_map(|c| c.values_mut()) {
            if let Some(s) = media.get_mut("schema") {
                rewrite_schema_30(s);
            }
        }
    }
    fn each_param_schema(list: Option<&mut Value>) {
        for p in list.and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(s) = p.get_mut("schema") {
                rewrite_schema_30(s);
            }
        }
    }
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        schemas.values_mut().for_each(rewrite_schema_30);
    }
    for group in ["/components/parameters", "/components/headers"] {
        for p in doc.pointer_mut(group).and_then(Value::as_object_mut).into_iter().flat_map(|m| m.values_mut()) {
            if let Some(s) = p.get_mut("schema") {
                rewrite_schema_30(s);
            }
        }
    }
    for b in doc
        .pointer_mut("/components/requestBodies")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        each_schema_of_content(b.get_mut("content"));
    }
    for item in doc.get_mut("paths").and_then(Value::as_object_mut).into_iter().flat_map(|m| m.values_mut()) {
        each_param_schema(item.get_mut("parameters"));
        for method in METHODS {
            if let Some(op) = item.get_mut(method) {
                each_param_schema(op.get_mut("parameters"));
                if let Some(body) = op.get_mut("requestBody") {
                    each_schema_of_content(body.get_mut("content"));
                }
            }
        }
    }
}

fn rewrite_schema_30(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else { return };
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(map)) = obj.get_mut(key) {
            map.values_mut().for_each(rewrite_schema_30);
        }
    }
    for key in ["items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"] {
        match obj.get_mut(key) {
            Some(Value::Array(list)) => list.iter_mut().for_each(rewrite_schema_30),
            Some(sub @ Value::Object(_)) => rewrite_schema_30(sub),
            _ => {}
        }
    }
    let nullable = obj.remove("nullable") == Some(Value::Bool(true));
    if let Some(r) = obj.get("$ref").cloned() {
        // A 3.0 Reference Object's siblings are ignored (`nullable` is honoured, leniently).
        obj.clear();
        obj.insert("$ref".into(), r);
        if nullable {
            wrap_nullable(schema);
        }
        return;
    }
    for (flag, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
        match obj.get(flag) {
            Some(Value::Bool(true)) => match obj.remove(bound) {
                Some(b) => _ = obj.insert(flag.into(), b),
                None => _ = obj.remove(flag),
            },
            Some(Value::Bool(false)) => _ = obj.remove(flag),
            _ => {}
        }
    }
    let read_only: Vec<String> = obj
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, s)| s.get("readOnly") == Some(&Value::Bool(true)))
        .map(|(name, _)| name.clone())
        .collect();
    if !read_only.is_empty()
        && let Some(Value::Array(required)) = obj.get_mut("required")
    {
        required.retain(|r| !r.as_str().is_some_and(|r| read_only.iter().any(|n| n == r)));
    }
    if !nullable {
        return;
    }
    if ["allOf", "anyOf", "oneOf", "not"].iter().any(|k| obj.contains_key(*k)) {
        wrap_nullable(schema);
        return;
    }
    match obj.get_mut("type") {
        Some(Value::String(t)) => {
            let t = std::mem::take(t);
            obj.insert("type".into(), json!([t, "null"]));
        }
        Some(Value::Array(types)) if !types.contains(&json!("null")) => types.push(json!("null")),
        _ => {}
    }
    if let Some(Value::Array(values)) = obj.get_mut("enum")
        && !values.contains(&Value::Null)
    {
        values.push(Value::Null);
    }
}

fn wrap_nullable(schema: &mut Value) {
    let inner = std::mem::take(schema);
    *schema = json!({ "anyOf": [{ "type": "null" }, inner], NULLABLE_MARK: true });
}

/// A pointer into the rewritten document, as a pointer into the document as given: drops the
/// `anyOf/1` steps the nullable rewrite inserted.
fn original_pointer(rewritten: &Value, ptr: &str) -> String {
    let tokens: Vec<&str> = ptr.split('/').skip(1).collect();
    let mut out = String::with_capacity(ptr.len());
    let mut node = Some(rewritten);
    let mut i = 0;
    while i < tokens.len() {
        if let Some(n) = node
            && n.get(NULLABLE_MARK).is_some()
            && tokens.get(i) == Some(&"anyOf")
            && tokens.get(i + 1) == Some(&"1")
        {
            node = n.pointer("/anyOf/1");
            i += 2;
            continue;
        }
        out.push('/');
        out.push_str(tokens[i]);
        let token = tokens[i].replace("~1", "/").replace("~0", "~");
        node = node.and_then(|n| match n {
            Value::Object(m) => m.get(&token),
            Value::Array(a) => token.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        });
        i += 1;
    }
    out
}

struct Compiler<'a> {
    /// The rewritten document (the one the registry holds).
    doc: &'a Value,
    options: ValidationOptions<'a>,
    /// Validators by schema pointer: a shared `components/parameters` entry compiles once.
    cache: HashMap<String, Arc<Validator>>,
}

impl Compiler<'_> {
    fn validator(&mut self, ptr: &str) -> Result<Arc<Validator>, SpecError> {
        if let Some(v) = self.cache.get(ptr) {
            return Ok(v.clone());
        }
        let wrapper = json!({ "$ref": format!("{DOC_URI}#{}", utf8_percent_encode(ptr, FRAGMENT)) });
        let validator = self.options.build(&wrapper).map_err(|e| {
            // Compile errors inside the registered document carry its pointer.
            let at = e.instance_path().as_str();
            let at = if at.is_empty() { ptr } else { at };
            SpecError::new(original_pointer(self.doc, at), format!("invalid schema: {e}"))
        })?;
        let validator = Arc::new(validator);
        self.cache.insert(ptr.to_owned(), validator.clone());
        Ok(validator)
    }

    fn operation(&mut self, op: OperationDraft) -> Result<Operation, SpecError> {
        let mut params = Vec::with_capacity(op.params.len());
        for p in op.params {
            let (validator, shape) = match &p.schema {
                Some(at) => {
                    let schema = self.doc.pointer(at).unwrap_or(&Value::Null);
                    (Some(self.validator(at)?), shape_of(self.doc, schema, p.style))
                }
                None => (None, Shape::Skip),
            };
            let pointer = join(&format!("/{}", p.location.noun()), &p.name);
            params.push(Param { name: p.name, location: p.location, required: p.required, shape, validator, pointer });
        }
        let body = match op.body {
            Some(b) => {
                let mut media = Vec::with_capacity(b.media.len());
                for (range, schema) in b.media {
                    let validator = match schema {
                        Some(at) => Some(self.validator(&at)?),
                        None => None,
                    };
                    media.push(Media { range, validator });
                }
                Some(Body { required: b.required, media })
            }
            None => None,
        };
        let has_query = params.iter().any(|p| p.location == Location::Query);
        Ok(Operation { params, has_query, body })
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The orders API, in OpenAPI 3.1.
    fn orders_31() -> Value {
        json!({
            "openapi": "3.1.0",
            "info": { "title": "Orders", "version": "1.0.0" },
            "paths": {
                "/orders": {
                    "get": {
                        "operationId": "listOrders",
                        "parameters": [
                            { "$ref": "#/components/parameters/Limit" },
                            { "name": "status", "in": "query", "schema": { "$ref": "#/components/schemas/Status" } },
                            { "name": "tag", "in": "query",
                              "schema": { "type": "array", "maxItems": 3, "items": { "type": "string", "maxLength": 8 } } },
                            { "name": "flagged", "in": "query", "schema": { "type": "boolean" } },
                            { "name": "min_total", "in": "query", "schema": { "type": "number", "minimum": 0 } }
                        ],
                        "responses": { "200": { "description": "a page of orders" } }
                    },
                    "post": {
                        "operationId": "createOrder",
                        "parameters": [
                            { "name": "X-Tenant-Region", "in": "header", "required": true,
                              "schema": { "type": "string", "enum": ["eu", "us"] } },
                            { "name": "Content-Type", "in": "header", "required": true, "schema": { "type": "string" } }
                        ],
                        "requestBody": { "$ref": "#/components/requestBodies/NewOrder" },
                        "responses": { "201": { "description": "created" } }
                    }
                },
                "/orders/export": {
                    "get": {
                        "parameters": [
                            { "name": "format", "in": "query", "required": true, "schema": { "enum": ["csv", "ndjson"] } }
                        ],
                        "responses": { "200": { "description": "all orders" } }
                    }
                },
                "/orders/{id}": {
                    "parameters": [ { "$ref": "#/components/parameters/OrderId" } ],
                    "get": { "responses": { "200": { "description": "one order" } } },
                    "delete": { "responses": { "204": { "description": "cancelled" } } }
                },
                "/orders/{id}/lines/{line}": {
                    "get": {
                        "parameters": [
                            { "$ref": "#/components/parameters/OrderId" },
                            { "name": "line", "in": "path", "required": true, "schema": { "type": "integer", "minimum": 1 } }
                        ],
                        "responses": { "200": { "description": "one line" } }
                    }
                },
                "/reports/{day}.{ext}": {
                    "get": {
                        "parameters": [
                            { "name": "day", "in": "path", "required": true, "schema": { "type": "string", "format": "date" } },
                            { "name": "ext", "in": "path", "required": true, "schema": { "enum": ["csv", "json"] } }
                        ],
                        "responses": { "200": { "description": "a report" } }
                    }
                }
            },
            "components": {
                "parameters": {
                    "Limit": { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 100 } },
                    "OrderId": { "name": "id", "in": "path", "required": true,
                                 "schema": { "type": "string", "pattern": "^ord_[0-9a-z]{8}$" } }
                },
                "requestBodies": {
                    "NewOrder": {
                        "required": true,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Order" } } }
                    }
                },
                "schemas": {
                    "Status": { "type": "string", "enum": ["open", "shipped", "cancelled"] },
                    "Order": {
                        "type": "object",
                        "required": ["customer", "items"],
                        "additionalProperties": false,
                        "properties": {
                            "customer": { "type": "string", "minLength": 1 },
                            "items": { "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/LineItem" } },
                            "note": { "type": ["string", "null"], "maxLength": 200 }
                        }
                    },
                    "LineItem": {
                        "type": "object",
                        "required": ["sku", "qty"],
                        "properties": {
                            "sku": { "type": "string", "minLength": 1 },
                            "qty": { "type": "integer", "minimum": 1 },
                            "price": { "type": "number", "exclusiveMinimum": 0 }
                        }
                    }
                }
            }
        })
    }

    /// The same API in OpenAPI 3.0 terms: `nullable`, boolean `exclusiveMinimum`, a `readOnly`
    /// required `id`, and a nullable reference.
    fn orders_30() -> Value {
        let mut doc = orders_31();
        doc["openapi"] = json!("3.0.3");
        let order = &mut doc["components"]["schemas"]["Order"];
        order["properties"]["note"] = json!({ "type": "string", "nullable": true, "maxLength": 200 });
        order["properties"]["id"] = json!({ "type": "string", "readOnly": true });
        order["properties"]["gift"] = json!({ "nullable": true, "allOf": [{ "$ref": "#/components/schemas/Gift" }] });
        order["required"] = json!(["id", "customer", "items"]);
        doc["components"]["schemas"]["LineItem"]["properties"]["price"] =
            json!({ "type": "number", "minimum": 0, "exclusiveMinimum": true });
        doc["components"]["schemas"]["Gift"] =
            json!({ "type": "object", "required": ["message"], "properties": { "message": { "type": "string" } } });
        doc
    }

    fn spec(doc: &Value) -> ApiSpec {
        ApiSpec::compile(doc).unwrap_or_else(|e| panic!("{e}"))
    }

    fn region(r: &str) -> Vec<(String, String)> {
        vec![("x-tenant-region".into(), r.into()), ("content-type".into(), "application/json".into())]
    }

    fn get(s: &ApiSpec, path: &str, query: Option<&str>) -> Check {
        s.check("GET", path, query, &[], None, None)
    }

    fn post(s: &ApiSpec, headers: &[(String, String)], body: &Value) -> Check {
        let body = serde_json::to_vec(body).unwrap();
        s.check("POST", "/orders", None, headers, Some("application/json"), Some(&body))
    }

    fn pointers(check: &Check) -> Vec<&str> {
        match check {
            Check::Invalid(v) => v.iter().map(|v| v.pointer.as_str()).collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    fn only(check: &Check) -> &Violation {
        match check {
            Check::Invalid(v) if v.len() == 1 => &v[0],
            other => panic!("expected exactly one violation, got {other:?}"),
        }
    }

    fn good_order() -> Value {
        json!({ "customer": "c-42", "items": [{ "sku": "tea", "qty": 2, "price": 3.5 }], "note": "ring twice" })
    }

    #[test]
    fn valid_requests_pass() {
        let s = spec(&orders_31());
        assert_eq!(get(&s, "/orders", None), Check::Valid);
        assert_eq!(
            get(&s, "/orders", Some("limit=10&status=open&tag=a&tag=b&flagged=true&min_total=2.5")),
            Check::Valid
        );
        assert_eq!(get(&s, "/orders", Some("status=op%65n&tag=a+b")), Check::Valid, "form decoding");
        assert_eq!(get(&s, "/orders/ord_0123abcd", None), Check::Valid);
        assert_eq!(s.check("DELETE", "/orders/ord_0123abcd", None, &[], None, None), Check::Valid);
        assert_eq!(get(&s, "/orders/ord_0123abcd/lines/3", None), Check::Valid);
        assert_eq!(get(&s, "/orders/export", Some("format=csv")), Check::Valid);
        assert_eq!(get(&s, "/reports/2026-02-28.csv", None), Check::Valid);
        assert_eq!(post(&s, &region("eu"), &good_order()), Check::Valid);
        let with_charset = serde_json::to_vec(&good_order()).unwrap();
        assert_eq!(
            s.check(
                "post",
                "/orders",
                None,
                &region("us"),
                Some("Application/JSON; charset=utf-8"),
                Some(&with_charset)
            ),
            Check::Valid
        );
    }

    #[test]
    fn unknown_query_parameters_are_allowed() {
        let s = spec(&orders_31());
        assert_eq!(get(&s, "/orders", Some("limit=5&utm_source=mail&debug")), Check::Valid);
    }

    #[test]
    fn query_violations_name_the_parameter() {
        let s = spec(&orders_31());
        for (query, pointer) in [
            ("limit=0", "/query/limit"),
            ("limit=101", "/query/limit"),
            ("limit=abc", "/query/limit"),
            ("limit=2.5", "/query/limit"),
            ("limit=1&limit=2", "/query/limit"),
            ("status=lost", "/query/status"),
            ("flagged=yes", "/query/flagged"),
            ("min_total=-1", "/query/min_total"),
            ("min_total=NaN", "/query/min_total"),
            ("tag=a&tag=much-too-long", "/query/tag/1"),
            ("tag=a&tag=b&tag=c&tag=d", "/query/tag"),
        ] {
            let v = only(&get(&s, "/orders", Some(query))).clone();
            assert_eq!(v.pointer, pointer, "{query}: {v:?}");
        }
        let v = only(&get(&s, "/orders", Some("limit=abc"))).clone();
        assert!(v.message.contains("integer"), "{v:?}");
        assert!(!v.message.contains("abc"), "messages do not echo request values: {v:?}");
        let v = only(&get(&s, "/orders", Some("limit=1&limit=2"))).clone();
        assert!(v.message.contains("2 times"), "{v:?}");
    }

    #[test]
    fn required_query_parameter_missing() {
        let s = spec(&orders_31());
        let v = only(&get(&s, "/orders/export", None)).clone();
        assert_eq!(v.pointer, "/query/format");
        assert!(v.message.contains("missing"), "{v:?}");
        assert_eq!(pointers(&get(&s, "/orders/export", Some("format=xml"))), ["/query/format"]);
    }

    #[test]
    fn path_violations_name_the_parameter() {
        let s = spec(&orders_31());
        assert_eq!(pointers(&get(&s, "/orders/123", None)), ["/path/id"]);
        assert_eq!(pointers(&get(&s, "/orders/ord_0123abcd/lines/0", None)), ["/path/line"]);
        assert_eq!(pointers(&get(&s, "/orders/ord_0123abcd/lines/x", None)), ["/path/line"]);
        assert_eq!(pointers(&get(&s, "/orders/bad/lines/0", None)), ["/path/id", "/path/line"]);
        assert_eq!(pointers(&get(&s, "/reports/2026-02-30.csv", None)), ["/path/day"], "format: date is asserted");
        assert_eq!(pointers(&get(&s, "/reports/2026-02-28.xml", None)), ["/path/ext"]);
        // Percent-decoded before matching and validating: `%5F` is `_`.
        assert_eq!(get(&s, "/orders/ord%5F0123abcd", None), Check::Valid);
    }

    #[test]
    fn header_violations_name_the_header() {
        let s = spec(&orders_31());
        let ct = vec![("content-type".to_owned(), "application/json".to_owned())];
        let v = only(&post(&s, &ct, &good_order())).clone();
        assert_eq!(v.pointer, "/header/x-tenant-region");
        assert!(v.message.contains("missing"), "{v:?}");
        assert_eq!(pointers(&post(&s, &region("mars"), &good_order())), ["/header/x-tenant-region"]);
        // Names compare case-insensitively, whatever the caller passes.
        let mixed = vec![("X-Tenant-Region".to_owned(), "eu".to_owned())];
        assert_eq!(post(&s, &mixed, &good_order()), Check::Valid, "Content-Type header parameters are ignored");
    }

    #[test]
    fn body_violations_carry_the_instance_path() {
        let s = spec(&orders_31());
        let h = region("eu");
        let mut order = good_order();
        order["items"][0]["qty"] = json!(0);
        let v = only(&post(&s, &h, &order)).clone();
        assert_eq!(v.pointer, "/body/items/0/qty");
        assert!(v.message.contains("minimum"), "{v:?}");

        let v = only(&post(&s, &h, &json!({ "items": [{ "sku": "tea", "qty": 1 }] }))).clone();
        assert_eq!(v.pointer, "/body");
        assert!(v.message.contains("customer"), "{v:?}");

        let mut order = good_order();
        order["extra"] = json!(1);
        assert_eq!(pointers(&post(&s, &h, &order)), ["/body"]);

        let mut order = good_order();
        order["items"][0]["price"] = json!(0);
        assert_eq!(pointers(&post(&s, &h, &order)), ["/body/items/0/price"], "3.1 numeric exclusiveMinimum");
    }

    #[test]
    fn body_presence_json_and_media_type() {
        let s = spec(&orders_31());
        let h = region("eu");
        for body in [None, Some(&b""[..])] {
            let v = only(&s.check("POST", "/orders", None, &h, Some("application/json"), body)).clone();
            assert_eq!((v.pointer.as_str(), v.message.as_str()), ("/body", "request body is required"));
        }
        let v = only(&s.check("POST", "/orders", None, &h, Some("application/json"), Some(b"{\"customer\": "))).clone();
        assert_eq!(v.pointer, "/body");
        assert!(v.message.starts_with("not JSON"), "{v:?}");
        // No Content-Type: the operation accepts JSON, so the body is read as JSON.
        let v = only(&s.check("POST", "/orders", None, &h, None, Some(b"customer=c-42"))).clone();
        assert!(v.message.starts_with("not JSON"), "{v:?}");
        let v = only(&s.check("POST", "/orders", None, &h, Some("text/plain"), Some(b"hello"))).clone();
        assert_eq!(v.pointer, "/header/content-type");
        assert!(v.message.contains("application/json"), "{v:?}");
    }

    #[test]
    fn every_violation_is_listed() {
        let s = spec(&orders_31());
        let order = json!({
            "items": [
                { "sku": "tea", "qty": 0 },
                { "sku": "", "qty": "two" },
                { "qty": 1 }
            ],
            "note": 7
        });
        let check = post(&s, &region("mars"), &order);
        let mut got = pointers(&check);
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "/body",
                "/body/items/0/qty",
                "/body/items/1/qty",
                "/body/items/1/sku",
                "/body/items/2",
                "/body/note",
                "/header/x-tenant-region",
            ],
            "{check:?}"
        );
        let mixed = get(&s, "/orders", Some("limit=0&status=lost&flagged=maybe&tag=a&tag=b&tag=c&tag=d"));
        assert_eq!(pointers(&mixed), ["/query/limit", "/query/status", "/query/tag", "/query/flagged"]);
    }

    #[test]
    fn violations_are_capped_with_a_marker() {
        let s = spec(&orders_31());
        let items: Vec<Value> = (0..300).map(|_| json!({ "sku": "tea", "qty": 0 })).collect();
        let check = post(&s, &region("eu"), &json!({ "customer": "c", "items": items }));
        let Check::Invalid(list) = check else { panic!("{check:?}") };
        assert_eq!(list.len(), MAX_VIOLATIONS + 1);
        assert_eq!(list.last().unwrap().pointer, "");
    }

    #[test]
    fn literal_segment_beats_template() {
        let s = spec(&orders_31());
        // `/orders/export` also matches `/orders/{id}` (and `export` fails its pattern): the literal wins.
        assert_eq!(pointers(&get(&s, "/orders/export", None)), ["/query/format"]);
        // The path is chosen before the method: no POST on `/orders/export`.
        assert_eq!(s.check("DELETE", "/orders/export", None, &[], None, None), Check::NoOperation);
    }

    #[test]
    fn specificity_does_not_depend_on_document_order() {
        let template = Route {
            segments: parse_template("/orders/{id}").unwrap(),
            rank: vec![0, 2],
            operations: Default::default(),
        };
        let literal = Route {
            segments: parse_template("/orders/export").unwrap(),
            rank: vec![0, 0],
            operations: Default::default(),
        };
        let mixed = Route {
            segments: parse_template("/orders/{id}.json").unwrap(),
            rank: vec![0, 1],
            operations: Default::default(),
        };
        let mut list = vec![template, mixed, literal];
        sort_routes(&mut list);
        let segs = [Cow::Borrowed("orders"), Cow::Borrowed("export")];
        let mut captures = Vec::new();
        let first = list.iter().position(|r| {
            captures.clear();
            r.matches(&segs, &mut captures)
        });
        assert_eq!(first, Some(0));
        assert!(matches!(&list[0].segments[1], Segment::Literal(l) if l == "export"));
        let segs = [Cow::Borrowed("orders"), Cow::Borrowed("a.json")];
        let first = list.iter().position(|r| {
            captures.clear();
            r.matches(&segs, &mut captures)
        });
        assert_eq!(first, Some(1));
        assert_eq!(captures, [("id", "a")]);
    }

    #[test]
    fn unknown_path_or_method_is_no_operation() {
        let s = spec(&orders_31());
        assert_eq!(get(&s, "/customers", None), Check::NoOperation);
        assert_eq!(get(&s, "/orders/ord_0123abcd/lines", None), Check::NoOperation);
        assert_eq!(get(&s, "/orders/", None), Check::NoOperation, "a template does not match an empty segment");
        assert_eq!(get(&s, "orders", None), Check::NoOperation);
        assert_eq!(s.check("PUT", "/orders", None, &[], None, None), Check::NoOperation);
        assert_eq!(s.check("BREW", "/orders", None, &[], None, None), Check::NoOperation);
    }

    #[test]
    fn openapi_30_schemas_mean_what_they_meant() {
        let s = spec(&orders_30());
        let h = region("eu");
        // `id` is readOnly and required: required applies to responses only.
        assert_eq!(post(&s, &h, &good_order()), Check::Valid);
        let mut order = good_order();
        order["note"] = Value::Null;
        order["gift"] = Value::Null;
        assert_eq!(post(&s, &h, &order), Check::Valid, "nullable: true admits null");
        order["note"] = json!(5);
        order["gift"] = json!({});
        let check = post(&s, &h, &order);
        let mut got = pointers(&check);
        got.sort_unstable();
        assert_eq!(got, ["/body/gift", "/body/note"]);
        let mut order = good_order();
        order["items"][0]["price"] = json!(0);
        assert_eq!(pointers(&post(&s, &h, &order)), ["/body/items/0/price"], "boolean exclusiveMinimum");
        assert_eq!(pointers(&get(&s, "/orders", Some("limit=0"))), ["/query/limit"]);
        assert_eq!(get(&s, "/orders/export", Some("format=csv")), Check::Valid);
    }

    #[test]
    fn openapi_31_null_is_a_type() {
        let s = spec(&orders_31());
        let mut order = good_order();
        order["note"] = Value::Null;
        assert_eq!(post(&s, &region("eu"), &order), Check::Valid);
        // 3.1 has no `nullable`: the keyword is an annotation there and changes nothing.
        let mut doc = orders_31();
        doc["components"]["schemas"]["Order"]["properties"]["note"] = json!({ "type": "string", "nullable": true });
        assert_eq!(pointers(&post(&spec(&doc), &region("eu"), &order)), ["/body/note"]);
    }

    #[test]
    fn unresolvable_ref_names_its_pointer() {
        let mut doc = orders_31();
        doc["components"]["schemas"]["LineItem"]["properties"]["sku"] = json!({ "$ref": "#/components/schemas/Sku" });
        let e = ApiSpec::compile(&doc).unwrap_err();
        assert_eq!(e.pointer, "/components/schemas/LineItem/properties/sku/$ref");
        assert!(e.message.contains("#/components/schemas/Sku"), "{e}");

        let mut doc = orders_30();
        doc["paths"]["/orders"]["get"]["parameters"][0] = json!({ "$ref": "#/components/parameters/Nope" });
        let e = ApiSpec::compile(&doc).unwrap_err();
        assert_eq!(e.pointer, "/paths/~1orders/get/parameters/0/$ref");

        let mut doc = orders_31();
        doc["components"]["requestBodies"]["NewOrder"]["content"]["application/json"]["schema"] =
            json!({ "$ref": "https://schemas.example.com/order.json" });
        let e = ApiSpec::compile(&doc).unwrap_err();
        assert_eq!(e.pointer, "/components/requestBodies/NewOrder/content/application~1json/schema/$ref");
        assert!(e.message.contains("local"), "{e}");
    }

    #[test]
    fn invalid_schema_names_its_pointer() {
        let mut doc = orders_31();
        doc["components"]["schemas"]["LineItem"]["properties"]["qty"]["type"] = json!("integr");
        let e = ApiSpec::compile(&doc).unwrap_err();
        assert_eq!(e.pointer, "/components/schemas/LineItem/properties/qty/type", "{e}");

        let mut doc = orders_31();
        doc["paths"]["/orders/{id}"]["get"]["parameters"] =
            json!([{ "name": "fields", "in": "query", "schema": { "type": "string", "pattern": "(" } }]);
        let e = ApiSpec::compile(&doc).unwrap_err();
        assert_eq!(e.pointer, "/paths/~1orders~1{id}/get/parameters/0/schema/pattern", "{e}");

        // Inside a 3.0 nullable composition the rewrite nests the schema; the pointer is the original one.
        let mut doc = orders_30();
        doc["components"]["schemas"]["Order"]["properties"]["gift"]["allOf"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "minProperties": "one" }));
        let e = ApiSpec::compile(&doc).unwrap_err();
        assert_eq!(e.pointer, "/components/schemas/Order/properties/gift/allOf/1/minProperties", "{e}");
    }

    #[test]
    fn malformed_documents_are_refused_where_they_are_wrong() {
        let mut doc = orders_31();
        doc["openapi"] = json!("2.0");
        assert_eq!(ApiSpec::compile(&doc).unwrap_err().pointer, "/openapi");

        let mut doc = orders_31();
        doc["paths"]["/orders/{id}"]["parameters"] = json!([{ "name": "order", "in": "path", "schema": {} }]);
        assert_eq!(ApiSpec::compile(&doc).unwrap_err().pointer, "/paths/~1orders~1{id}/parameters/0/name");

        let mut doc = orders_31();
        doc["paths"]["/orders/{id"] = json!({});
        assert_eq!(ApiSpec::compile(&doc).unwrap_err().pointer, "/paths/~1orders~1{id");

        let mut doc = orders_31();
        doc["components"]["schemas"]["Status"]["$id"] = json!("status.json");
        assert_eq!(ApiSpec::compile(&doc).unwrap_err().pointer, "/components/schemas/Status/$id");

        let mut doc = orders_31();
        doc["paths"]["/orders"]["get"]["parameters"][1]["in"] = json!("body");
        assert_eq!(ApiSpec::compile(&doc).unwrap_err().pointer, "/paths/~1orders/get/parameters/1/in");
    }

    #[test]
    fn array_styles() {
        let doc = json!({
            "openapi": "3.1.0",
            "paths": { "/items/{ids}": { "get": {
                "parameters": [
                    { "name": "ids", "in": "path", "required": true,
                      "schema": { "type": "array", "items": { "type": "integer" } } },
                    { "name": "sizes", "in": "query", "explode": false,
                      "schema": { "type": "array", "items": { "type": "integer", "maximum": 10 } } },
                    { "name": "x-flags", "in": "header",
                      "schema": { "type": "array", "items": { "type": "boolean" } } }
                ]
            } } }
        });
        let s = spec(&doc);
        let headers = vec![("x-flags".to_owned(), "true, false".to_owned())];
        assert_eq!(s.check("GET", "/items/1,2,3", Some("sizes=1,2"), &headers, None, None), Check::Valid);
        let headers = vec![("x-flags".to_owned(), "true, nope".to_owned())];
        assert_eq!(
            pointers(&s.check("GET", "/items/1,x", Some("sizes=1,20"), &headers, None, None)),
            ["/path/ids/1", "/query/sizes/1", "/header/x-flags/1"]
        );
    }

    #[test]
    fn schema_with_its_own_id_resolves_its_own_refs() {
        let mut doc = orders_31();
        doc["components"]["schemas"]["LineItem"]["properties"]["price"] = json!({
            "$id": "https://schemas.example.com/money",
            "$defs": { "cents": { "type": "integer", "minimum": 1 } },
            "$ref": "#/$defs/cents"
        });
        let s = spec(&doc);
        let mut order = good_order();
        order["items"][0]["price"] = json!(250);
        assert_eq!(post(&s, &region("eu"), &order), Check::Valid);
        order["items"][0]["price"] = json!(0);
        assert_eq!(pointers(&post(&s, &region("eu"), &order)), ["/body/items/0/price"]);
    }

    #[test]
    fn partial_templates_split_on_the_next_literal() {
        let s = spec(&orders_31());
        assert_eq!(
            get(&s, "/reports/%C3%A9t%C3%A9.csv", None),
            Check::Invalid(vec![Violation { pointer: "/path/day".into(), message: "value is not a \"date\"".into() }])
        );
        assert_eq!(get(&s, "/reports/.csv", None), Check::NoOperation, "a template takes at least one character");
    }

    #[test]
    fn api_spec_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ApiSpec>();
    }

    /// Not asserted: `cargo test timing -- --nocapture` prints the cost of one `check`.
    #[test]
    #[ignore = "a measurement, not a check: cargo test --release -p runway-gateway timing -- --ignored --nocapture"]
    fn timing_valid_post_with_1kib_body() {
        let doc = orders_31();
        let start = Instant::now();
        let s = spec(&doc);
        println!("compile(): the orders document: {:?}", start.elapsed());
        let items: Vec<Value> =
            (0..19).map(|i| json!({ "sku": format!("sku-{i:04}-tea-green"), "qty": i + 1, "price": 3.25 })).collect();
        let body =
            serde_json::to_vec(&json!({ "customer": "c-0042", "items": items, "note": "leave at the door" })).unwrap();
        assert!((900..=1200).contains(&body.len()), "body is {} bytes", body.len());
        let h = region("eu");
        let run = || s.check("POST", "/orders", None, &h, Some("application/json"), Some(&body));
        assert_eq!(run(), Check::Valid);
        let n = 20_000;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(run());
        }
        let each = start.elapsed() / n;
        println!("check(): valid POST /orders with a {} byte body: {:?} per call ({n} calls)", body.len(), each);
    }
}
