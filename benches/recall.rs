//! The recall hot path on an in-memory store holding 100,000 messages in 10 conversations, with
//! two connected devices per party; and send beside it.
//!
//! The devices are connected but nobody reads them while the clock runs: after their channels
//! fill they are marked lagging and recall's delivery step only appends to the inboxes (what a
//! real server sees when clients are slower than the admin API).
//!
//! Run: `cargo bench --bench recall`

include!("shared/recall_body.rs");
