//! Messages: Tencent's eight MsgBody element types (with their exact JSON names), the content a
//! message carries, the one shared record every layer points at, and the read-only views handed
//! to callers.
//!
//! Every layer — roaming, inbox, device caches, live channels — holds a [`MsgArc`] to the one
//! [`StoredMessage`] (`record.rs`), never a copy. Recall and modify change the record's state under its own lock, so all layers
//! see the change at the same instant and a recalled body exists nowhere in memory afterwards.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::account::UserId;
use crate::error::Error;
use crate::key::MsgKey;

mod record;
pub(crate) use record::{ARRIVAL_LIMIT, MsgArc, MsgState, StoredMessage};

/// The largest encoded MsgBody plus CloudCustomData, in bytes (Tencent's 12 KB; error 93000).
pub const MAX_BODY_BYTES: usize = 12 * 1024;
/// The longest MsgLifeTime, in seconds (7 days; error 90026 above it).
pub const MAX_LIFETIME_SECS: u64 = 604_800;
/// MsgFlagBits of a recalled message.
pub const FLAG_RECALLED: u32 = 8;

/// One element of a MsgBody, tagged as Tencent tags it:
/// `{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "MsgType", content = "MsgContent")]
#[allow(clippy::enum_variant_names)] // the names are Tencent's wire names
pub enum MsgElement {
    TIMTextElem(TextElem),
    TIMLocationElem(LocationElem),
    TIMFaceElem(FaceElem),
    TIMCustomElem(CustomElem),
    TIMSoundElem(SoundElem),
    TIMImageElem(ImageElem),
    TIMFileElem(FileElem),
    TIMVideoFileElem(VideoFileElem),
}

impl MsgElement {
    /// A text element.
    pub fn text(text: impl Into<String>) -> Self {
        MsgElement::TIMTextElem(TextElem { text: text.into() })
    }
}

/// `TIMTextElem`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextElem {
    #[serde(rename = "Text")]
    pub text: String,
}

/// `TIMLocationElem`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocationElem {
    #[serde(rename = "Desc", default)]
    pub desc: String,
    #[serde(rename = "Latitude")]
    pub latitude: f64,
    #[serde(rename = "Longitude")]
    pub longitude: f64,
}

/// `TIMFaceElem`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceElem {
    #[serde(rename = "Index")]
    pub index: i64,
    #[serde(rename = "Data", default)]
    pub data: String,
}

/// `TIMCustomElem`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct CustomElem {
    #[serde(rename = "Data", default)]
    pub data: String,
    #[serde(rename = "Desc", default)]
    pub desc: String,
    #[serde(rename = "Ext", default)]
    pub ext: String,
    #[serde(rename = "Sound", default)]
    pub sound: String,
}

/// `TIMSoundElem`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoundElem {
    #[serde(rename = "Url")]
    pub url: String,
    #[serde(rename = "UUID", default)]
    pub uuid: String,
    #[serde(rename = "Size", default)]
    pub size: u64,
    #[serde(rename = "Second", default)]
    pub second: u64,
    #[serde(rename = "Download_Flag", default)]
    pub download_flag: u32,
}

/// `TIMImageElem`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageElem {
    #[serde(rename = "UUID", default)]
    pub uuid: String,
    #[serde(rename = "ImageFormat", default)]
    pub image_format: u32,
    #[serde(rename = "ImageInfoArray")]
    pub image_info_array: Vec<ImageInfo>,
}

/// One entry of `ImageInfoArray` (Type 1 original, 2 large, 3 thumbnail).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    #[serde(rename = "Type")]
    pub kind: u32,
    #[serde(rename = "Size", default)]
    pub size: u64,
    #[serde(rename = "Width", default)]
    pub width: u32,
    #[serde(rename = "Height", default)]
    pub height: u32,
    #[serde(rename = "URL")]
    pub url: String,
}

