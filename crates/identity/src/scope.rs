//! Scopes a key can carry, and the marker types handlers name to require one.

use runway_core::ApiError;
use serde::{Deserialize, Serialize};

macro_rules! scopes {
    ($($variant:ident => ($name:literal, $tenant_ok:expr, $doc:literal),)*) => {
        /// A permission a credential can hold.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Scope { $(#[doc = $doc] #[serde(rename = $name)] $variant,)* }

        /// The contract names scopes as they travel (`tenants:read`), with what each allows.
        impl utoipa::PartialSchema for Scope {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let meanings = [$(format!("`{}`: {}", $name, $doc)),*].join(" ");
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($name),*]))
                    .description(Some(format!("A permission a credential can hold. {meanings}")))
                    .into()
            }
        }

        impl utoipa::ToSchema for Scope {}

        impl Scope {
            pub const ALL: &'static [Scope] = &[$(Scope::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Scope::$variant => $name,)* }
            }

            /// Whether a tenant key may hold this scope; the rest act across tenants.
            pub fn allowed_for_tenant_keys(self) -> bool {
                match self { $(Scope::$variant => $tenant_ok,)* }
            }

            pub fn parse(s: &str) -> Option<Scope> {
                match s { $($name => Some(Scope::$variant),)* _ => None }
            }
        }
    };
}

scopes! {
    TenantsRead => ("tenants:read", true, "Read tenants (a tenant key: its own)."),
    TenantsWrite => ("tenants:write", false, "Create, change, suspend and delete tenants."),
    KeysRead => ("keys:read", true, "List keys."),
    KeysWrite => ("keys:write", true, "Create and revoke keys (a tenant key: its own tenant's)."),
    AuditRead => ("audit:read", true, "Read audit logs."),
    EventsRead => ("events:read", true, "Read the event log."),
    EventsReadPii => ("events:read_pii", true, "See fields marked x-pii in the event log unmasked."),
    EventsWrite => ("events:write", true, "Publish events (operators and service keys: also define event types)."),
    WebhooksRead => ("webhooks:read", true, "Read webhook endpoints, messages and attempts."),
    WebhooksWrite => ("webhooks:write", true, "Manage webhook endpoints."),
    WebhooksReadSecret => ("webhooks:read_secret", true, "Read webhook endpoint signing secrets."),
    FlagsRead => ("flags:read", false, "Read flag configuration, history, usage and release plans (every flag's rules, so not for tenant keys)."),
    FlagsWrite => ("flags:write", false, "Manage flags, segments, environments and release plans."),
    FlagsEvaluate => ("flags:evaluate", true, "Evaluate flags (OFREP, the Unleash client API); a tenant key evaluates as its tenant."),
    GatewayRead => ("gateway:read", false, "Read gateway routes, their history and the gateway's SLI records."),
    GatewayWrite => ("gateway:write", false, "Create, change, delete and roll back gateway routes."),
    SlosRead => ("slos:read", false, "Read SLOs, their status, budgets and alerts, and ask the release gate."),
    SlosWrite => ("slos:write", false, "Create, change, delete and roll back SLOs; override the release gate."),
    SlosObserve => ("slos:observe", false, "Push good and total counts to SLOs with a pushed SLI."),
}

/// A set of scopes as a bit set, so a scope check on the request path is one AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeSet(u32);

impl ScopeSet {
    pub fn all() -> Self {
        Scope::ALL.iter().copied().collect()
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & (1 << s as u32) != 0
    }

    pub fn is_subset_of(self, other: ScopeSet) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.iter().copied().filter(move |s| self.contains(*s))
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|s| s.as_str().to_owned()).collect()
    }

    /// Parses scope names as given by a client, naming the first unknown one.
    pub fn parse_names(names: &[String], field: &str) -> Result<Self, ApiError> {
        let mut set = ScopeSet::default();
        for (i, n) in names.iter().enumerate() {
            match Scope::parse(n) {
                Some(s) => set.0 |= 1 << s as u32,
                None => {
                    let known: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                    return Err(ApiError::validation(
                        format!("{field}/{i}"),
                        format!("unknown scope `{n}`; known scopes: {}", known.join(", ")),
                    ));
                }
            }
        }
        Ok(set)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().fold(0, |acc, s| acc | (1 << s as u32)))
    }
}

/// A scope a handler requires, named as a type so the requirement is part of its signature.
pub trait Permission: Send + Sync + 'static {
    const SCOPE: Scope;
    /// Whether only the operator and service keys may act (never a tenant key, whatever it holds).
    const PLATFORM_ONLY: bool = false;
}

/// `P`, for operator-level work only: `Authorized<Platform<KeysWrite>>` refuses a tenant key
/// before the handler runs, so a handler that takes it cannot act for a tenant key by mistake.
pub struct Platform<P>(std::marker::PhantomData<P>);

impl<P: Permission> Permission for Platform<P> {
    const SCOPE: Scope = P::SCOPE;
    const PLATFORM_ONLY: bool = true;
}

macro_rules! permissions {
    ($($marker:ident => $scope:ident,)*) => {
        $(
            #[doc = concat!("Requires the `", stringify!($scope), "` scope.")]
            pub struct $marker;
            impl Permission for $marker { const SCOPE: Scope = Scope::$scope; }
        )*
    };
}

permissions! {
    TenantsRead => TenantsRead,
    TenantsWrite => TenantsWrite,
    KeysRead => KeysRead,
    KeysWrite => KeysWrite,
    AuditRead => AuditRead,
    EventsRead => EventsRead,
    EventsWrite => EventsWrite,
    EventsReadPii => EventsReadPii,
    WebhooksRead => WebhooksRead,
    WebhooksWrite => WebhooksWrite,
    WebhooksReadSecret => WebhooksReadSecret,
    FlagsRead => FlagsRead,
    FlagsWrite => FlagsWrite,
    FlagsEvaluate => FlagsEvaluate,
    GatewayRead => GatewayRead,
    GatewayWrite => GatewayWrite,
    SlosRead => SlosRead,
    SlosWrite => SlosWrite,
    SlosObserve => SlosObserve,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip_and_unknown_named() {
        let set = ScopeSet::parse_names(&["tenants:read".into(), "audit:read".into()], "scopes").unwrap();
        assert!(set.contains(Scope::TenantsRead) && set.contains(Scope::AuditRead));
        assert!(!set.contains(Scope::KeysWrite));
        assert_eq!(set.names(), vec!["tenants:read", "audit:read"]);
        let e = ScopeSet::parse_names(&["tenants:read".into(), "root".into()], "scopes").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/scopes/1"));
    }

    #[test]
    fn subset() {
        let a: ScopeSet = [Scope::TenantsRead].into_iter().collect();
        assert!(a.is_subset_of(ScopeSet::all()));
        assert!(!ScopeSet::all().is_subset_of(a));
    }
}
