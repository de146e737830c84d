//! Alerts that reach people: a run's events (thresholds breached and cleared, OOM kills, the
//! time limit) and its verdict (SLOs failed, regressions against the baseline) sent to the
//! channels of `[alerts]` — webhooks, Slack, SMS gateways, programs — while the run goes on.
//!
//! The data path: an [`Event`] → the [`policy::Policy`] (dedup, routes, rate limits,
//! escalation; pure) → a notification queued for each of its channels → that channel's
//! thread ([`deliver`]) tries it ([`channels`]) with retries, writing each try down → at the
//! end, [`Alerting::finish`] waits at most `flush_timeout` and gives the report its
//! [`AlertsReport`].
//!
//! Raising an alert only takes a lock and queues: a slow or dead receiver never delays the
//! samples.

pub mod channels;
pub mod config;
pub mod deliver;
pub mod policy;

use std::{
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

pub use self::config::AlertsConfig;
use self::{
    channels::{Channel, ChannelError},
    config::ChannelKind,
    deliver::{Delivery, Ledger},
    policy::{Notification, Policy, Raised},
};
use crate::judge::verdict::Event;

/// The alerts of a run: what was sent where, and how each delivery went (the seed's "alert
/// effectiveness").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertsReport {
    /// Each channel and what it took.
    pub channels: Vec<ChannelSummary>,
    /// Each notification to each channel, with every try.
    pub deliveries: Vec<Delivery>,
    /// Deliveries that did not succeed (out of tries, or cut by the flush timeout).
    pub undelivered: u32,
    /// How long the end of the run waited for deliveries, ms.
    pub flush_ms: u64,
}

impl AlertsReport {
    /// One line for the summary: `3 notifications delivered, 1 not (stuck); 2 suppressed`.
    pub fn line(&self) -> String {
        let delivered = self.deliveries.len() as u32 - self.undelivered;
        let mut line = format!("{delivered} notification(s) delivered");
        if self.undelivered > 0 {
            let failing: Vec<&str> = self
                .channels
                .iter()
                .filter(|c| c.failed > 0)
                .map(|c| c.name.as_str())
                .collect();
            line += &format!(", {} not ({})", self.undelivered, failing.join(", "));
        }
        let suppressed: u64 = self.channels.iter().map(|c| c.suppressed).sum();
        if suppressed > 0 {
            line += &format!("; {suppressed} held back by rate limits");
        }
        line
    }
}

/// One channel's share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelSummary {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ChannelKind,
    /// Notifications delivered.
    pub delivered: u32,
    /// Notifications not delivered.
    pub failed: u32,
    /// Alerts its rate limit held back (never sent).
    pub suppressed: u64,
}

/// A run's alerting, shared by whoever raises alerts (a cheap clone of one handle).
#[derive(Clone)]
pub struct Alerting(Arc<Inner>);

struct Inner {
    policy: Mutex<Policy>,
    queues: Mutex<Vec<mpsc::Sender<usize>>>,
    done: Mutex<mpsc::Receiver<()>>,
    ledger: Arc<Mutex<Ledger>>,
    channels: Vec<(String, ChannelKind)>,
    started: Instant,
    flush_timeout: Duration,
}

impl std::fmt::Debug for Alerting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerting")
            .field("channels", &self.0.channels)
            .finish_non_exhaustive()
    }
}

