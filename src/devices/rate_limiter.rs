//! Firecracker's rate limiters: a token bucket for bytes and one for
//! operations, each refilled at a steady rate, that a device asks before it
//! moves data. A device that is refused leaves the guest's request in its
//! queue and comes back when the limiter's timer fires, which is set for the
//! moment enough tokens will be there: no polling, and nothing on ember's
//! threads waits.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use super::nonblocking_timer;
use crate::config::{RateLimiterConfig, TokenBucketConfig};

const NANOS_PER_MILLI: u128 = 1_000_000;

/// `size` tokens that refill evenly over `refill_time`, plus a burst given
/// once. An operation larger than the bucket goes through when the bucket is
/// full and leaves a debt that the refills pay off first, so its size still
/// counts against the rate.
#[derive(Debug, Clone)]
struct TokenBucket {
    size: u64,
    one_time_burst: u64,
    refill_ns: u128,
    budget: u64,
    debt: u64,
    last_refill: Instant,
}

impl TokenBucket {
    /// `None` for a bucket that limits nothing (size or refill time 0), as
    /// Firecracker reads it.
    fn new(config: &TokenBucketConfig, now: Instant) -> Option<Self> {
        (config.size > 0 && config.refill_time > 0).then(|| TokenBucket {
            size: config.size,
            one_time_burst: config.one_time_burst.unwrap_or(0),
            refill_ns: u128::from(config.refill_time) * NANOS_PER_MILLI,
            budget: config.size,
            debt: 0,
            last_refill: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        if self.budget == self.size && self.debt == 0 {
            // A full bucket banks no time.
            self.last_refill = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last_refill).as_nanos();
        let size = u128::from(self.size);
        let tokens = elapsed.saturating_mul(size) / self.refill_ns;
        if tokens == 0 {
            return;
        }
        // Move on by the time those tokens took, so fractions carry over.
        let spent = tokens.saturating_mul(self.refill_ns) / size;
        self.last_refill += Duration::from_nanos(u64::try_from(spent).unwrap_or(u64::MAX));
        let tokens = u64::try_from(tokens).unwrap_or(u64::MAX);
        let paid = tokens.min(self.debt);
        self.debt -= paid;
        self.budget = self.budget.saturating_add(tokens - paid).min(self.size);
    }

    /// `None` if `tokens` can be taken now; otherwise how long until they can.
    fn wait_for(&mut self, tokens: u64, now: Instant) -> Option<Duration> {
        let rest = tokens.saturating_sub(self.one_time_burst);
        if rest == 0 {
            return None;
        }
        self.refill(now);
        let need = rest.min(self.size);
        if self.debt == 0 && self.budget >= need {
            return None;
        }
        let missing = u128::from(self.debt) + u128::from(need.saturating_sub(self.budget));
        let since_refill = now.saturating_duration_since(self.last_refill).as_nanos();
        let ns = missing
            .saturating_mul(self.refill_ns)
            .div_ceil(u128::from(self.size))
            .saturating_sub(since_refill)
            .max(1);
        Some(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    /// Takes `tokens`, which [`Self::wait_for`] said are there.
    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.one_time_burst);
        self.one_time_burst -= from_burst;
        let rest = tokens - from_burst;
        let from_budget = rest.min(self.budget);
        self.budget -= from_budget;
        self.debt = self.debt.saturating_add(rest - from_budget);
    }
}

/// A device's limiter: its buckets and the timer that wakes the device
/// once a refused operation could go.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    waiting: bool,
}

/// A limiter shared by its device and the controller's `PATCH`es.
pub type SharedRateLimiter = Arc<Mutex<RateLimiter>>;

impl RateLimiter {
    /// A limiter with `config`'s buckets; with none it limits nothing, but
    /// keeps its timer so that a `PATCH` can limit it later.
    pub fn new(config: Option<&RateLimiterConfig>) -> std::io::Result<Self> {
        let now = Instant::now();
        let config = config.copied().unwrap_or_default();
        Ok(RateLimiter {
            bandwidth: config.bandwidth.and_then(|b| TokenBucket::new(&b, now)),
            ops: config.ops.and_then(|b| TokenBucket::new(&b, now)),
            timer: nonblocking_timer()?,
            waiting: false,
        })
    }

