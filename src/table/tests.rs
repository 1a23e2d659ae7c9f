use super::*;

use std::sync::Arc;

#[test]
fn table_finds_what_it_stored_across_growth() {
    let t = Table::<2>::default();
    for i in 0..10_000u64 {
        assert_eq!(
            t.get_or_insert_with(&[i, !i], || i as u32 * 3),
            i as u32 * 3
        );
    }
    assert_eq!(t.len(), 10_000);
    for i in 0..10_000u64 {
        assert_eq!(t.get(&[i, !i]), Some(i as u32 * 3));
        assert_eq!(
            t.get_or_insert_with(&[i, !i], || unreachable!()),
            i as u32 * 3
        );
    }
    assert_eq!(t.get(&[5, 5]), None);
    assert_eq!(t.get(&[10_000, !10_000]), None);
}

#[test]
fn a_prehashed_table_files_keys_by_their_last_word_and_tells_equal_ones_apart() {
    let t = Table::<2, true>::prehashed();
    // Each key's last word is its hash, the table's own mix of two words (as the
    // conversations' table makes it); every 8th key shares its hash with 7 others, which
    // only the first word tells apart. Across growths (40,000 keys: ten doublings).
    let key = |i: u64| [i, t.mix(i / 8, 1)];
    for i in 0..40_000u64 {
        assert_eq!(t.hash_of(&key(i)), key(i)[1], "the last word is the hash");
        assert_eq!(t.get_or_insert_with(&key(i), || i as u32), i as u32);
    }
    assert_eq!(t.len(), 40_000);
    for i in 0..40_000u64 {
        assert_eq!(t.get(&key(i)), Some(i as u32));
        assert_eq!(t.get_hashed(&key(i), key(i)[1]), Some(i as u32));
    }
    // The same hash with a first word never stored, and a stored first word under
    // another hash: both absent.
    assert_eq!(t.get(&[40_000, key(7)[1]]), None);
    assert_eq!(t.get(&[7, key(8)[1]]), None);
    // Mixing is seeded per table and depends on both words and their order.
    let u = Table::<2, true>::prehashed();
    assert_ne!(t.mix(1, 2), u.mix(1, 2));
    assert_ne!(t.mix(1, 2), t.mix(2, 1));
    assert_ne!(t.mix(1, 2), t.mix(1, 3));
}

/// A prehashed table keeps a hint in each slot, in the word of the key's hash: set, read
/// with the value, carried by every growth's copy; not taken while a writer holds the
/// table; no part of the key (keys are told apart by their other words).
#[test]
fn a_prehashed_tables_hints_follow_their_keys_across_growths() {
    let t = Table::<2, true>::prehashed();
    let key = |i: u64| [i, t.mix(i / 8, 1)];
    for i in 0..40_000u64 {
        t.get_or_insert_with(&key(i), || i as u32);
        assert_eq!(t.get_hinted(&key(i)), Some((i as u32, 0)), "no hint yet");
        if i % 3 != 0 {
            t.set_hint(&key(i), i << 8 | 0xAB);
        }
    }
    // A hint set while the key is in the level being copied: kept by the copy.
    let copying = (0..10_000u64).find(|_| {
        let n = t.len() as u64;
        t.get_or_insert_with(&key(n), || n as u32);
        t.old.load(Ordering::Relaxed) != 0
    });
    assert!(copying.is_some(), "a growth began");
    t.set_hint(&key(5), 0x55);
    while t.old.load(Ordering::Relaxed) != 0 {
        let n = t.len() as u64;
        t.get_or_insert_with(&key(n), || n as u32);
    }
    for i in 0..40_000u64 {
        let hint = match i {
            5 => 0x55,
            _ if i % 3 == 0 => 0,
            _ => i << 8 | 0xAB,
        };
        assert_eq!(t.get_hinted(&key(i)), Some((i as u32, hint)), "key {i}");
        assert_eq!(t.get(&key(i)), Some(i as u32));
    }
    // With the writers' lock held elsewhere, a hint is not taken (never waited for).
    {
        let _writer = t.writer.lock();
        t.set_hint(&key(7), 0x77);
    }
    assert_eq!(t.get_hinted(&key(7)), Some((7, 7 << 8 | 0xAB)));
    // A hint set on a key never stored: nothing.
    t.set_hint(&[u64::MAX, 3], 1);
    assert_eq!(t.get_hinted(&[u64::MAX, 3]), None);
}

