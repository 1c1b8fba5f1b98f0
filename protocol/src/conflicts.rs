//! Concurrent values and who wrote them.
//!
//! When two phones set the same field differently while offline, Automerge keeps both values
//! and picks the same winner everywhere. Qiaomen does not hide the loser: [`conflicts`] lists
//! every field that holds more than one distinct value, each with its author (user and
//! device, from the change message) and time, so a worker or supervisor can choose. Any later
//! write of the field, e.g. [`resolve`], supersedes all concurrent values.
//!
//! [`provenance`] answers "who set this field, when, from which phone" for any field.

use std::{collections::HashMap, fmt};

use automerge::{
    ActorId, AutoCommit, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue, Value,
    transaction::Transactable,
};
use serde::{Deserialize, Serialize};

use crate::{
    doc::{Author, HouseholdDoc},
    error::{DocError, Result},
    schema::Household,
};

/// One of the values a field holds, with where it came from.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// The value as JSON (objects as JSON objects, text as a string, ids as their text form).
    pub value: serde_json::Value,
    /// The Automerge operation that wrote it, as `counter@actor`; stable, used to pick it.
    pub op: String,
    /// Who wrote it, if the change carried a Qiaomen author.
    pub author: Option<Author>,
    /// When, in milliseconds since the Unix epoch, per the writing device's clock.
    pub at_ms: i64,
}

impl fmt::Debug for FieldValue {
    // The value is residents' data: never in Debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldValue")
            .field("op", &self.op)
            .field("author", &self.author)
            .field("at_ms", &self.at_ms)
            .finish_non_exhaustive()
    }
}

/// A field holding more than one distinct value. `values[0]` is the one Automerge shows
/// (the same on every replica); the rest are the concurrent values it would hide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// Path from the document root: map keys, and list positions as decimal strings,
    /// e.g. `["members", "<member-id>", "phone"]`.
    pub path: Vec<String>,
    pub values: Vec<FieldValue>,
}

/// How to settle a conflict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Resolution {
    /// Keep the value written by this operation (a [`FieldValue::op`]).
    Choose(String),
    /// Write a new value.
    Set(serde_json::Value),
}

/// One change's span of operation counters: (start op, max op, time, author).
type OpSpan = (u64, u64, i64, Option<Author>);

/// Maps operation ids to the change that made them.
struct ChangeIndex {
    by_actor: HashMap<ActorId, Vec<OpSpan>>,
}

impl ChangeIndex {
    fn build(doc: &mut AutoCommit) -> Self {
        let mut by_actor: HashMap<ActorId, Vec<_>> = HashMap::new();
        for meta in doc.get_changes_meta(&[]) {
            let author = meta.message.as_deref().and_then(Author::from_message);
            by_actor.entry(meta.actor.into_owned()).or_default().push((
                meta.start_op,
                meta.max_op,
                meta.timestamp,
                author,
            ));
        }
        for v in by_actor.values_mut() {
            v.sort_by_key(|e| e.0);
        }
        Self { by_actor }
    }

    fn lookup(&self, op: &ObjId) -> (Option<Author>, i64) {
        let ObjId::Id(counter, actor, _) = op else {
            return (None, 0);
        };
        let Some(changes) = self.by_actor.get(actor) else {
            return (None, 0);
        };
        let idx = changes.partition_point(|e| e.0 <= *counter);
        match idx.checked_sub(1).map(|i| &changes[i]) {
            Some((start, max, ts, author)) if start <= counter && counter <= max => (*author, *ts),
            _ => (None, 0),
        }
    }
}

fn op_string(op: &ObjId) -> String {
    match op {
        ObjId::Root => "root".to_string(),
        ObjId::Id(counter, actor, _) => format!("{counter}@{actor}"),
    }
}

fn scalar_json(s: &ScalarValue) -> serde_json::Value {
    use serde_json::Value as J;
    match s {
        ScalarValue::Bytes(b) => match uuid::Uuid::from_slice(b) {
            Ok(u) => J::String(u.to_string()),
            Err(_) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
        },
        ScalarValue::Str(s) => J::String(s.to_string()),
        ScalarValue::Int(i) => J::from(*i),
        ScalarValue::Uint(u) => J::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        ScalarValue::Counter(c) => J::from(i64::from(c)),
        ScalarValue::Timestamp(t) => J::from(*t),
        ScalarValue::Boolean(b) => J::Bool(*b),
        ScalarValue::Null => J::Null,
        ScalarValue::Unknown { .. } => J::Null,
    }
}

fn value_json(doc: &AutoCommit, value: &Value<'_>, id: &ObjId) -> serde_json::Value {
    match value {
        Value::Scalar(s) => scalar_json(s),
        Value::Object(ObjType::Text) => serde_json::Value::String(doc.text(id).unwrap_or_default()),
        Value::Object(ObjType::Map | ObjType::Table) => {
            let mut m = serde_json::Map::new();
            for key in doc.keys(id) {
                if let Ok(Some((v, vid))) = doc.get(id, key.as_str()) {
                    m.insert(key.clone(), value_json(doc, &v, &vid));
                }
            }
            serde_json::Value::Object(m)
        }
        Value::Object(ObjType::List) => serde_json::Value::Array(
            (0..doc.length(id))
                .filter_map(|i| doc.get(id, i).ok().flatten())
                .map(|(v, vid)| value_json(doc, &v, &vid))
                .collect(),
        ),
    }
}

