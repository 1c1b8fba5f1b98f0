//! Packed changes: an Automerge change written for the wire so that a batch of them compresses
//! like the information it carries (SYNC-v1 §4.4, feature bit [`crate::wire::FEATURE_PACKED`]).
//!
//! Automerge's own change chunk is made for storage: every dependency is a 32-byte hash, every
//! actor id 32 bytes (ours are bound to a device), the author message travels in full, and the
//! operations sit in columns, so two visits share little that zstd can find. A packed change
//! keeps every field of the change and writes
//! - each dependency as the first [`DEP_PREFIX`] bytes of its hash, which the server resolves
//!   among the changes of the same household;
//! - actor ids and the message as indexes into the request's table (`a`), sent once;
//! - the time as a difference from the request's base time (`b`);
//! - the operations as rows (object, key, predecessors, value), a run of inserted characters
//!   as one string, so that a visit repeats the shape of the one before and zstd finds it.
//!
//! The server rebuilds the change with Automerge's own encoder and checks it against the
//! 4-byte checksum carried along (the first bytes of the change's hash). A phone packs a
//! change only after checking that it rebuilds to the very same hash, and sends the change's
//! own bytes otherwise, so packing can only save bytes, never alter a change.
//!
//! Layout (all integers unsigned LEB128; `zz` = zigzag LEB128; `str` = length + bytes):
//!
//! ```text
//! packed  = 0x01 checksum[4] actor seq start_op zz(time - base) message
//!           ndeps dep[6]* extra:str nrows row*
//! actor   = index into the table          message = 0 (none) | 1 + index into the table
//! row     = head obj key pred payload     head    = code << 2 | insert << 1 | key_is_seq
//! obj     = 0 (root) | 1 + ref            key     = str (map key) | 0 (head) | 1 + ref
//! pred    = count ref*
//! ref     = 2d        the change's own operation d + 1 before this one
//!         | 2i + 1 counter   operation `counter` of the table's actor i
//! ```
//!
//! Codes: 0 make map, 1 put (value), 2 make list, 3 delete, 4 make text, 5 increment (zz),
//! 6 make table, 7/8 mark begin (name:str value; expand no/yes), 9/10 mark end (expand
//! no/yes), 11 a run of inserted characters (str; one operation per character, each after the
//! one before, no predecessors). Values: a tag, then 0 null, 1 false, 2 true, 3 int (zz),
//! 4 uint, 5 f64 as its shortest decimal (str), 6 f64 (8 bytes, little-endian), 7 str,
//! 8 bytes (str), 9 counter (zz), 10 timestamp (zz), 11 unknown (type code, str).

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::legacy::{ElementId, Key, MarkData, ObjectId, Op, OpId, OpType, SortedVec};
use automerge::{ActorId, Change, ChangeHash, ExpandedChange, ObjType, ScalarValue};

/// The first byte of a packed change (an Automerge chunk starts with `0x85`).
pub const PACKED_FORMAT: u8 = 0x01;
/// Bytes of a dependency's hash a packed change carries.
pub const DEP_PREFIX: usize = 4;
/// Operations one packed change may expand to (a visit has a few hundred).
pub const MAX_OPS: usize = crate::wire::limits::MAX_CHANGE_OPS;
/// Dependencies one packed change may have (each is looked up on the server; a change has as
/// many as the household had concurrent heads, rarely more than a few).
pub const MAX_DEPS: usize = 64;

/// Why packed bytes do not make a change. Never quotes the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("the packed change is truncated or malformed")]
    Malformed,
    #[error("the packed change refers to an entry the request's table does not have")]
    BadIndex,
    #[error(
        "the packed change expands to more than {MAX_OPS} operations or has more than {MAX_DEPS} dependencies"
    )]
    TooLarge,
    #[error("a dependency does not match its prefix")]
    DependencyMismatch,
    #[error("the rebuilt change does not match its checksum")]
    ChecksumMismatch,
    #[error("too many changes share the prefixes of the packed change's dependencies")]
    Ambiguous,
}

/// The most combinations of candidate dependencies [`Unpacked::build_among`] tries.
pub const MAX_COMBINATIONS: usize = 16;

/// Packs the changes of one request, collecting the table of actor ids and messages they
/// refer to.
#[derive(Debug, Default)]
pub struct Packer {
    table: Vec<Vec<u8>>,
    index: HashMap<Vec<u8>, u64>,
    base_ms: Option<i64>,
}