/// `TIMFileElem`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileElem {
    #[serde(rename = "Url")]
    pub url: String,
    #[serde(rename = "UUID", default)]
    pub uuid: String,
    #[serde(rename = "FileSize", default)]
    pub file_size: u64,
    #[serde(rename = "FileName", default)]
    pub file_name: String,
    #[serde(rename = "Download_Flag", default)]
    pub download_flag: u32,
}

/// `TIMVideoFileElem`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VideoFileElem {
    #[serde(rename = "VideoUrl")]
    pub video_url: String,
    #[serde(rename = "VideoUUID", default)]
    pub video_uuid: String,
    #[serde(rename = "VideoSize", default)]
    pub video_size: u64,
    #[serde(rename = "VideoSecond", default)]
    pub video_second: u64,
    #[serde(rename = "VideoFormat", default)]
    pub video_format: String,
    #[serde(rename = "VideoDownloadFlag", default)]
    pub video_download_flag: u32,
    #[serde(rename = "ThumbUrl", default)]
    pub thumb_url: String,
    #[serde(rename = "ThumbUUID", default)]
    pub thumb_uuid: String,
    #[serde(rename = "ThumbSize", default)]
    pub thumb_size: u64,
    #[serde(rename = "ThumbWidth", default)]
    pub thumb_width: u32,
    #[serde(rename = "ThumbHeight", default)]
    pub thumb_height: u32,
    #[serde(rename = "ThumbFormat", default)]
    pub thumb_format: String,
    #[serde(rename = "ThumbDownloadFlag", default)]
    pub thumb_download_flag: u32,
}

/// What a message says: its MsgBody and CloudCustomData. Immutable once built and cheap to
/// clone; modify swaps in a new `Content`, recall drops it.
///
/// The body is validated once, at send, and kept in the smallest form that renders back to
/// its canonical JSON: a body that is one `TIMTextElem` (most messages) is kept as its text,
/// any other as its JSON. The 12 KB limit measures the JSON either way. A text of up to
/// `INLINE_TEXT_BYTES` (38) bytes without CloudCustomData is kept inline, in the message record
/// itself (no allocation of its own; cloning copies it); anything else in one shared
/// allocation. Either way the store's copy is overwritten with zeros when it is dropped — a
/// recalled body does not linger in memory the store frees or reuses (copies a caller took
/// in a view before the recall are the caller's).
#[derive(Clone)]
pub struct Content {
    repr: Repr,
}

/// Texts up to this many bytes are kept inline (see [`Content`]).
pub const INLINE_TEXT_BYTES: usize = 38;

#[derive(Clone)]
enum Repr {
    /// A body of one text element, its text's length and bytes.
    Inline {
        len: u8,
        bytes: [u8; INLINE_TEXT_BYTES],
    },
    /// The body (its text, or its JSON), then CloudCustomData, then the sending device's id.
    Shared { buf: Arc<str>, meta: u32 },
}

/// `meta` of `Repr::Shared`: bits 0..14 the stored body's length, 14..28 CloudCustomData's
/// (both at most 12 KB, so below 2^14), bit 28 CloudCustomData present, bit 29 the body is
/// one text element kept as its text. What follows them in `buf` is the origin device.
const LEN_BITS: u32 = 14;
const LEN_MASK: u32 = (1 << LEN_BITS) - 1;
const HAS_CUSTOM: u32 = 1 << 28;
const TEXT_ONLY: u32 = 1 << 29;

/// The JSON of a body of one text element, around its (escaped) text.
const TEXT_PREFIX: &str = r#"[{"MsgType":"TIMTextElem","MsgContent":{"Text":"#;
const TEXT_SUFFIX: &str = "}}]";

