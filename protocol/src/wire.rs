//! Sync protocol v1 messages and their encoding (see `proto-docs/SYNC-v1.md`).
//!
//! A message on the wire is `zstd(CBOR(message))`: CBOR (RFC 8949) for a self-describing,
//! compact structure; one zstd frame over the whole batch, because the bytes of a visit day
//! are mostly Automerge changes and compressing them together is what brings the upload close
//! to the information it carries. Field names are one or two letters to keep idle checks
//! tiny.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::ids::HouseholdId;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The media type of a sync request and response body.
pub const CONTENT_TYPE: &str = "application/vnd.qiaomen.sync.v1+cbor+zstd";
/// Default limits a server applies; a client stays under them.
pub mod limits {
    /// A request's `agent` (`y`), in bytes.
    pub const MAX_AGENT_BYTES: usize = 64;
    /// Compressed request body.
    pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
    /// Decompressed request body (the decompression-bomb limit).
    pub const MAX_DECODED_BYTES: usize = 16 * 1024 * 1024;
    /// Documents in one request.
    pub const MAX_DOCS: usize = 1_000;
    /// Changes in one request.
    pub const MAX_CHANGES: usize = 5_000;
    /// One change.
    pub const MAX_CHANGE_BYTES: usize = 1024 * 1024;
    /// Operations in one change (a character typed into a note is one operation). Over →
    /// that change is refused `over_limit`.
    pub const MAX_CHANGE_OPS: usize = 20_000;
    /// Operations in one request, all changes together: what one request may cost a writer.
    /// Over → the changes past it are refused `over_limit` (the phone sends them in a later
    /// request; the reference phone splits its uploads to stay under it).
    pub const MAX_REQUEST_OPS: usize = 100_000;
    /// Operations in one household's whole history. A change that would take it past this
    /// is refused `over_limit`. A year of visits is a few thousand; loading, checking and
    /// holding a household cost in proportion to its operations on the server and on the
    /// phone, so one household cannot take a writer (or a phone) for seconds.
    pub const MAX_DOC_OPS: u64 = 500_000;
    /// Large request bodies (over 64 KiB compressed) a server decodes at the same time;
    /// others wait their turn.
    pub const MAX_CONCURRENT_DECODES: usize = 4;
    /// A client splits its upload into requests of about this many raw change bytes.
    pub const CLIENT_CHUNK_BYTES: usize = 512 * 1024;
    /// A server fills a response with about this many raw change bytes, then sets `more`.
    pub const RESPONSE_BUDGET_BYTES: usize = 2 * 1024 * 1024;
    /// The smallest piece a phone may ask for (`r`); a smaller `r` counts as this.
    pub const MIN_RESPONSE_BUDGET_BYTES: usize = 4 * 1024;
}