impl Packer {
    pub fn new() -> Self {
        Self::default()
    }

    /// `change` packed, or `None` when its packed form would not rebuild the very same change
    /// (then the change's own bytes are sent).
    pub fn pack(&mut self, change: &Change) -> Option<Vec<u8>> {
        let table_len = self.table.len();
        let packed = self.encode(change);
        let rebuilt = packed.as_ref().and_then(|bytes| {
            let unpacked = unpack(bytes, &self.table, self.base_ms()).ok()?;
            unpacked.build(change.deps().to_vec()).ok()
        });
        if rebuilt.is_some_and(|c| c.hash() == change.hash()) {
            return packed;
        }
        for entry in self.table.drain(table_len..) {
            self.index.remove(&entry);
        }
        None
    }

    /// [`Self::pack`] for a change's bytes; `None` also when they are not one change.
    pub fn pack_bytes(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let change = crate::doc::decode_changes([bytes]).ok()?.pop()?;
        self.pack(&change)
    }

    /// The table the packed changes refer to: the request's `a`.
    pub fn table(&self) -> &[Vec<u8>] {
        &self.table
    }

    /// [`Self::table`] as a message carries it (a request's `a`, a response's `p`).
    pub fn wire_table(&self) -> Vec<serde_bytes::ByteBuf> {
        self.table
            .iter()
            .cloned()
            .map(serde_bytes::ByteBuf::from)
            .collect()
    }

    /// The base time of the packed changes: the request's `b`.
    pub fn base_ms(&self) -> i64 {
        self.base_ms.unwrap_or(0)
    }

    fn entry(&mut self, bytes: &[u8]) -> u64 {
        if let Some(i) = self.index.get(bytes) {
            return *i;
        }
        let i = self.table.len() as u64;
        self.table.push(bytes.to_vec());
        self.index.insert(bytes.to_vec(), i);
        i
    }

