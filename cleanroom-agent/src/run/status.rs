//! What `cleanroom run` says on stderr while the command runs: each event as it is raised
//! (thresholds breached or cleared, the time limit, OOM kills), and on a terminal a live status
//! line drawn from the session's latest interval.
//!
//! The measuring session prints nothing; this is the run front end's view of it. Events go to
//! the run's alert channels too ([`crate::alerts`]), queued, as they are said.

use std::io::{IsTerminal as _, Write as _};

use crate::{
    alerts::Alerting,
    judge::verdict::{Event, EventKind},
    measure::model::SeriesPoint,
    measure::session::Tick,
    units::{human_bytes, human_duration_ns},
};

/// The run's stderr while the command runs.
#[derive(Debug)]
pub struct Console {
    status_line: bool,
    line_shown: bool,
    /// Where events are alerted, and the name they give the run.
    alerts: Option<(Alerting, String)>,
}

impl Console {
    /// `status_line`: draw a live line on stderr (only when it is a terminal).
    pub fn new(status_line: bool) -> Self {
        Self {
            status_line: status_line && std::io::stderr().is_terminal(),
            line_shown: false,
            alerts: None,
        }
    }

    /// Alerts each event to `alerts`, naming the run `target`.
    pub fn alert(&mut self, alerts: Alerting, target: String) {
        self.alerts = Some((alerts, target));
    }

    /// Says a tick's events, then shows its interval on the status line.
    pub fn tick(&mut self, tick: &Tick) {
        for event in &tick.events {
            self.event(event);
        }
        if let Some((alerts, _)) = &self.alerts {
            alerts.tick();
        }
        if let Some(point) = &tick.point {
            self.draw(point);
        }
    }

    /// Says an event on stderr.
    pub fn event(&mut self, event: &Event) {
        if let Some((alerts, target)) = &self.alerts {
            alerts.raise(target, event);
        }
        self.clear_line();
        match event.kind {
            EventKind::ThresholdBreached => {
                eprintln!("cleanroom: threshold breached: {}", event.message);
            }
            EventKind::ThresholdCleared => {
                eprintln!("cleanroom: threshold cleared: {}", event.message);
            }
            _ => eprintln!("cleanroom: {}", event.message),
        }
    }

    /// Draws the status line for interval `p`, on a terminal.
    fn draw(&mut self, p: &SeriesPoint) {
        if !self.status_line {
            return;
        }
        let line = status_line(p);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.line_shown = true;
    }

    /// Erases the status line, if one is shown.
    pub fn clear_line(&mut self) {
        if self.line_shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.line_shown = false;
        }
    }
}

/// Pure: the status line for one interval.
fn status_line(p: &SeriesPoint) -> String {
    let v = |k: &str| p.values.get(k).copied().unwrap_or(0.0);
    let rate = |k: &str| format!("{}/s", human_bytes(v(k) as u64));
    format!(
        "{} | CPU {:.0}% | mem {} | disk r {} w {} | net rx {} tx {}",
        human_duration_ns(p.t_ns),
        v("cpu_percent"),
        p.values
            .get("memory_current_bytes")
            .map_or_else(|| "?".into(), |m| human_bytes(*m as u64)),
        rate("block_read_bytes_per_sec"),
        rate("io_write_bytes_per_sec"),
        rate("net_rx_bytes_per_sec"),
        rate("net_tx_bytes_per_sec"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_shows_rates_and_an_unknown_memory_as_a_question_mark() {
        let point = SeriesPoint {
            t_ns: 2_500_000_000,
            interval_ns: 1_000_000_000,
            values: [
                ("cpu_percent".to_owned(), 150.4),
                ("io_write_bytes_per_sec".to_owned(), 2048.0),
            ]
            .into(),
            min: Default::default(),
            max: Default::default(),
        };
        assert_eq!(
            status_line(&point),
            "2.500 s | CPU 150% | mem ? | disk r 0 B/s w 2.0 KiB/s | net rx 0 B/s tx 0 B/s"
        );
    }
}
