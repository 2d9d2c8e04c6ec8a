//! Which offsets may be committed. Requests of one partition are answered
//! out of order (batches, several models), but a commit says "everything
//! before this offset is done", so per partition the commit point is the
//! lowest offset still in flight, or one past the highest finished.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub struct Offsets {
    partitions: BTreeMap<(String, i32), Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    in_flight: BTreeSet<i64>,
    /// One past the highest finished offset.
    done_to: Option<i64>,
    /// The last commit point handed out.
    committed: Option<i64>,
}

impl Offsets {
    /// A record was read and is being answered.
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) {
        self.partitions
            .entry((topic.to_string(), partition))
            .or_default()
            .in_flight
            .insert(offset);
    }

    /// Its answer (or dead letter) is confirmed by the broker.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_default();
        p.in_flight.remove(&offset);
        p.done_to = Some(p.done_to.map_or(offset + 1, |d| d.max(offset + 1)));
    }

    /// Commit points that moved since the last call: `(topic, partition,
    /// next offset to read)`.
    pub fn to_commit(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for ((topic, partition), p) in &mut self.partitions {
            let point = match (p.in_flight.first(), p.done_to) {
                (Some(&lowest), _) => Some(lowest),
                (None, done) => done,
            };
            if let Some(point) = point
                && p.committed.is_none_or(|c| point > c)
            {
                p.committed = Some(point);
                out.push((topic.clone(), *partition, point));
            }
        }
        out
    }

    /// Records read and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_never_pass_an_unanswered_record() {
        let mut o = Offsets::default();
        for off in 10..15 {
            o.start("t", 0, off);
        }
        o.start("t", 1, 3);
        assert!(o.to_commit().contains(&("t".into(), 0, 10)));
        o.finish("t", 0, 12);
        o.finish("t", 0, 11);
        assert!(o.to_commit().is_empty(), "10 is still in flight");
        o.finish("t", 0, 10);
        assert_eq!(o.to_commit(), vec![("t".into(), 0, 13)]);
        o.finish("t", 0, 14);
        o.finish("t", 0, 13);
        o.finish("t", 1, 3);
        assert_eq!(o.to_commit(), vec![("t".into(), 0, 15), ("t".into(), 1, 4)]);
        assert_eq!(o.in_flight(), 0);
        assert!(o.to_commit().is_empty());
    }
}