/// Why alerting could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// A channel could not be made ready.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A delivery thread could not be started.
    #[error("starting an alert delivery thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl Alerting {
    /// Starts the channels of a checked `config`; `None` when it has none.
    pub fn start(config: &AlertsConfig) -> Result<Option<Self>, AlertsError> {
        if config.channels.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (done_tx, done) = mpsc::channel();
        let mut queues = Vec::new();
        for c in &config.channels {
            let channel = Channel::new(c.clone())?;
            queues.push(deliver::spawn(
                channel,
                config.retry.clone(),
                ledger.clone(),
                started,
                done_tx.clone(),
            )?);
        }
        Ok(Some(Self(Arc::new(Inner {
            policy: Mutex::new(Policy::new(config)),
            queues: Mutex::new(queues),
            done: Mutex::new(done),
            ledger,
            channels: config
                .channels
                .iter()
                .map(|c| (c.name.get_ref().clone(), c.kind))
                .collect(),
            started,
            flush_timeout: config.flush_timeout,
        }))))
    }

    /// An event of `target` (the run's name, a watched cgroup): the notifications it makes
    /// are queued.
    pub fn raise(&self, target: &str, event: &Event) {
        let now = self.now_ns();
        let made = self.with_policy(|p| p.on_event(now, target, event));
        self.queue(made);
    }

    /// An alert of the run's end (an SLO failed, a regression).
    pub fn raise_end(&self, alert: Raised) {
        let now = self.now_ns();
        let made = self.with_policy(|p| p.on_end(now, alert));
        self.queue(made);
    }

    /// Escalations now due; called as the run goes (at each sample).
    pub fn tick(&self) {
        let now = self.now_ns();
        let made = self.with_policy(|p| p.due(now));
        self.queue(made);
    }

    /// The watch of `target` ended at `ended_t_ns` (ns since it began): its alerts still
    /// firing are resolved, and what its alerts became so far is returned (the agent, which
    /// goes on, waits for nothing: a delivery under way shows with the tries made so far).
    pub fn end_target(&self, target: &str, ended_t_ns: u64) -> AlertsReport {
        let resolves = self.with_policy(|p| p.end_target(target, ended_t_ns));
        self.queue(resolves);
        let deliveries: Vec<Delivery> = self
            .0
            .ledger
            .lock()
            .map(|l| {
                l.deliveries
                    .iter()
                    .filter(|d| d.alert.target == target)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        self.summarise(deliveries, 0)
    }

    /// Ends alerting for a run that ended at `ended_t_ns` (ns since its command started): alerts
    /// still firing are resolved (the run is over), then the end waits at most
    /// `flush_timeout` for deliveries under way and says what happened to each. Later calls
    /// find nothing more to send or wait for.
    pub fn finish(&self, ended_t_ns: u64) -> AlertsReport {
        let resolves = self.with_policy(|p| p.end(ended_t_ns));
        self.queue(resolves);
        let began = Instant::now();
        let deadline = began + self.0.flush_timeout;
        if let Ok(mut l) = self.0.ledger.lock() {
            l.deadline = Some(deadline);
        }
        // Closing the queues lets each thread end once it has tried what it holds.
        let threads = self.0.queues.lock().map_or(0, |mut q| q.drain(..).count());
        if let Ok(done) = self.0.done.lock() {
            for _ in 0..threads {
                // A try under way when the deadline comes is cut by its own timeout, bounded
                // by what was left: a little grace for it to write itself down.
                let left = (deadline + Duration::from_millis(200))
                    .saturating_duration_since(Instant::now());
                if done.recv_timeout(left).is_err() {
                    break;
                }
            }
        }
        let deliveries = self
            .0
            .ledger
            .lock()
            .map(|l| l.deliveries.clone())
            .unwrap_or_default();
        self.summarise(deliveries, began.elapsed().as_millis() as u64)
    }

    /// The report of `deliveries`, with each channel's share (its suppressed count is of the
    /// whole alerting's).
    fn summarise(&self, deliveries: Vec<Delivery>, flush_ms: u64) -> AlertsReport {
        let suppressed = self.with_policy(|p| p.suppressed());
        let channels = self
            .0
            .channels
            .iter()
            .enumerate()
            .map(|(i, (name, kind))| {
                let mine = deliveries.iter().filter(|d| &d.channel == name);
                let delivered = mine.clone().filter(|d| d.delivered).count() as u32;
                ChannelSummary {
                    name: name.clone(),
                    kind: *kind,
                    delivered,
                    failed: mine.count() as u32 - delivered,
                    suppressed: suppressed.get(i).copied().unwrap_or(0),
                }
            })
            .collect();
        AlertsReport {
            channels,
            undelivered: deliveries.iter().filter(|d| !d.delivered).count() as u32,
            deliveries,
            flush_ms,
        }
    }

    fn now_ns(&self) -> u64 {
        self.0.started.elapsed().as_nanos() as u64
    }

    fn with_policy<T: Default>(&self, f: impl FnOnce(&mut Policy) -> T) -> T {
        self.0
            .policy
            .lock()
            .map(|mut p| f(&mut p))
            .unwrap_or_default()
    }

    /// Writes each notification down once per channel and hands it to that channel's thread.
    fn queue(&self, made: Vec<Notification>) {
        if made.is_empty() {
            return;
        }
        let (Ok(mut ledger), Ok(queues)) = (self.0.ledger.lock(), self.0.queues.lock()) else {
            return;
        };
        for n in made {
            for c in n.channels {
                let (Some((name, _)), Some(queue)) = (self.0.channels.get(c.0), queues.get(c.0))
                else {
                    continue;
                };
                ledger.deliveries.push(Delivery {
                    channel: name.clone(),
                    alert: n.alert.clone(),
                    attempts: Vec::new(),
                    delivered: false,
                });
                let _ = queue.send(ledger.deliveries.len() - 1);
            }
        }
    }
}