/// How long `s` is as a JSON string literal, quotes included (serde_json's escaping).
fn json_string_len(s: &str) -> usize {
    // Most texts need no escape at all; only a text that has one is measured byte by byte.
    if needs_no_escape(s) {
        return 2 + s.len();
    }
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Whether `s` holds no control byte, quote or backslash: a JSON string literal of it is `s`
/// in quotes. Eight bytes at a time (SWAR).
fn needs_no_escape(s: &str) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let needs_escape = |w: u64| {
        // A byte below 0x20 (its high bit clear, and below 0x20 once masked), or '"' or '\'.
        (w.wrapping_sub(0x20 * ONES) & !w & HIGH)
            | has_zero(w ^ (b'"' as u64 * ONES))
            | has_zero(w ^ (b'\\' as u64 * ONES))
    };
    let (chunks, tail) = s.as_bytes().as_chunks::<8>();
    chunks
        .iter()
        .all(|c| needs_escape(u64::from_le_bytes(*c)) == 0)
        && tail.iter().all(|b| *b >= 0x20 && *b != b'"' && *b != b'\\')
}

/// Appends `s` as a JSON string literal, escaped as serde_json escapes it.
fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    if needs_no_escape(s) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

impl Content {
    /// Validates a MsgBody (non-empty) and CloudCustomData against the 12 KB limit.
    pub fn new(body: &[MsgElement], cloud_custom_data: Option<&str>) -> Result<Self, Error> {
        match body {
            [] => Err(Error::InvalidMsgBody(
                "MsgBody must hold at least one element".into(),
            )),
            [MsgElement::TIMTextElem(t)] => {
                let json_len = TEXT_PREFIX.len() + json_string_len(&t.text) + TEXT_SUFFIX.len();
                check_size(json_len + cloud_custom_data.map_or(0, str::len))?;
                Ok(Content::build(&t.text, cloud_custom_data, None, TEXT_ONLY))
            }
            _ => {
                // serde_json writes a NaN or an infinity as `null`, which the body then could not
                // be read back with: refused here, as JSON input cannot carry one either.
                let finite = body.iter().all(|e| match e {
                    MsgElement::TIMLocationElem(l) => {
                        l.latitude.is_finite() && l.longitude.is_finite()
                    }
                    _ => true,
                });
                if !finite {
                    return Err(Error::InvalidMsgBody(
                        "a TIMLocationElem's Latitude and Longitude must be finite numbers".into(),
                    ));
                }
                let body_json = serde_json::to_string(body)
                    .map_err(|e| Error::InvalidMsgBody(e.to_string()))?;
                check_size(body_json.len() + cloud_custom_data.map_or(0, str::len))?;
                Ok(Content::build(&body_json, cloud_custom_data, None, 0))
            }
        }
    }

    /// The same body with other CloudCustomData, checked against the size limit.
    pub(crate) fn with_custom_data(&self, cloud_custom_data: Option<&str>) -> Result<Self, Error> {
        check_size(self.body_json_len() + cloud_custom_data.map_or(0, str::len))?;
        Ok(Content::build(
            self.stored_body(),
            cloud_custom_data,
            self.origin_device(),
            self.text_flag(),
        ))
    }

    /// The same content, remembering the device of the sender it was sent from (not part of
    /// what the message says: equality ignores it).
    pub(crate) fn with_origin_device(&self, device: Option<&str>) -> Self {
        if device.is_none() && self.origin_device().is_none() {
            return self.clone();
        }
        Content::build(
            self.stored_body(),
            self.cloud_custom_data(),
            device,
            self.text_flag(),
        )
    }

    /// Content from JSON this crate wrote itself (the journal's, behind a checksum).
    pub(crate) fn from_trusted_json(body_json: &str, cloud_custom_data: Option<&str>) -> Self {
        // A body of one text element is kept as its text, as `new` keeps it: the JSON around
        // one string literal. (Anything else — two elements, say — is not one literal.)
        if let Some(literal) = body_json
            .strip_prefix(TEXT_PREFIX)
            .and_then(|rest| rest.strip_suffix(TEXT_SUFFIX))
            && let Ok(text) = serde_json::from_str::<String>(literal)
        {
            return Content::build(&text, cloud_custom_data, None, TEXT_ONLY);
        }
        Content::build(body_json, cloud_custom_data, None, 0)
    }

