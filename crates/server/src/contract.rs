//! What the contract says about failures, added to every operation from its shape instead of
//! being written per handler: the error responses (problem+json, from the one error table in
//! `runway_core::error`) and the `Idempotency-Key` header. A handler documents only the errors
//! its own logic adds (a 409 for a duplicate, a 404 for an unknown environment, …).
//!
//! | shape of the operation                 | responses added                         |
//! |----------------------------------------|-----------------------------------------|
//! | every operation                        | 414, 431 (refused before routing)       |
//! | authenticated (not `security(())`)     | 401, 403, 429, 503                      |
//! | path parameters                        | 400 (`invalid_id`), 404                 |
//! | query parameters                       | 400 (`invalid_query`, `invalid_cursor`) |
//! | request body                           | 400, 413, 415, 422                      |
//! | authenticated `POST`                   | 400, 409, 422 (Idempotency-Key)         |

use std::collections::BTreeSet;

use axum::http::StatusCode;
use runway_core::ErrorCode;
use utoipa::Modify;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::schema::{ArrayItems, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Required, Response, ResponseBuilder};

/// Name of the problem schema in `components.schemas`.
const PROBLEM: &str = "Problem";
/// The media type of every error Runway answers with.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Name of the shared `Idempotency-Key` parameter in `components.parameters`.
const IDEMPOTENCY_KEY: &str = "IdempotencyKey";

/// Statuses produced before a request reaches the router (the HTTP codec), with what they mean.
const BEFORE_ROUTING: &[(u16, &str)] = &[
    (414, "The request target (path and query) is longer than the server accepts."),
    (431, "The request's header section is larger than the server accepts."),
];

/// Adds the common error responses and headers to every operation; see the module docs.
pub struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut OpenApi) {
        let mut used = BTreeSet::new();
        let mut idempotent = false;
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations_mut(item) {
                let shape = Shape::of(path, method, op);
                if shape.authenticated && method == "post" {
                    idempotent = true;
                    let param = RefOr::Ref(Ref::new(format!("#/components/parameters/{IDEMPOTENCY_KEY}")));
                    op.parameters.get_or_insert_with(Vec::new).push(param);
                }
                for status in shape.statuses() {
                    let key = status.to_string();
                    if let std::collections::btree_map::Entry::Vacant(slot) = op.responses.responses.entry(key) {
                        used.insert(status);
                        slot.insert(RefOr::Ref(Ref::from_response_name(component_name(status))));
                    }
                }
                // Errors a handler declared itself are problems too.
                for (key, resp) in op.responses.responses.iter_mut() {
                    if let (Ok(status), RefOr::T(declared)) = (key.parse::<u16>(), resp)
                        && status >= 400
                    {
                        complete(declared, status);
                    }
                }
            }
        }
        let components = doc.components.get_or_insert_with(Default::default);
        for schema in components.schemas.values_mut() {
            if let RefOr::T(schema) = schema {
                hoist_descriptions(schema);
            }
        }
        for status in used {
            components.responses.insert(component_name(status), RefOr::T(common_response(status)));
        }
        if idempotent {
            components.parameters.insert(IDEMPOTENCY_KEY.to_owned(), RefOr::T(idempotency_key()));
        }
    }
}

/// What the contract needs to know about an operation to say how it can fail.
struct Shape {
    authenticated: bool,
    path_params: bool,
    query_params: bool,
    body: bool,
    post: bool,
}

impl Shape {
    fn of(path: &str, method: &str, op: &Operation) -> Shape {
        // `security(())` (an empty requirement) marks a public route; absent means the default bearer.
        let authenticated = match &op.security {
            None => true,
            Some(reqs) => {
                !reqs.iter().any(|r| serde_json::to_value(r).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty())))
            }
        };
        let query_params = op.parameters.iter().flatten().any(|p| match p {
            RefOr::T(p) => matches!(p.parameter_in, ParameterIn::Query),
            RefOr::Ref(_) => false,
        });
        Shape {
            authenticated,
            path_params: path.contains('{'),
            query_params,
            body: op.request_body.is_some(),
            post: method == "post",
        }
    }

    fn statuses(&self) -> BTreeSet<u16> {
        let mut s: BTreeSet<u16> = BEFORE_ROUTING.iter().map(|(code, _)| *code).collect();
        if self.authenticated {
            s.extend([401, 403, 429, 503]);
        }
        if self.path_params {
            s.extend([400, 404]);
        }
        if self.query_params {
            s.insert(400);
        }
        if self.body {
            s.extend([400, 413, 415, 422]);
        }
        if self.authenticated && self.post {
            s.extend([400, 409, 422]);
        }
        s
    }
}

