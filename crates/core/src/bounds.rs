//! Upper bounds on the collections a request may carry, and how a refusal looks: a 422 whose
//! `field` is the RFC 6901 JSON pointer of the collection (`/headers`). Each bound is shown in
//! the contract (`maxItems`, `maxProperties`, `uniqueItems`) from the same constant.

use crate::error::ApiError;
use std::collections::HashSet;
use std::hash::Hash;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};

/// Keys of a free-form `metadata` object (tenants, webhook endpoints).
pub const MAX_METADATA_KEYS: usize = 50;

/// Refuses more than `max` items at `pointer`.
pub fn items(pointer: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len > max {
        return Err(ApiError::validation(pointer, format!("at most {max} items are allowed; got {len}")));
    }
    Ok(())
}

/// Refuses more than `max` keys at `pointer`.
pub fn properties(pointer: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len > max {
        return Err(ApiError::validation(pointer, format!("at most {max} keys are allowed; got {len}")));
    }
    Ok(())
}

/// Refuses more than `max` items at `pointer`, or any item twice.
pub fn unique_items<T: Eq + Hash>(pointer: &str, list: &[T], max: usize) -> Result<(), ApiError> {
    items(pointer, list.len(), max)?;
    let mut seen = HashSet::with_capacity(list.len());
    if let Some(i) = list.iter().position(|x| !seen.insert(x)) {
        return Err(ApiError::validation(pointer, format!("item {i} is listed twice; list each once")));
    }
    Ok(())
}

/// A JSON pointer with `segment` appended (escaped per RFC 6901).
pub fn pointer(base: &str, segment: impl std::fmt::Display) -> String {
    format!("{base}/{}", segment.to_string().replace('~', "~0").replace('/', "~1"))
}

/// The schema of an object of at most `max` keys whose values match `values` (any JSON when `None`).
pub fn object_schema(description: &str, max: usize, values: Option<RefOr<Schema>>) -> RefOr<Schema> {
    let additional = match values {
        Some(v) => AdditionalProperties::RefOr(v),
        None => AdditionalProperties::FreeForm(true),
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .max_properties(Some(max))
        .additional_properties(Some(additional))
        .into()
}

/// Declares a schema-only type for a JSON object of at most `max` keys (any JSON values, or
/// `values = <schema>`): the bound shows in the contract as `maxProperties`, and `{max}` in the
/// description is the same constant, so the two cannot disagree.
#[macro_export]
macro_rules! bounded_object_schema {
    ($(#[$meta:meta])* $vis:vis $name:ident, $max:expr, $desc:literal $(, values = $values:expr)?) => {
        $(#[$meta])*
        $vis struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                #[allow(unused_mut)]
                let mut values: Option<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>> = None;
                $(values = Some($values);)?
                $crate::bounds::object_schema(&format!($desc, max = $max), $max, values)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

bounded_object_schema!(
    /// Free-form key-value data kept with a resource, for the caller's own use; at most
    /// `MAX_METADATA_KEYS` keys. Used as `#[schema(value_type = Metadata)]`.
    pub Metadata,
    MAX_METADATA_KEYS,
    "Free-form data for your own use (a CRM id, a team name, …); a JSON object of at most {max} keys."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_collection_as_a_pointer() {
        assert!(items("/tags", 100, 100).is_ok());
        let e = items("/tags", 101, 100).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/tags"));
        assert_eq!(e.code, crate::ErrorCode::ValidationFailed);
        let e = unique_items("/scopes", &["a", "b", "a"], 10).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/scopes"));
        assert!(e.detail.contains("item 2"), "{}", e.detail);
        assert_eq!(pointer("/environments", "a/b~c"), "/environments/a~1b~0c");
    }
}