    fn build(body: &str, custom: Option<&str>, device: Option<&str>, text_only: u32) -> Self {
        if text_only != 0 && custom.is_none() && device.is_none() && body.len() <= INLINE_TEXT_BYTES
        {
            let mut bytes = [0; INLINE_TEXT_BYTES];
            bytes[..body.len()].copy_from_slice(body.as_bytes());
            return Content {
                repr: Repr::Inline {
                    len: body.len() as u8,
                    bytes,
                },
            };
        }
        let custom_len = custom.map_or(0, str::len);
        let mut buf = String::with_capacity(body.len() + custom_len + device.map_or(0, str::len));
        buf.push_str(body);
        buf.push_str(custom.unwrap_or(""));
        buf.push_str(device.unwrap_or(""));
        let has_custom = if custom.is_some() { HAS_CUSTOM } else { 0 };
        debug_assert!(body.len() <= LEN_MASK as usize && custom_len <= LEN_MASK as usize);
        Content {
            repr: Repr::Shared {
                buf: Arc::from(buf),
                meta: body.len() as u32 | (custom_len as u32) << LEN_BITS | has_custom | text_only,
            },
        }
    }

    /// Validates and re-encodes a MsgBody given as JSON (the journal's and the wire's form).
    pub fn from_json(body_json: &str, cloud_custom_data: Option<&str>) -> Result<Self, Error> {
        let body: Vec<MsgElement> =
            serde_json::from_str(body_json).map_err(|e| Error::InvalidMsgBody(e.to_string()))?;
        Content::new(&body, cloud_custom_data)
    }

    /// The body as stored: its text, or its JSON.
    fn stored_body(&self) -> &str {
        match &self.repr {
            Repr::Inline { len, bytes } => {
                let text = &bytes[..usize::from(*len)];
                debug_assert!(std::str::from_utf8(text).is_ok());
                // SAFETY: `build` is the only maker of an `Inline`, from the bytes of a `&str`
                // (all of them: `len` is its length), and nothing changes them after — `Drop`
                // zeroes them when nothing can read them. Checking them again on every read
                // cost ~160 instructions, twice per journaled send.
                unsafe { std::str::from_utf8_unchecked(text) }
            }
            Repr::Shared { buf, meta } => &buf[..(meta & LEN_MASK) as usize],
        }
    }

    fn text_flag(&self) -> u32 {
        match &self.repr {
            Repr::Inline { .. } => TEXT_ONLY,
            Repr::Shared { meta, .. } => meta & TEXT_ONLY,
        }
    }

    fn text_only(&self) -> bool {
        self.text_flag() != 0
    }

    /// The MsgBody elements.
    pub fn body(&self) -> Vec<MsgElement> {
        if self.text_only() {
            return vec![MsgElement::text(self.stored_body())];
        }
        serde_json::from_str(self.stored_body()).expect("content JSON was produced by Content::new")
    }

    /// CloudCustomData, if any.
    pub fn cloud_custom_data(&self) -> Option<&str> {
        match &self.repr {
            Repr::Inline { .. } => None,
            Repr::Shared { buf, meta } => (meta & HAS_CUSTOM != 0).then(|| {
                let start = (meta & LEN_MASK) as usize;
                &buf[start..start + (meta >> LEN_BITS & LEN_MASK) as usize]
            }),
        }
    }

    /// The sender's device the message was sent from, if any.
    pub(crate) fn origin_device(&self) -> Option<&str> {
        match &self.repr {
            Repr::Inline { .. } => None,
            Repr::Shared { buf, meta } => {
                let start = (meta & LEN_MASK) as usize + (meta >> LEN_BITS & LEN_MASK) as usize;
                Some(&buf[start..]).filter(|d| !d.is_empty())
            }
        }
    }