/// An optional reference is `oneOf: [{$ref, description}, {type: null}]`; the description is
/// moved to the property itself, where readers (and Swagger UI) look for it.
fn hoist_descriptions(schema: &mut Schema) {
    match schema {
        Schema::Object(obj) => {
            for prop in obj.properties.values_mut() {
                if let RefOr::T(prop) = prop {
                    hoist_descriptions(prop);
                }
            }
        }
        Schema::Array(arr) => {
            if let ArrayItems::RefOrSchema(item) = &mut arr.items
                && let RefOr::T(item) = item.as_mut()
            {
                hoist_descriptions(item);
            }
        }
        Schema::OneOf(one) if one.description.is_none() => {
            for item in one.items.iter_mut() {
                if let RefOr::Ref(r) = item
                    && !r.description.is_empty()
                {
                    one.description = Some(std::mem::take(&mut r.description));
                }
            }
        }
        _ => {}
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("options", item.options.as_mut()),
        ("head", item.head.as_mut()),
        ("patch", item.patch.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
}

/// `components.responses` name of a status: its reason phrase in CamelCase (`UnprocessableEntity`).
fn component_name(status: u16) -> String {
    let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    reason.split([' ', '-']).collect()
}

/// Which problem codes a status carries, from the error table.
fn description(status: u16) -> String {
    let codes: Vec<String> =
        ErrorCode::with_status(status).map(|c| format!("`{}`: {}.", c.name(), c.title())).collect();
    if !codes.is_empty() {
        return codes.join(" ");
    }
    BEFORE_ROUTING
        .iter()
        .find(|(s, _)| *s == status)
        .map(|(_, d)| (*d).to_owned())
        .unwrap_or_else(|| "An error, as problem details.".to_owned())
}

fn problem_content() -> Content {
    Content::new(Some(Ref::from_schema_name(PROBLEM)))
}

fn common_response(status: u16) -> Response {
    let mut r = ResponseBuilder::new().description(description(status)).content(PROBLEM_JSON, problem_content());
    if status == 429 {
        let secs = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0));
        r = r.header(
            "Retry-After",
            HeaderBuilder::new().schema(Some(secs)).description(Some("Seconds to wait before trying again.")).build(),
        );
    }
    r.build()
}

/// Makes a handler's own error response a problem+json one: the problem schema travels as
/// `application/problem+json` (other bodies, such as OFREP's errors, stay beside it), and an
/// empty description gets the error table's.
fn complete(resp: &mut Response, status: u16) {
    if let Some(RefOr::T(json)) = resp.content.get("application/json")
        && matches!(&json.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with(&format!("/{PROBLEM}")))
    {
        resp.content.shift_remove("application/json");
    }
    if !resp.content.contains_key(PROBLEM_JSON) {
        resp.content.insert(PROBLEM_JSON.to_owned(), RefOr::T(problem_content()));
    }
    if resp.description.is_empty() {
        resp.description = description(status);
    }
}

fn idempotency_key() -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Makes the POST safe to retry: the same key with the same request replays the stored \
             response (with `Idempotent-Replayed: true`); with another request it is 422 \
             `idempotency_key_reused`; while the first is still running it is 409 \
             `idempotency_key_in_use`. Keys are scoped per credential and kept for 24 hours.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some("^[!-~]+$"))
                .examples(["8e0f3c1a-2d4b-4c5e-9f60-7a8b9c0d1e2f"]),
        ))
        .build()
}
