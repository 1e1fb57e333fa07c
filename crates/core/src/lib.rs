//! Runway's shared vocabulary: typed IDs, the clock, the error-code table, the strict JSON
//! extractor, cursor pagination and the typed configuration. Every capability crate builds on
//! these so that an ID, an error or a page looks the same on every route.

pub mod bounds;
pub mod clock;
pub mod config;
pub mod error;
pub mod id;
pub mod json;
pub mod labels;
pub mod page;
pub mod secret;
pub mod trace;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use error::{ApiError, ErrorCode};
pub use id::{AttemptId, AuditEntryId, DeliveryId, EndpointId, EventPos, KeyId, RequestId, TenantId};
pub use json::{ApiJson, ApiQuery};
pub use page::{Cursor, Page, PageQuery};