/// Phone → server: what the server has not acknowledged, and where the phone's copy of the
/// server log ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    #[serde(rename = "v")]
    pub version: u32,
    /// The server log position the phone has received everything up to; `None` for a phone
    /// with no sync state (fresh install, reset), which then receives everything in scope.
    #[serde(rename = "c")]
    pub cursor: Option<u64>,
    /// Changes the phone uploads, grouped by household.
    #[serde(rename = "d", default)]
    pub docs: Vec<DocChanges>,
    /// The grids whose households the phone keeps; empty for every household the device may
    /// read. (With enrollment, the server derives scope from the device's assignments and
    /// this narrows it further.) A phone whose grids change syncs once with no cursor.
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub grids: Vec<String>,
    /// The `k` of the response that gave the phone its cursor: the hash of the log entry at
    /// the cursor. A server whose log holds something else there (restored from an older
    /// backup, then grown) answers `409 cursor_diverged`.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub cursor_check: Option<ByteBuf>,
    /// The [`scope_digest`] of the scope (`s`) of the phone's last response. The server sends
    /// `s` only when the device's scope differs from it, so an idle check stays tiny.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub scope_digest: Option<u64>,
    /// What the phone understands beyond the first v1 release, as bits ([`FEATURES`]); absent
    /// means none. The server sends a reject code only to a phone that announced it.
    #[serde(rename = "f", default, skip_serializing_if = "is_zero")]
    pub features: u32,
    /// The `t` of the last response that had one: the digest of the workflow settings and
    /// task lists the phone holds. The server sends `t` only when its digest differs, and the
    /// phone fetches them (JSON API) only then, so an idle check stays one tiny round trip.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub extras_digest: Option<u64>,
    /// The table the request's packed changes refer to: actor ids and author messages, each
    /// sent once ([`crate::pack`]). Absent when no change is packed.
    #[serde(rename = "a", default, skip_serializing_if = "Vec::is_empty")]
    pub table: Vec<ByteBuf>,
    /// The time (ms since the epoch) packed changes count their times from.
    #[serde(rename = "b", default, skip_serializing_if = "is_zero_i64")]
    pub base_ms: i64,
    /// **pending**: what the phone holds that the server has not acknowledged when it sends
    /// this request (its unacknowledged changes, those in this request included, plus task
    /// reports not yet sent), sent by a phone announcing [`FEATURE_RETIRE`]; absent from older
    /// phones. The server keeps what is left of it after this request's acknowledgements, for
    /// an administrator to see before taking the device away; a retiring device ends only on
    /// a request with no changes and `p = 0`.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// **agent**: the phone's library and app, as `qiaomen/<library version>` optionally
    /// followed by ` <app>/<version>`, for the supervisors' list of phones (SYNC-v1 §5.1).
    /// OPTIONAL; at most [`limits::MAX_AGENT_BYTES`] printable bytes: a server ignores (does not
    /// store) a longer one, or one with control characters, and the sync goes on.
    #[serde(rename = "y", default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The most bytes of changes the phone wants in this response (`r`, OPTIONAL): a phone
    /// on a weak link asks for pieces it can take before the link cuts, and for a small one
    /// while it uploads, so its acknowledgements never wait behind a large download. A server
    /// sends at most this much (and its own budget), but always at least one change when any
    /// is due, and sets `more` as usual; absent, its own budget applies.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub response_budget: Option<u32>,
    /// **whole**: the `w` of the last response, sent back (with no cursor) while a first
    /// sync of whole documents is under way ([`FEATURE_WHOLE_DOCS`], SYNC-v1 §7.3.1).
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub whole: Option<WholePosition>,
    /// **held?**: hashes of changes the phone sent in a request whose answer it lost; the
    /// server says which of them it holds (the response's `h`), so the phone sends again only
    /// the others (SYNC-v1 §7.4.1). At most [`limits::MAX_CHANGES`].
    #[serde(rename = "h", default, skip_serializing_if = "Vec::is_empty")]
    pub held_query: Vec<ByteBuf>,
    /// **journal**: events and work logs the phone sends (SYNC-v1 §13.12), at most
    /// [`crate::journal::MAX_ENTRIES`]; only to a server that announced [`FEATURE_JOURNAL`].
    #[serde(rename = "j", default, skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<crate::journal::JournalEntry>,
}

/// Where a first sync of whole documents stands (SYNC-v1 §7.3.1): the log position the
/// documents are taken at, and the last household sent. The phone keeps it and sends it back
/// whole until the server gives it a cursor instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WholePosition {
    /// The log position every whole document is taken at; the cursor the phone gets after
    /// the last of them.
    #[serde(rename = "s")]
    pub seq: u64,
    /// The last household sent (households go in id order within a pass; the nil id: none
    /// yet in this pass).
    #[serde(rename = "a")]
    pub after: HouseholdId,
    /// The pass ([`FEATURE_NEEDED_FIRST`]): [`WholePass::All`] when absent.
    #[serde(rename = "p", default, skip_serializing_if = "WholePass::is_all")]
    pub pass: WholePass,
    /// The day the most needed households are chosen for, in the passes that choose.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub day: Option<crate::calendar::Day>,
}

/// The passes of a first sync of whole documents (SYNC-v1 §7.3.1), as numbers on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum WholePass {
    /// Every household, in id order (a phone without [`FEATURE_NEEDED_FIRST`]).
    #[default]
    All = 0,
    /// The households most needed on the position's day, in id order.
    Needed = 1,
    /// The rest, in id order, leaving out each household of the first pass whose log ends
    /// at or before the position.
    Rest = 2,
}

impl WholePass {
    fn is_all(&self) -> bool {
        *self == WholePass::All
    }
}

