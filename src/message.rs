//! Messages: Tencent's eight MsgBody element types (with their exact JSON names), the content a
//! message carries, the one shared record every layer points at, and the read-only views handed
//! to callers.
//!
//! Every layer — roaming, inbox, device caches, live channels — holds an `Arc<StoredMessage>`,
//! never a copy. Recall and modify change the record's state under its own lock, so all layers
//! see the change at the same instant and a recalled body exists nowhere in memory afterwards.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::account::UserId;
use crate::device::DeviceId;
use crate::error::Error;
use crate::key::MsgKey;

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
/// clone (one shared allocation); modify swaps in a new `Content`, recall drops it.
///
/// The body is validated once, at send, and kept in the smallest form that renders back to
/// its canonical JSON: a body that is one `TIMTextElem` (most messages) is kept as its text,
/// any other as its JSON. The 12 KB limit measures the JSON either way. Body and
/// CloudCustomData share one allocation, and the last holder to drop it overwrites the bytes
/// with zeros before freeing them, so a recalled body does not linger in freed memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Content {
    /// The body (its text, or its JSON) followed by CloudCustomData.
    buf: Arc<str>,
    /// Bits 0..30: where the body ends in `buf`; bit 30: CloudCustomData present; bit 31: the
    /// body is one text element, kept as its text.
    meta: u32,
}

const BODY_LEN: u32 = (1 << 30) - 1;
const HAS_CUSTOM: u32 = 1 << 30;
const TEXT_ONLY: u32 = 1 << 31;

/// The JSON of a body of one text element, around its (escaped) text.
const TEXT_PREFIX: &str = r#"[{"MsgType":"TIMTextElem","MsgContent":{"Text":"#;
const TEXT_SUFFIX: &str = "}}]";