#[cfg(target_os = "linux")]
#[test]
fn old_levels_are_given_back_and_every_key_is_still_found() {
    let t = Table::<1>::default();
    for i in 0..100_000u64 {
        t.get_or_insert_with(&[i], || i as u32);
    }
    let current = t.current.load(Ordering::Relaxed);
    let copying = t.old.load(Ordering::Relaxed).checked_sub(1);
    assert!(current >= 10);
    for old in (0..current).filter(|l| Some(*l) != copying) {
        // Each level its own mapping, given back whole.
        let old = t.levels[old].get().unwrap();
        let left = old
            .slots()
            .iter()
            .filter(|s| s.head.load(Ordering::Relaxed) != 0)
            .count();
        assert_eq!(left, 0, "of {}", old.slots().len());
    }
    for i in 0..100_000u64 {
        assert_eq!(t.get(&[i]), Some(i as u32));
    }
    assert_eq!(t.get(&[100_000]), None);
    // A reader that began on a level since retired, before every epoch since, finds
    // every key all the same.
    for old in 8..current {
        for i in (0..100_000u64).step_by(7) {
            assert_eq!(
                t.get_as_of(&[i], t.hash(&[i]), 0, old),
                Some((i as u32, 0)),
                "key {i}, level {old}"
            );
        }
        assert_eq!(t.get_as_of(&[100_001], t.hash(&[100_001]), 0, old), None);
    }
}

#[test]
fn a_growth_copies_a_few_slots_per_insert_and_every_key_is_found_meanwhile() {
    let t = Table::<1>::default();
    let mut growths = 0;
    let mut current = 0;
    for i in 0..200_000u64 {
        let (old_before, copied_before) = (t.old.load(Ordering::Relaxed), t.writer.lock().copied);
        t.get_or_insert_with(&[i], || i as u32);
        let (old, copied) = (t.old.load(Ordering::Relaxed), t.writer.lock().copied);
        if t.current.load(Ordering::Relaxed) != current {
            current = t.current.load(Ordering::Relaxed);
            growths += 1;
            // Nothing copied yet: every key but the last is in the old level only.
            assert_eq!((old, copied), (current, 0));
            for j in 0..=i {
                assert_eq!(
                    t.get(&[j]),
                    Some(j as u32),
                    "key {j} after growth {growths}"
                );
            }
        } else if old != 0 && old == old_before {
            assert!(copied - copied_before <= COPY_PER_INSERT);
        }
        if i % 997 == 0 {
            for j in (0..=i).step_by(101) {
                assert_eq!(t.get(&[j]), Some(j as u32));
            }
        }
    }
    assert!(growths >= 10, "{growths} growths");
    assert_eq!(t.len(), 200_000);
}

#[test]
fn readers_see_every_key_inserted_before_while_the_table_grows() {
    let t = Arc::new(Table::<1>::default());
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            for i in 0..50_000u64 {
                t.get_or_insert_with(&[i], || i as u32);
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut seen = 0;
                for round in 0..200u64 {
                    // Every key below the table's length was inserted before it was read.
                    let n = t.len() as u64;
                    for i in (round % 7..n).step_by(97) {
                        assert_eq!(t.get(&[i]), Some(i as u32), "key {i} of {n}");
                        seen += 1;
                    }
                }
                seen
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(t.len(), 50_000);
}

#[test]
fn writers_racing_for_the_same_keys_store_each_once_across_growths() {
    // Three writers insert the same 30,000 keys, each in its own order, going straight to
    // the locked look (as a conversation is made after a miss): each key is made once,
    // every writer gets its value, and none is stored twice — in particular while a
    // growth's copy has not reached it yet, when it sits in the old level only.
    let t = Arc::new(Table::<1>::default());
    let made = Arc::new(AtomicUsize::new(0));
    const KEYS: u64 = 30_000;
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (t, made) = (t.clone(), made.clone());
            std::thread::spawn(move || {
                for j in 0..KEYS {
                    // Writer 0 ascending, 1 descending, 2 strided.
                    let i = match w {
                        0 => j,
                        1 => KEYS - 1 - j,
                        _ => (j * 7919) % KEYS,
                    };
                    let v = t.get_or_try_insert_locked(&[i], || {
                        made.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, ()>(i as u32 * 2)
                    });
                    assert_eq!(v, Ok(i as u32 * 2), "key {i}");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(made.load(Ordering::Relaxed), KEYS as usize);
    assert_eq!(t.len(), KEYS as usize);
    let current = t.at(t.current.load(Ordering::Relaxed));
    let stored = current
        .slots()
        .iter()
        .filter(|s| s.head.load(Ordering::Relaxed) != 0)
        .count();
    let old = match t.old.load(Ordering::Relaxed) {
        0 => 0,
        o => t.at(o - 1).slots()[t.writer.lock().copied..]
            .iter()
            .filter(|s| s.head.load(Ordering::Relaxed) != 0)
            .count(),
    };
    assert_eq!(stored + old, KEYS as usize, "a key stored twice");
    for i in 0..KEYS {
        assert_eq!(t.get(&[i]), Some(i as u32 * 2));
    }
}
