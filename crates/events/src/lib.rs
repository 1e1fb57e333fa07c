//! The event backbone: event types with contracts, durable publishing with deduplication, and
//! signed webhook delivery with retries.

pub mod schedule;
pub mod signature;
pub mod ssrf;