impl From<WholePass> for u8 {
    fn from(pass: WholePass) -> u8 {
        pass as u8
    }
}

impl TryFrom<u8> for WholePass {
    type Error = &'static str;
    fn try_from(n: u8) -> Result<Self, Self::Error> {
        match n {
            0 => Ok(WholePass::All),
            1 => Ok(WholePass::Needed),
            2 => Ok(WholePass::Rest),
            _ => Err("not a pass of a first sync (0, 1 or 2)"),
        }
    }
}

/// The `agent` of a request as a server keeps it: `None` when absent, too long or not
/// printable (SYNC-v1 §5.1).
pub fn agent_of(req: &SyncRequest) -> Option<&str> {
    req.agent
        .as_deref()
        .filter(|a| !a.is_empty() && a.len() <= limits::MAX_AGENT_BYTES)
        .filter(|a| !a.chars().any(char::is_control))
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// Feature bit: the phone understands the reject code `stale_order` (a phone without it is
/// sent `not_allowed` instead).
pub const FEATURE_STALE_ORDER: u32 = 1;

/// Feature bit: the phone may send packed changes ([`crate::pack`]) and understands the
/// reject code `send_raw`; a server that takes packed changes answers with this bit in its own
/// `f`, and the phone packs only after it has seen it.
pub const FEATURE_PACKED: u32 = 2;

/// Every feature this build understands: what the reference phone sends in `f`, and what the
/// reference server answers in `f` (the bits both ends share).
pub const FEATURES: u32 = FEATURE_STALE_ORDER
    | FEATURE_PACKED
    | FEATURE_INTEGRITY
    | FEATURE_RETIRE
    | FEATURE_FIELD_RULES
    | FEATURE_RIGHTS
    | FEATURE_WHOLE_DOCS
    | FEATURE_PACKED_DOWN
    | FEATURE_NEEDED_FIRST
    | FEATURE_PHOTOS
    | FEATURE_JOURNAL;

/// Feature bit: events and work logs (SYNC-v1 §13.12). A server that stores them announces
/// it; the phone sends `j` only while the last response had it.
pub const FEATURE_JOURNAL: u32 = 1024;

/// Feature bit: photos (SYNC-v1 §14). A server with the photo routes (`/v1/photos/{hash}`)
/// announces it; the phone runs its photo phase only while the last response had it (a
/// photo then waits on the phone, nothing lost). In the phone's `f` it is informational.
pub const FEATURE_PHOTOS: u32 = 512;

/// Feature bit: the phone takes packed changes in a response (SYNC-v1 §4.4.1): the server
/// may send a change of `d` packed, with the response's table `p` and base time `b`; the
/// phone rebuilds it, finding each dependency by its prefix among the household's changes it
/// holds and those before it in the response, and asks again without the bit when one does
/// not rebuild.
pub const FEATURE_PACKED_DOWN: u32 = 128;

/// Feature bit: the phone keeps a [`WholePosition`] whole (its pass and day too), so the
/// server may send a first sync's most needed households first (SYNC-v1 §7.3.1): those with
/// a resident in a key group that day or a demand not closed.
pub const FEATURE_NEEDED_FIRST: u32 = 256;

/// Feature bit: on a sync with no cursor the phone takes each household as one whole
/// document (`w` of [`DocChanges`], Automerge's saved form) instead of every change, in
/// pages that go on by [`WholePosition`] (SYNC-v1 §7.3.1).
pub const FEATURE_WHOLE_DOCS: u32 = 64;

/// Feature bit: the phone understands the reject codes `broken_history`, `over_limit` and
/// `quarantined` (a phone without it is sent `malformed` for the first two and
/// `missing_dependencies`, also temporary, for the third).
pub const FEATURE_INTEGRITY: u32 = 4;

/// Feature bit: the phone reports what it holds pending (`p`) and understands `x` (a retired
/// device, [`Retire`]) and the 401 code `device_retired`. A retiring device that does not
/// announce it is answered `401 device_revoked` on its first request with no changes (then
/// it holds nothing unacknowledged but its task reports, which are lost).
pub const FEATURE_RETIRE: u32 = 8;

/// Feature bit: the phone understands the reject code `invalid_field` (a phone without it is
/// sent `schema_violation`).
pub const FEATURE_FIELD_RULES: u32 = 16;

/// Feature bit: the phone runs the server's rules ([`crate::policy`]) before it commits an
/// edit, and wants what its user may do (`u`, [`SyncResponse::rights`]) with its scope: for
/// such a phone the request's `s` is the [`rights_digest`] of the scope and rights it holds
/// (the [`scope_digest`] while it holds no rights).
pub const FEATURE_RIGHTS: u32 = 32;

impl RejectCode {
    /// The code's wire name (its serde name, e.g. `broken_history`), for records and messages.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Whether the refusal is final and the change held what a person typed: the phone and
    /// the server keep its content ([`crate::refused`]) for a person to see and enter again.
    /// Temporary codes (the phone keeps the change pending) and changes that are not the
    /// uploader's or do not read are not kept.
    pub fn keeps_content(self) -> bool {
        matches!(
            self,
            RejectCode::SchemaViolation
                | RejectCode::InvalidField
                | RejectCode::DependsOnRejected
                | RejectCode::Forbidden
                | RejectCode::OutOfScope
                | RejectCode::NotAllowed
                | RejectCode::StaleOrder
                | RejectCode::OverLimit
        )
    }

    /// Why the change was refused, in words a grid worker or supervisor reads (zh-CN).
    pub fn reason_zh(self) -> &'static str {
        match self {
            RejectCode::Malformed => "数据无法读取，未能保存到服务器。",
            RejectCode::SchemaViolation => {
                "填写的内容不符合规则（如走访日不对、必填项为空或超长），服务器未接收。"
            }
            RejectCode::DependsOnRejected => "这条修改建立在另一条未被接收的修改之上，一并未接收。",
            RejectCode::MissingDependencies | RejectCode::UnknownDocument => {
                "服务器还缺少这户之前的记录，下次同步时会再试。"
            }
            RejectCode::Forbidden => "没有修改这项内容的权限。",
            RejectCode::NotYourDevice => "这条修改不是本机所做，服务器未接收。",
            RejectCode::OutOfScope => "这户不在你负责的网格内（当时和现在都不在），服务器未接收。",
            RejectCode::NotAllowed => {
                "你的角色不能做这项修改（如删除记录、修改他人的走访、移交网格、办理不属于你的工单步骤），需由主管处理。"
            }
            RejectCode::StaleOrder => {
                "工单已被他人推进，请同步后查看工单的最新状态，再决定是否重做这一步。"
            }
            RejectCode::SendRaw => "需要重新发送，下次同步时会自动完成。",
            RejectCode::BrokenHistory => "这条修改的数据已损坏，服务器无法保存。",
            RejectCode::OverLimit => "内容超过了大小限制，服务器未接收。",
            RejectCode::InvalidField => {
                "有一项填写不符合规则（如姓名、门牌号、地址为空，身份证号或手机号不对，文字超长），服务器未接收。"
            }
            RejectCode::Quarantined => {
                "这户的记录正在服务器上检修，修改保留在手机上，稍后会再发送。"
            }
        }
    }

    /// The code as a phone announcing `features` may receive it: codes added after the first
    /// v1 release fall back to the nearest one it knows.
    pub fn for_features(self, features: u32) -> RejectCode {
        match self {
            RejectCode::StaleOrder if features & FEATURE_STALE_ORDER == 0 => RejectCode::NotAllowed,
            RejectCode::SendRaw if features & FEATURE_PACKED == 0 => RejectCode::Malformed,
            RejectCode::BrokenHistory | RejectCode::OverLimit
                if features & FEATURE_INTEGRITY == 0 =>
            {
                RejectCode::Malformed
            }
            RejectCode::Quarantined if features & FEATURE_INTEGRITY == 0 => {
                RejectCode::MissingDependencies
            }
            RejectCode::InvalidField if features & FEATURE_FIELD_RULES == 0 => {
                RejectCode::SchemaViolation
            }
            code => code,
        }
    }
}