    fn encode(&mut self, change: &Change) -> Option<Vec<u8>> {
        let e = catch_unwind(AssertUnwindSafe(|| change.decode())).ok()?;
        if e.operations.len() > MAX_OPS || e.deps.len() > MAX_DEPS {
            return None;
        }
        let base = *self.base_ms.get_or_insert(e.time);
        let mut out = vec![PACKED_FORMAT];
        out.extend_from_slice(&change.hash().as_ref()[..4]);
        let own = e.actor_id.clone();
        let actor = self.entry(own.to_bytes());
        put_u(&mut out, actor);
        put_u(&mut out, e.seq);
        put_u(&mut out, e.start_op.get());
        put_i(&mut out, e.time.checked_sub(base)?);
        match &e.message {
            None => put_u(&mut out, 0),
            Some(m) => {
                let i = self.entry(m.as_bytes());
                put_u(&mut out, 1 + i);
            }
        }
        put_u(&mut out, e.deps.len() as u64);
        for d in &e.deps {
            out.extend_from_slice(&d.as_ref()[..DEP_PREFIX]);
        }
        put_str(&mut out, &e.extra_bytes);
        let ops = &e.operations;
        let mut rows: Vec<u8> = Vec::new();
        let mut nrows = 0u64;
        let mut uuids: Vec<[u8; 16]> = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            let counter = e.start_op.get() + i as u64;
            let run = text_run(ops, i, counter, &own);
            nrows += 1;
            if run >= 2 {
                let op = &ops[i];
                rows.push((11 << 2) | (1 << 1) | 1);
                self.put_obj(&mut rows, &op.obj, &own, counter);
                self.put_key(&mut rows, &op.key, &own, counter, &mut uuids);
                put_u(&mut rows, 0);
                let mut s = String::new();
                for op in &ops[i..i + run] {
                    if let OpType::Put(ScalarValue::Str(c)) = &op.action {
                        s.push_str(c);
                    }
                }
                put_str(&mut rows, s.as_bytes());
                i += run;
                continue;
            }
            let op = &ops[i];
            let code: u8 = match &op.action {
                OpType::Make(ObjType::Map) => 0,
                OpType::Put(_) => 1,
                OpType::Make(ObjType::List) => 2,
                OpType::Delete => 3,
                OpType::Make(ObjType::Text) => 4,
                OpType::Increment(_) => 5,
                OpType::Make(ObjType::Table) => 6,
                OpType::MarkBegin(m) => 7 + u8::from(m.expand),
                OpType::MarkEnd(expand) => 9 + u8::from(*expand),
            };
            let seq_key = matches!(op.key, Key::Seq(_));
            rows.push((code << 2) | (u8::from(op.insert) << 1) | u8::from(seq_key));
            self.put_obj(&mut rows, &op.obj, &own, counter);
            self.put_key(&mut rows, &op.key, &own, counter, &mut uuids);
            put_u(&mut rows, op.pred.len() as u64);
            for p in op.pred.iter() {
                self.put_ref(&mut rows, p, &own, counter, 0);
            }
            match &op.action {
                OpType::Put(v) => put_value(&mut rows, v, &mut uuids),
                OpType::Increment(n) => put_i(&mut rows, *n),
                OpType::MarkBegin(m) => {
                    put_str(&mut rows, m.name.as_bytes());
                    put_value(&mut rows, &m.value, &mut uuids);
                }
                _ => {}
            }
            i += 1;
        }
        put_u(&mut out, nrows);
        out.extend_from_slice(&rows);
        Some(out)
    }

    /// Writes `bias + ref` (see the layout): `bias` 1 leaves 0 for the root or the head.
    fn put_ref(&mut self, out: &mut Vec<u8>, id: &OpId, own: &ActorId, counter: u64, bias: u64) {
        if id.actor() == own && id.counter() < counter {
            put_u(out, bias + 2 * (counter - id.counter() - 1));
        } else {
            let i = self.entry(id.actor().to_bytes());
            put_u(out, bias + 2 * i + 1);
            put_u(out, id.counter());
        }
    }

    fn put_obj(&mut self, out: &mut Vec<u8>, obj: &ObjectId, own: &ActorId, counter: u64) {
        match obj {
            ObjectId::Root => put_u(out, 0),
            ObjectId::Id(id) => self.put_ref(out, id, own, counter, 1),
        }
    }

    fn put_key(
        &mut self,
        out: &mut Vec<u8>,
        key: &Key,
        own: &ActorId,
        counter: u64,
        uuids: &mut Vec<[u8; 16]>,
    ) {
        match key {
            Key::Map(s) => match uuid_form(s) {
                Some(id) => put_uuid(out, uuids, id, |u| 2 * u + 1),
                None => {
                    put_u(out, 2 * s.len() as u64);
                    out.extend_from_slice(s.as_bytes());
                }
            },
            Key::Seq(ElementId::Head) => put_u(out, 0),
            Key::Seq(ElementId::Id(id)) => self.put_ref(out, id, own, counter, 1),
        }
    }
}

/// How many operations from `ops[i]` (counter `counter`) form a run of inserted characters.
fn text_run(ops: &[Op], i: usize, counter: u64, own: &ActorId) -> usize {
    let single_char = |op: &Op| {
        op.insert
            && op.pred.is_empty()
            && matches!(op.key, Key::Seq(_))
            && matches!(&op.action, OpType::Put(ScalarValue::Str(s)) if s.chars().count() == 1)
    };
    if !single_char(&ops[i]) {
        return 0;
    }
    let mut n = 1;
    while let Some(op) = ops.get(i + n) {
        let after_prev = matches!(&op.key, Key::Seq(ElementId::Id(OpId(c, a)))
            if *c == counter + n as u64 - 1 && a == own);
        if !(single_char(op) && op.obj == ops[i].obj && after_prev) {
            break;
        }
        n += 1;
    }
    n
}

/// A packed change read back, waiting for its dependencies to be resolved.
#[derive(Debug, Clone)]
pub struct Unpacked {
    checksum: [u8; 4],
    deps: Vec<[u8; DEP_PREFIX]>,
    change: ExpandedChange,
}

impl Unpacked {
    /// The prefixes of the change's dependencies, in order.
    pub fn dep_prefixes(&self) -> &[[u8; DEP_PREFIX]] {
        &self.deps
    }

    /// The operations the change expands to (at most [`MAX_OPS`]).
    pub fn op_count(&self) -> usize {
        self.change.operations.len()
    }

    /// The first 4 bytes of the change's hash.
    pub fn checksum(&self) -> [u8; 4] {
        self.checksum
    }