fn field_values(
    doc: &AutoCommit,
    index: &ChangeIndex,
    obj: &ObjId,
    prop: Prop,
) -> Result<Vec<FieldValue>> {
    let all = doc.get_all(obj, prop)?;
    // get_all lists values in op order; Automerge's winner (what `get` returns) is the last.
    let mut values: Vec<FieldValue> = all
        .iter()
        .rev()
        .map(|(v, id)| {
            let (author, at_ms) = index.lookup(id);
            FieldValue {
                value: value_json(doc, v, id),
                op: op_string(id),
                author,
                at_ms,
            }
        })
        .collect();
    values.dedup_by(|a, b| a.op == b.op);
    Ok(values)
}

fn walk(
    doc: &AutoCommit,
    index: &ChangeIndex,
    obj: &ObjId,
    path: &mut Vec<String>,
    out: &mut Vec<Conflict>,
) -> Result<()> {
    let props: Vec<(String, Prop)> = match doc.object_type(obj)? {
        ObjType::Map | ObjType::Table => doc.keys(obj).map(|k| (k.clone(), Prop::Map(k))).collect(),
        ObjType::List => (0..doc.length(obj))
            .map(|i| (i.to_string(), Prop::Seq(i)))
            .collect(),
        ObjType::Text => return Ok(()),
    };
    for (name, prop) in props {
        let all = doc.get_all(obj, prop.clone())?;
        if all.len() > 1 {
            let values = field_values(doc, index, obj, prop.clone())?;
            let first = &values[0].value;
            if values.iter().any(|v| &v.value != first) {
                let mut p = path.clone();
                p.push(name.clone());
                out.push(Conflict { path: p, values });
            }
        }
        if let Some((Value::Object(_), child)) = doc.get(obj, prop)? {
            path.push(name);
            walk(doc, index, &child, path, out)?;
            path.pop();
        }
    }
    Ok(())
}