/// A digest of a scope (a set of grid codes): FNV-1a (64 bit) over the codes sorted
/// byte-wise, each followed by a newline (`0x0a`).
pub fn scope_digest<S: AsRef<str>>(grids: &[S]) -> u64 {
    let mut sorted: Vec<&str> = grids.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut bytes = Vec::new();
    for g in sorted {
        bytes.extend_from_slice(g.as_bytes());
        bytes.push(b'\n');
    }
    fnv1a(&bytes)
}

/// The digest of a scope and the rights sent with it (`s` of a phone announcing
/// [`FEATURE_RIGHTS`] that holds rights): FNV-1a (64 bit) over the bytes [`scope_digest`]
/// digests, a `0x00` byte, and the canonical CBOR of the rights with `n` omitted.
pub fn rights_digest<S: AsRef<str>>(grids: &[S], rights: &crate::policy::Rights) -> u64 {
    let mut sorted: Vec<&str> = grids.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut bytes = Vec::new();
    for g in sorted {
        bytes.extend_from_slice(g.as_bytes());
        bytes.push(b'\n');
    }
    bytes.push(0);
    let undated = crate::policy::Rights {
        at_ms: 0,
        ..rights.clone()
    };
    bytes.extend_from_slice(&to_cbor(&undated));
    fnv1a(&bytes)
}

