//! The forwarding cache with serve-stale (RFC 8767), without I/O: time is passed in.
//!
//! Answers from upstreams are kept for their TTL (the smallest TTL of the answer, or the
//! negative TTL of the SOA for NXDOMAIN/NODATA, capped by `max_ttl`). After that an entry is
//! stale: it is not answered while upstreams answer, but when they fail it is answered with a
//! short TTL for up to `max_stale` past its expiry. The cache holds at most `capacity` entries;
//! when full, entries past their stale window go first, then the oldest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, Record};

/// TTL of records served stale (RFC 8767 §4 suggests 30 s).
pub const STALE_TTL: u32 = 30;

/// A cached upstream answer.
#[derive(Clone, Debug)]
pub struct Entry {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    stored: Instant,
    ttl: Duration,
}

/// How fresh a cached answer is.
#[derive(Clone, Debug)]
pub enum Hit {
    /// Within its TTL; record TTLs already reduced by its age.
    Fresh(Entry),
    /// Past its TTL but inside the stale window; record TTLs set to [`STALE_TTL`].
    Stale(Entry),
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    entries: HashMap<(String, u16), Entry>,
    capacity: usize,
    max_ttl: Duration,
    max_stale: Duration,
}

impl Cache {
    pub fn new(capacity: usize, max_ttl: Duration, max_stale: Duration) -> Self {
        Cache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            max_ttl,
            max_stale,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stores an upstream answer; answers that are neither NOERROR nor NXDOMAIN are not kept.
    pub fn put(
        &mut self,
        key: (String, u16),
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
        now: Instant,
    ) {
        if !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            return;
        }
        let ttl = if answers.is_empty() {
            authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
                .unwrap_or(0)
        } else {
            answers.iter().map(|r| r.ttl).min().unwrap_or(0)
        };
        let ttl = Duration::from_secs(u64::from(ttl)).min(self.max_ttl);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.evict(now);
        }
        self.entries.insert(
            key,
            Entry {
                rcode,
                answers,
                authorities,
                stored: now,
                ttl,
            },
        );
    }

    fn evict(&mut self, now: Instant) {
        let window = self.max_stale;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.stored) < e.ttl + window);
        if self.entries.len() >= self.capacity
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.stored)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
    }

    /// The cached answer for `key`, fresh or stale; `None` when absent or too stale.
    pub fn get(&self, key: &(String, u16), now: Instant) -> Option<Hit> {
        let e = self.entries.get(key)?;
        let age = now.saturating_duration_since(e.stored);
        let with_ttl = |f: &dyn Fn(u32) -> u32| {
            let mut e = e.clone();
            for r in e.answers.iter_mut().chain(e.authorities.iter_mut()) {
                r.ttl = f(r.ttl);
            }
            e
        };
        if age < e.ttl {
            let aged = age.as_secs() as u32;
            Some(Hit::Fresh(with_ttl(&|t| t.saturating_sub(aged).max(1))))
        } else if age < e.ttl + self.max_stale {
            Some(Hit::Stale(with_ttl(&|_| STALE_TTL)))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use hickory_proto::rr::rdata::A;

    fn a(ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii("x.example.").expect("name"),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        )
    }

    #[test]
    fn fresh_then_stale_then_gone() {
        let t0 = Instant::now();
        let mut c = Cache::new(10, Duration::from_secs(3600), Duration::from_secs(100));
        let key = ("x.example.".to_string(), 1);
        c.put(key.clone(), ResponseCode::NoError, vec![a(60)], vec![], t0);
        match c.get(&key, t0 + Duration::from_secs(10)) {
            Some(Hit::Fresh(e)) => assert_eq!(e.answers[0].ttl, 50),
            other => panic!("expected fresh, got {other:?}"),
        }
        match c.get(&key, t0 + Duration::from_secs(61)) {
            Some(Hit::Stale(e)) => assert_eq!(e.answers[0].ttl, STALE_TTL),
            other => panic!("expected stale, got {other:?}"),
        }
        assert!(c.get(&key, t0 + Duration::from_secs(161)).is_none());
    }

    #[test]
    fn failures_are_not_cached_and_capacity_holds() {
        let t0 = Instant::now();
        let mut c = Cache::new(3, Duration::from_secs(3600), Duration::from_secs(100));
        c.put(("s.".into(), 1), ResponseCode::ServFail, vec![], vec![], t0);
        assert!(c.is_empty());
        for i in 0..10u32 {
            c.put(
                (format!("n{i}."), 1),
                ResponseCode::NoError,
                vec![a(60)],
                vec![],
                t0 + Duration::from_secs(u64::from(i)),
            );
        }
        assert_eq!(c.len(), 3);
        assert!(
            c.get(&("n9.".into(), 1), t0 + Duration::from_secs(10))
                .is_some(),
            "newest kept"
        );
    }
}