    pub fn shared(config: Option<&RateLimiterConfig>) -> std::io::Result<SharedRateLimiter> {
        Ok(Arc::new(Mutex::new(Self::new(config)?)))
    }

    /// Whether one operation moving `bytes` may go now. If not, nothing is
    /// taken and the timer is set for when it could go; until it fires
    /// every operation is refused, so the device need not ask again.
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.bandwidth.is_none() && self.ops.is_none() {
            return true;
        }
        if self.waiting {
            return false;
        }
        let now = Instant::now();
        let wait = [(&mut self.ops, 1), (&mut self.bandwidth, bytes)]
            .into_iter()
            .filter_map(|(bucket, tokens)| bucket.as_mut()?.wait_for(tokens, now))
            .max();
        if let Some(wait) = wait {
            self.arm(wait);
            return false;
        }
        if let Some(ops) = &mut self.ops {
            ops.take(1);
        }
        if let Some(bandwidth) = &mut self.bandwidth {
            bandwidth.take(bytes);
        }
        true
    }

    /// Whether the device waits for the timer.
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// The timer the event loop watches for the device.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// The timer fired: the device may try again.
    pub fn on_timer(&mut self) {
        // Non-blocking: a timer re-armed since it fired has nothing to read.
        let _ = self.timer.wait();
        self.waiting = false;
    }

    /// Applies a `PATCH`: each bucket `update` names replaces the current one
    /// (a bucket that limits nothing removes it), a bucket it omits stays.
    /// A device waiting is woken at once to try under the new limits.
    pub fn update(&mut self, update: &RateLimiterConfig) {
        let now = Instant::now();
        if let Some(bandwidth) = &update.bandwidth {
            self.bandwidth = TokenBucket::new(bandwidth, now);
        }
        if let Some(ops) = &update.ops {
            self.ops = TokenBucket::new(ops, now);
        }
        if self.waiting {
            self.arm(Duration::from_nanos(1));
        }
    }