/// FNV-1a, 64 bits: the digests of the protocol (not a security measure).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Changes of one household, oldest first (each change after those it depends on).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocChanges {
    #[serde(rename = "i")]
    pub id: HouseholdId,
    #[serde(rename = "ch")]
    pub changes: Vec<ByteBuf>,
    /// **whole**: in a response of a first sync to a phone announcing [`FEATURE_WHOLE_DOCS`],
    /// the household's whole document up to the [`WholePosition`]'s log position (Automerge's
    /// saved form, columns uncompressed: the message's zstd compresses them), in place of its
    /// changes; `ch` is then empty. Never in a request (the server refuses one that has it).
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub whole: Option<ByteBuf>,
}

/// Server → phone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncResponse {
    #[serde(rename = "v")]
    pub version: u32,
    /// The phone's new cursor, once it has stored the changes in `docs`.
    #[serde(rename = "c")]
    pub cursor: u64,
    /// How many uploaded changes are durably stored (committed to disk). Every uploaded change
    /// not listed in `rejected` is acknowledged.
    #[serde(rename = "a")]
    pub accepted: u32,
    /// Uploaded changes the server refused, each with its reason. Stored nowhere.
    #[serde(rename = "r", default)]
    pub rejected: Vec<Rejection>,
    /// Changes the phone lacks, by household (households new to the phone included, from
    /// their first change).
    #[serde(rename = "d", default)]
    pub docs: Vec<DocChanges>,
    /// The response stopped at its size budget: call again with the new cursor.
    #[serde(rename = "m", default)]
    pub more: bool,
    /// The hash of the log entry at `cursor` (absent when the cursor is 0), for the phone to
    /// send back as `k` with that cursor.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub cursor_check: Option<ByteBuf>,
    /// The grids the device may read now (from its user's assignments), sent when they differ
    /// from the request's scope digest. A phone drops the households of grids that left its
    /// scope, and catches up on grids that entered it with one sync from no cursor.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<String>>,
    /// What the server understands of [`FEATURES`], sent to a phone that announced
    /// [`FEATURE_PACKED`]: the phone packs its next uploads only once this has that bit.
    #[serde(rename = "f", default, skip_serializing_if = "is_zero")]
    pub features: u32,
    /// **extras digest**: [`fnv1a`] of what `GET /api/v1/workflow` and `GET /api/v1/tasks`
    /// answer this device now; sent only when it differs from the request's `t`.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub extras_digest: Option<u64>,
    /// An administrator retired this device (a handover), sent to a phone that announced
    /// [`FEATURE_RETIRE`]: `retiring` while it may still hold work (it uploads what it holds,
    /// then sends a request with no changes and `p = 0`), `retired` in answer to that request
    /// (the device has ended: the phone wipes the enrollment's data now; its token is no longer
    /// accepted). A retiring device is sent no changes (`d` empty, `c` and `k` as requested).
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub retire: Option<Retire>,
    /// **rights**: what the device's user may do (every grant with its role and period, the
    /// teams), sent with `s` to a phone that announced [`FEATURE_RIGHTS`]: the phone keeps it
    /// and runs the server's rules ([`crate::policy`]) before it commits an edit. `s` without
    /// `u` means the server sends no rights: the phone forgets any it held.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub rights: Option<crate::policy::Rights>,
    /// **whole**: a first sync of whole documents goes on (SYNC-v1 §7.3.1): the phone keeps
    /// this, keeps no cursor (`c` is 0), and sends it back as the request's `w`. Absent on the
    /// last page of whole documents, which gives the cursor.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub whole: Option<WholePosition>,
    /// **held**: the answer to the request's `h`: the positions in it of the changes the
    /// server's log holds (durably). Absent when the request had no `h` (or the server does
    /// not know `h`: then the phone sends every change again).
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<u32>>,
    /// **journal**: the answer to the request's `j`, one per entry, in its order (SYNC-v1
    /// §13.12): stored, or refused with why.
    #[serde(rename = "j", default, skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<crate::journal::JournalAck>,
    /// The table the response's packed changes refer to (actor ids and author messages, each
    /// once), sent to a phone announcing [`FEATURE_PACKED_DOWN`] when `d` holds a packed
    /// change ([`crate::pack`], SYNC-v1 §4.4.1). Absent otherwise.
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub table: Vec<ByteBuf>,
    /// The time (ms since the epoch) the response's packed changes count their times from.
    #[serde(rename = "b", default, skip_serializing_if = "is_zero_i64")]
    pub base_ms: i64,
}