    /// The change, given for each of its dependencies (in the order of
    /// [`Self::dep_prefixes`]) the hashes of the household that carry its prefix: almost
    /// always one; when two share a prefix, the combination whose rebuilt change matches the
    /// checksum is taken, trying at most [`MAX_COMBINATIONS`]. What server and phone both do
    /// with a packed change (SYNC-v1 §4.4).
    pub fn build_among(self, options: &[Vec<ChangeHash>]) -> Result<Change, PackError> {
        if options.len() != self.deps.len() || options.iter().any(Vec::is_empty) {
            return Err(PackError::DependencyMismatch);
        }
        let combinations = options
            .iter()
            .try_fold(1usize, |n, o| n.checked_mul(o.len()))
            .filter(|n| *n <= MAX_COMBINATIONS)
            .ok_or(PackError::Ambiguous)?;
        let pick = |k: usize| -> Vec<ChangeHash> {
            let mut rest = k;
            options
                .iter()
                .map(|o| {
                    let h = o[rest % o.len()];
                    rest /= o.len();
                    h
                })
                .collect()
        };
        for k in 0..combinations - 1 {
            if let Ok(change) = self.clone().build(pick(k)) {
                return Ok(change);
            }
        }
        // The last combination (the only one, as a rule) takes the change without a copy.
        self.build(pick(combinations - 1))
    }

    /// The change, given the full hashes of its dependencies (in the order of
    /// [`Self::dep_prefixes`]); checked against the checksum it came with.
    pub fn build(mut self, deps: Vec<ChangeHash>) -> Result<Change, PackError> {
        if deps.len() != self.deps.len()
            || deps
                .iter()
                .zip(&self.deps)
                .any(|(d, p)| d.as_ref()[..DEP_PREFIX] != p[..])
        {
            return Err(PackError::DependencyMismatch);
        }
        self.change.deps = deps;
        let change = catch_unwind(AssertUnwindSafe(|| Change::from(self.change)))
            .map_err(|_| PackError::Malformed)?;
        if change.hash().as_ref()[..4] != self.checksum {
            return Err(PackError::ChecksumMismatch);
        }
        Ok(change)
    }
}

