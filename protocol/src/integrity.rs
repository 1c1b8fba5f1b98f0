//! Automerge's own rules for a change within its document: what a change must satisfy so that
//! the household still loads afterwards, on the server and on every phone.
//!
//! Automerge checks little when it applies a change and a great deal when it loads a saved
//! document, so a change that applies cleanly can still make the document unloadable for
//! everyone (or panic inside Automerge on the next apply). A hostile phone can forge such a
//! change from one of its own: bump the sequence number and re-sign it, reuse operation ids,
//! drop the dependency on its previous change, or corrupt the checksum. The rules, per actor
//! within one document (see automerge's `change_graph.rs`, `storage/change.rs` and
//! `op_set2/change/collector.rs`):
//!
//! 1. the chunk's checksum is the first 4 bytes of the change's hash;
//! 2. no Automerge author footer (this protocol names authors in the message, §13.3);
//! 3. the sequence number is the actor's previous one plus one (1 for a new actor);
//! 4. a change after the first depends, directly or not, on the actor's previous change;
//! 5. operation ids come after every operation the change depends on and after the actor's
//!    previous change (Lamport order: ids are never reused);
//! 6. every operation id the change refers to (object, list element, predecessor) is an
//!    operation it could have seen: earlier in the change, or of a known actor before the
//!    change's first operation;
//! 7. applied, the document gives the change back byte for byte
//!    ([`Lineage::round_trips`]): what a saved document rebuilds and verifies when it loads.
//!
//! Each check costs in proportion to the change (and, for rule 4, to the changes made since
//! the actor's previous one), never to the household's history. [`Lineage`] keeps the
//! per-actor state; it is built once per loaded document from the changes' metadata.

use std::collections::{HashMap, HashSet};

use automerge::legacy::{ElementId, Key, ObjectId, OpId};
use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};

/// Why a change breaks its document's history. Stable names ([`Fault::as_str`]), for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The chunk's checksum does not match its bytes.
    BadChecksum,
    /// The change carries an Automerge author footer.
    AuthorFooter,
    /// The sequence number is not the actor's previous one plus one.
    SeqNotNext,
    /// The change does not build on the actor's previous change.
    NotAfterOwnPrevious,
    /// Operation ids that do not come after what the change depends on (reused ids).
    OpIdsNotAfterDeps,
    /// An operation refers to an id the change cannot have seen.
    UnknownReference,
    /// A dependency is neither in the document nor checked before it.
    UnknownDependency,
    /// The document does not give the change back byte for byte once applied.
    DoesNotRoundTrip,
    /// More operations than [`crate::wire::limits::MAX_CHANGE_OPS`].
    TooManyOps,
    /// Automerge panicked on it.
    Panicked,
}

impl Fault {
    /// The stable name, for log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::BadChecksum => "bad_checksum",
            Fault::AuthorFooter => "author_footer",
            Fault::SeqNotNext => "seq_not_next",
            Fault::NotAfterOwnPrevious => "not_after_own_previous",
            Fault::OpIdsNotAfterDeps => "op_ids_not_after_deps",
            Fault::UnknownReference => "unknown_reference",
            Fault::UnknownDependency => "unknown_dependency",
            Fault::DoesNotRoundTrip => "does_not_round_trip",
            Fault::TooManyOps => "too_many_ops",
            Fault::Panicked => "panicked",
        }
    }
}

/// The last change of one actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tip {
    seq: u64,
    hash: ChangeHash,
    max_op: u64,
}

/// A change's place in the graph, for walking back from a change's dependencies.
#[derive(Clone, Debug)]
struct Node {
    start_op: u64,
    max_op: u64,
    deps: Vec<ChangeHash>,
}

/// How many changes rule 4 may walk back through before it gives up (refusing the change):
/// an honest phone's change reaches its previous one through the changes it received since.
pub const MAX_WALK: usize = 20_000;

/// The per-actor state of one document's history, and the changes checked since it was built
/// (not yet in the document, or applied after it was built).
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    tips: HashMap<ActorId, Tip>,
    recent: HashMap<ChangeHash, Node>,
    ops: u64,
}

impl Lineage {
    /// The state of `doc`'s history: one pass over its changes' metadata (no operations).
    pub fn of(doc: &Automerge) -> Lineage {
        let mut tips: HashMap<ActorId, Tip> = HashMap::new();
        let mut ops = 0u64;
        for meta in doc.get_changes_meta(&[]) {
            ops += (meta.max_op + 1).saturating_sub(meta.start_op);
            let tip = Tip {
                seq: meta.seq,
                hash: meta.hash,
                max_op: meta.max_op,
            };
            tips.entry(meta.actor.into_owned())
                .and_modify(|t| {
                    if tip.seq > t.seq {
                        *t = tip;
                    }
                })
                .or_insert(tip);
        }
        Lineage {
            tips,
            recent: HashMap::new(),
            ops,
        }
    }