/// Where a retired device stands ([`SyncResponse::retire`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retire {
    /// Upload what you hold, then report nothing pending.
    Retiring,
    /// Everything was acknowledged and the device has ended: wipe now.
    Retired,
}

/// A refused change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    #[serde(rename = "i")]
    pub doc: HouseholdId,
    /// The change's position in its household's upload (`DocChanges::changes`).
    #[serde(rename = "n")]
    pub n: u32,
    /// The change's hash (32 bytes); empty when the bytes are not a change at all.
    #[serde(rename = "h")]
    pub hash: ByteBuf,
    #[serde(rename = "k")]
    pub code: RejectCode,
}

/// Why a change was refused. Stable codes; the phone shows the worker a message per code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The bytes are not a valid Automerge change.
    Malformed,
    /// Applying the change would leave the household record invalid (wrong type, a visit not
    /// on a visit day, a changed household id, ...).
    SchemaViolation,
    /// A value the change writes breaks a field rule or limit of §13 (an empty name, door
    /// number or address; an ID or phone number that is not one; a note or text over its
    /// length; too many members, or visits for one day). Final: the phone refuses the same
    /// edit before committing it, so only a phone with other rules sends one.
    InvalidField,
    /// The change depends on a change the server refused.
    DependsOnRejected,
    /// The change depends on changes the server does not have and that were not uploaded.
    MissingDependencies,
    /// The change names a household that does not exist and does not create it.
    UnknownDocument,
    /// The device may not write this household or field (access rules).
    Forbidden,
    /// The change's author (actor id or author message) is not the uploading device and its
    /// user: a forged or borrowed identity.
    NotYourDevice,
    /// The household's grid is not one the device's user may write (now, nor at the time the
    /// change was made).
    OutOfScope,
    /// A field rule refuses it: e.g. a worker deleting an entry, rewriting another worker's
    /// visit, moving a household to another grid or marking it merged, or taking a step of a
    /// work order that is not theirs to take.
    NotAllowed,
    /// A work-order step made without seeing the order's latest steps (another device moved
    /// the order on meanwhile), or one that no longer follows from its state: sync, look at
    /// the order again and redo the step if it still applies.
    StaleOrder,
    /// A packed change the server could not rebuild exactly (its checksum did not match, or
    /// its dependencies could not be told apart): nothing is wrong with the change itself.
    /// The phone keeps it and sends its own bytes instead. Temporary, like
    /// `missing_dependencies`.
    SendRaw,
    /// The change breaks Automerge's own rules within its household (a sequence number that
    /// is not the actor's next, operation ids reused or out of order, no dependency on the
    /// actor's previous change, a checksum that does not match, references to operations that
    /// do not exist): stored, it would make the household unloadable. Final.
    BrokenHistory,
    /// The change, or the request so far, exceeds a limit of §12 (operations per change, per
    /// request, per household). Final for a change over `MAX_CHANGE_OPS` or `MAX_DOC_OPS`;
    /// for `MAX_REQUEST_OPS` the phone sends it again in a smaller request.
    OverLimit,
    /// The household is quarantined on the server (it cannot be loaded or checked there until
    /// an operator repairs it): nothing is wrong with the change. Temporary: the phone keeps
    /// it pending, like `missing_dependencies`.
    Quarantined,
}

