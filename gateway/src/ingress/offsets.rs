//! Which offsets may be committed. Requests of one partition are answered
//! out of order (batches, several models), but a commit says "everything
//! before this offset is done", so per partition the commit point is the
//! lowest offset still in flight, or one past the highest finished.
//!
//! The ingress reads one topic, so partitions are its only key. A
//! partition's records arrive in offset order, so each keeps its records in
//! flight as a sorted queue: starting and finishing are O(1) on the common
//! path (a binary search to finish), with no allocation per record.

use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Default)]
pub struct Offsets {
    partitions: BTreeMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    /// Records read and not yet committable, ascending by offset; `true`
    /// once answered. Finished records leave from the front only, so the
    /// front is the lowest offset still in flight.
    in_flight: VecDeque<(i64, bool)>,
    /// One past the highest finished offset.
    done_to: Option<i64>,
    /// The last commit point handed out.
    committed: Option<i64>,
}

impl Partition {
    fn position(&self, offset: i64) -> Result<usize, usize> {
        self.in_flight.binary_search_by_key(&offset, |&(o, _)| o)
    }
}

impl Offsets {
    /// A record was read and is being answered.
    pub fn start(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        match p.in_flight.back() {
            None => p.in_flight.push_back((offset, false)),
            Some(&(last, _)) if offset > last => p.in_flight.push_back((offset, false)),
            // Read again (after a rebalance or a seek): keep the order.
            _ => {
                if let Err(at) = p.position(offset) {
                    p.in_flight.insert(at, (offset, false));
                }
            }
        }
    }

    /// Its answer (or dead letter) is confirmed by the broker.
    pub fn finish(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        if let Ok(at) = p.position(offset) {
            p.in_flight[at].1 = true;
        }
        while p.in_flight.front().is_some_and(|&(_, done)| done) {
            p.in_flight.pop_front();
        }
        p.done_to = Some(p.done_to.map_or(offset + 1, |d| d.max(offset + 1)));
    }

    /// Commit points that moved since the last call: `(partition, next
    /// offset to read)`.
    pub fn to_commit(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (partition, p) in &mut self.partitions {
            let point = match (p.in_flight.front(), p.done_to) {
                (Some(&(lowest, _)), _) => Some(lowest),
                (None, done) => done,
            };
            if let Some(point) = point
                && p.committed.is_none_or(|c| point > c)
            {
                p.committed = Some(point);
                out.push((*partition, point));
            }
        }
        out
    }

    /// Records read and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.in_flight.iter().filter(|(_, done)| !done).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn commits_never_pass_an_unanswered_record() {
        let mut o = Offsets::default();
        for off in 10..15 {
            o.start(0, off);
        }
        o.start(1, 3);
        assert!(o.to_commit().contains(&(0, 10)));
        o.finish(0, 12);
        o.finish(0, 11);
        assert!(o.to_commit().is_empty(), "10 is still in flight");
        o.finish(0, 10);
        assert_eq!(o.to_commit(), vec![(0, 13)]);
        o.finish(0, 14);
        o.finish(0, 13);
        o.finish(1, 3);
        assert_eq!(o.to_commit(), vec![(0, 15), (1, 4)]);
        assert_eq!(o.in_flight(), 0);
        assert!(o.to_commit().is_empty());
    }

    #[test]
    fn a_record_read_again_keeps_its_place() {
        let mut o = Offsets::default();
        for off in [5, 6, 7] {
            o.start(0, off);
        }
        // Read again from 4 after a seek: 4 sorts first, 5 stays once.
        o.start(0, 4);
        o.start(0, 5);
        assert_eq!(o.in_flight(), 4);
        o.finish(0, 5);
        o.finish(0, 6);
        o.finish(0, 7);
        assert_eq!(o.to_commit(), vec![(0, 4)]);
        o.finish(0, 4);
        assert_eq!(o.to_commit(), vec![(0, 8)]);
    }

    proptest! {
        /// Against a plain model (a set of offsets in flight): the commit
        /// point is always the lowest unanswered offset, or one past the
        /// highest answered when none is left.
        #[test]
        fn matches_a_set_of_offsets_in_flight(
            order in Just((0..40i64).collect::<Vec<_>>()).prop_shuffle(),
            lag in 1usize..8,
        ) {
            let mut o = Offsets::default();
            let mut model: BTreeSet<i64> = BTreeSet::new();
            let mut done_to = None::<i64>;
            let mut last = None::<i64>;
            // Records are read in offset order; answers come `lag` reads
            // later, in the shuffled order.
            let mut pending: Vec<i64> = Vec::new();
            let mut answers = order.iter().copied();
            for off in 0..40i64 {
                o.start(0, off);
                model.insert(off);
                pending.push(off);
                while pending.len() > lag {
                    let Some(a) = answers.by_ref().find(|a| pending.contains(a)) else { break };
                    pending.retain(|&p| p != a);
                    o.finish(0, a);
                    model.remove(&a);
                    done_to = Some(done_to.map_or(a + 1, |d| d.max(a + 1)));
                }
                let want = model.first().copied().or(done_to);
                if let Some(w) = want && last.is_none_or(|l| w > l) {
                    prop_assert_eq!(o.to_commit(), vec![(0, w)]);
                    last = Some(w);
                } else {
                    prop_assert!(o.to_commit().is_empty());
                }
                prop_assert_eq!(o.in_flight(), model.len());
            }
        }
    }
}
