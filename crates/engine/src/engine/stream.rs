//! The stream applier: change events from a stream, applied as they come
//! where that is safe, without waiting for a round (see `apply_stream`);
//! anything else is a hint that wakes a pull. Owns nothing: it plans from
//! `state`, commits through `catchup::apply_changes`, and reads the
//! round's `Outbox::settling`.

use std::sync::atomic::Ordering;

use crate::protocol::ChangeEvent;
use crate::restart::Anchor;

use super::catchup::{Applied, Expect};
use super::{Engine, Wake};

/// A stream run whose commit finds the cursor or the stored rows moved is
/// planned again this many times at most, then left to a pull.
const PLAN_AGAIN: usize = 3;

impl Engine {
    /// Change events from a stream. The stream is a hint (not gap-free, not
    /// policy-filtered): a run of events that continues the cursor exactly
    /// and touches only entities everyone may read is applied as a pull page
    /// would be; anything else (a gap, a protected entity, an entity not
    /// bootstrapped yet) asks for a pull instead. Events at or below the
    /// cursor are duplicates.
    ///
    /// It does not wait for a round (`sync`): a round's HTTP calls do not
    /// hold it back. What keeps the two apart instead: the run is committed
    /// only where nothing was committed since it was planned (else it is
    /// planned again), and it stops before an event of an entity that the
    /// round is sending writes of (`Outbox::settling`): an acknowledgement
    /// sets the stored row to what the write made of it, which must land
    /// neither on top of a later event nor under an earlier one, and the
    /// round's own pull, after its writes, brings those events.
    pub(crate) async fn apply_stream(&self, events: Vec<(u64, ChangeEvent)>) {
        let (floor, checked) = (
            self.inner.watch.stream_floor.load(Ordering::SeqCst),
            self.inner.watch.stream_checked.load(Ordering::SeqCst),
        );
        let trusted = events.iter().all(|(connection, _)| (floor..=checked).contains(connection));
        let events: Vec<ChangeEvent> = events.into_iter().map(|(_, e)| e).collect();
        let mut pull = false;
        for _ in 0..PLAN_AGAIN {
            let (run, gap, expect, kept) = {
                let st = self.inner.state.read();
                let usable = trusted && st.loaded && !st.quarantined && st.session.is_some();
                let settling = self.inner.outbox.settling.lock();
                let appliable = |c: &ChangeEvent| {
                    usable
                        && st.open.contains(&c.entity)
                        && st.covered.contains_key(&c.entity)
                        && !settling.contains(&c.entity)
                };
                let (run, gap) = stream_run(events.clone(), st.cursor, appliable);
                let expect = Expect {
                    epoch: self.inner.epoch.load(Ordering::SeqCst),
                    cursor: Some(st.cursor),
                    commits: Some(self.inner.commits.load(Ordering::SeqCst)),
                };
                (run, gap, expect, st.anchor.clone())
            };
            tracing::debug!(run = run.len(), pull = gap, "stream events");
            pull = gap;
            let Some(last) = run.last() else { break };
            let at = Some((last.seq, Anchor::extended(kept.as_ref(), &run, last.seq)));
            match self.apply_changes(run, at, expect).await {
                Ok(Applied::Moved) => pull = true, // unless the next plan goes through
                Ok(_) => break,
                Err(_) => {
                    pull = true; // the pull reports the failure, with backoff
                    break;
                }
            }
        }
        if pull {
            self.wake(Wake::Pull);
        }
    }
}

/// The run of stream events that continues `cursor` exactly, each one that
/// `appliable` says may be applied as it comes; and whether a pull
/// is needed (a gap, or an event that may not be applied as it comes).
/// Events at or below the cursor are duplicates; the order of arrival does
/// not matter.
fn stream_run(
    mut events: Vec<ChangeEvent>,
    cursor: u64,
    appliable: impl Fn(&ChangeEvent) -> bool,
) -> (Vec<ChangeEvent>, bool) {
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    let mut next = cursor + 1;
    let mut run = Vec::new();
    for e in events {
        if e.seq < next {
            continue;
        }
        if e.seq != next || !appliable(&e) {
            return (run, true);
        }
        next += 1;
        run.push(e);
    }
    (run, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Kind;

    fn ev(seq: u64, entity: &str) -> ChangeEvent {
        ChangeEvent {
            seq,
            entity: entity.into(),
            row_id: format!("r{seq}"),
            kind: Kind::Insert,
            data: None,
            timestamp: String::new(),
        }
    }

    fn seqs(run: &[ChangeEvent]) -> Vec<u64> {
        run.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_stream_run_continues_the_cursor_exactly() {
        let open = |e: &ChangeEvent| e.entity == "Todo";
        // duplicates, reordering and old events are taken in stride
        let (run, pull) =
            stream_run(vec![ev(7, "Todo"), ev(5, "Todo"), ev(6, "Todo"), ev(6, "Todo"), ev(4, "Todo")], 4, open);
        assert_eq!((seqs(&run), pull), (vec![5, 6, 7], false));
        // only old events: nothing to do
        let (run, pull) = stream_run(vec![ev(3, "Todo")], 4, open);
        assert_eq!((seqs(&run), pull), (vec![], false));
        // a gap stops the run and asks for a pull
        let (run, pull) = stream_run(vec![ev(5, "Todo"), ev(7, "Todo")], 4, open);
        assert_eq!((seqs(&run), pull), (vec![5], true));
        // so does an entity a policy governs (the pull is filtered, the stream is not)
        let (run, pull) = stream_run(vec![ev(5, "Todo"), ev(6, "Note"), ev(7, "Todo")], 4, open);
        assert_eq!((seqs(&run), pull), (vec![5], true));
        // and nothing is applied as it comes when nothing may be
        let (run, pull) = stream_run(vec![ev(5, "Todo")], 4, |_| false);
        assert_eq!((seqs(&run), pull), (vec![], true));
        // an event the round's pull must bring (an entity whose writes it sends) is left to it
        let (run, pull) = stream_run(vec![ev(5, "Todo"), ev(6, "Todo")], 4, |e| e.row_id != "r6");
        assert_eq!((seqs(&run), pull), (vec![5], true));
    }
}
