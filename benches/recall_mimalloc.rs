//! The recall benchmark of `recall.rs`, with mimalloc as the global allocator (what
//! `imstore-server` uses). Recall frees each erased body; glibc's malloc spends much of a recall
//! consolidating those frees, mimalloc does not.
//!
//! Run: `cargo bench --bench recall_mimalloc`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

include!("shared/recall_body.rs");
