//! Hooks (SPEC §3): before-send allow / block / drop / replace / custom code, after-send, and no
//! hooks for batch send.
mod common;
use std::sync::{Arc, Mutex};

use common::*;
use imstore::{
    BatchSendRequest, BeforeSend, HistoryQuery, Hooks, MessageView, MsgElement, OutgoingMessage,
    SenderCopy,
};

struct Scripted {
    decision: BeforeSend,
    calls: Mutex<u32>,
    sent: Mutex<Vec<MessageView>>,
}

impl Hooks for Scripted {
    fn before_send(&self, _msg: &OutgoingMessage<'_>) -> BeforeSend {
        *self.calls.lock().unwrap() += 1;
        self.decision.clone()
    }
    fn after_send(&self, msg: &MessageView) {
        self.sent.lock().unwrap().push(msg.clone());
    }
}

fn with_hook(decision: BeforeSend) -> (imstore::Store, Arc<Scripted>) {
    let hooks = Arc::new(Scripted {
        decision,
        calls: Mutex::new(0),
        sent: Mutex::new(vec![]),
    });
    let (store, _) = store_with_config(&["a", "b"], |c| c.with_hooks(hooks.clone()));
    (store, hooks)
}

fn stored(store: &imstore::Store) -> Vec<String> {
    store
        .history(&HistoryQuery::new("b", "a", 10))
        .unwrap()
        .messages
        .iter()
        .map(|i| body_text(&i.message))
        .collect()
}

#[test]
fn before_send_allow_stores_and_after_send_observes() {
    let (store, hooks) = with_hook(BeforeSend::Allow);
    send_text(&store, "a", "b", 1, "ok");
    assert_eq!(stored(&store), vec!["ok"]);
    assert_eq!(body_text(&hooks.sent.lock().unwrap()[0]), "ok");
}

#[test]
fn before_send_block_answers_20006_and_stores_nothing() {
    let (store, hooks) = with_hook(BeforeSend::Block);
    assert_eq!(
        store.send(text_req("a", "b", 1, "no")).unwrap_err().code(),
        20006
    );
    assert!(stored(&store).is_empty());
    assert!(hooks.sent.lock().unwrap().is_empty());
}

#[test]
fn before_send_block_with_a_custom_code_answers_that_code_and_info() {
    let (store, _) = with_hook(BeforeSend::BlockWithCode {
        code: 120_555,
        info: Some("no links, please".into()),
    });
    let err = store.send(text_req("a", "b", 1, "no")).unwrap_err();
    assert_eq!(err.code(), 120_555);
    assert_eq!(err.to_string(), "no links, please");
}

#[test]
fn before_send_unavailable_answers_80003_and_stores_nothing() {
    let (store, _) = with_hook(BeforeSend::Unavailable);
    assert_eq!(
        store.send(text_req("a", "b", 1, "no")).unwrap_err().code(),
        80003
    );
    assert!(stored(&store).is_empty());
}

#[test]
fn before_send_block_with_a_code_out_of_range_answers_20006() {
    let (store, _) = with_hook(BeforeSend::BlockWithCode {
        code: 42,
        info: Some("ignored".into()),
    });
    assert_eq!(
        store.send(text_req("a", "b", 1, "no")).unwrap_err().code(),
        20006
    );
}

#[test]
fn before_send_drop_reports_success_and_stores_nothing() {
    let (store, hooks) = with_hook(BeforeSend::Drop);
    let sub = store.connect("b", "phone").unwrap();
    let receipt = store.send(text_req("a", "b", 1, "dropped")).unwrap();
    assert_eq!(receipt.msg_key.random(), 1);
    assert!(stored(&store).is_empty());
    assert!(drain(&sub).is_empty());
    assert!(hooks.sent.lock().unwrap().is_empty());
    assert_eq!(store.unread("b", "a").unwrap(), 0);
}

#[test]
fn before_send_replace_stores_the_replacement() {
    let (store, _) = with_hook(BeforeSend::Replace {
        body: Some(vec![MsgElement::text("***")]),
        cloud_custom_data: Some("scrubbed".into()),
    });
    send_text(&store, "a", "b", 1, "rude word");
    let page = store.history(&HistoryQuery::new("b", "a", 10)).unwrap();
    let content = page.messages[0].message.content.clone().unwrap();
    assert_eq!(body_text(&page.messages[0].message), "***");
    assert_eq!(content.cloud_custom_data(), Some("scrubbed"));
}

#[test]
fn batch_send_runs_no_hooks() {
    let (store, hooks) = with_hook(BeforeSend::Block);
    let r = store
        .batch_send(BatchSendRequest {
            from: Some("a".into()),
            to: vec!["b".into()],
            msg_random: 1,
            msg_seq: None,
            msg_time: None,
            body: vec![MsgElement::text("bulk")],
            cloud_custom_data: None,
            sender_copy: SenderCopy::Roaming,
            lifetime: None,
            control: Default::default(),
        })
        .unwrap();
    assert!(r.errors.is_empty());
    assert_eq!(*hooks.calls.lock().unwrap(), 0);
    assert_eq!(stored(&store), vec!["bulk"]);
}

/// Hooks that decide before sends but say they do not observe them afterwards.
struct GateOnly {
    before: Mutex<u32>,
    after: Mutex<u32>,
}

impl Hooks for GateOnly {
    fn before_send(&self, _msg: &OutgoingMessage<'_>) -> BeforeSend {
        *self.before.lock().unwrap() += 1;
        BeforeSend::Allow
    }
    fn after_send(&self, _msg: &MessageView) {
        *self.after.lock().unwrap() += 1;
    }
    fn observes_sends(&self) -> bool {
        false
    }
}