    /// The MsgBody encoded as JSON.
    pub fn body_json(&self) -> Cow<'_, str> {
        if !self.text_only() {
            return Cow::Borrowed(self.stored_body());
        }
        let mut out = String::with_capacity(self.body_json_len());
        out.push_str(TEXT_PREFIX);
        push_json_string(&mut out, self.stored_body());
        out.push_str(TEXT_SUFFIX);
        Cow::Owned(out)
    }

    fn body_json_len(&self) -> usize {
        if self.text_only() {
            TEXT_PREFIX.len() + json_string_len(self.stored_body()) + TEXT_SUFFIX.len()
        } else {
            self.stored_body().len()
        }
    }

    /// Bytes the content occupies on the wire, for the history response size cap: the body
    /// is JSON already; CloudCustomData goes out as a JSON string, escaped.
    pub(crate) fn encoded_len(&self) -> usize {
        self.body_json_len() + self.cloud_custom_data().map_or(0, json_escaped_len)
    }
}

/// The length of `s` written as the contents of a JSON string (as serde_json escapes it: `"`,
/// `\\` and the short control escapes in two bytes, other control characters in six).
pub(crate) fn json_escaped_len(s: &str) -> usize {
    s.len()
        + s.bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

impl PartialEq for Content {
    fn eq(&self, other: &Self) -> bool {
        self.text_only() == other.text_only()
            && self.stored_body() == other.stored_body()
            && self.cloud_custom_data() == other.cloud_custom_data()
    }
}

impl Eq for Content {}

fn check_size(len: usize) -> Result<(), Error> {
    if len > MAX_BODY_BYTES {
        return Err(Error::BodyTooLarge {
            len,
            max: MAX_BODY_BYTES,
        });
    }
    Ok(())
}

impl Drop for Content {
    fn drop(&mut self) {
        match &mut self.repr {
            Repr::Inline { bytes, .. } => {
                bytes.fill(0);
                std::hint::black_box(&*bytes);
            }
            Repr::Shared { buf, .. } => {
                if let Some(buf) = Arc::get_mut(buf) {
                    // SAFETY: zero bytes are valid UTF-8, so the str stays well-formed.
                    unsafe { buf.as_bytes_mut() }.fill(0);
                    // Keep the stores: the optimizer may not see them as dead before the free.
                    std::hint::black_box(&*buf);
                }
            }
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Content")
            .field("body_json", &self.body_json())
            .field("cloud_custom_data", &self.cloud_custom_data())
            .finish()
    }
}

/// `SyncOtherMachine`: where the sender's own copy of a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum SenderCopy {
    /// SyncOtherMachine absent: the sender's roaming history only.
    #[default]
    Roaming,
    /// SyncOtherMachine = 1: the sender's roaming and inbox (the sender's other devices get it).
    RoamingAndDevices,
    /// SyncOtherMachine = 2: nowhere on the sender's side.
    Nothing,
}

impl SenderCopy {
    /// Maps Tencent's `SyncOtherMachine` field (absent, 1 or 2).
    pub fn from_sync_other_machine(v: Option<u64>) -> Option<Self> {
        match v {
            None => Some(SenderCopy::Roaming),
            Some(1) => Some(SenderCopy::RoamingAndDevices),
            Some(2) => Some(SenderCopy::Nothing),
            Some(_) => None,
        }
    }

    /// The `SyncOtherMachine` value this stands for.
    pub fn sync_other_machine(self) -> Option<u64> {
        match self {
            SenderCopy::Roaming => None,
            SenderCopy::RoamingAndDevices => Some(1),
            SenderCopy::Nothing => Some(2),
        }
    }

    pub(crate) fn in_sender_roaming(self) -> bool {
        self != SenderCopy::Nothing
    }
}

/// SendMsgControl: how a message counts for its recipient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SendControl {
    /// `"NoUnread"`: not counted in the recipient's unread counts (nor in a callback's
    /// UnreadMsgNum). History still shows whether the recipient has read it (IsPeerRead).
    pub no_unread: bool,
    /// `"NoLastMsg"`: does not become its conversation's last message
    /// ([`Store::last_message`](crate::Store::last_message)).
    pub no_last_msg: bool,
}