/// Errors decoding a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("the body is not a zstd frame")]
    NotCompressed,
    #[error("the decompressed body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the body is not a valid v1 sync message")]
    Malformed,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
}

/// Encodes a phone's request as [`encode`] does, but compressed harder when it is small: a
/// visit day's upload is a few dozen KB, where zstd level 19 costs milliseconds and saves
/// 5-7 % of the bytes on a weak link; above [`HARD_COMPRESSION_MAX`] it is level 3.
pub fn encode_request(req: &SyncRequest) -> Vec<u8> {
    compress_small_harder(&to_cbor(req), 19)
}

/// The largest CBOR body [`encode_request`] compresses at level 19, and
/// [`encode_response`] at level 9.
pub const HARD_COMPRESSION_MAX: usize = 256 * 1024;

/// Encodes a server's response as [`encode`] does, but harder when it is small: level 9 up
/// to [`HARD_COMPRESSION_MAX`] of CBOR (a visit day's answer of ~20 KB costs the server about
/// a millisecond more and comes down ~4 % smaller over a weak link), level 3 above.
pub fn encode_response(res: &SyncResponse) -> Vec<u8> {
    compress_small_harder(&to_cbor(res), 9)
}

/// One zstd frame of `cbor`: at `level` up to [`HARD_COMPRESSION_MAX`], level 3 above.
fn compress_small_harder(cbor: &[u8], level: i32) -> Vec<u8> {
    let level = if cbor.len() <= HARD_COMPRESSION_MAX {
        level
    } else {
        3
    };
    zstd::bulk::compress(cbor, level).expect("compressing in memory cannot fail")
}

/// Encodes a message: CBOR, then one zstd frame (level 3).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    zstd::bulk::compress(&to_cbor(msg), 3).expect("compressing in memory cannot fail")
}

/// A message's CBOR, before compression: its canonical form (§4.2 of the spec).
pub fn to_cbor<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut cbor = Vec::new();
    ciborium::into_writer(msg, &mut cbor).expect("writing to a Vec cannot fail");
    cbor
}

/// Decodes a message, decompressing at most `max_decoded` bytes.
pub fn decode<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    max_decoded: usize,
) -> Result<T, WireError> {
    use std::io::Read;
    if body.len() < 4 || body[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(WireError::NotCompressed);
    }
    // A frame that declares more than the limit is refused before anything is inflated (a
    // bomb that declares nothing is cut at the limit below).
    if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(body)
        && declared > max_decoded as u64
    {
        return Err(WireError::TooLarge(max_decoded));
    }
    let decoder =
        zstd::stream::read::Decoder::with_buffer(body).map_err(|_| WireError::Malformed)?;
    let mut cbor = Vec::new();
    let read = decoder
        .take(max_decoded as u64 + 1)
        .read_to_end(&mut cbor)
        .map_err(|_| WireError::Malformed)?;
    if read > max_decoded {
        return Err(WireError::TooLarge(max_decoded));
    }
    // Exactly one CBOR item: trailing bytes are refused, not ignored.
    let mut reader = std::io::Cursor::new(cbor.as_slice());
    let msg = ciborium::from_reader(&mut reader).map_err(|_| WireError::Malformed)?;
    if reader.position() as usize != cbor.len() {
        return Err(WireError::Malformed);
    }
    Ok(msg)
}

/// Decodes a request and checks its version.
pub fn decode_request(body: &[u8], max_decoded: usize) -> Result<SyncRequest, WireError> {
    let req: SyncRequest = decode(body, max_decoded)?;
    if req.version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion(req.version));
    }
    Ok(req)
}

#[cfg(test)]
mod agent_tests {
    use super::*;