/// Every field of the document that holds more than one distinct concurrent value.
pub fn conflicts(doc: &mut HouseholdDoc) -> Result<Vec<Conflict>> {
    let am = doc.automerge_mut();
    let index = ChangeIndex::build(am);
    let mut out = Vec::new();
    walk(am, &index, &ROOT, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Who wrote a field's current value(s): "who changed this field, when, from which device",
/// without the value itself (so it can be shown or logged where the value may not be).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldOrigin {
    /// Path from the document root, as in [`Conflict::path`].
    pub path: Vec<String>,
    /// The author and time of each current value (more than one when concurrent).
    pub writers: Vec<(Option<Author>, i64)>,
}

/// The origin of every field of the document that holds a value (maps and lists are walked
/// into; a text counts as one field, attributed to the operation that created it).
pub fn field_origins(doc: &mut HouseholdDoc) -> Result<Vec<FieldOrigin>> {
    fn visit(
        doc: &AutoCommit,
        index: &ChangeIndex,
        obj: &ObjId,
        path: &mut Vec<String>,
        out: &mut Vec<FieldOrigin>,
    ) -> Result<()> {
        let props: Vec<(String, Prop)> = match doc.object_type(obj)? {
            ObjType::Map | ObjType::Table => {
                doc.keys(obj).map(|k| (k.clone(), Prop::Map(k))).collect()
            }
            ObjType::List => (0..doc.length(obj))
                .map(|i| (i.to_string(), Prop::Seq(i)))
                .collect(),
            ObjType::Text => return Ok(()),
        };
        for (name, prop) in props {
            path.push(name);
            match doc.get(obj, prop.clone())? {
                Some((Value::Object(ObjType::Map | ObjType::Table | ObjType::List), child)) => {
                    visit(doc, index, &child, path, out)?;
                }
                Some(_) => {
                    let writers = doc
                        .get_all(obj, prop)?
                        .iter()
                        .rev()
                        .map(|(_, id)| index.lookup(id))
                        .collect();
                    out.push(FieldOrigin {
                        path: path.clone(),
                        writers,
                    });
                }
                None => {}
            }
            path.pop();
        }
        Ok(())
    }
    let am = doc.automerge_mut();
    let index = ChangeIndex::build(am);
    let mut out = Vec::new();
    visit(am, &index, &ROOT, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Resolves `path` to its parent object and the last property.
fn locate(doc: &AutoCommit, path: &[String]) -> Result<(ObjId, Prop)> {
    let not_found = || DocError::NotFound {
        kind: "field",
        id: path.join("/"),
    };
    let (last, parents) = path.split_last().ok_or_else(not_found)?;
    let mut obj = ROOT;
    let as_prop = |obj: &ObjId, seg: &str| -> Result<Prop> {
        Ok(match doc.object_type(obj)? {
            ObjType::List => Prop::Seq(seg.parse().map_err(|_| not_found())?),
            _ => Prop::Map(seg.to_string()),
        })
    };
    for seg in parents {
        match doc.get(&obj, as_prop(&obj, seg)?)? {
            Some((Value::Object(_), id)) => obj = id,
            _ => return Err(not_found()),
        }
    }
    let prop = as_prop(&obj, last)?;
    if let Prop::Seq(i) = prop
        && i >= doc.length(&obj)
    {
        return Err(not_found());
    }
    Ok((obj, prop))
}

/// The values a field currently holds (one, or several when concurrent), each with its author
/// and time: "who changed this field, when, from which device".
pub fn provenance(doc: &mut HouseholdDoc, path: &[String]) -> Result<Vec<FieldValue>> {
    let am = doc.automerge_mut();
    let index = ChangeIndex::build(am);
    let (obj, prop) = locate(am, path)?;
    let values = field_values(am, &index, &obj, prop)?;
    if values.is_empty() {
        return Err(DocError::NotFound {
            kind: "field",
            id: path.join("/"),
        });
    }
    Ok(values)
}

fn put_json(
    doc: &mut AutoCommit,
    obj: &ObjId,
    prop: Prop,
    value: &serde_json::Value,
) -> Result<()> {
    use serde_json::Value as J;
    let scalar = |v: &J| -> Option<ScalarValue> {
        Some(match v {
            J::Null => ScalarValue::Null,
            J::Bool(b) => ScalarValue::Boolean(*b),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    ScalarValue::Int(i)
                } else if let Some(u) = n.as_u64() {
                    ScalarValue::Uint(u)
                } else {
                    ScalarValue::F64(n.as_f64()?)
                }
            }
            J::String(s) => ScalarValue::Str(s.as_str().into()),
            _ => return None,
        })
    };
    match value {
        J::Array(items) => {
            let list = doc.put_object(obj, prop, ObjType::List)?;
            for (i, item) in items.iter().enumerate() {
                match scalar(item) {
                    Some(s) => doc.insert(&list, i, s)?,
                    None => {
                        let kind = if item.is_array() {
                            ObjType::List
                        } else {
                            ObjType::Map
                        };
                        let child = doc.insert_object(&list, i, kind)?;
                        fill(doc, &child, item)?;
                    }
                }
            }
        }
        J::Object(_) => {
            let child = doc.put_object(obj, prop, ObjType::Map)?;
            fill(doc, &child, value)?;
        }
        other => doc.put(obj, prop, scalar(other).expect("a scalar"))?,
    }
    Ok(())
}

fn fill(doc: &mut AutoCommit, obj: &ObjId, value: &serde_json::Value) -> Result<()> {
    match value {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                put_json(doc, obj, Prop::Map(k.clone()), v)?;
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let kind = if v.is_array() {
                    ObjType::List
                } else if v.is_object() {
                    ObjType::Map
                } else {
                    doc.insert(obj, i, ScalarValue::Null)?;
                    put_json(doc, obj, Prop::Seq(i), v)?;
                    continue;
                };
                let child = doc.insert_object(obj, i, kind)?;
                fill(doc, &child, v)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Settles the field at `path` as one change by `author`: keeps one of its concurrent values
/// or writes a new one. Scalar values are written back exactly (ids stay ids). The result must
/// still be a valid household record; otherwise nothing is written.
pub fn resolve(
    doc: &mut HouseholdDoc,
    author: &Author,
    now_ms: i64,
    path: &[String],
    resolution: Resolution,
) -> Result<automerge::ChangeHash> {
    let am = doc.automerge_mut();
    let (obj, prop) = locate(am, path)?;
    let result = (|| -> Result<()> {
        match &resolution {
            Resolution::Choose(op) => {
                let all = am.get_all(&obj, prop.clone())?;
                let (value, id) = all
                    .into_iter()
                    .find(|(_, id)| &op_string(id) == op)
                    .ok_or_else(|| DocError::NotFound {
                        kind: "value",
                        id: op.clone(),
                    })?;
                match value {
                    Value::Scalar(s) => {
                        let s = s.into_owned();
                        am.put(&obj, prop, s)?;
                    }
                    Value::Object(ObjType::Text) => {
                        let text = am.text(&id)?;
                        let t = am.put_object(&obj, prop, ObjType::Text)?;
                        am.splice_text(&t, 0, 0, &text)?;
                    }
                    Value::Object(_) => {
                        let json = value_json(am, &value, &id);
                        put_json(am, &obj, prop, &json)?;
                    }
                }
            }
            Resolution::Set(json) => put_json(am, &obj, prop, json)?,
        }
        autosurgeon::hydrate::<_, Household>(am).map_err(|_| {
            DocError::InvalidEdit("the value does not fit the household record".into())
        })?;
        Ok(())
    })();
    if let Err(e) = result {
        am.rollback();
        return Err(e);
    }
    doc.commit(author, now_ms)
        .ok_or_else(|| DocError::Automerge("empty change".into()))
}
