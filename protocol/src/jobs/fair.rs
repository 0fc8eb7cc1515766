//! [`FairShare`]: the order in which a runner starts the segments that fall to it, so that one
//! submitter's backlog does not hold back everyone else's jobs.
//!
//! Placement ([`super::rendezvous`]) decides *which* node runs a segment; when more segments
//! fall to a node than it runs at once, this decides *which first*. The rule is
//! least-recently-served submitter first: among the submitters with a segment ready, the one
//! this runner started a segment for longest ago (a submitter it never served comes before all
//! others) goes next, with its oldest segment (submission order, then job id, then segment);
//! ties between submitters never served go by submitter id. So with X's ten long jobs queued
//! and Y's one job arriving, Y's starts as soon as a slot frees, and then X and Y alternate.
//!
//! A submitter is the node that accepted the job (`submitted_by`). The state is this runner's
//! own (which submitter it served when); it holds only submitters with unfinished jobs
//! ([`FairShare::retain`]), and is deterministic: the same starts in the same order give the
//! same next choice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Which submitter a runner served when, by a counter of segment starts.
#[derive(Debug, Default, Clone)]
pub struct FairShare {
    /// Starts so far.
    turn: u64,
    /// The turn at which each submitter was last served (never served: absent).
    last_served: BTreeMap<String, u64>,
}

impl FairShare {
    pub fn new() -> Self {
        Self::default()
    }

    /// `ready`, already in submission order, reordered so that taking items from the front
    /// (and calling [`FairShare::served`] for each one started) serves the least recently
    /// served submitter first every time. `submitter` names an item's submitter.
    pub fn order<T>(&self, ready: Vec<T>, submitter: impl Fn(&T) -> &str) -> Vec<T> {
        let total = ready.len();
        let mut queues: BTreeMap<String, VecDeque<T>> = BTreeMap::new();
        for item in ready {
            let who = submitter(&item).to_string();
            queues.entry(who).or_default().push_back(item);
        }
        // (last served, submitter): the smallest goes next; never served counts as 0.
        let mut next: BTreeSet<(u64, String)> = queues
            .keys()
            .map(|who| (self.last_served.get(who).copied().unwrap_or(0), who.clone()))
            .collect();
        let mut turn = self.turn;
        let mut out = Vec::with_capacity(total);
        while let Some((served, who)) = next.pop_first() {
            let Some(queue) = queues.get_mut(&who) else {
                continue;
            };
            let Some(item) = queue.pop_front() else {
                continue;
            };
            out.push(item);
            turn += 1;
            if !queue.is_empty() {
                next.insert((turn.max(served), who));
            }
        }
        out
    }

    /// Records that a segment of `submitter` was started now.
    pub fn served(&mut self, submitter: &str) {
        self.turn += 1;
        self.last_served.insert(submitter.to_string(), self.turn);
    }

    /// Forgets the submitters for which `active` is false (no unfinished job), so that the
    /// state stays as small as the set of submitters with work.
    pub fn retain(&mut self, active: impl Fn(&str) -> bool) {
        self.last_served.retain(|who, _| active(who));
    }

    /// How many submitters are remembered.
    pub fn len(&self) -> usize {
        self.last_served.len()
    }

    /// Whether no submitter is remembered.
    pub fn is_empty(&self) -> bool {
        self.last_served.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::FairShare;

    fn names(items: &[(&'static str, u32)]) -> Vec<String> {
        items.iter().map(|(w, i)| format!("{w}{i}")).collect()
    }

    fn order(fair: &FairShare, ready: &[(&'static str, u32)]) -> Vec<String> {
        names(&fair.order(ready.to_vec(), |(w, _)| w))
    }

    #[test]
    fn a_single_submitter_keeps_submission_order() {
        let fair = FairShare::new();
        assert_eq!(
            order(&fair, &[("x", 1), ("x", 2), ("x", 3)]),
            ["x1", "x2", "x3"]
        );
    }

    #[test]
    fn a_second_submitter_goes_before_the_first_ones_backlog() {
        let mut fair = FairShare::new();
        // X's first job started; X's backlog and Y's one job wait.
        fair.served("x");
        assert_eq!(
            order(&fair, &[("x", 2), ("x", 3), ("x", 4), ("y", 1)]),
            ["y1", "x2", "x3", "x4"]
        );
    }

    #[test]
    fn submitters_alternate() {
        let fair = FairShare::new();
        assert_eq!(
            order(&fair, &[("x", 1), ("x", 2), ("x", 3), ("y", 1), ("y", 2)]),
            ["x1", "y1", "x2", "y2", "x3"]
        );
    }

    #[test]
    fn the_least_recently_served_goes_first() {
        let mut fair = FairShare::new();
        fair.served("a");
        fair.served("b");
        fair.served("a");
        // b was served at turn 2, a at turn 3; c never.
        assert_eq!(
            order(&fair, &[("a", 1), ("b", 1), ("c", 1)]),
            ["c1", "b1", "a1"]
        );
    }

    #[test]
    fn taking_one_at_a_time_gives_the_same_order_as_the_plan() {
        let ready = [("x", 1), ("x", 2), ("y", 1), ("z", 1), ("y", 2), ("x", 3)];
        let mut fair = FairShare::new();
        fair.served("y");
        let planned = order(&fair, &ready);
        let mut left = ready.to_vec();
        let mut taken = Vec::new();
        while !left.is_empty() {
            let first = fair.order(left.clone(), |(w, _)| w)[0];
            fair.served(first.0);
            left.retain(|x| *x != first);
            taken.push(format!("{}{}", first.0, first.1));
        }
        assert_eq!(planned, taken);
    }

    #[test]
    fn retain_forgets_idle_submitters() {
        let mut fair = FairShare::new();
        fair.served("x");
        fair.served("y");
        fair.retain(|w| w == "y");
        assert_eq!(fair.len(), 1);
        // x is treated as never served again.
        assert_eq!(order(&fair, &[("y", 1), ("x", 1)]), ["x1", "y1"]);
    }
}
