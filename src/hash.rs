//! The hash maps used inside the store: foldhash, randomly seeded per map. UserIDs and keys
//! come from clients, so the hasher must resist precomputed collisions, and it sits on the hot
//! path of every lookup (SipHash was a fifth of a recall's instructions).

pub(crate) type RandomState = foldhash::fast::RandomState;
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;