/// How long `s` is as a JSON string literal, quotes included (serde_json's escaping).
fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Appends `s` as a JSON string literal, escaped as serde_json escapes it.
fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
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
                Ok(Content::build(&t.text, cloud_custom_data, TEXT_ONLY))
            }
            _ => {
                let body_json = serde_json::to_string(body)
                    .map_err(|e| Error::InvalidMsgBody(e.to_string()))?;
                Content::assemble(&body_json, cloud_custom_data)
            }
        }
    }

    /// The same body with other CloudCustomData, checked against the size limit.
    pub(crate) fn with_custom_data(&self, cloud_custom_data: Option<&str>) -> Result<Self, Error> {
        check_size(self.body_json_len() + cloud_custom_data.map_or(0, str::len))?;
        Ok(Content::build(
            self.stored_body(),
            cloud_custom_data,
            self.meta & TEXT_ONLY,
        ))
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
            return Content::build(&text, cloud_custom_data, TEXT_ONLY);
        }
        Content::build(body_json, cloud_custom_data, 0)
    }

    fn assemble(body_json: &str, cloud_custom_data: Option<&str>) -> Result<Self, Error> {
        check_size(body_json.len() + cloud_custom_data.map_or(0, str::len))?;
        Ok(Content::build(body_json, cloud_custom_data, 0))
    }

    fn build(body: &str, cloud_custom_data: Option<&str>, text_only: u32) -> Self {
        let mut buf = String::with_capacity(body.len() + cloud_custom_data.map_or(0, str::len));
        buf.push_str(body);
        buf.push_str(cloud_custom_data.unwrap_or(""));
        let has_custom = if cloud_custom_data.is_some() {
            HAS_CUSTOM
        } else {
            0
        };
        Content {
            buf: Arc::from(buf),
            meta: body.len() as u32 | has_custom | text_only,
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
        &self.buf[..(self.meta & BODY_LEN) as usize]
    }

    fn text_only(&self) -> bool {
        self.meta & TEXT_ONLY != 0
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
        (self.meta & HAS_CUSTOM != 0).then(|| &self.buf[(self.meta & BODY_LEN) as usize..])
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

    /// Bytes the content occupies on the wire, for the history response size cap.
    pub(crate) fn encoded_len(&self) -> usize {
        self.body_json_len() + self.cloud_custom_data().map_or(0, str::len)
    }
}

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
        if let Some(buf) = Arc::get_mut(&mut self.buf) {
            // SAFETY: zero bytes are valid UTF-8, so the str stays well-formed.
            unsafe { buf.as_bytes_mut() }.fill(0);
            // Keep the stores: the optimizer may not see them as dead before the free.
            std::hint::black_box(&*buf);
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

/// A send, as `sendmsg` takes it. Build with [`SendRequest::new`] and adjust the public fields.
///
/// ```
/// use imstore::{MsgElement, SendRequest};
/// let mut req = SendRequest::new("vinson", "dramon", 833502, vec![MsgElement::text("hi")]);
/// req.msg_seq = Some(31906);
/// req.msg_time = Some(1572869830);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SendRequest {
    /// From_Account; `None` sends as the first configured administrator.
    pub from: Option<String>,
    /// To_Account.
    pub to: String,
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
}

impl SendRequest {
    /// A send with every optional field at its default.
    pub fn new(from: &str, to: &str, msg_random: u32, body: Vec<MsgElement>) -> Self {
        SendRequest {
            from: Some(from.to_owned()),
            to: to.to_owned(),
            msg_random,
            msg_seq: None,
            msg_time: None,
            body,
            cloud_custom_data: None,
            sender_copy: SenderCopy::Roaming,
            lifetime: None,
            from_device: None,
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

/// The one record of a message that every layer shares.
pub(crate) struct StoredMessage {
    pub from: UserId,
    pub to: UserId,
    pub key: MsgKey,
    /// Position among the conversation's arrivals; breaks ties in history order.
    pub arrival: u64,
    pub sender_copy: SenderCopy,
    /// Imported as history (`importmsg`, SyncFromOldSystem 2): counted read from the start.
    pub read_on_import: bool,
    pub origin_device: Option<DeviceId>,
    state: RwLock<MsgState>,
}

/// Lock order: a message's state lock is taken after account and conversation locks and is
/// never held while taking another lock.
#[derive(Clone)]
pub(crate) enum MsgState {
    Live(Content),
    /// Who recalled it and when: the Recalled notice is built from this.
    Recalled {
        by: UserId,
        at: u64,
    },
}

impl StoredMessage {
    /// A live message.
    pub fn new(
        from: UserId,
        to: UserId,
        key: MsgKey,
        arrival: u64,
        sender_copy: SenderCopy,
        origin_device: Option<DeviceId>,
        content: Content,
    ) -> Self {
        Self::restore(
            from,
            to,
            key,
            arrival,
            sender_copy,
            origin_device,
            MsgState::Live(content),
        )
    }

    /// A message rebuilt from a snapshot.
    pub fn restore(
        from: UserId,
        to: UserId,
        key: MsgKey,
        arrival: u64,
        sender_copy: SenderCopy,
        origin_device: Option<DeviceId>,
        state: MsgState,
    ) -> Self {
        StoredMessage {
            from,
            to,
            key,
            arrival,
            sender_copy,
            read_on_import: false,
            origin_device,
            state: RwLock::new(state),
        }
    }

    /// The state as it is now (a cheap copy: the content is shared).
    pub fn state(&self) -> MsgState {
        self.state.read().clone()
    }

    /// The live content, or `None` once recalled.
    pub fn content(&self) -> Option<Content> {
        match &*self.state.read() {
            MsgState::Live(c) => Some(c.clone()),
            MsgState::Recalled { .. } => None,
        }
    }

    pub fn is_recalled(&self) -> bool {
        matches!(*self.state.read(), MsgState::Recalled { .. })
    }

    /// Erases the content; it is dropped (and zeroed) here unless a caller still holds a view
    /// taken before the recall.
    pub fn recall(&self, by: UserId, at: u64) {
        *self.state.write() = MsgState::Recalled { by, at };
    }

    /// The Recalled notice of a recalled message.
    pub fn recall_notice(&self) -> Option<RecallNotice> {
        match &*self.state.read() {
            MsgState::Live(_) => None,
            MsgState::Recalled { by, at } => Some(RecallNotice {
                from: self.from.clone(),
                to: self.to.clone(),
                key: self.key,
                recalled_by: by.clone(),
                recalled_at: *at,
            }),
        }
    }

    /// Replaces the content of a live message.
    pub fn replace(&self, content: Content) {
        let mut state = self.state.write();
        if let MsgState::Live(c) = &mut *state {
            *c = content;
        }
    }

    pub fn view(&self) -> MessageView {
        MessageView {
            from: self.from.clone(),
            to: self.to.clone(),
            key: self.key,
            content: self.content(),
        }
    }
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