    fn arm(&mut self, wait: Duration) {
        match self.timer.reset(wait, None) {
            Ok(()) => self.waiting = true,
            // Without a timer nothing would wake the device: let it go.
            Err(e) => log::warn!("rate limiter: cannot set its timer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

    use super::*;

    fn bucket(size: u64, one_time_burst: u64, refill_time: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: Some(one_time_burst),
            refill_time,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_bucket_refills_at_its_rate_and_holds_at_most_its_size() {
        let t0 = Instant::now();
        // 1000 tokens per 100 ms.
        let mut b = TokenBucket::new(&bucket(1000, 0, 100), t0).unwrap();
        assert_eq!(b.wait_for(1000, t0), None);
        b.take(1000);
        assert_eq!(b.wait_for(1, t0), Some(Duration::from_micros(100)));
        assert_eq!(b.wait_for(500, t0), Some(ms(50)));
        assert_eq!(b.wait_for(500, t0 + ms(20)), Some(ms(30)));
        assert_eq!(b.wait_for(500, t0 + ms(50)), None);
        b.take(500);
        // Idle for a second: full again, but no fuller.
        assert_eq!(b.wait_for(1000, t0 + ms(1050)), None);
        b.take(1000);
        assert_eq!(
            b.wait_for(1, t0 + ms(1050)),
            Some(Duration::from_micros(100))
        );
    }

    #[test]
    fn fractions_of_a_token_are_not_lost() {
        let t0 = Instant::now();
        // 3 tokens per 10 ms: one every 3.33 ms.
        let mut b = TokenBucket::new(&bucket(3, 0, 10), t0).unwrap();
        b.take(3);
        let mut taken = 0;
        for step in 1..=300u64 {
            let now = t0 + Duration::from_micros(step * 1000);
            while b.wait_for(1, now).is_none() {
                b.take(1);
                taken += 1;
            }
        }
        // 300 ms at 300 tokens per second.
        assert_eq!(taken, 90);
    }

    #[test]
    fn the_one_time_burst_comes_first_and_never_comes_back() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, 400, 1000), t0).unwrap();
        assert_eq!(b.wait_for(500, t0), None);
        b.take(500);
        assert_eq!(b.wait_for(1, t0), Some(ms(10)));
        assert_eq!(b.wait_for(100, t0 + ms(5000)), None);
        b.take(100);
        assert!(b.wait_for(1, t0 + ms(5000)).is_some());
    }

    #[test]
    fn an_operation_larger_than_the_bucket_waits_for_a_full_bucket_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, 0, 100), t0).unwrap();
        b.take(50);
        // Needs a full bucket: 50 more tokens, 50 ms.
        assert_eq!(b.wait_for(250, t0), Some(ms(50)));
        assert_eq!(b.wait_for(250, t0 + ms(50)), None);
        b.take(250);
        // 150 tokens of debt, then 10 for the next: 160 ms.
        assert_eq!(b.wait_for(10, t0 + ms(50)), Some(ms(160)));
        assert_eq!(b.wait_for(10, t0 + ms(210)), None);
    }

    #[test]
    fn a_bucket_of_size_or_refill_time_zero_limits_nothing() {
        let t0 = Instant::now();
        assert!(TokenBucket::new(&bucket(0, 0, 100), t0).is_none());
        assert!(TokenBucket::new(&bucket(100, 0, 0), t0).is_none());
        let mut unlimited = RateLimiter::new(Some(&RateLimiterConfig {
            bandwidth: Some(bucket(0, 0, 100)),
            ops: None,
        }))
        .unwrap();
        assert!((0..10_000).all(|_| unlimited.consume(1 << 30)));
    }

    #[test]
    fn a_refused_operation_takes_nothing_and_sets_the_timer() {
        let config = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 0, 10_000)),
            ops: Some(bucket(2, 0, 10_000)),
        };
        let mut limiter = RateLimiter::new(Some(&config)).unwrap();
        assert!(limiter.consume(600));
        // Bandwidth refuses: the op bucket keeps its token.
        assert!(!limiter.consume(600));
        assert!(limiter.is_waiting());
        assert!(limiter.timer.is_armed().unwrap());
        // Until the timer fires, everything is refused.
        assert!(!limiter.consume(1));
        limiter.on_timer();
        assert!(limiter.consume(400));
        // Both op tokens are gone now.
        assert!(!limiter.consume(0));
    }

    #[test]
    fn a_patch_replaces_the_buckets_it_names_and_wakes_a_waiting_device() {
        let config = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 0, 60_000)),
            ops: Some(bucket(1, 0, 60_000)),
        };
        let mut limiter = RateLimiter::new(Some(&config)).unwrap();
        assert!(limiter.consume(10));
        assert!(!limiter.consume(10));
        let epoll = Epoll::new().unwrap();
        let event = EpollEvent::new(EventSet::IN, 0);
        epoll
            .ctl(ControlOperation::Add, limiter.timer_fd(), event)
            .unwrap();
        let mut events = [EpollEvent::default(); 1];
        assert_eq!(epoll.wait(0, &mut events).unwrap(), 0);
        // Lifting the op limit keeps the bandwidth one.
        limiter.update(&RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(0, 0, 0)),
        });
        assert_eq!(epoll.wait(1000, &mut events).unwrap(), 1);
        limiter.on_timer();
        assert!(limiter.consume(900));
        assert!(!limiter.consume(900));
    }
}
