//! Callbacks: the in-process form of Tencent's `C2C.CallbackBeforeSendMsg`,
//! `C2C.CallbackAfterSendMsg` and `C2C.CallbackAfterMsgWithDraw`.
//!
//! Hooks run on the caller's thread with no store lock held, so a hook may call back into the
//! store. Batch send runs no hooks, as in Tencent.

use crate::message::{MessageView, MsgElement, RecallNotice};

/// What the before-send decision says about a message (the in-process hook's answer, or a
/// before-send webhook's).
#[derive(Clone, Debug, PartialEq)]
pub enum BeforeSend {
    /// Store and deliver it unchanged.
    Allow,
    /// Refuse it: the sender gets error 20006.
    Block,
    /// Refuse it with the app's own code, which must lie in 120001..=130000 (anything else is
    /// answered as 20006), and optionally its own ErrorInfo.
    BlockWithCode { code: u32, info: Option<String> },
    /// Pretend success: the sender gets a MsgKey, nothing is stored or delivered.
    Drop,
    /// Store it with a replaced MsgBody and/or CloudCustomData (`None` keeps the original).
    Replace {
        body: Option<Vec<MsgElement>>,
        cloud_custom_data: Option<String>,
    },
    /// No decision could be had (a webhook failed or timed out) and the policy is not to
    /// deliver: the sender gets 80003.
    Unavailable,
}

/// The message a before-send hook is asked about.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingMessage<'a> {
    /// From_Account.
    pub from: &'a str,
    /// To_Account.
    pub to: &'a str,
    /// MsgKey (MsgSeq, MsgRandom, MsgTime), fixed before the decision.
    pub key: crate::MsgKey,
    /// OnlineOnlyFlag: MsgLifeTime 0.
    pub online_only: bool,
    /// MsgBody.
    pub body: &'a [MsgElement],
    /// CloudCustomData.
    pub cloud_custom_data: Option<&'a str>,
}

/// The store's callbacks. Every method has a default that allows and observes nothing.
pub trait Hooks: Send + Sync + 'static {
    /// Called before a single send is stored. It is shown a message that is not stored yet,
    /// between accounts of which one may have been imported moments before, its import not yet
    /// durable (the call does not wait for it, to keep sends from waiting on the journal). A
    /// refusal or a drop it decides is answered only once that import is durable. (The
    /// server's before-send webhook, an observer outside the process, is called only once
    /// the imports are durable.)
    fn before_send(&self, _msg: &OutgoingMessage<'_>) -> BeforeSend {
        BeforeSend::Allow
    }

    /// Called after a single send was stored (and made durable).
    fn after_send(&self, _msg: &MessageView) {}

    /// Whether [`after_send`](Hooks::after_send) does anything. When `false` the store does
    /// not build the view it would hand over (a lock of the message and a copy of its content
    /// per send) and does not call it. Default: `true`.
    fn observes_sends(&self) -> bool {
        true
    }

    /// Called after a recall took effect (and was made durable).
    fn after_recall(&self, _notice: &RecallNotice) {}
}

/// Hooks that do nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn observes_sends(&self) -> bool {
        false
    }
}