    /// Checks rules 1-6 for `change`, whose dependencies are in `doc` or were
    /// [`recorded`](Self::record) before it. Cost: the change's operations, plus the changes
    /// between the actor's previous change and this one.
    pub fn check(&self, doc: &Automerge, change: &Change) -> Result<(), Fault> {
        crate::doc::guarded(|| Ok(self.check_inner(doc, change))).unwrap_or(Err(Fault::Panicked))
    }

    fn check_inner(&self, doc: &Automerge, change: &Change) -> Result<(), Fault> {
        if change.len() > crate::wire::limits::MAX_CHANGE_OPS {
            return Err(Fault::TooManyOps);
        }
        // 1. Automerge's parser does not verify the checksum; a saved document does.
        let raw = change.raw_bytes();
        if raw.len() < 8 || raw[4..8] != change.hash().as_ref()[..4] {
            return Err(Fault::BadChecksum);
        }
        // 2. Automerge asserts an authored change is its actor's first, and one per actor.
        if change.author().is_some() {
            return Err(Fault::AuthorFooter);
        }
        let actor = change.actor_id();
        let start_op = change.start_op().get();
        // 3 and 4.
        match self.tips.get(actor) {
            None if change.seq() == 1 => {}
            Some(tip) if change.seq() == tip.seq + 1 => {
                if start_op <= tip.max_op {
                    return Err(Fault::OpIdsNotAfterDeps);
                }
                if !self.reaches(doc, change.deps(), tip)? {
                    return Err(Fault::NotAfterOwnPrevious);
                }
            }
            _ => return Err(Fault::SeqNotNext),
        }
        // 5. Ids after everything depended on.
        for dep in change.deps() {
            let node = self.node(doc, dep).ok_or(Fault::UnknownDependency)?;
            if start_op <= node.max_op {
                return Err(Fault::OpIdsNotAfterDeps);
            }
        }
        // 6. References to operations the change can have seen.
        let expanded = change.decode();
        let max_op = change.max_op();
        let seen = |id: &OpId, at: u64| -> bool {
            if id.1 == *actor && id.0 >= start_op {
                return id.0 < at;
            }
            id.0 < start_op && id.0 >= 1 && self.tips.get(&id.1).is_some_and(|t| id.0 <= t.max_op)
        };
        for (i, op) in expanded.operations.iter().enumerate() {
            let at = start_op + i as u64;
            if at > max_op {
                return Err(Fault::UnknownReference);
            }
            if let ObjectId::Id(id) = &op.obj
                && !seen(id, at)
            {
                return Err(Fault::UnknownReference);
            }
            if let Key::Seq(ElementId::Id(id)) = &op.key
                && !seen(id, at)
            {
                return Err(Fault::UnknownReference);
            }
            if op.pred.iter().any(|p| !seen(p, at)) {
                return Err(Fault::UnknownReference);
            }
        }
        Ok(())
    }

    /// Forgets the changes recorded since the state was built, once they are in the document
    /// (which then answers for them).
    pub fn settle(&mut self) {
        self.recent.clear();
    }

    /// Operations in the history so far (with the recorded changes): what
    /// [`crate::wire::limits::MAX_DOC_OPS`] bounds.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Takes a checked change into the state, so that changes after it are checked against it.
    pub fn record(&mut self, change: &Change) {
        self.ops += change.len() as u64;
        let tip = Tip {
            seq: change.seq(),
            hash: change.hash(),
            max_op: change.max_op(),
        };
        self.tips.insert(change.actor_id().clone(), tip);
        self.recent.insert(
            change.hash(),
            Node {
                start_op: change.start_op().get(),
                max_op: change.max_op(),
                deps: change.deps().to_vec(),
            },
        );
    }

    /// Rule 7: the document, with `change` applied, rebuilds exactly its bytes from its
    /// operations — what loading a saved document does and verifies. Cost: the operations
    /// whose ids fall within the change's range.
    pub fn round_trips(doc: &Automerge, change: &Change) -> Result<(), Fault> {
        let back = crate::doc::guarded(|| Ok(doc.get_change_by_hash(&change.hash())))
            .map_err(|_| Fault::Panicked)?;
        match back {
            Some(c) if c.raw_bytes() == change.raw_bytes() => Ok(()),
            _ => Err(Fault::DoesNotRoundTrip),
        }
    }

    fn node(&self, doc: &Automerge, hash: &ChangeHash) -> Option<Node> {
        if let Some(n) = self.recent.get(hash) {
            return Some(n.clone());
        }
        doc.get_change_meta_by_hash(hash).map(|m| Node {
            start_op: m.start_op,
            max_op: m.max_op,
            deps: m.deps,
        })
    }

