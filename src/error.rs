//! The error type: every failure carries the Tencent Cloud IM error code a REST client expects
//! (`Error::code`) and a sentence a person can act on (`Display`).

use std::fmt;

use crate::key::{MsgKey, ParseMsgKeyError};

/// Everything that can go wrong in an imstore operation.
///
/// Which account code applies follows one rule across operations: the acting side of a request
/// (`From_Account`, `Operator_Account`, `Report_Account`) answers **90008** when it names no
/// account, the other side (`To_Account`, `Peer_Account`) answers **90003** — but a send's or an
/// import's recipient **90012**, as Tencent's `sendmsg` and `importmsg` do (90003 is theirs for
/// a To_Account missing or not a string); the account APIs and batch send's per-recipient list
/// use **70107**.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// 90001: the request is not of the right shape.
    InvalidRequest(String),
    /// 70402: a UserID that cannot be imported.
    InvalidUserId { user: String, reason: &'static str },
    /// 70402: more than 100 accounts in one multi-import.
    TooManyAccounts { count: usize },
    /// 70107: no such account (account APIs, batch send recipients, device operations).
    AccountNotFound(String),
    /// 90008: `From_Account` (or the acting account) is missing or names no account.
    FromAccountNotFound(String),
    /// 90003: `To_Account` (or the peer) is missing or names no account — a send's or an
    /// import's recipient that names no account is [`Error::RecipientNotFound`] — or names the
    /// sender itself.
    ToAccountNotFound(String),
    /// 90012: a send's or an import's `To_Account` names no account.
    RecipientNotFound(String),
    /// 90002: MsgBody is empty or an element is malformed.
    InvalidMsgBody(String),
    /// 93000: the encoded MsgBody and CloudCustomData exceed the 12 KB limit.
    BodyTooLarge { len: usize, max: usize },
    /// 90026: MsgLifeTime above 604800 seconds.
    InvalidLifeTime(u64),
    /// 90011: batch send to more than 500 recipients.
    TooManyRecipients(usize),
    /// 90054: MsgKey is not a canonical key.
    InvalidMsgKey(ParseMsgKeyError),
    /// 20022: no message with that key from `from` to `to`.
    MessageNotFound {
        from: String,
        to: String,
        key: MsgKey,
    },
    /// 20023: the message was already recalled.
    AlreadyRecalled {
        from: String,
        to: String,
        key: MsgKey,
    },
    /// 20006 (or the hook's own code in 120001..=130000, with its own ErrorInfo): the
    /// before-send decision refused it.
    BlockedByHook { code: u32, info: Option<String> },
    /// 90001: a new device for an account that already has the most devices allowed.
    TooManyDevices { account: String, max: usize },
    /// 80003: the before-send callback failed or timed out and the policy is not to deliver.
    CallbackUnavailable,
    /// 20016: a client may recall its own message only within the recall window.
    RecallTooLate { key: MsgKey, window_secs: u64 },
    /// 90009: the operation needs an app administrator.
    NotAdmin(String),
    /// 91000: the store cannot do it now (for example the journal cannot be written).
    Internal(String),
    /// 70001: the UserSig has expired.
    SigExpired { expired_at: u64 },
    /// 70003: the UserSig cannot be decoded.
    SigMalformed(String),
    /// 70009: the UserSig's signature does not verify with the app's key.
    SigBadSignature,
    /// 70013: the UserSig was issued for another identifier.
    SigIdentifierMismatch { identifier: String, signed: String },
    /// 70014: the UserSig (or request) names another SDKAppID.
    SigAppIdMismatch { expected: u64, found: u64 },
    /// 60010: no such API.
    UnknownApi(String),
    /// 60007: the API's rate limit is exceeded.
    RateLimited { api: String, per_second: u32 },
    /// A request field is missing, of the wrong type or out of range; `code` is the one
    /// Tencent documents for that field (90005 MsgRandom, 90006 MsgTimeStamp, ...).
    InvalidField {
        field: &'static str,
        code: u32,
        why: String,
    },
    /// An error another node of a cluster answered: its code and ErrorInfo, passed on as
    /// they are.
    Remote { code: u32, info: String },
}