/// Reads a packed change of a request whose table is `table` and base time `base_ms`.
pub fn unpack<T: AsRef<[u8]>>(
    bytes: &[u8],
    table: &[T],
    base_ms: i64,
) -> Result<Unpacked, PackError> {
    let mut r = Reader(bytes);
    if r.byte()? != PACKED_FORMAT {
        return Err(PackError::Malformed);
    }
    let checksum: [u8; 4] = r.take(4)?.try_into().expect("4 bytes");
    let entry = |i: u64| -> Result<&[u8], PackError> {
        table
            .get(usize::try_from(i).map_err(|_| PackError::BadIndex)?)
            .map(AsRef::as_ref)
            .ok_or(PackError::BadIndex)
    };
    let own = ActorId::from(entry(r.u()?)?);
    let seq = r.u()?;
    let start_op = NonZeroU64::new(r.u()?).ok_or(PackError::Malformed)?;
    let time = base_ms.checked_add(r.i()?).ok_or(PackError::Malformed)?;
    let message = match r.u()? {
        0 => None,
        i => Some(String::from_utf8(entry(i - 1)?.to_vec()).map_err(|_| PackError::Malformed)?),
    };
    let ndeps = r.count()?;
    if ndeps > MAX_DEPS {
        return Err(PackError::TooLarge);
    }
    let mut deps = Vec::with_capacity(ndeps);
    for _ in 0..ndeps {
        deps.push(r.take(DEP_PREFIX)?.try_into().expect("prefix"));
    }
    let extra_bytes = r.str()?.to_vec();
    let nrows = r.count()?;
    let mut operations: Vec<Op> = Vec::with_capacity(nrows);
    let mut uuids: Vec<[u8; 16]> = Vec::new();
    let read_ref = |r: &mut Reader, v: u64, counter: u64| -> Result<OpId, PackError> {
        if v.is_multiple_of(2) {
            let back = v / 2 + 1;
            if back > counter {
                return Err(PackError::Malformed);
            }
            Ok(OpId(counter - back, own.clone()))
        } else {
            let actor = ActorId::from(entry(v / 2)?);
            Ok(OpId(r.u()?, actor))
        }
    };
    for _ in 0..nrows {
        let counter = start_op
            .get()
            .checked_add(operations.len() as u64)
            .ok_or(PackError::Malformed)?;
        let head = r.byte()?;
        let (code, insert, seq_key) = (head >> 2, head & 2 != 0, head & 1 != 0);
        let obj = match r.u()? {
            0 => ObjectId::Root,
            v => ObjectId::Id(read_ref(&mut r, v - 1, counter)?),
        };
        let key = if seq_key {
            match r.u()? {
                0 => Key::Seq(ElementId::Head),
                v => Key::Seq(ElementId::Id(read_ref(&mut r, v - 1, counter)?)),
            }
        } else {
            let n = r.u()?;
            if n.is_multiple_of(2) {
                let s = r.take(usize::try_from(n / 2).map_err(|_| PackError::Malformed)?)?;
                Key::Map(
                    std::str::from_utf8(s)
                        .map_err(|_| PackError::Malformed)?
                        .into(),
                )
            } else {
                let id = r.uuid(n / 2, &mut uuids)?;
                Key::Map(uuid::Uuid::from_bytes(id).hyphenated().to_string().into())
            }
        };
        let npred = r.count()?;
        let mut pred = Vec::with_capacity(npred);
        for _ in 0..npred {
            let v = r.u()?;
            pred.push(read_ref(&mut r, v, counter)?);
        }
        if code == 11 {
            if !(insert && seq_key && pred.is_empty()) {
                return Err(PackError::Malformed);
            }
            let text = std::str::from_utf8(r.str()?).map_err(|_| PackError::Malformed)?;
            let mut key = key;
            for (n, c) in text.chars().enumerate() {
                if operations.len() >= MAX_OPS {
                    return Err(PackError::TooLarge);
                }
                let mut buf = [0u8; 4];
                operations.push(Op {
                    action: OpType::Put(ScalarValue::Str(c.encode_utf8(&mut buf).into())),
                    obj: obj.clone(),
                    key,
                    pred: SortedVec::new(),
                    insert: true,
                });
                key = Key::Seq(ElementId::Id(OpId(counter + n as u64, own.clone())));
            }
            continue;
        }
        let action = match code {
            0 => OpType::Make(ObjType::Map),
            1 => OpType::Put(r.value(&mut uuids)?),
            2 => OpType::Make(ObjType::List),
            3 => OpType::Delete,
            4 => OpType::Make(ObjType::Text),
            5 => OpType::Increment(r.i()?),
            6 => OpType::Make(ObjType::Table),
            7 | 8 => OpType::MarkBegin(MarkData {
                name: std::str::from_utf8(r.str()?)
                    .map_err(|_| PackError::Malformed)?
                    .into(),
                value: r.value(&mut uuids)?,
                expand: code == 8,
            }),
            9 | 10 => OpType::MarkEnd(code == 10),
            _ => return Err(PackError::Malformed),
        };
        if operations.len() >= MAX_OPS {
            return Err(PackError::TooLarge);
        }
        operations.push(Op {
            action,
            obj,
            key,
            pred: SortedVec::from(pred),
            insert,
        });
    }
    if !r.0.is_empty() {
        return Err(PackError::Malformed);
    }
    Ok(Unpacked {
        checksum,
        deps,
        change: ExpandedChange {
            operations,
            actor_id: own,
            hash: None,
            seq,
            start_op,
            time,
            message,
            deps: Vec::new(),
            extra_bytes,
            author: None,
        },
    })
}