#[test]
fn hooks_that_do_not_observe_sends_still_decide_them_and_are_not_called_after() {
    let hooks = Arc::new(GateOnly {
        before: Mutex::new(0),
        after: Mutex::new(0),
    });
    let (store, _) = store_with_config(&["a", "b"], |c| c.with_hooks(hooks.clone()));
    send_text(&store, "a", "b", 1, "one");
    let (sent, ticket) = store.deferring(|| store.send(text_req("a", "b", 2, "two")));
    sent.unwrap();
    store.commit(ticket).unwrap();
    let mut both = stored(&store);
    both.sort();
    assert_eq!(both, vec!["one", "two"]);
    assert_eq!(*hooks.before.lock().unwrap(), 2);
    assert_eq!(*hooks.after.lock().unwrap(), 0);
}

/// A message to its own sender is refused (90003) before the before-send decision is asked
/// for, whatever the decision would have been. Before, the hook saw it, and its decision
/// chose the answer: 90003 on allow, 20006 on block, and OK on drop, with nothing stored.
#[test]
fn a_message_to_oneself_is_refused_before_the_hook_is_asked() {
    for decision in [BeforeSend::Allow, BeforeSend::Block, BeforeSend::Drop] {
        let (store, hooks) = with_hook(decision.clone());
        let err = store.send(text_req("a", "a", 1, "me")).unwrap_err();
        assert_eq!(err.code(), 90003, "{decision:?}: {err}");
        assert_eq!(*hooks.calls.lock().unwrap(), 0, "{decision:?}");
    }
}

/// A send that repeats a stored message — the same (From, To, MsgKey), or a retry dated anew
/// — is answered with that message whatever the before-send decision says now (SPEC §2: it
/// stores nothing and returns the existing message). Before, a hook that refused the repeat
/// (a rate limiter, an app that had since gone down) answered "refused" about a message the
/// recipient already had.
#[test]
fn a_repeat_of_a_stored_message_is_answered_with_it_whatever_the_decision() {
    struct FirstOnly(Mutex<u32>);
    impl Hooks for FirstOnly {
        fn before_send(&self, _msg: &OutgoingMessage<'_>) -> BeforeSend {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            match *n {
                1 | 2 => BeforeSend::Allow,
                3 => BeforeSend::Block,
                4 => BeforeSend::Unavailable,
                _ => BeforeSend::Drop,
            }
        }
    }
    let (store, clock) = store_with_config(&["a", "b"], |c| {
        c.with_hooks(Arc::new(FirstOnly(Mutex::new(0))))
    });
    let mut keyed = text_req("a", "b", 7, "keyed");
    keyed.msg_seq = Some(70);
    keyed.msg_time = Some(T0 as u32);
    let first = store.send(keyed.clone()).unwrap();
    let mut dated = text_req("a", "b", 8, "dated by the server");
    dated.msg_seq = Some(80);
    let second = store.send(dated.clone()).unwrap();
    clock.advance(5);
    for (repeat, of) in [
        (keyed.clone(), &first),
        (dated.clone(), &second),
        (keyed, &first),
    ] {
        let got = store.send(repeat).unwrap();
        assert_eq!(got.msg_key, of.msg_key);
    }
    let want = vec!["keyed", "dated by the server"];
    assert_eq!(stored(&store), want, "nothing stored twice");
    // A new message is still refused as decided.
    let mut new = text_req("a", "b", 9, "new");
    new.msg_seq = Some(90);
    assert!(store.send(new).is_ok(), "dropped silently, answered OK");
    assert_eq!(stored(&store), want);
}

/// A send whose body the before-send decision replaced (moderation writing `***`) is still
/// found when the client retries it as sent — dated anew by the server, within 120 s — and
/// answered with the stored message, whatever the decision says about the retry. Before,
/// the retry search compared the retry's content with the replaced one and never matched:
/// the retry was put to the decision again and refused (20006 about a delivered message),
/// or stored twice under another MsgKey.
#[test]
fn a_retry_of_a_send_whose_body_was_replaced_is_answered_with_it() {
    struct Moderate(Mutex<u32>);
    impl Hooks for Moderate {
        fn before_send(&self, _msg: &OutgoingMessage<'_>) -> BeforeSend {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            match *n {
                1 => BeforeSend::Replace {
                    body: Some(vec![MsgElement::text("***")]),
                    cloud_custom_data: None,
                },
                2 => BeforeSend::Block,
                // The moderation backend timed out: an in-process hook that fails open allows.
                3 => BeforeSend::Allow,
                _ => BeforeSend::Replace {
                    body: Some(vec![MsgElement::text("*** again")]),
                    cloud_custom_data: Some("audit 2".into()),
                },
            }
        }
    }
    let (store, clock) = store_with_config(&["a", "b"], |c| {
        c.with_hooks(Arc::new(Moderate(Mutex::new(0))))
    });
    let mut req = text_req("a", "b", 9, "bad word");
    req.msg_seq = Some(7);
    let first = store.send(req.clone()).unwrap();
    for _ in 0..3 {
        clock.advance(3);
        let retry = store.send(req.clone()).unwrap();
        assert_eq!(retry.msg_key, first.msg_key);
    }
    assert_eq!(stored(&store), vec!["***"], "stored once, as replaced");
    // Past the retry window the same request is a new message (decided again).
    clock.advance(130);
    let later = store.send(req).unwrap();
    assert_ne!(later.msg_key, first.msg_key);
}