impl SendControl {
    /// As one byte: bit 0 `no_unread`, bit 1 `no_last_msg` (the journal's and snapshots').
    pub(crate) fn bits(self) -> u8 {
        u8::from(self.no_unread) | u8::from(self.no_last_msg) << 1
    }

    pub(crate) fn from_bits(b: u8) -> Option<SendControl> {
        (b < 4).then_some(SendControl {
            no_unread: b & 1 != 0,
            no_last_msg: b & 2 != 0,
        })
    }
}

/// A send, as `sendmsg` takes it. Build with [`SendRequest::new`] and adjust the public fields.
///
/// The names are borrowed when the caller has them at hand (a request just parsed, a name on
/// the stack), so a send allocates nothing for them and frees nothing; give them owned
/// (`String::into`) where the request must outlive them, as a send waiting for an app's
/// before-send decision does. The body is taken as it is: its elements are copied into the
/// store's own record of the message.
///
/// ```
/// use imstore::{MsgElement, SendRequest};
/// let mut req = SendRequest::new("vinson", "dramon", 833502, vec![MsgElement::text("hi")]);
/// req.msg_seq = Some(31906);
/// req.msg_time = Some(1572869830);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SendRequest<'a> {
    /// From_Account; `None` sends as the first configured administrator.
    pub from: Option<Cow<'a, str>>,
    /// To_Account.
    pub to: Cow<'a, str>,
    /// MsgRandom (required by Tencent).
    pub msg_random: u32,
    /// MsgSeq; a random u32 when `None`.
    pub msg_seq: Option<u32>,
    /// MsgTimeStamp, Unix seconds; now when `None`.
    pub msg_time: Option<u32>,
    /// MsgBody.
    pub body: Vec<MsgElement>,
    /// CloudCustomData.
    pub cloud_custom_data: Option<String>,
    /// SyncOtherMachine.
    pub sender_copy: SenderCopy,
    /// MsgLifeTime in seconds (default 604800; 0 = delivered to online devices only).
    pub lifetime: Option<u64>,
    /// The sender's device the message was sent from, if any: it keeps the message in its
    /// cache and is not sent its own message back.
    pub from_device: Option<String>,
    /// SendMsgControl.
    pub control: SendControl,
}

impl<'a> SendRequest<'a> {
    /// A send with every optional field at its default, the names borrowed.
    pub fn new(from: &'a str, to: &'a str, msg_random: u32, body: Vec<MsgElement>) -> Self {
        SendRequest {
            from: Some(Cow::Borrowed(from)),
            to: Cow::Borrowed(to),
            msg_random,
            msg_seq: None,
            msg_time: None,
            body,
            cloud_custom_data: None,
            sender_copy: SenderCopy::Roaming,
            lifetime: None,
            from_device: None,
            control: SendControl::default(),
        }
    }
}

/// What a successful send answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendReceipt {
    /// MsgTime: the message's MsgTimeStamp.
    pub msg_time: u32,
    /// MsgKey.
    pub msg_key: MsgKey,
}

/// A read-only snapshot of a message as a reader saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageView {
    /// From_Account.
    pub from: UserId,
    /// To_Account.
    pub to: UserId,
    /// MsgKey (MsgSeq, MsgRandom, MsgTimeStamp).
    pub key: MsgKey,
    /// MsgBody and CloudCustomData; `None` once the message has been recalled.
    pub content: Option<Content>,
}

impl MessageView {
    /// Whether the message has been recalled (its content is gone).
    pub fn is_recalled(&self) -> bool {
        self.content.is_none()
    }

    /// Tencent's MsgFlagBits: 8 when recalled, 0 otherwise.
    pub fn msg_flag_bits(&self) -> u32 {
        if self.is_recalled() { FLAG_RECALLED } else { 0 }
    }
}

