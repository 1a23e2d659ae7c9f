//! Devices are bounded and cost next to nothing when not connected (SPEC §1): 20,000 distinct
//! devices connect, receive, and disconnect, and the process's memory stays within a few MB of
//! where it began; more distinct devices than an account may have are refused. (Alone in its
//! test binary, so that no other test's allocations move the figure.)

mod common;

use common::*;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

#[test]
fn twenty_thousand_distinct_devices_leave_memory_where_it_was() {
    const ACCOUNTS: usize = 1000;
    const DEVICES_EACH: usize = 20;
    let users: Vec<String> = (0..ACCOUNTS).map(|i| format!("user{i}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let (store, _) = store_with_config(&["sender"], |c| c.with_max_devices_per_account(32));
    for chunk in refs.chunks(100) {
        store.import_accounts(chunk).unwrap();
    }
    for u in &refs {
        send_text(&store, "sender", u, 1, "hello");
    }
    // Warm up allocator pools with one device per account, then measure.
    for u in &refs {
        let sub = store.connect(u, "warmup").unwrap();
        drain(&sub);
    }
    let before = rss();
    for d in 0..DEVICES_EACH {
        for u in &refs {
            let sub = store.connect(u, &format!("device-{d}")).unwrap();
            assert_eq!(drain(&sub).len(), 1);
            drop(sub);
        }
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{} distinct devices connected and disconnected: RSS grew {} KB ({} bytes per device)",
        ACCOUNTS * DEVICES_EACH,
        grown / 1024,
        grown / (ACCOUNTS * DEVICES_EACH) as u64
    );
    assert!(
        grown < 8 << 20,
        "RSS grew {} KB for 20,000 disconnected devices",
        grown / 1024
    );
    assert_eq!(store.devices("user0").unwrap().len(), DEVICES_EACH + 1);
    // An account cannot be made to keep more devices than allowed.
    for d in DEVICES_EACH + 1..32 {
        drop(store.connect("user0", &format!("more-{d}")).unwrap());
    }
    assert_eq!(
        store.connect("user0", "one-too-many").unwrap_err().code(),
        90001
    );
}
