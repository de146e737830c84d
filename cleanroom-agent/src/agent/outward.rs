//! What leaves the machine about the watched cgroups: their alerts ([`Alerting`]), their
//! finished reports (`[[distribute]]`, and `[export.otlp]` each as a run's metrics) and, every
//! `[export.otlp] interval`, their figures so far. None waits on the sampling path: alerts are
//! queued to their channels' threads; finished reports to one sending thread, which tries each
//! destination once (within its timeout) and then lists how each went in the stored run; the
//! periodic figures go from a thread of their own, skipped while the last is under way. When
//! the agent stops, [`Outward::finish`] waits for both, bounded: the alerts' `flush_timeout`,
//! and for reports the longest destination timeout for each report still queued, at most
//! [`MAX_FINISH`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use super::board::Board;
use crate::{
    alerts::Alerting,
    output::{distribute::Destination, otlp::OtlpConfig, report::Report},
};

/// Reports waiting to be sent at most; more are not distributed (said in the log), so a dead
/// destination cannot make the agent hold every report in memory.
const MAX_QUEUED: usize = 256;

/// The longest the agent's stop waits for reports still to be sent.
pub const MAX_FINISH: Duration = Duration::from_secs(120);

/// A finished watch's report to send: what the log calls it, its run id in the store.
struct Parcel {
    name: String,
    stored_as: Option<i64>,
    report: Report,
}

/// The sending thread and what it still has to do.
struct Sender {
    queue: mpsc::SyncSender<Parcel>,
    pending: Arc<AtomicUsize>,
    done: mpsc::Receiver<()>,
    longest: Duration,
}

