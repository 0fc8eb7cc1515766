//! Response-rate limiting for UDP, per client prefix, with slip (without I/O).
//!
//! Each client prefix (IPv4 /24, IPv6 /56 by default) has a token bucket refilled at `rate`
//! responses per second with a burst of one second's worth. A response without a token is
//! dropped, except every `slip`-th, which is sent truncated (TC=1) so a real client retries over
//! TCP while a spoofed victim gets no amplification. `slip = 0` never slips, `1` always slips.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Instant;

use lru::LruCache;

/// Prefixes whose buckets are kept (about 64 bytes each).
pub const MAX_PREFIXES: usize = 65_536;

/// What to do with a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Send,
    Slip,
    Drop,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    limited: u32,
}

/// The limiter.
#[derive(Debug)]
pub struct Rrl {
    rate: f64,
    slip: u32,
    v4_prefix: u8,
    v6_prefix: u8,
    /// Buckets of the most recently seen prefixes. When full, the least recently seen one is
    /// forgotten (it comes back with a full bucket): a flood of spoofed prefixes pushes out
    /// quiet ones, never the ones being limited, and never switches limiting off.
    table: LruCache<(bool, u128), Bucket>,
}

impl Rrl {
    /// `rate` responses per second per prefix (must be > 0).
    pub fn new(rate: u32, slip: u32, v4_prefix: u8, v6_prefix: u8) -> Self {
        Rrl {
            rate: f64::from(rate.max(1)),
            slip,
            v4_prefix: v4_prefix.min(32),
            v6_prefix: v6_prefix.min(128),
            table: LruCache::new(NonZeroUsize::new(MAX_PREFIXES).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    fn prefix(&self, ip: IpAddr) -> (bool, u128) {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.v4_prefix))
                    .unwrap_or(0);
                (false, u128::from(bits & mask))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.v6_prefix))
                    .unwrap_or(0);
                (true, bits & mask)
            }
        }
    }

    /// Decides for one response to `ip` at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Action {
        let key = self.prefix(ip);
        let rate = self.rate;
        let b = self.table.get_or_insert_mut(key, || Bucket {
            tokens: rate,
            last: now,
            limited: 0,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Action::Send;
        }
        b.limited = b.limited.wrapping_add(1);
        if self.slip > 0 && b.limited.is_multiple_of(self.slip) {
            Action::Slip
        } else {
            Action::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A flood from more spoofed /24s than the table holds does not switch limiting off for
    /// the prefix being limited (the table used to clear itself when full).
    #[test]
    fn a_flood_of_spoofed_prefixes_keeps_the_limited_prefix_limited() {
        let t0 = Instant::now();
        let mut rrl = Rrl::new(10, 0, 24, 56);
        let attacker: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..10 {
            assert_eq!(rrl.check(attacker, t0), Action::Send);
        }
        assert_eq!(rrl.check(attacker, t0), Action::Drop);
        for i in 0..(MAX_PREFIXES as u32 * 2) {
            let spoofed = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + (i << 8)));
            let _ = rrl.check(spoofed, t0);
            if i % 1000 == 0 {
                // The victim prefix keeps being queried (and limited) during the flood.
                assert_eq!(
                    rrl.check(attacker, t0),
                    Action::Drop,
                    "after {i} spoofed prefixes"
                );
            }
        }
        assert_eq!(rrl.check(attacker, t0), Action::Drop);
        assert!(rrl.table.len() <= MAX_PREFIXES);
    }

    #[test]
    fn limits_per_prefix_with_slip_and_refills() {
        let t0 = Instant::now();
        let mut rrl = Rrl::new(10, 2, 24, 56);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let same: IpAddr = "192.0.2.77".parse().expect("ip");
        let other: IpAddr = "198.51.100.1".parse().expect("ip");
        for _ in 0..10 {
            assert_eq!(rrl.check(a, t0), Action::Send);
        }
        let limited: Vec<Action> = (0..4).map(|_| rrl.check(same, t0)).collect();
        assert_eq!(
            limited,
            vec![Action::Drop, Action::Slip, Action::Drop, Action::Slip]
        );
        assert_eq!(
            rrl.check(other, t0),
            Action::Send,
            "another prefix has its own bucket"
        );
        assert_eq!(
            rrl.check(a, t0 + Duration::from_millis(200)),
            Action::Send,
            "refilled"
        );
    }

    #[test]
    fn slip_zero_always_drops() {
        let t0 = Instant::now();
        let mut rrl = Rrl::new(1, 0, 24, 56);
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(rrl.check(a, t0), Action::Send);
        assert!((0..5).all(|_| rrl.check(a, t0) == Action::Drop));
    }
}