impl Error {
    /// The Tencent Cloud IM error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            Error::InvalidRequest(_) | Error::TooManyDevices { .. } => 90001,
            Error::InvalidUserId { .. } | Error::TooManyAccounts { .. } => 70402,
            Error::AccountNotFound(_) => 70107,
            Error::FromAccountNotFound(_) => 90008,
            Error::ToAccountNotFound(_) => 90003,
            Error::RecipientNotFound(_) => 90012,
            Error::InvalidMsgBody(_) => 90002,
            Error::BodyTooLarge { .. } => 93000,
            Error::InvalidLifeTime(_) => 90026,
            Error::TooManyRecipients(_) => 90011,
            Error::InvalidMsgKey(_) => 90054,
            Error::MessageNotFound { .. } => 20022,
            Error::AlreadyRecalled { .. } => 20023,
            Error::BlockedByHook { code, .. } => *code,
            Error::NotAdmin(_) => 90009,
            Error::CallbackUnavailable => 80003,
            Error::RecallTooLate { .. } => 20016,
            Error::Internal(_) => 91000,
            Error::SigExpired { .. } => 70001,
            Error::SigMalformed(_) => 70003,
            Error::SigBadSignature => 70009,
            Error::SigIdentifierMismatch { .. } => 70013,
            Error::SigAppIdMismatch { .. } => 70014,
            Error::UnknownApi(_) => 60010,
            Error::RateLimited { .. } => 60007,
            Error::InvalidField { code, .. } => *code,
            Error::Remote { code, .. } => *code,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Remote { info, .. } => f.write_str(info),
            Error::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Error::InvalidUserId { user, reason } => write!(f, "invalid UserID {user:?}: {reason}"),
            Error::TooManyAccounts { count } => {
                write!(f, "{count} accounts in one import; at most 100 are allowed")
            }
            Error::AccountNotFound(u) => write!(f, "account {u:?} does not exist; import it first"),
            Error::FromAccountNotFound(u) => {
                write!(f, "From_Account {u:?} is missing or does not exist")
            }
            Error::ToAccountNotFound(u) => {
                write!(f, "To_Account {u:?} is missing or does not exist")
            }
            Error::RecipientNotFound(u) => {
                write!(f, "To_Account {u:?} does not exist; import it first")
            }
            Error::InvalidMsgBody(why) => write!(f, "invalid MsgBody: {why}"),
            Error::BodyTooLarge { len, max } => {
                write!(
                    f,
                    "message is {len} bytes encoded; the limit is {max} bytes"
                )
            }
            Error::InvalidLifeTime(s) => {
                write!(f, "MsgLifeTime {s} is out of range; use 0..=604800 seconds")
            }
            Error::TooManyRecipients(n) => {
                write!(f, "{n} recipients; batch send takes 1 to 500")
            }
            Error::InvalidMsgKey(e) => write!(f, "{e}"),
            Error::MessageNotFound { from, to, key } => {
                write!(f, "no message {key} from {from:?} to {to:?}")
            }
            Error::AlreadyRecalled { from, to, key } => {
                write!(
                    f,
                    "message {key} from {from:?} to {to:?} was already recalled"
                )
            }
            Error::BlockedByHook {
                info: Some(info), ..
            } => f.write_str(info),
            Error::BlockedByHook { code, info: None } => {
                write!(
                    f,
                    "the before-send callback refused the message (code {code})"
                )
            }
            Error::TooManyDevices { account, max } => write!(
                f,
                "account {account:?} already has {max} devices; connect one of them, or wait \
                 until an unused one is forgotten"
            ),
            Error::CallbackUnavailable => write!(
                f,
                "the before-send callback failed or timed out, and the policy is not to deliver"
            ),
            Error::RecallTooLate { key, window_secs } => write!(
                f,
                "message {key} can no longer be recalled: a client may recall its own message \
                 within {window_secs} s of sending it"
            ),
            Error::NotAdmin(who) => write!(f, "{who:?} is not an app administrator"),
            Error::Internal(why) => write!(f, "internal error, retry later: {why}"),
            Error::SigExpired { expired_at } => {
                write!(f, "UserSig expired at {expired_at}; issue a new one")
            }
            Error::SigMalformed(why) => write!(f, "UserSig is malformed: {why}"),
            Error::SigBadSignature => {
                write!(
                    f,
                    "UserSig signature does not verify; was it made with this app's key?"
                )
            }
            Error::SigIdentifierMismatch { identifier, signed } => {
                write!(
                    f,
                    "UserSig was issued for {signed:?}, not for identifier {identifier:?}"
                )
            }
            Error::SigAppIdMismatch { expected, found } => {
                write!(f, "SDKAppID {found} does not match this app's {expected}")
            }
            Error::UnknownApi(path) => write!(f, "no API {path:?}"),
            Error::RateLimited { api, per_second } => {
                write!(
                    f,
                    "{api} is limited to {per_second} calls per second; slow down"
                )
            }
            Error::InvalidField { field, why, .. } => write!(f, "{field} {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ParseMsgKeyError> for Error {
    fn from(e: ParseMsgKeyError) -> Self {
        Error::InvalidMsgKey(e)
    }
}

/// The result type of imstore operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