    #[test]
    fn an_agent_is_kept_only_when_short_and_printable() {
        let mut req = SyncRequest {
            response_budget: None,
            agent: Some("qiaomen/0.1.0 gridapp/2.3".into()),
            version: PROTOCOL_VERSION,
            cursor: None,
            docs: vec![],
            grids: vec![],
            cursor_check: None,
            scope_digest: None,
            features: 0,
            extras_digest: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            whole: None,
            journal: vec![],
            held_query: vec![],
        };
        assert_eq!(agent_of(&req), Some("qiaomen/0.1.0 gridapp/2.3"));
        let back = decode_request(&encode_request(&req), limits::MAX_DECODED_BYTES).unwrap();
        assert_eq!(back.agent, req.agent, "`y` round-trips");
        req.agent = Some("x".repeat(limits::MAX_AGENT_BYTES + 1));
        assert_eq!(agent_of(&req), None);
        req.agent = Some("qiaomen/0.1.0\napp".into());
        assert_eq!(agent_of(&req), None);
        req.agent = Some(String::new());
        assert_eq!(agent_of(&req), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_declaring_more_than_the_limit_is_refused_before_it_is_inflated() {
        let bomb = zstd::bulk::compress(&vec![0u8; 2 << 20], 3).unwrap();
        assert!(bomb.len() < 1024);
        assert_eq!(
            decode::<SyncRequest>(&bomb, 1 << 20),
            Err(WireError::TooLarge(1 << 20))
        );
    }

    #[test]
    fn messages_round_trip() {
        let req = SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            features: 0,
            extras_digest: None,
            cursor_check: None,
            version: 1,
            cursor: Some(42),
            grids: vec!["g1".into()],
            scope_digest: Some(7),
            docs: vec![DocChanges {
                id: HouseholdId::new(),
                changes: vec![ByteBuf::from(vec![1, 2, 3])],
                whole: None,
            }],
            whole: None,
            journal: vec![],
            held_query: vec![],
        };
        assert_eq!(decode::<SyncRequest>(&encode(&req), 1 << 20).unwrap(), req);
    }

    #[test]
    fn the_scope_digest_ignores_order_and_duplicates() {
        assert_eq!(scope_digest(&["b", "a"]), scope_digest(&["a", "b", "a"]));
        assert_ne!(scope_digest(&["a", "b"]), scope_digest(&["ab"]));
        // FNV-1a of "\n" alone, and of "g1\n".
        assert_eq!(scope_digest::<&str>(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(scope_digest(&[""]), 0xaf63c74c8601c8dd);
        assert_eq!(scope_digest(&["g1"]), 0xd44d1118fa2bcaad);
    }

    #[test]
    fn an_idle_check_is_tiny() {
        let req = SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            features: 0,
            extras_digest: None,
            scope_digest: None,
            cursor_check: None,
            version: 1,
            cursor: Some(123_456),
            docs: vec![],
            grids: vec![],
            whole: None,
            journal: vec![],
            held_query: vec![],
        };
        assert!(encode(&req).len() < 40, "{}", encode(&req).len());
    }

    #[test]
    fn bad_bodies_give_typed_errors() {
        assert_eq!(
            decode::<SyncRequest>(b"", 100),
            Err(WireError::NotCompressed)
        );
        assert_eq!(
            decode::<SyncRequest>(b"{\"v\":1}", 100),
            Err(WireError::NotCompressed)
        );
        let good = encode(&SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            features: 0,
            extras_digest: None,
            scope_digest: None,
            cursor_check: None,
            version: 1,
            cursor: None,
            docs: vec![],
            grids: vec![],
            whole: None,
            journal: vec![],
            held_query: vec![],
        });
        assert_eq!(
            decode::<SyncRequest>(&good[..good.len() - 2], 100),
            Err(WireError::Malformed)
        );
        let other = encode(&SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            features: 0,
            extras_digest: None,
            scope_digest: None,
            cursor_check: None,
            version: 9,
            cursor: None,
            docs: vec![],
            grids: vec![],
            whole: None,
            journal: vec![],
            held_query: vec![],
        });
        assert_eq!(
            decode_request(&other, 100),
            Err(WireError::UnsupportedVersion(9))
        );
        // A decompression bomb: 10 MB of zeros in a few hundred bytes.
        let bomb = zstd::bulk::compress(&vec![0u8; 10_000_000], 19).unwrap();
        assert!(bomb.len() < 2_000);
        assert_eq!(
            decode::<SyncRequest>(&bomb, 1 << 20),
            Err(WireError::TooLarge(1 << 20))
        );
    }
}
