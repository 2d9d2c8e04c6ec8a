//! Which queued requests form the next batch: pure policy, no threads and
//! no clock of its own, so it can be tested exhaustively.
//!
//! - An idle model never waits: the next batch leaves as soon as there is
//!   one request.
//! - While the model is busy (another instance is running a batch),
//!   requests collect until the batch is full or its oldest request has
//!   waited `max_queue_delay`.
//! - A batch is a FIFO prefix of the queue: it stops at the first request
//!   that does not fit (too many rows, or other non-batch dimensions).
//! - Requests past their deadline, or whose client went away, are taken
//!   out before they can reach the model, and handed back to the caller.
//! - With priority levels (1 is the highest), the queue is served in
//!   priority order, FIFO within a level, and the batch is a prefix of that
//!   order. A request that is *due* goes ahead of every level, so a low
//!   priority is never starved past its deadline: it is due once half of
//!   its time budget (enqueue to deadline) has gone, or after
//!   `max_priority_wait` when it has no deadline. With one level the queue
//!   is plain FIFO.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the policy needs to know about a queued request.
pub trait Queued {
    /// Rows along the batch dimension (1 for unbatched models).
    fn rows(&self) -> usize;
    fn enqueued_at(&self) -> Instant;
    fn deadline(&self) -> Option<Instant>;
    /// The client no longer waits for the answer.
    fn is_cancelled(&self) -> bool;
    /// Whether this request can share a batch with `head`.
    fn fits_with(&self, head: &Self) -> bool;
    /// Its priority level, 1 the highest.
    fn priority(&self) -> u32 {
        1
    }
}

#[derive(Debug, Clone)]
pub struct BatchLimits {
    /// Most rows in one batch (1 for unbatched models: one request each).
    pub max_rows: usize,
    pub max_queue_delay: Duration,
    /// Preferred batch sizes in rows; a batch is cut at the largest one it
    /// can reach, when it can reach any.
    pub preferred: Vec<usize>,
    /// Most requests in the queue.
    pub capacity: usize,
    /// Priority levels; 1 (or 0) means none: plain FIFO.
    pub priority_levels: u32,
    /// How long a request without a deadline may wait behind higher
    /// priorities before it goes ahead of them.
    pub max_priority_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Expired,
    Cancelled,
}

#[derive(Debug, PartialEq)]
pub enum Next<T> {
    /// Run these now, in this order.
    Batch(Vec<T>),
    /// Nothing to run before this instant unless something changes.
    WaitUntil(Instant),
    Empty,
}

pub struct BatchQueue<T> {
    items: VecDeque<T>,
    limits: BatchLimits,
    /// Rows of everything queued.
    rows: usize,
}

impl<T: Queued> BatchQueue<T> {
    pub fn new(mut limits: BatchLimits) -> Self {
        limits.max_rows = limits.max_rows.max(1);
        limits.preferred.sort_unstable();
        limits.preferred.dedup();
        BatchQueue {
            items: VecDeque::with_capacity(limits.capacity.min(4096)),
            limits,
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    /// Rows queued: with `max_rows`, a bound on the next batch's size.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Queues `item`, or hands it back when the queue is full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.limits.capacity {
            return Err(item);
        }
        self.rows += item.rows();
        self.items.push_back(item);
        Ok(())
    }

    /// Decides what an instance that has just become free should do.
    /// `model_busy`: another instance of the same model is running a batch.
    /// Requests dropped on the way are appended to `dropped`.
    pub fn next(
        &mut self,
        now: Instant,
        model_busy: bool,
        dropped: &mut Vec<(T, Dropped)>,
    ) -> Next<T> {
        self.evict(now, dropped);
        let next = if self.limits.priority_levels > 1 {
            self.next_by_priority(now, model_busy)
        } else {
            self.next_fifo(now, model_busy)
        };
        if let Next::Batch(batch) = &next {
            self.rows -= batch.iter().map(Queued::rows).sum::<usize>();
        }
        next
    }

    fn next_fifo(&mut self, now: Instant, model_busy: bool) -> Next<T> {
        let Some(head) = self.items.front() else {
            return Next::Empty;
        };
        let (count, rows, full) = self.extent(self.items.iter());
        let waited_enough = now >= head.enqueued_at() + self.limits.max_queue_delay;
        if !model_busy || full || waited_enough {
            let take = self
                .cut(self.items.iter().take(count), rows)
                .unwrap_or(count);
            return Next::Batch(self.items.drain(..take).collect());
        }
        Next::WaitUntil(head.enqueued_at() + self.limits.max_queue_delay)
    }

