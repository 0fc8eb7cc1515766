//! Hybrid logical clocks.
//!
//! An [`Hlc`] is a wall-clock time in milliseconds plus a counter: it never goes backwards on a
//! node, it moves past every timestamp the node has seen, and it stays close to real time. A remote
//! timestamp more than a configured bound ahead of the local wall clock is refused instead of
//! dragging the clock into the future.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A hybrid logical timestamp; ordered by wall time, then counter.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Orders events within one millisecond.
    pub counter: u32,
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:04}", self.wall_ms, self.counter)
    }
}

/// A remote timestamp too far ahead of the local clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp {remote} is {ahead_ms} ms ahead of the local clock (at most {max_ms} ms allowed)"
)]
pub struct ClockDrift {
    pub remote: Hlc,
    pub ahead_ms: u64,
    pub max_ms: u64,
}

/// A node's clock. Sans-I/O: the caller passes the physical time in.
#[derive(Clone, Debug)]
pub struct HlcClock {
    last: Hlc,
    max_drift_ms: u64,
}

impl HlcClock {
    /// A clock that refuses remote timestamps more than `max_drift_ms` ahead.
    pub fn new(max_drift_ms: u64) -> Self {
        HlcClock {
            last: Hlc::default(),
            max_drift_ms,
        }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Moves the clock past `h` unconditionally: for this node's own last timestamp on restart,
    /// so that its chain's timestamps keep increasing even if the wall clock stepped back.
    pub fn restore(&mut self, h: Hlc) {
        self.last = self.last.max(h);
    }

    /// A new timestamp for a local event at physical time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        self.last = if now_ms > self.last.wall_ms {
            Hlc {
                wall_ms: now_ms,
                counter: 0,
            }
        } else {
            next(self.last)
        };
        self.last
    }

    /// Checks a remote timestamp against the drift bound without moving the clock.
    pub fn check(&self, remote: Hlc, now_ms: u64) -> Result<(), ClockDrift> {
        let ahead_ms = remote.wall_ms.saturating_sub(now_ms);
        if ahead_ms > self.max_drift_ms {
            return Err(ClockDrift {
                remote,
                ahead_ms,
                max_ms: self.max_drift_ms,
            });
        }
        Ok(())
    }

    /// Moves the clock past a remote timestamp (after checking the drift bound).
    pub fn observe(&mut self, remote: Hlc, now_ms: u64) -> Result<Hlc, ClockDrift> {
        self.check(remote, now_ms)?;
        let base = self.last.max(remote);
        self.last = if now_ms > base.wall_ms {
            Hlc {
                wall_ms: now_ms,
                counter: 0,
            }
        } else {
            next(base)
        };
        Ok(self.last)
    }
}

fn next(h: Hlc) -> Hlc {
    match h.counter.checked_add(1) {
        Some(counter) => Hlc {
            wall_ms: h.wall_ms,
            counter,
        },
        None => Hlc {
            wall_ms: h.wall_ms + 1,
            counter: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ticks_are_monotonic_even_when_the_wall_clock_steps_back() {
        let mut c = HlcClock::new(1000);
        let a = c.tick(5000);
        let b = c.tick(4000);
        let d = c.tick(5000);
        assert!(a < b && b < d);
        assert_eq!(
            c.tick(6000),
            Hlc {
                wall_ms: 6000,
                counter: 0
            }
        );
    }

    #[test]
    fn remote_far_in_the_future_is_refused_and_the_clock_unchanged() {
        let mut c = HlcClock::new(1000);
        c.tick(5000);
        let before = c.last();
        let err = c
            .observe(
                Hlc {
                    wall_ms: 7001,
                    counter: 0,
                },
                5000,
            )
            .expect_err("too far ahead");
        assert_eq!(err.ahead_ms, 2001);
        assert_eq!(c.last(), before);
        let seen = c
            .observe(
                Hlc {
                    wall_ms: 5900,
                    counter: 3,
                },
                5000,
            )
            .expect("within bound");
        assert!(
            seen > Hlc {
                wall_ms: 5900,
                counter: 3
            }
        );
    }

    proptest! {
        #[test]
        fn every_issued_timestamp_exceeds_everything_seen(events in prop::collection::vec((any::<bool>(), 0u64..10_000, 0u64..10_000, 0u32..5), 1..200)) {
            let mut c = HlcClock::new(u64::MAX);
            let mut max_seen = Hlc::default();
            for (local, now, remote_ms, remote_ctr) in events {
                let t = if local {
                    c.tick(now)
                } else {
                    let r = Hlc { wall_ms: remote_ms, counter: remote_ctr };
                    let t = c.observe(r, now).expect("no bound");
                    prop_assert!(t > r);
                    t
                };
                prop_assert!(t > max_seen);
                max_seen = t;
            }
        }
    }
}