fn put_u(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_i(out: &mut Vec<u8>, v: i64) {
    put_u(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The 16 bytes of `s` if it is a UUID in its canonical form (lowercase, hyphenated).
fn uuid_form(s: &str) -> Option<[u8; 16]> {
    if s.len() != 36 {
        return None;
    }
    let id = uuid::Uuid::try_parse(s).ok()?;
    (id.hyphenated().to_string() == s).then(|| *id.as_bytes())
}

/// Writes `tag(u)`, then the 16 bytes if the UUID is new to this change: `u` is 0 for a new
/// one, else 1 + its index among the change's UUIDs in order of appearance.
fn put_uuid(out: &mut Vec<u8>, uuids: &mut Vec<[u8; 16]>, id: [u8; 16], tag: impl Fn(u64) -> u64) {
    match uuids.iter().position(|u| *u == id) {
        Some(i) => put_u(out, tag(1 + i as u64)),
        None => {
            put_u(out, tag(0));
            out.extend_from_slice(&id);
            uuids.push(id);
        }
    }
}

fn put_value(out: &mut Vec<u8>, v: &ScalarValue, uuids: &mut Vec<[u8; 16]>) {
    match v {
        ScalarValue::Str(s) if let Some(id) = uuid_form(s) => {
            out.push(12);
            put_uuid(out, uuids, id, |u| u);
        }
        ScalarValue::Bytes(b) if b.len() == 16 => {
            out.push(13);
            put_uuid(out, uuids, b[..].try_into().expect("16 bytes"), |u| u);
        }
        ScalarValue::Null => out.push(0),
        ScalarValue::Boolean(b) => out.push(1 + u8::from(*b)),
        ScalarValue::Int(n) => {
            out.push(3);
            put_i(out, *n);
        }
        ScalarValue::Uint(n) => {
            out.push(4);
            put_u(out, *n);
        }
        ScalarValue::F64(f) => {
            let s = f.to_string();
            if s.len() <= 24 && s.parse::<f64>().is_ok_and(|g| g.to_bits() == f.to_bits()) {
                out.push(5);
                put_str(out, s.as_bytes());
            } else {
                out.push(6);
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        ScalarValue::Str(s) => {
            out.push(7);
            put_str(out, s.as_bytes());
        }
        ScalarValue::Bytes(b) => {
            out.push(8);
            put_str(out, b);
        }
        ScalarValue::Counter(c) => {
            out.push(9);
            put_i(out, i64::from(c));
        }
        ScalarValue::Timestamp(t) => {
            out.push(10);
            put_i(out, *t);
        }
        ScalarValue::Unknown { type_code, bytes } => {
            out.push(11);
            put_u(out, u64::from(*type_code));
            put_str(out, bytes);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, PackError> {
        let (b, rest) = self.0.split_first().ok_or(PackError::Malformed)?;
        self.0 = rest;
        Ok(*b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PackError> {
        if n > self.0.len() {
            return Err(PackError::Malformed);
        }
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(a)
    }

    fn u(&mut self) -> Result<u64, PackError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(PackError::Malformed)
    }

    fn i(&mut self) -> Result<i64, PackError> {
        let u = self.u()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A count of items each taking at least one byte: never more than the bytes left.
    fn count(&mut self) -> Result<usize, PackError> {
        let n = self.u()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.0.len())
            .ok_or(PackError::Malformed)
    }

    fn str(&mut self) -> Result<&'a [u8], PackError> {
        let n = usize::try_from(self.u()?).map_err(|_| PackError::Malformed)?;
        self.take(n)
    }

    /// A UUID written by [`put_uuid`] whose tag held `u`.
    fn uuid(&mut self, u: u64, uuids: &mut Vec<[u8; 16]>) -> Result<[u8; 16], PackError> {
        if u == 0 {
            let id: [u8; 16] = self.take(16)?.try_into().expect("16 bytes");
            uuids.push(id);
            Ok(id)
        } else {
            usize::try_from(u - 1)
                .ok()
                .and_then(|i| uuids.get(i).copied())
                .ok_or(PackError::Malformed)
        }
    }

    fn value(&mut self, uuids: &mut Vec<[u8; 16]>) -> Result<ScalarValue, PackError> {
        Ok(match self.byte()? {
            0 => ScalarValue::Null,
            1 => ScalarValue::Boolean(false),
            2 => ScalarValue::Boolean(true),
            3 => ScalarValue::Int(self.i()?),
            4 => ScalarValue::Uint(self.u()?),
            5 => ScalarValue::F64(
                std::str::from_utf8(self.str()?)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(PackError::Malformed)?,
            ),
            6 => ScalarValue::F64(f64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            7 => ScalarValue::Str(
                std::str::from_utf8(self.str()?)
                    .map_err(|_| PackError::Malformed)?
                    .into(),
            ),
            8 => ScalarValue::Bytes(self.str()?.to_vec()),
            9 => ScalarValue::counter(self.i()?),
            10 => ScalarValue::Timestamp(self.i()?),
            11 => {
                let type_code = u8::try_from(self.u()?).map_err(|_| PackError::Malformed)?;
                ScalarValue::Unknown {
                    type_code,
                    bytes: self.str()?.to_vec(),
                }
            }
            12 => {
                let u = self.u()?;
                let id = self.uuid(u, uuids)?;
                ScalarValue::Str(uuid::Uuid::from_bytes(id).hyphenated().to_string().into())
            }
            13 => {
                let u = self.u()?;
                ScalarValue::Bytes(self.uuid(u, uuids)?.to_vec())
            }
            _ => return Err(PackError::Malformed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};
    use proptest::prelude::*;

    /// Every change of `doc` packed by one packer (as one request), then unpacked and rebuilt
    /// with the real dependencies: the very same bytes.
    fn round_trip(doc: &mut AutoCommit) -> usize {
        let changes: Vec<Change> = doc.get_changes(&[]);
        let mut packer = Packer::new();
        let packed: Vec<Vec<u8>> = changes
            .iter()
            .map(|c| packer.pack(c).expect("packs"))
            .collect();
        for (c, p) in changes.iter().zip(&packed) {
            let u = unpack(p, packer.table(), packer.base_ms()).unwrap();
            assert_eq!(u.checksum(), c.hash().as_ref()[..4]);
            let rebuilt = u.build(c.deps().to_vec()).unwrap();
            assert_eq!(rebuilt.raw_bytes(), c.raw_bytes());
        }
        packed.iter().map(Vec::len).sum()
    }

    #[test]
    fn every_kind_of_operation_and_value_rebuilds_the_same_change() {
        let mut a = AutoCommit::new().with_actor(ActorId::from(b"actor-a".as_slice()));
        let values: Vec<ScalarValue> = vec![
            ScalarValue::Null,
            ScalarValue::Boolean(true),
            ScalarValue::Boolean(false),
            ScalarValue::Int(-5),
            ScalarValue::Int(i64::MIN),
            ScalarValue::Uint(u64::MAX),
            ScalarValue::F64(34.70123),
            ScalarValue::F64(-0.0),
            ScalarValue::F64(1e300),
            ScalarValue::F64(f64::MIN_POSITIVE / 3.0),
            ScalarValue::F64(f64::NAN),
            ScalarValue::F64(f64::INFINITY),
            ScalarValue::Str("老人独居".into()),
            ScalarValue::Str("01a206ae-14f2-736b-a746-ad978373d58e".into()),
            // Upper case is not the canonical form: it must stay a string as it is.
            ScalarValue::Str("01A206AE-14F2-736B-A746-AD978373D58E".into()),
            ScalarValue::Bytes(vec![7; 16]),
            ScalarValue::Bytes(vec![1, 2, 3]),
            ScalarValue::counter(3),
            ScalarValue::Timestamp(1_763_164_800_000),
        ];
        for (i, v) in values.iter().enumerate() {
            a.put(ROOT, format!("k{i}"), v.clone()).unwrap();
        }
        a.commit();
        a.increment(ROOT, "k17", 4).unwrap();
        // A map keyed by ids, twice the same id (key and value).
        let visits = a.put_object(ROOT, "visits", ObjType::Map).unwrap();
        let id = "01a206ae-14f2-736b-a746-ad978373d58e";
        let v = a.put_object(&visits, id, ObjType::Map).unwrap();
        a.put(
            &v,
            "id",
            ScalarValue::Bytes(uuid::Uuid::parse_str(id).unwrap().as_bytes().to_vec()),
        )
        .unwrap();
        let list = a.put_object(&v, "people", ObjType::List).unwrap();
        a.insert(&list, 0, "x").unwrap();
        a.insert(&list, 1, "y").unwrap();
        a.insert(&list, 0, "z").unwrap();
        let note = a.put_object(&v, "note", ObjType::Text).unwrap();
        a.splice_text(&note, 0, 0, "血压偏高，近期按时服药。")
            .unwrap();
        a.commit();
        // Another actor edits: overwrites (predecessors of another actor), inserts in the
        // middle of the text, deletes, marks.
        let mut b = a.fork().with_actor(ActorId::from(b"actor-b".as_slice()));
        b.put(&v, "id", "other").unwrap();
        b.splice_text(&note, 2, 1, "很").unwrap();
        b.delete(&list, 1).unwrap();
        b.delete(ROOT, "k3").unwrap();
        b.mark(
            &note,
            automerge::marks::Mark::new("bold".into(), true, 0, 3),
            automerge::marks::ExpandMark::Both,
        )
        .unwrap();
        b.unmark(&note, "bold", 1, 2, automerge::marks::ExpandMark::None)
            .unwrap();
        b.commit();
        let mut empty = AutoCommit::new();
        empty.commit_with(automerge::transaction::CommitOptions::default().with_message("x"));
        a.merge(&mut b).unwrap();
        a.merge(&mut empty).unwrap();
        assert!(round_trip(&mut a) > 0);
    }

    #[test]
    fn a_text_run_is_one_row_and_smaller_than_the_change() {
        let mut a = AutoCommit::new();
        let note = a.put_object(ROOT, "note", ObjType::Text).unwrap();
        let text = "家中电线有老化迹象，已提醒注意用电安全。".repeat(5);
        a.splice_text(&note, 0, 0, &text).unwrap();
        a.commit();
        let change = a.get_changes(&[]).pop().unwrap();
        let packed = Packer::new().pack(&change).unwrap();
        // The characters and a few bytes of framing.
        assert!(packed.len() < text.len() + 40, "{} bytes", packed.len());
        assert!(packed.len() < change.raw_bytes().len());
    }

    fn sample() -> (Change, Vec<u8>, Vec<Vec<u8>>, i64) {
        let mut a = AutoCommit::new();
        a.put(ROOT, "x", 1).unwrap();
        a.commit();
        let v = a.put_object(ROOT, "v", ObjType::Map).unwrap();
        a.put(&v, "note", "已宣传防诈骗知识。").unwrap();
        a.commit();
        let change = a.get_changes(&[]).pop().unwrap();
        let mut p = Packer::new();
        let packed = p.pack(&change).unwrap();
        (change, packed, p.table().to_vec(), p.base_ms())
    }

    #[test]
    fn wrong_dependencies_a_wrong_checksum_and_a_bad_index_are_refused() {
        let (change, packed, table, base) = sample();
        let u = unpack(&packed, &table, base).unwrap();
        assert_eq!(u.dep_prefixes().len(), 1);
        assert_eq!(
            u.clone().build(vec![ChangeHash([0; 32])]).unwrap_err(),
            PackError::DependencyMismatch
        );
        assert_eq!(
            u.clone().build(vec![]).unwrap_err(),
            PackError::DependencyMismatch
        );
        // Same prefix, another hash: rebuilds something else, which the checksum catches.
        let mut near = change.deps()[0].0;
        near[31] ^= 1;
        assert_eq!(
            u.build(vec![ChangeHash(near)]).unwrap_err(),
            PackError::ChecksumMismatch
        );
        let mut bad = packed.clone();
        bad[1] ^= 0xff;
        assert_eq!(
            unpack(&bad, &table, base)
                .unwrap()
                .build(change.deps().to_vec())
                .unwrap_err(),
            PackError::ChecksumMismatch
        );
        assert_eq!(
            unpack(&packed, &Vec::<Vec<u8>>::new(), base).unwrap_err(),
            PackError::BadIndex
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        let (change, packed, table, base) = sample();
        for n in 0..packed.len() {
            let built =
                unpack(&packed[..n], &table, base).and_then(|u| u.build(change.deps().to_vec()));
            assert!(built.is_err(), "a packed change cut at {n} bytes was taken");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Hostile bytes never panic and never expand past the limits.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                    deps in 0usize..3) {
            let table = vec![b"actor".to_vec(), "message".as_bytes().to_vec(), vec![]];
            let mut b = bytes;
            if let Some(first) = b.first_mut() {
                *first = PACKED_FORMAT;
            }
            if let Ok(u) = unpack(&b, &table, 0) {
                let _ = u.build(vec![ChangeHash([0; 32]); deps]);
            }
        }

        /// Mutating one byte of a valid packed change never makes another change pass.
        #[test]
        fn a_flipped_byte_is_never_taken_for_another_change(at in 0usize..64, bit in 0u8..8) {
            let (change, packed, table, base) = sample();
            let mut b = packed.clone();
            let at = at % b.len();
            b[at] ^= 1 << bit;
            if let Ok(c) = unpack(&b, &table, base).and_then(|u| u.build(change.deps().to_vec())) {
                prop_assert_eq!(c.hash(), change.hash());
            }
        }
    }
}