    /// Whether `tip` is among `deps` or their ancestors. Only changes made after the tip can
    /// have it as an ancestor (their ids come after its ids, rule 5), so the walk stops at
    /// older ones.
    fn reaches(&self, doc: &Automerge, deps: &[ChangeHash], tip: &Tip) -> Result<bool, Fault> {
        let mut stack: Vec<ChangeHash> = deps.to_vec();
        let mut visited: HashSet<ChangeHash> = HashSet::new();
        while let Some(h) = stack.pop() {
            if h == tip.hash {
                return Ok(true);
            }
            if !visited.insert(h) {
                continue;
            }
            if visited.len() > MAX_WALK {
                return Err(Fault::NotAfterOwnPrevious);
            }
            let node = self.node(doc, &h).ok_or(Fault::UnknownDependency)?;
            if node.start_op > tip.max_op {
                stack.extend(node.deps);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ExpandedChange, ROOT};

    fn base() -> AutoCommit {
        let mut doc = AutoCommit::new().with_actor(ActorId::random());
        doc.put(ROOT, "a", 1).unwrap();
        doc.commit();
        doc.put(ROOT, "b", 2).unwrap();
        doc.commit();
        doc
    }

    fn last(doc: &mut AutoCommit) -> Change {
        doc.get_last_local_change().unwrap()
    }

    /// A change of the document's own actor, on its heads, then forged by `f`.
    fn forged(doc: &mut AutoCommit, f: impl FnOnce(&mut ExpandedChange)) -> Change {
        let mut fork = doc.fork().with_actor(doc.get_actor().clone());
        fork.put(ROOT, "c", 3).unwrap();
        fork.commit();
        let mut e = last(&mut fork).decode();
        e.hash = None;
        f(&mut e);
        Change::from(e)
    }

    #[test]
    fn honest_changes_pass_every_rule_and_round_trip() {
        let mut doc = base();
        let lineage = Lineage::of(doc.document());
        let mut other = doc.fork();
        other.put(ROOT, "z", "x").unwrap();
        other.commit();
        let theirs = last(&mut other);
        lineage.check(doc.document(), &theirs).unwrap();
        doc.apply_changes([theirs.clone()]).unwrap();
        Lineage::round_trips(doc.document(), &theirs).unwrap();
        // The first actor again, after the other one's change.
        let mut lineage = Lineage::of(doc.document());
        doc.put(ROOT, "a", 5).unwrap();
        doc.commit();
        let mine = last(&mut doc);
        lineage.check(doc.document(), &mine).unwrap();
        lineage.record(&mine);
    }

    #[test]
    fn forged_sequence_numbers_and_reused_op_ids_are_refused() {
        let mut doc = base();
        let lineage = Lineage::of(doc.document());
        let bumped = forged(&mut doc, |e| e.seq += 1);
        assert_eq!(
            lineage.check(doc.document(), &bumped),
            Err(Fault::SeqNotNext)
        );
        let repeated = forged(&mut doc, |e| e.seq -= 1);
        assert_eq!(
            lineage.check(doc.document(), &repeated),
            Err(Fault::SeqNotNext)
        );
        let reused = forged(&mut doc, |e| {
            e.start_op = std::num::NonZeroU64::new(2).unwrap()
        });
        assert_eq!(
            lineage.check(doc.document(), &reused),
            Err(Fault::OpIdsNotAfterDeps)
        );
        let orphan = forged(&mut doc, |e| e.deps.clear());
        assert_eq!(
            lineage.check(doc.document(), &orphan),
            Err(Fault::NotAfterOwnPrevious)
        );
        // A second actor starting past seq 1.
        let stranger = forged(&mut doc, |e| e.actor_id = ActorId::random());
        assert_eq!(
            lineage.check(doc.document(), &stranger),
            Err(Fault::SeqNotNext)
        );
    }

    #[test]
    fn a_chunk_whose_checksum_does_not_match_is_refused() {
        let mut doc = base();
        let lineage = Lineage::of(doc.document());
        let mut fork = doc.fork();
        fork.put(ROOT, "c", 3).unwrap();
        fork.commit();
        let mut bytes = last(&mut fork).raw_bytes().to_vec();
        bytes[4] ^= 1;
        let change = Change::try_from(&bytes[..]).expect("automerge does not verify it");
        assert_eq!(
            lineage.check(doc.document(), &change),
            Err(Fault::BadChecksum)
        );
    }

    #[test]
    fn references_to_operations_never_seen_are_refused() {
        let mut doc = base();
        let lineage = Lineage::of(doc.document());
        let ghost = forged(&mut doc, |e| {
            e.operations[0].pred = vec![OpId(1, ActorId::random())].into();
        });
        assert_eq!(
            lineage.check(doc.document(), &ghost),
            Err(Fault::UnknownReference)
        );
        let future = forged(&mut doc, |e| {
            let actor = e.actor_id.clone();
            e.operations[0].obj = ObjectId::Id(OpId(99, actor));
        });
        assert_eq!(
            lineage.check(doc.document(), &future),
            Err(Fault::UnknownReference)
        );
    }
}