    /// [`BatchQueue::next`] over the service order: due requests first,
    /// then by level, FIFO within each.
    fn next_by_priority(&mut self, now: Instant, model_busy: bool) -> Next<T> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        let rank = |item: &T| {
            if self.due_at(item) <= now {
                0
            } else {
                item.priority().max(1)
            }
        };
        // Stable: queue order (arrival) within a rank.
        order.sort_by_key(|&i| rank(&self.items[i]));
        let Some(&head) = order.first() else {
            return Next::Empty;
        };
        let head_at = self.items[head].enqueued_at();
        let in_order = order.iter().map(|&i| &self.items[i]);
        let (count, rows, full) = self.extent(in_order.clone());
        let waited_enough = now >= head_at + self.limits.max_queue_delay;
        if !model_busy || full || waited_enough {
            let take = self.cut(in_order.take(count), rows).unwrap_or(count);
            let mut slots: Vec<Option<T>> = self.items.drain(..).map(Some).collect();
            let batch = order[..take]
                .iter()
                .filter_map(|&i| slots[i].take())
                .collect();
            self.items = slots.into_iter().flatten().collect();
            return Next::Batch(batch);
        }
        // Someone falling due may change the head before the delay ends.
        let falls_due = self
            .items
            .iter()
            .map(|item| self.due_at(item))
            .filter(|&t| t > now)
            .min();
        let wait = head_at + self.limits.max_queue_delay;
        Next::WaitUntil(falls_due.map_or(wait, |t| t.min(wait)))
    }

    /// When a request goes ahead of every priority level: half-way from
    /// enqueue to its deadline, and no later than `max_priority_wait`.
    fn due_at(&self, item: &T) -> Instant {
        let at = item.enqueued_at();
        let aged = at + self.limits.max_priority_wait;
        match item.deadline() {
            Some(d) => aged.min(at + d.saturating_duration_since(at) / 2),
            None => aged,
        }
    }

    /// Takes everything out (shutdown of an instance-less queue).
    pub fn drain_all(&mut self) -> Vec<T> {
        self.rows = 0;
        self.items.drain(..).collect()
    }

    fn evict(&mut self, now: Instant, dropped: &mut Vec<(T, Dropped)>) {
        let stale = |t: &T| t.is_cancelled() || t.deadline().is_some_and(|d| d <= now);
        if !self.items.iter().any(stale) {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.items.len());
        for item in self.items.drain(..) {
            // A request past its deadline counts as expired even when its
            // client has already gone (it left because of the deadline).
            if item.deadline().is_some_and(|d| d <= now) {
                self.rows -= item.rows();
                dropped.push((item, Dropped::Expired));
            } else if item.is_cancelled() {
                self.rows -= item.rows();
                dropped.push((item, Dropped::Cancelled));
            } else {
                kept.push_back(item);
            }
        }
        self.items = kept;
    }

    /// How many leading requests (in service order) form the largest
    /// possible batch, their rows, and whether the batch is full (nothing
    /// more could join).
    fn extent<'a>(&self, mut order: impl Iterator<Item = &'a T>) -> (usize, usize, bool)
    where
        T: 'a,
    {
        let Some(head) = order.next() else {
            return (0, 0, false);
        };
        let (mut count, mut rows) = (1, head.rows());
        for item in order {
            if !item.fits_with(head) || rows + item.rows() > self.limits.max_rows {
                return (count, rows, true);
            }
            count += 1;
            rows += item.rows();
        }
        (count, rows, rows >= self.limits.max_rows)
    }

    /// Cuts a batch (`rows` rows, in service order) back to the largest
    /// preferred size it passes through exactly, if any: how many requests
    /// to take, or `None` to take them all.
    fn cut<'a>(&self, batch: impl Iterator<Item = &'a T>, rows: usize) -> Option<usize>
    where
        T: 'a,
    {
        if self.limits.preferred.is_empty() || self.limits.preferred.contains(&rows) {
            return None;
        }
        let mut best = None;
        let mut sum = 0;
        for (i, item) in batch.enumerate() {
            sum += item.rows();
            if self.limits.preferred.binary_search(&sum).is_ok() {
                best = Some(i + 1);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Item {
        id: usize,
        rows: usize,
        at: Instant,
        deadline: Option<Instant>,
        cancelled: bool,
        key: u8,
        priority: u32,
    }

    impl Queued for Item {
        fn rows(&self) -> usize {
            self.rows
        }
        fn enqueued_at(&self) -> Instant {
            self.at
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn is_cancelled(&self) -> bool {
            self.cancelled
        }
        fn fits_with(&self, head: &Self) -> bool {
            self.key == head.key
        }
        fn priority(&self) -> u32 {
            self.priority
        }
    }

    fn limits(
        max_rows: usize,
        delay_us: u64,
        preferred: Vec<usize>,
        capacity: usize,
    ) -> BatchLimits {
        BatchLimits {
            max_rows,
            max_queue_delay: Duration::from_micros(delay_us),
            preferred,
            capacity,
            priority_levels: 1,
            max_priority_wait: Duration::from_secs(1),
        }
    }

    fn item(id: usize, rows: usize, at: Instant) -> Item {
        Item {
            id,
            rows,
            at,
            deadline: None,
            cancelled: false,
            key: 0,
            priority: 1,
        }
    }

    #[test]
    fn idle_model_dispatches_at_once() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(limits(8, 1_000_000, vec![], 10));
        q.push(item(0, 1, t0)).unwrap();
        let mut dropped = Vec::new();
        assert_eq!(
            q.next(t0, false, &mut dropped),
            Next::Batch(vec![item(0, 1, t0)])
        );
    }

    #[test]
    fn busy_model_collects_until_full_or_delay() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(limits(4, 100, vec![], 10));
        let mut dropped = Vec::new();
        q.push(item(0, 1, t0)).unwrap();
        assert_eq!(
            q.next(t0, true, &mut dropped),
            Next::WaitUntil(t0 + Duration::from_micros(100))
        );
        q.push(item(1, 3, t0)).unwrap();
        match q.next(t0, true, &mut dropped) {
            Next::Batch(b) => assert_eq!(b.iter().map(|i| i.id).collect::<Vec<_>>(), vec![0, 1]),
            other => panic!("full batch should leave: {other:?}"),
        }
        q.push(item(2, 1, t0)).unwrap();
        assert!(matches!(
            q.next(t0 + Duration::from_micros(100), true, &mut dropped),
            Next::Batch(_)
        ));
    }

    #[test]
    fn preferred_sizes_cut_the_batch() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(limits(16, 0, vec![2, 4], 10));
        for id in 0..5 {
            q.push(item(id, 1, t0)).unwrap();
        }
        let mut dropped = Vec::new();
        let Next::Batch(b) = q.next(t0, false, &mut dropped) else {
            panic!()
        };
        assert_eq!(b.len(), 4);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn full_queue_hands_the_item_back() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(limits(4, 0, vec![], 1));
        q.push(item(0, 1, t0)).unwrap();
        assert_eq!(q.push(item(1, 1, t0)), Err(item(1, 1, t0)));
    }

    fn prioritised(levels: u32, max_wait_us: u64) -> BatchQueue<Item> {
        let mut l = limits(4, 0, vec![], 64);
        l.priority_levels = levels;
        l.max_priority_wait = Duration::from_micros(max_wait_us);
        BatchQueue::new(l)
    }

    fn ids(next: Next<Item>) -> Vec<usize> {
        match next {
            Next::Batch(b) => b.iter().map(|i| i.id).collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn higher_priority_is_taken_first_fifo_within_a_level() {
        let t0 = Instant::now();
        let mut q = prioritised(3, 1_000_000);
        for (id, priority) in [(0, 3), (1, 2), (2, 1), (3, 2), (4, 1)] {
            q.push(Item {
                priority,
                ..item(id, 1, t0)
            })
            .unwrap();
        }
        let mut dropped = Vec::new();
        // Four rows per batch: both level-1 requests, then level 2 in order.
        assert_eq!(ids(q.next(t0, false, &mut dropped)), vec![2, 4, 1, 3]);
        assert_eq!(ids(q.next(t0, false, &mut dropped)), vec![0]);
    }

    #[test]
    fn one_level_stays_fifo() {
        let t0 = Instant::now();
        let mut q = prioritised(1, 0);
        for (id, priority) in [(0, 3), (1, 1)] {
            q.push(Item {
                priority,
                ..item(id, 1, t0)
            })
            .unwrap();
        }
        assert_eq!(ids(q.next(t0, false, &mut Vec::new())), vec![0, 1]);
    }

    /// A flood of full high-priority batches, one taken every 100 µs, and
    /// one low-priority request: it is served once half its 2 ms budget
    /// has gone (or after `max_priority_wait` without a deadline), never
    /// expired.
    #[test]
    fn low_priority_is_not_starved_past_its_deadline() {
        for deadline in [Some(2_000u64), None] {
            let t0 = Instant::now();
            let mut q = prioritised(2, 3_000);
            let low = Item {
                priority: 2,
                deadline: deadline.map(|us| t0 + Duration::from_micros(us)),
                ..item(0, 1, t0)
            };
            q.push(low).unwrap();
            let mut now = t0;
            let mut served_at = None;
            for step in 1..100 {
                q.push(Item {
                    priority: 1,
                    ..item(step, 4, now)
                })
                .unwrap();
                let mut dropped = Vec::new();
                let batch = ids(q.next(now, true, &mut dropped));
                assert!(dropped.is_empty(), "nothing expires");
                if batch.contains(&0) {
                    served_at = Some(now - t0);
                    break;
                }
                now += Duration::from_micros(100);
            }
            let want = if deadline.is_some() { 1_000 } else { 3_000 };
            assert_eq!(served_at, Some(Duration::from_micros(want)), "{deadline:?}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            rows: usize,
            ttl_us: Option<u64>,
            key: u8,
            priority: u32,
        },
        Cancel(usize),
        Advance(u64),
        Next {
            busy: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1usize..5, proptest::option::of(0u64..300), 0u8..2, 1u32..4).prop_map(|(rows, ttl_us, key, priority)| Op::Push { rows, ttl_us, key, priority }),
            1 => (0usize..64).prop_map(Op::Cancel),
            2 => (0u64..200).prop_map(Op::Advance),
            3 => any::<bool>().prop_map(|busy| Op::Next { busy }),
        ]
    }

    /// The plain model's service order: with levels, requests past half
    /// their budget (or `max_wait` without a deadline) first, then by
    /// level; arrival order within each.
    fn expected_order(model: &[Item], now: Instant, levels: u32, max_wait: Duration) -> Vec<Item> {
        if levels <= 1 {
            return model.to_vec();
        }
        let due = |m: &Item| {
            let aged = m.at + max_wait;
            let half = m.deadline.map(|d| m.at + (d - m.at) / 2);
            half.map_or(aged, |h| h.min(aged)) <= now
        };
        let mut first: Vec<Item> = model.iter().filter(|m| due(m)).cloned().collect();
        for level in 1..=3 {
            first.extend(
                model
                    .iter()
                    .filter(|m| !due(m) && m.priority == level)
                    .cloned(),
            );
        }
        first
    }

    proptest! {
        /// Against a plain model (a list of what was pushed and not yet
        /// accounted for): nothing lost or duplicated, served in the
        /// model's order (FIFO with one level; due first, then by level,
        /// with several), limits held, expired and cancelled requests never
        /// dispatched.
        #[test]
        fn policy_matches_a_plain_model(
            ops in proptest::collection::vec(op(), 1..200),
            max_rows in 1usize..8,
            delay_us in 0u64..150,
            capacity in 1usize..12,
            preferred in proptest::collection::vec(1usize..8, 0..3),
            levels in 1u32..4,
            max_wait_us in 0u64..400,
        ) {
            let preferred: Vec<usize> = preferred.into_iter().filter(|&p| p <= max_rows).collect();
            let max_wait = Duration::from_micros(max_wait_us);
            let delay = Duration::from_micros(delay_us);
            let t0 = Instant::now();
            let mut now = t0;
            let mut l = limits(max_rows, delay_us, preferred.clone(), capacity);
            l.priority_levels = levels;
            l.max_priority_wait = max_wait;
            let mut q = BatchQueue::new(l);
            let mut model: Vec<Item> = Vec::new();
            let mut last_dispatched: Option<usize> = None;
            let mut next_id = 0;
            let mut seen = std::collections::HashSet::new();
            for op in ops {
                match op {
                    Op::Push { rows, ttl_us, key, priority } => {
                        let it = Item { id: next_id, rows, at: now, deadline: ttl_us.map(|t| now + Duration::from_micros(t)), cancelled: false, key, priority };
                        next_id += 1;
                        let accepted = q.push(it.clone()).is_ok();
                        prop_assert_eq!(accepted, model.len() < capacity);
                        if accepted { model.push(it); }
                    }
                    Op::Cancel(i) => {
                        if !model.is_empty() {
                            let i = i % model.len();
                            model[i].cancelled = true;
                            let id = model[i].id;
                            for it in q.items.iter_mut() { if it.id == id { it.cancelled = true; } }
                        }
                    }
                    Op::Advance(us) => now += Duration::from_micros(us),
                    Op::Next { busy } => {
                        let mut dropped = Vec::new();
                        let next = q.next(now, busy, &mut dropped);
                        for (it, why) in &dropped {
                            prop_assert!(seen.insert(it.id), "dropped twice");
                            let pos = model.iter().position(|m| m.id == it.id).expect("dropped item was queued");
                            let m = model.remove(pos);
                            match why {
                                Dropped::Cancelled => prop_assert!(m.cancelled && m.deadline.is_none_or(|d| d > now)),
                                Dropped::Expired => prop_assert!(m.deadline.is_some_and(|d| d <= now)),
                            }
                        }
                        // Everything left in the model is live now.
                        prop_assert!(model.iter().all(|m| !m.cancelled && m.deadline.is_none_or(|d| d > now)));
                        let order = expected_order(&model, now, levels, max_wait);
                        match next {
                            Next::Empty => prop_assert!(model.is_empty()),
                            Next::WaitUntil(t) => {
                                prop_assert!(busy && !model.is_empty());
                                let mut want = order[0].at + delay;
                                if levels > 1 {
                                    // The next moment someone falls due.
                                    for m in &model {
                                        let aged = m.at + max_wait;
                                        let due = m.deadline.map_or(aged, |d| aged.min(m.at + (d - m.at) / 2));
                                        if due > now { want = want.min(due); }
                                    }
                                }
                                prop_assert_eq!(t, want);
                                prop_assert!(t > now);
                            }
                            Next::Batch(batch) => {
                                prop_assert!(!batch.is_empty());
                                // A prefix of the service order.
                                for (b, m) in batch.iter().zip(order.iter()) {
                                    prop_assert_eq!(b.id, m.id);
                                }
                                let rows: usize = batch.iter().map(|b| b.rows).sum();
                                prop_assert!(batch.len() == 1 || rows <= max_rows);
                                prop_assert!(batch.iter().all(|b| b.key == batch[0].key));
                                if levels <= 1 {
                                    if let Some(last) = last_dispatched { prop_assert!(batch[0].id > last); }
                                    last_dispatched = batch.last().map(|b| b.id);
                                }
                                for b in &batch { prop_assert!(seen.insert(b.id), "dispatched twice"); }
                                // An idle model never leaves work waiting;
                                // a busy one only when full or overdue.
                                if busy {
                                    let full = batch.len() < model.len() || rows >= max_rows;
                                    let overdue = now >= order[0].at + delay;
                                    prop_assert!(full || overdue || preferred.contains(&rows) || batch.len() < model.len());
                                }
                                model.retain(|m| !batch.iter().any(|b| b.id == m.id));
                            }
                        }
                    }
                }
                // The row count follows every push, batch and eviction.
                prop_assert_eq!(q.rows(), q.items.iter().map(|i| i.rows).sum::<usize>());
            }
            // Drain: everything pushed is accounted for exactly once.
            let mut dropped = Vec::new();
            loop {
                match q.next(now, false, &mut dropped) {
                    Next::Batch(b) => { for x in b { prop_assert!(seen.insert(x.id)); model.retain(|m| m.id != x.id); } }
                    Next::Empty => break,
                    Next::WaitUntil(_) => prop_assert!(false, "idle model must not wait"),
                }
            }
            for (x, _) in dropped { prop_assert!(seen.insert(x.id)); model.retain(|m| m.id != x.id); }
            prop_assert!(model.is_empty());
        }
    }
}
