//! Delivery, off the sampling path: one thread per channel takes its notifications in order
//! and tries each up to `attempts` times, waiting between tries with exponential backoff and
//! jitter, each try bounded by the per-attempt timeout. Once the end of a run sets a deadline
//! (`flush_timeout`), nothing is tried or waited for past it: what is left is undelivered.
//!
//! Every attempt is written down ([`Delivery`]) for the report.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{channels::Channel, config::RetryConfig, policy::Alert};

/// One notification to one channel, and how its delivery went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The channel, by name.
    pub channel: String,
    /// What was sent.
    pub alert: Alert,
    /// Each try, in order.
    pub attempts: Vec<Attempt>,
    /// Whether a try succeeded.
    pub delivered: bool,
}

/// One try.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it began, ms since the run started.
    pub at_ms: u64,
    /// How long it took, ms.
    pub latency_ms: f64,
    /// `delivered`, or why not (never holding a secret).
    pub outcome: String,
}

/// The shared record of deliveries, and the deadline the end of a run sets.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every delivery, in the order notifications were made.
    pub deliveries: Vec<Delivery>,
    /// Past this, nothing more is tried.
    pub deadline: Option<Instant>,
}

/// The wait before try `n + 1` after `n` failed tries (n ≥ 1): `backoff × 2^(n−1)`, at most
/// `max_backoff`, times `jitter` (0.8 to 1.2, drawn by the caller).
pub fn backoff(retry: &RetryConfig, failed: u32, jitter: f64) -> Duration {
    let doubled = retry
        .backoff
        .saturating_mul(1u32 << failed.saturating_sub(1).min(20));
    doubled
        .min(retry.max_backoff)
        .mul_f64(jitter.clamp(0.8, 1.2))
}

/// Starts `channel`'s thread: it delivers each entry of `ledger` whose index it is sent, and
/// says on `done` when its queue is closed and empty.
pub fn spawn(
    channel: Channel,
    retry: RetryConfig,
    ledger: Arc<Mutex<Ledger>>,
    started: Instant,
    done: mpsc::Sender<()>,
) -> std::io::Result<mpsc::Sender<usize>> {
    let (queue, jobs) = mpsc::channel::<usize>();
    std::thread::Builder::new()
        .name("cleanroom-alerts".into())
        .spawn(move || {
            while let Ok(index) = jobs.recv() {
                deliver(&channel, &retry, &ledger, started, index);
            }
            let _ = done.send(());
        })?;
    Ok(queue)
}

/// Tries entry `index` of `ledger` until delivered, out of tries, or past the deadline.
fn deliver(
    channel: &Channel,
    retry: &RetryConfig,
    ledger: &Mutex<Ledger>,
    started: Instant,
    index: usize,
) {
    let deadline = || ledger.lock().map_or(None, |l| l.deadline);
    let Some(alert) = ledger
        .lock()
        .ok()
        .and_then(|l| l.deliveries.get(index).map(|d| d.alert.clone()))
    else {
        return;
    };
    for tried in 0..retry.attempts {
        if tried > 0 {
            let wait = backoff(retry, tried, 0.8 + fastrand::f64() * 0.4);
            if !sleep_until_deadline(wait, deadline) {
                return;
            }
        }
        let mut timeout = retry.timeout;
        if let Some(d) = deadline() {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            timeout = timeout.min(left);
        }
        let at = Instant::now();
        let result = channel.send(&alert, timeout);
        let attempt = Attempt {
            at_ms: at.duration_since(started).as_millis() as u64,
            latency_ms: at.elapsed().as_secs_f64() * 1e3,
            outcome: match &result {
                Ok(()) => "delivered".into(),
                Err(e) => e.clone(),
            },
        };
        if let Ok(mut l) = ledger.lock()
            && let Some(d) = l.deliveries.get_mut(index)
        {
            d.attempts.push(attempt);
            d.delivered = result.is_ok();
        }
        if result.is_ok() {
            return;
        }
    }
}

/// Sleeps `wait`, in slices, but not past the deadline `deadline()` gives (it may be set
/// meanwhile); false if the deadline came first.
fn sleep_until_deadline(wait: Duration, deadline: impl Fn() -> Option<Instant>) -> bool {
    let until = Instant::now() + wait;
    loop {
        let now = Instant::now();
        if deadline().is_some_and(|d| now >= d || until > d && now + SLICE > d) {
            return false;
        }
        if now >= until {
            return true;
        }
        std::thread::sleep(SLICE.min(until - now));
    }
}

/// How often a waiting delivery looks at the deadline.
const SLICE: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_jitter_kept_within_a_fifth() {
        let r = RetryConfig {
            attempts: 6,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (1..=5).map(|n| backoff(&r, n, 1.0).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
        assert_eq!(backoff(&r, 1, 1.2).as_millis(), 120);
        assert_eq!(backoff(&r, 1, 3.0).as_millis(), 120);
    }

    #[test]
    fn a_wait_ends_at_the_deadline() {
        let started = Instant::now();
        let d = started + Duration::from_millis(100);
        assert!(!sleep_until_deadline(Duration::from_secs(5), || Some(d)));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(sleep_until_deadline(Duration::from_millis(30), || None));
    }
}
