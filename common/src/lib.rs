//! What every tally process shares: configuration, the Redis key layout, Kafka
//! record formats, and the Redis and Kafka client set-up.
//!
//! One thing has one home: a key name, a record field or a client setting that
//! exactly-once depends on is defined here and nowhere else, so the producer, the
//! counter, the aggregator and the CLI cannot disagree about it.

pub mod auth;
pub mod backoff;
pub mod combiner;
pub mod counting;
pub mod failpoint;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod kafka;
pub mod keys;
pub mod observe;
pub mod protocol;
pub mod records;
pub mod redis;
pub mod registry;
pub mod ring;
pub mod schema;
pub mod service;
pub mod settings;
pub mod stash;
pub mod telemetry;
pub mod tls;

pub use keys::{ClientId, Keys, MessageHash};
pub use settings::Settings;
