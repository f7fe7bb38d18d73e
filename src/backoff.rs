//! The one backoff policy of pitr: exponential delays with jitter, used by
//! every retry and restart loop (destination requests, scheduled base
//! backups, alert deliveries, the WAL stream's reconnects, the spool's
//! catch-up, the supervisor's restarts). The delays come from `backon`;
//! this module only names the policy, so each loop says how patient it is
//! and nothing else.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// How a failing operation is tried again: the first delay, doubling up to
/// the longest, each with jitter (up to as much again, so loops that failed
/// together do not retry together), at most `max_retries` times (`None`:
/// for as long as it takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (jitter added).
    pub min_delay: Duration,
    /// Longest delay between two tries (jitter added).
    pub max_delay: Duration,
    /// Retries after the first try; `None`: no limit.
    pub max_retries: Option<usize>,
}

impl Backoff {
    /// Retries without limit, from `min_delay` doubling to `max_delay`.
    pub const fn forever(min_delay: Duration, max_delay: Duration) -> Backoff {
        Backoff {
            min_delay,
            max_delay,
            max_retries: None,
        }
    }

    /// The same delays, at most `retries` retries.
    pub const fn times(self, retries: usize) -> Backoff {
        Backoff {
            max_retries: Some(retries),
            ..self
        }
    }

    /// The policy as `backon` takes it, for `Retryable::retry`.
    pub fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter();
        match self.max_retries {
            Some(n) => b.with_max_times(n),
            None => b.without_max_times(),
        }
    }

    /// The delays one at a time, for loops that decide themselves when to
    /// wait (and when to start over: [`Delays::reset`]).
    pub fn delays(&self) -> Delays {
        Delays {
            policy: *self,
            inner: self.builder().build(),
        }
    }
}

/// The wait an HTTP answer's `Retry-After` asks for, in the delay-seconds
/// form rate limiters send (an HTTP date is not read: `None`). Retry loops
/// wait at least this long, so the next try is not refused again.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// An error and its causes on one line: what a retry loop reports of a
/// failed request (reqwest's own `Display` leaves the causes out).
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// The delays of a [`Backoff`], in order.
#[derive(Debug)]
pub struct Delays {
    policy: Backoff,
    inner: ExponentialBackoff,
}

impl Delays {
    /// The next delay; `None` once the retries are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.inner.next()
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.inner = self.policy.builder().build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap_and_reset() {
        let policy = Backoff::forever(Duration::from_secs(1), Duration::from_secs(8));
        for _ in 0..100 {
            let mut d = policy.delays();
            let got: Vec<Duration> = (0..6).filter_map(|_| d.next_delay()).collect();
            let bases = [1, 2, 4, 8, 8, 8];
            assert_eq!(got.len(), bases.len(), "forever never runs out");
            for (delay, base) in got.iter().zip(bases) {
                let base = Duration::from_secs(base);
                assert!(
                    *delay >= base && *delay <= base * 2,
                    "{delay:?} outside [{base:?}, 2 × {base:?}]: {got:?}"
                );
            }
            d.reset();
            let first = d.next_delay().expect("a delay after reset");
            assert!(first <= Duration::from_secs(2), "{first:?}");
        }
    }

    #[test]
    fn a_limited_policy_runs_out() {
        let policy = Backoff::forever(Duration::from_millis(1), Duration::from_millis(4)).times(3);
        let mut d = policy.delays();
        assert!((0..3).all(|_| d.next_delay().is_some()));
        assert_eq!(d.next_delay(), None);
    }
}
