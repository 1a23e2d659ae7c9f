use super::*;
use crate::message::{Content, MsgElement, SenderCopy};
use std::collections::VecDeque;

pub(super) fn held(seq: u32) -> Held {
    let u = UserId::new("roaming-test-a").unwrap();
    let v = UserId::new("roaming-test-b").unwrap();
    let c = Content::new(&[MsgElement::text("x")], None).unwrap();
    Held::new(MsgArc::new(StoredMessage::new(
        u,
        v,
        MsgKey::new(seq, 1, 100),
        u64::from(seq),
        SenderCopy::Roaming,
        false,
        c,
    )))
}

fn seqs<'a>(it: impl Iterator<Item = &'a Held>) -> Vec<u32> {
    it.map(|h| h.ts as u32).collect()
}

#[test]
fn messages_are_32_bytes_in_every_form() {
    assert_eq!(std::mem::size_of::<Messages>(), 32);
}

#[test]
fn messages_behave_as_a_deque_through_one_and_many() {
    // A model (a plain deque of MsgSeqs) and random inserts, trims and range reads.
    let mut model: VecDeque<u32> = VecDeque::new();
    let mut m = Messages::Empty;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for step in 0..4000u32 {
        let r = next();
        if r % 4 == 0 && !model.is_empty() {
            let n = (next() as usize) % (model.len() + 1);
            model.drain(..n);
            m.drain_front(n);
        } else {
            let at = (next() as usize) % (model.len() + 1);
            model.insert(at, step);
            m.insert(at, held(step));
        }
        assert_eq!(m.len(), model.len());
        assert_eq!(seqs(m.iter()), model.iter().copied().collect::<Vec<_>>());
        assert_eq!(m.front().map(|h| h.ts as u32), model.front().copied());
        assert_eq!(m.back().map(|h| h.ts as u32), model.back().copied());
        let (a, b) = ((next() as usize) % 6, (next() as usize) % 6);
        let want: Vec<u32> = model
            .iter()
            .copied()
            .skip(a)
            .take(b.saturating_sub(a))
            .collect();
        assert_eq!(seqs(m.range(a, b)), want, "range {a}..{b}");
        let mut rev = want.clone();
        rev.reverse();
        assert_eq!(seqs(m.range(a, b).rev()), rev);
        match model.len() {
            0 => assert!(matches!(m, Messages::Empty)),
            1 => assert!(matches!(m, Messages::One(_))),
            _ => assert!(matches!(m, Messages::Many(_))),
        }
        if model.len() > 40 {
            model.clear();
            m.drain_front(usize::MAX);
        }
    }
    // partition_point over a sorted run.
    let mut m = Messages::Empty;
    assert_eq!(m.partition_point(|_| true), 0);
    for s in 0..5 {
        m.insert(m.len(), held(s * 10));
        for probe in 0..=50 {
            let want = (0..=s).filter(|k| k * 10 < probe).count();
            assert_eq!(m.partition_point(|h| (h.ts as u32) < probe), want);
        }
    }
}