/// The agent's alerts, its reports' distribution and its metrics' export.
pub struct Outward {
    alerting: Option<Alerting>,
    sender: Option<Sender>,
    otlp: Option<Arc<OtlpConfig>>,
    /// A periodic export is under way.
    exporting: Arc<std::sync::atomic::AtomicBool>,
    /// The last periodic export failed (said once, until one succeeds).
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Outward {
    /// Alerts through `alerting`; reports sent to `destinations` (none: not sent), stored runs
    /// updated on `board`.
    pub fn new(
        alerting: Option<Alerting>,
        destinations: Vec<Destination>,
        otlp: Option<OtlpConfig>,
        board: &Arc<Board>,
    ) -> Self {
        let otlp = otlp.map(Arc::new);
        let sender = (!destinations.is_empty() || otlp.is_some())
            .then(|| start(destinations, otlp.clone(), Arc::clone(board)));
        Self {
            alerting,
            sender,
            otlp,
            exporting: Arc::default(),
            failing: Arc::default(),
        }
    }

    /// How often the watched cgroups' figures are exported, if they are.
    pub fn export_interval(&self) -> Option<Duration> {
        self.otlp.as_ref().map(|o| o.interval())
    }

    /// Sends the watched cgroups' figures now, from a thread of its own; skipped while the
    /// last send is under way. A failure is said once, until a send succeeds.
    pub fn export_figures(&self, board: &Board) {
        let Some(otlp) = &self.otlp else {
            return;
        };
        if self.exporting.swap(true, Ordering::SeqCst) {
            return;
        }
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let request = crate::output::otlp::cgroups_request(
            &board.cgroup_snapshots(),
            &board.host().hostname,
            &otlp.service_name,
            now_ns,
        );
        let (otlp, exporting, failing) = (
            Arc::clone(otlp),
            Arc::clone(&self.exporting),
            Arc::clone(&self.failing),
        );
        let spawned = thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                match crate::output::otlp::send(&otlp, &request, 1) {
                    Ok(()) => {
                        if failing.swap(false, Ordering::SeqCst) {
                            log::info!("the OTLP collector takes the figures again");
                        }
                    }
                    Err(e) => {
                        if !failing.swap(true, Ordering::SeqCst) {
                            log::warn!(
                                "the watched cgroups' figures were not exported (said once \
                                 until it works again): {e}"
                            );
                        }
                    }
                }
                exporting.store(false, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.exporting.store(false, Ordering::SeqCst);
        }
    }

    /// Where alerts go, if anywhere.
    pub fn alerting(&self) -> Option<&Alerting> {
        self.alerting.as_ref()
    }

    /// Queues a finished watch's report (`stored_as`: its run in the store) for every
    /// destination; returns at once.
    pub fn distribute(&self, name: &str, stored_as: Option<i64>, report: &Report) {
        let Some(sender) = &self.sender else {
            return;
        };
        let parcel = Parcel {
            name: name.to_owned(),
            stored_as,
            report: report.clone(),
        };
        sender.pending.fetch_add(1, Ordering::SeqCst);
        if sender.queue.try_send(parcel).is_err() {
            sender.pending.fetch_sub(1, Ordering::SeqCst);
            log::error!(
                "{name}: report not distributed: {MAX_QUEUED} reports are already waiting for \
                 their destinations"
            );
        }
    }

    /// The agent stops: waits for deliveries under way, bounded (see the module's doc), and
    /// says what was not delivered.
    pub fn finish(self) {
        if let Some(alerting) = &self.alerting {
            let flushed = alerting.finish(0);
            if flushed.undelivered > 0 {
                log::warn!(
                    "{} alert notification(s) not delivered",
                    flushed.undelivered
                );
            }
        }
        let Some(sender) = self.sender else {
            return;
        };
        let pending = Arc::clone(&sender.pending);
        let queued = pending.load(Ordering::SeqCst);
        let bound = sender
            .longest
            .saturating_mul(u32::try_from(queued).unwrap_or(u32::MAX))
            .min(MAX_FINISH);
        drop(sender.queue);
        let began = Instant::now();
        if queued > 0 {
            log::info!(
                "sending {queued} report(s) to their destinations (at most {})",
                humantime::format_duration(bound)
            );
        }
        match sender.done.recv_timeout(bound + Duration::from_secs(1)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => log::error!(
                "{} report(s) not distributed: the agent stopped after waiting {}",
                pending.load(Ordering::SeqCst),
                humantime::format_duration(began.elapsed())
            ),
        }
    }
}

/// Starts the sending thread.
fn start(
    destinations: Vec<Destination>,
    otlp: Option<Arc<OtlpConfig>>,
    board: Arc<Board>,
) -> Sender {
    let (queue, parcels) = mpsc::sync_channel::<Parcel>(MAX_QUEUED);
    let (finished, done) = mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let longest = destinations
        .iter()
        .map(Destination::timeout)
        .chain(otlp.as_ref().map(|o| o.timeout * o.attempts))
        .max()
        .unwrap_or_default();
    let left = Arc::clone(&pending);
    thread::Builder::new()
        .name("distribute".into())
        .spawn(move || {
            for parcel in parcels {
                if let Some(otlp) = &otlp
                    && let Err(e) = crate::output::otlp::export(otlp, &parcel.report)
                {
                    log::warn!("{}: the run's metrics were not exported: {e}", parcel.name);
                }
                if !destinations.is_empty() {
                    send(parcel, &destinations, &board);
                }
                left.fetch_sub(1, Ordering::SeqCst);
            }
            let _ = finished.send(());
        })
        .expect("spawning the distribution thread");
    Sender {
        queue,
        pending,
        done,
        longest,
    }
}

/// Sends one report to every destination, then lists how each went in its stored run.
fn send(parcel: Parcel, destinations: &[Destination], board: &Board) {
    let Parcel {
        name,
        stored_as,
        mut report,
    } = parcel;
    let sent: Vec<_> = destinations.iter().map(|d| d.send(&report)).collect();
    for s in sent.iter().filter(|s| !s.delivered) {
        log::error!(
            "{name}: report not distributed ({} to {}): {}",
            s.kind.as_str(),
            s.to,
            s.outcome
        );
    }
    let delivered = sent.iter().filter(|s| s.delivered).count();
    report.distribution = sent;
    let Some(id) = stored_as else {
        log::info!(
            "{name}: report distributed to {delivered} of {} destination(s)",
            destinations.len()
        );
        return;
    };
    match board.replace_report(id, &report) {
        Ok(()) => log::info!(
            "{name}: run {id} distributed to {delivered} of {} destination(s)",
            destinations.len()
        ),
        Err(e) => log::error!("{name}: run {id}'s distribution not recorded in the store: {e}"),
    }
}