/// The notice both parties' devices receive when a message is recalled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecallNotice {
    /// From_Account of the recalled message.
    pub from: UserId,
    /// To_Account of the recalled message.
    pub to: UserId,
    /// Its MsgKey.
    pub key: MsgKey,
    /// The administrator who recalled it.
    pub recalled_by: UserId,
    /// When, Unix seconds.
    pub recalled_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A location that is not a finite number is refused (90002): serde_json would write it as
    /// `null`, and the body could then not be read back (a panic in every reader of it).
    #[test]
    fn a_location_that_is_not_a_finite_number_is_refused() {
        let at = |latitude, longitude| {
            Content::new(
                &[MsgElement::TIMLocationElem(LocationElem {
                    desc: String::new(),
                    latitude,
                    longitude,
                })],
                None,
            )
        };
        for (lat, lon) in [
            (f64::NAN, 0.0),
            (0.0, f64::INFINITY),
            (f64::NEG_INFINITY, 1.0),
        ] {
            let e = at(lat, lon).unwrap_err();
            assert_eq!(e.code(), 90002, "{e}");
        }
        let ok = at(39.9, 116.4).unwrap();
        assert!(ok.body().len() == 1);
    }

    #[test]
    fn json_string_len_is_what_serde_json_writes() {
        let specials = [
            "\"", "\\", "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{1}", "\u{1f}", "\u{7f}", "é", "字",
            " ",
        ];
        for len in 0..40 {
            let plain: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let want = serde_json::to_string(&plain).unwrap();
            assert_eq!(json_string_len(&plain), want.len());
            let mut pushed = String::new();
            push_json_string(&mut pushed, &plain);
            assert_eq!(pushed, want);
            for special in specials {
                for at in 0..=len {
                    let mut s = plain.clone();
                    s.insert_str(at, special);
                    let want = serde_json::to_string(&s).unwrap();
                    assert_eq!(json_string_len(&s), want.len(), "{s:?}");
                    let mut pushed = String::new();
                    push_json_string(&mut pushed, &s);
                    assert_eq!(pushed, want);
                }
            }
        }
    }

    #[test]
    fn content_round_trips_in_every_form() {
        let cases: Vec<(Vec<MsgElement>, Option<&str>)> = vec![
            (vec![MsgElement::text("short")], None),
            (vec![MsgElement::text("x".repeat(INLINE_TEXT_BYTES))], None),
            (
                vec![MsgElement::text("x".repeat(INLINE_TEXT_BYTES + 1))],
                None,
            ),
            (
                vec![MsgElement::text("quote \" back \\ nl \n ctl \u{1} é")],
                None,
            ),
            (vec![MsgElement::text("with custom")], Some("cd")),
            (vec![MsgElement::text("a"), MsgElement::text("b")], Some("")),
        ];
        for (body, custom) in cases {
            let c = Content::new(&body, custom).unwrap();
            assert_eq!(c.body(), body);
            assert_eq!(c.cloud_custom_data(), custom);
            assert_eq!(c.origin_device(), None);
            // The JSON is serde_json's, and reads back as the same content.
            assert_eq!(c.body_json(), serde_json::to_string(&body).unwrap());
            assert_eq!(
                c.encoded_len(),
                c.body_json().len() + custom.map_or(0, str::len)
            );
            assert_eq!(Content::from_trusted_json(&c.body_json(), custom), c);
            // A device rides along without changing what the message says.
            let d = c.with_origin_device(Some("phone"));
            assert_eq!(d, c);
            assert_eq!(d.origin_device(), Some("phone"));
            assert_eq!(d.body(), body);
            assert_eq!(d.cloud_custom_data(), custom);
            let e = d.with_custom_data(Some("new")).unwrap();
            assert_eq!(e.origin_device(), Some("phone"));
            assert_eq!(e.cloud_custom_data(), Some("new"));
            assert_eq!(e.body(), body);
        }
    }
}
