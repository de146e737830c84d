//! Which notifications a run's events make, and to which channels: pure, no I/O and no clock
//! of its own (the caller gives the time).
//!
//! - **Once per breach, once when it clears.** An alert is keyed by (target, rule): a breach of
//!   a rule already firing for that target sends nothing more; its clearing sends one
//!   "resolved" to every channel the alert went to, and only to those.
//! - **Routes.** An alert goes to the channels of every route whose filters (kinds, types,
//!   severities) it passes; with no route, to every channel.
//! - **Rate limit.** A channel with `max_per_minute` takes that many alerts in any 60 s at most;
//!   an alert beyond is suppressed for that channel (counted, never sent late), and so is its
//!   resolve. Resolves of alerts it took are always sent and are not counted.
//! - **Escalation.** An alert still firing `escalate_after` after it began goes to the route's
//!   `escalate_to` channels too, once ([`Policy::due`]).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::config::{AlertKind, AlertType, AlertsConfig, Severity};
use crate::judge::verdict::{Event, EventKind};

/// A channel, by its place in `[[alerts.channels]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ChannelId(pub usize);

/// An alert's number within the run (its firing and its resolve share it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlertId(pub u64);

/// Whether an alert begins or ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// It began (or, for a one-off such as an OOM kill, happened).
    Firing,
    /// It is over.
    Resolved,
}

/// What a notification says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Its number; a resolve has its alert's.
    pub id: AlertId,
    /// Firing or resolved.
    pub state: AlertState,
    /// What it is about.
    pub kind: AlertKind,
    /// Which resource.
    #[serde(rename = "type")]
    pub alert_type: AlertType,
    /// How urgent.
    pub severity: Severity,
    /// The run (or watched cgroup) it is about.
    pub target: String,
    /// The rule: a threshold's config key, an SLO's name, a metric.
    pub rule: String,
    /// One line for people, with the measured value and the limit.
    pub summary: String,
    /// The value seen, in the metric's base unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// When, ns since the command started.
    pub t_ns: u64,
    /// Sent to a route's next tier: it fired longer than `escalate_after`.
    pub escalated: bool,
    /// A page about it (`alerts.link`, or the agent's page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// An alert and the channels it goes to now.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// The alert.
    pub alert: Alert,
    /// Where it goes.
    pub channels: Vec<ChannelId>,
}

/// A route, resolved to channel ids.
#[derive(Debug)]
struct Route {
    kinds: Vec<AlertKind>,
    types: Vec<AlertType>,
    severities: Vec<Severity>,
    channels: Vec<ChannelId>,
    escalate: Option<(u64, Vec<ChannelId>)>,
}

impl Route {
    fn takes(&self, a: &Alert) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&a.kind))
            && (self.types.is_empty() || self.types.contains(&a.alert_type))
            && (self.severities.is_empty() || self.severities.contains(&a.severity))
    }
}

/// An alert firing now.
#[derive(Debug)]
struct Firing {
    alert: Alert,
    /// When it began (the caller's clock, ns).
    since_ns: u64,
    /// The channels that took it.
    sent_to: Vec<ChannelId>,
    /// Routes (by index) it was escalated on.
    escalated: Vec<usize>,
}

/// The channels' limits and what they suppressed.
#[derive(Debug, Default)]
struct Limiter {
    max_per_minute: u32,
    sent_ns: VecDeque<u64>,
    suppressed: u64,
}

impl Limiter {
    /// Whether an alert may go at `now_ns`; counts it if so, and a suppression if not.
    fn admit(&mut self, now_ns: u64) -> bool {
        if self.max_per_minute == 0 {
            return true;
        }
        while self
            .sent_ns
            .front()
            .is_some_and(|t| now_ns.saturating_sub(*t) >= 60_000_000_000)
        {
            self.sent_ns.pop_front();
        }
        if self.sent_ns.len() >= self.max_per_minute as usize {
            self.suppressed += 1;
            return false;
        }
        self.sent_ns.push_back(now_ns);
        true
    }
}

/// The state of a run's alerts.
#[derive(Debug)]
pub struct Policy {
    routes: Vec<Route>,
    channels: usize,
    limiters: Vec<Limiter>,
    firing: BTreeMap<(String, String), Firing>,
    next_id: u64,
    link: Option<String>,
}

impl Policy {
    /// The policy of a checked `config` ([`AlertsConfig::check`]).
    pub fn new(config: &AlertsConfig) -> Self {
        let id_of = |name: &toml::Spanned<String>| {
            ChannelId(
                config
                    .channels
                    .iter()
                    .position(|c| c.name.get_ref() == name.get_ref())
                    .unwrap_or(0),
            )
        };
        let routes = config
            .routes
            .iter()
            .map(|r| Route {
                kinds: r.events.clone(),
                types: r.types.clone(),
                severities: r.severities.clone(),
                channels: r.channels.iter().map(id_of).collect(),
                escalate: r.escalate_after.map(|after| {
                    (
                        after.as_nanos() as u64,
                        r.escalate_to.iter().map(id_of).collect(),
                    )
                }),
            })
            .collect();
        Self {
            routes,
            channels: config.channels.len(),
            limiters: config
                .channels
                .iter()
                .map(|c| Limiter {
                    max_per_minute: c.max_per_minute,
                    ..Limiter::default()
                })
                .collect(),
            firing: BTreeMap::new(),
            next_id: 0,
            link: config.link.clone(),
        }
    }

    /// The notifications `event` of `target` makes at `now_ns` (the caller's clock).
    pub fn on_event(&mut self, now_ns: u64, target: &str, event: &Event) -> Vec<Notification> {
        let Some((kind, severity)) = classify(&event.kind) else {
            return Vec::new();
        };
        let key = (target.to_owned(), event.subject.clone());
        if event.kind == EventKind::ThresholdCleared {
            let Some(f) = self.firing.remove(&key) else {
                return Vec::new();
            };
            if f.sent_to.is_empty() {
                return Vec::new();
            }
            let alert = Alert {
                state: AlertState::Resolved,
                summary: event.message.clone(),
                value: event.value,
                t_ns: event.t_ns,
                ..f.alert
            };
            return vec![Notification {
                alert,
                channels: f.sent_to,
            }];
        }
        let lasting = event.kind == EventKind::ThresholdBreached;
        if lasting && self.firing.contains_key(&key) {
            return Vec::new();
        }
        let raised = Raised {
            kind,
            severity,
            target: target.to_owned(),
            rule: event.subject.clone(),
            summary: event.message.clone(),
            value: event.value,
            limit: event.limit,
            t_ns: event.t_ns,
        };
        let alert = self.new_alert(raised);
        self.send(now_ns, alert, lasting, key)
    }

    /// A one-off alert of the end of a run (an SLO failed, a regression, anomalies, a
    /// watched cgroup's verdict).
    pub fn on_end(&mut self, now_ns: u64, alert: Raised) -> Vec<Notification> {
        let key = (alert.target.clone(), alert.rule.clone());
        let a = self.new_alert(alert);
        self.send(now_ns, a, false, key)
    }

    /// A new alert, firing, with the next number.
    fn new_alert(&mut self, raised: Raised) -> Alert {
        self.next_id += 1;
        Alert {
            id: AlertId(self.next_id),
            state: AlertState::Firing,
            kind: raised.kind,
            alert_type: type_of(&raised.rule),
            severity: raised.severity,
            target: raised.target,
            rule: raised.rule,
            summary: raised.summary,
            value: raised.value,
            limit: raised.limit,
            t_ns: raised.t_ns,
            escalated: false,
            link: self.link.clone(),
        }
    }

    /// Escalations due at `now_ns`: alerts firing past a route's `escalate_after`.
    pub fn due(&mut self, now_ns: u64) -> Vec<Notification> {
        let mut out = Vec::new();
        for f in self.firing.values_mut() {
            for (i, route) in self.routes.iter().enumerate() {
                let Some((after, tier)) = &route.escalate else {
                    continue;
                };
                if f.escalated.contains(&i)
                    || !route.takes(&f.alert)
                    || now_ns.saturating_sub(f.since_ns) < *after
                {
                    continue;
                }
                f.escalated.push(i);
                let channels: Vec<ChannelId> = tier
                    .iter()
                    .copied()
                    .filter(|c| !f.sent_to.contains(c))
                    .filter(|c| self.limiters[c.0].admit(now_ns))
                    .collect();
                if channels.is_empty() {
                    continue;
                }
                f.sent_to.extend(&channels);
                out.push(Notification {
                    alert: Alert {
                        escalated: true,
                        ..f.alert.clone()
                    },
                    channels,
                });
            }
        }
        out
    }

    /// The run ended at `t_ns` (ns since its command started): every alert still firing is
    /// resolved, to the channels that took it, saying so.
    pub fn end(&mut self, t_ns: u64) -> Vec<Notification> {
        let all = std::mem::take(&mut self.firing);
        Self::ended(all.into_values(), t_ns)
    }

    /// The watch of `target` ended at `t_ns`: its alerts still firing are resolved, as
    /// [`Self::end`] does for all.
    pub fn end_target(&mut self, target: &str, t_ns: u64) -> Vec<Notification> {
        let (theirs, others) = std::mem::take(&mut self.firing)
            .into_iter()
            .partition(|((t, _), _)| t == target);
        self.firing = others;
        Self::ended(theirs.into_values(), t_ns)
    }

    fn ended(firing: impl Iterator<Item = Firing>, t_ns: u64) -> Vec<Notification> {
        firing
            .filter(|f| !f.sent_to.is_empty())
            .map(|f| Notification {
                alert: Alert {
                    state: AlertState::Resolved,
                    summary: format!(
                        "the run ended at {:.1}s with this still firing: {}",
                        t_ns as f64 / 1e9,
                        f.alert.summary
                    ),
                    t_ns,
                    ..f.alert
                },
                channels: f.sent_to,
            })
            .collect()
    }

    /// What each channel's rate limit suppressed.
    pub fn suppressed(&self) -> Vec<u64> {
        self.limiters.iter().map(|l| l.suppressed).collect()
    }

    /// Routes `alert` at `now_ns`; keeps it as firing under `key` if it `lasts`.
    fn send(
        &mut self,
        now_ns: u64,
        alert: Alert,
        lasts: bool,
        key: (String, String),
    ) -> Vec<Notification> {
        let opt_in = alert.kind.opt_in();
        let mut wanted: Vec<ChannelId> = if self.routes.is_empty() {
            if opt_in {
                Vec::new()
            } else {
                (0..self.channels).map(ChannelId).collect()
            }
        } else {
            self.routes
                .iter()
                .filter(|r| r.takes(&alert) && (!opt_in || r.kinds.contains(&alert.kind)))
                .flat_map(|r| r.channels.iter().copied())
                .collect()
        };
        wanted.sort();
        wanted.dedup();
        let channels: Vec<ChannelId> = wanted
            .into_iter()
            .filter(|c| self.limiters[c.0].admit(now_ns))
            .collect();
        if lasts {
            self.firing.insert(
                key,
                Firing {
                    alert: alert.clone(),
                    since_ns: now_ns,
                    sent_to: channels.clone(),
                    escalated: Vec::new(),
                },
            );
        }
        if channels.is_empty() {
            return Vec::new();
        }
        vec![Notification { alert, channels }]
    }
}

/// An alert raised: by an event as the run goes, or at its end from its verdict.
#[derive(Clone, Debug)]
pub struct Raised {
    /// What it is about (at the end: `SloFailed`, `Regression`, `Anomaly`, `Verdict`).
    pub kind: AlertKind,
    /// How urgent (events: by their kind, whatever this says).
    pub severity: Severity,
    /// The run.
    pub target: String,
    /// The SLO's name, or the figure.
    pub rule: String,
    /// One line for people.
    pub summary: String,
    /// The value measured.
    pub value: Option<f64>,
    /// The limit.
    pub limit: Option<f64>,
    /// When, ns since the command started.
    pub t_ns: u64,
}

/// The kind and severity of an alert an event makes; `None` for events that make none.
fn classify(kind: &EventKind) -> Option<(AlertKind, Severity)> {
    match kind {
        EventKind::ThresholdBreached | EventKind::ThresholdCleared => {
            Some((AlertKind::Threshold, Severity::Warning))
        }
        EventKind::OomKill => Some((AlertKind::OomKill, Severity::Critical)),
        EventKind::Timeout => Some((AlertKind::Timeout, Severity::Critical)),
        _ => None,
    }
}

/// The resource a rule or metric is about, from its name.
fn type_of(rule: &str) -> AlertType {
    let r = rule.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| r.contains(w));
    if has(&["memory", "rss", "oom"]) {
        AlertType::Memory
    } else if has(&["net", "tcp", "connect", "rx", "tx"]) {
        AlertType::Network
    } else if has(&["disk", "block", "io_", "read_bytes", "write_bytes"]) {
        AlertType::Disk
    } else if has(&["cpu"]) {
        AlertType::Cpu
    } else if has(&["time", "wall", "duration", "latency"]) {
        AlertType::Time
    } else {
        AlertType::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> AlertsConfig {
        #[derive(serde::Deserialize)]
        struct File {
            alerts: AlertsConfig,
        }
        let a = toml::from_str::<File>(text).unwrap().alerts;
        a.check().unwrap();
        a
    }

    fn event(kind: EventKind, t_s: u64, value: f64) -> Event {
        Event {
            t_ns: t_s * 1_000_000_000,
            kind,
            subject: "performance_monitoring.thresholds.max_memory_usage_bytes".into(),
            value: Some(value),
            limit: Some(100.0),
            message: "memory".into(),
        }
    }

    const TWO: &str = "[[alerts.channels]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://a\"\n\
                       [[alerts.channels]]\nname = \"b\"\nkind = \"webhook\"\nurl = \"http://b\"\n";

    #[test]
    fn a_breach_alerts_once_and_resolves_once_on_every_channel() {
        let mut p = Policy::new(&config(TWO));
        let s = 1_000_000_000;
        let n = p.on_event(s, "run", &event(EventKind::ThresholdBreached, 1, 150.0));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].channels, vec![ChannelId(0), ChannelId(1)]);
        assert_eq!(n[0].alert.alert_type, AlertType::Memory);
        assert!(
            p.on_event(2 * s, "run", &event(EventKind::ThresholdBreached, 2, 160.0))
                .is_empty()
        );
        let r = p.on_event(3 * s, "run", &event(EventKind::ThresholdCleared, 3, 50.0));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].alert.state, AlertState::Resolved);
        assert_eq!(r[0].alert.id, n[0].alert.id);
        assert_eq!(r[0].alert.value, Some(50.0));
        assert!(
            p.on_event(4 * s, "run", &event(EventKind::ThresholdCleared, 4, 40.0))
                .is_empty()
        );
        // Another target is another alert.
        assert_eq!(
            p.on_event(
                5 * s,
                "other",
                &event(EventKind::ThresholdBreached, 5, 150.0)
            )
            .len(),
            1
        );
        // Its watch ending resolves its alert, and no other target's.
        p.on_event(6 * s, "run", &event(EventKind::ThresholdBreached, 6, 150.0));
        let ended = p.end_target("other", 7 * s);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].alert.target, "other");
        assert_eq!(p.end(8 * s)[0].alert.target, "run");
    }

    fn ended(kind: AlertKind, severity: Severity) -> Raised {
        Raised {
            kind,
            severity,
            target: "run".into(),
            rule: format!("{kind:?}"),
            summary: "the end".into(),
            value: None,
            limit: None,
            t_ns: 0,
        }
    }

    #[test]
    fn anomalies_and_verdicts_go_only_where_a_route_names_them() {
        // No routes: an SLO failed goes everywhere, anomalies and verdicts nowhere.
        let mut p = Policy::new(&config(TWO));
        let slo = p.on_end(1, ended(AlertKind::SloFailed, Severity::Critical));
        assert_eq!(slo[0].channels, vec![ChannelId(0), ChannelId(1)]);
        assert!(
            p.on_end(2, ended(AlertKind::Anomaly, Severity::Info))
                .is_empty()
        );
        assert!(
            p.on_end(3, ended(AlertKind::Verdict, Severity::Critical))
                .is_empty()
        );
        // A route of every kind still leaves them out; one naming `verdict` takes verdicts.
        let text = format!(
            "[alerts]\nlink = \"https://ci.example/job/7\"\n{TWO}\
             [[alerts.routes]]\nchannels = [\"a\"]\n\
             [[alerts.routes]]\nevents = [\"verdict\"]\nseverities = [\"critical\"]\n\
             channels = [\"b\"]\n"
        );
        let mut p = Policy::new(&config(&text));
        assert!(
            p.on_end(1, ended(AlertKind::Anomaly, Severity::Info))
                .is_empty()
        );
        assert!(
            p.on_end(2, ended(AlertKind::Verdict, Severity::Info))
                .is_empty()
        );
        let failed = p.on_end(3, ended(AlertKind::Verdict, Severity::Critical));
        assert_eq!(failed[0].channels, vec![ChannelId(1)]);
        assert_eq!(
            failed[0].alert.link.as_deref(),
            Some("https://ci.example/job/7")
        );
    }

    #[test]
    fn flapping_is_limited_per_channel_and_resolves_follow_their_alerts() {
        let text = TWO.replace(
            "url = \"http://b\"\n",
            "url = \"http://b\"\nmax_per_minute = 3\n",
        );
        let mut p = Policy::new(&config(&text));
        let (mut a, mut b) = (0, 0);
        for i in 0..20u64 {
            let t = i * 2_000_000_000;
            for n in p
                .on_event(t, "run", &event(EventKind::ThresholdBreached, i * 2, 150.0))
                .into_iter()
                .chain(p.on_event(t + 1, "run", &event(EventKind::ThresholdCleared, i, 5.0)))
            {
                a += n.channels.contains(&ChannelId(0)) as u32;
                b += n.channels.contains(&ChannelId(1)) as u32;
            }
        }
        // 20 flaps in 40 s: every alert and resolve to a; 3 alerts and their 3 resolves to b.
        assert_eq!((a, b), (40, 6));
        assert_eq!(p.suppressed(), vec![0, 17]);
    }

    #[test]
    fn routes_filter_and_escalate_once() {
        let text = format!(
            "{TWO}[[alerts.routes]]\nevents = [\"threshold\"]\nchannels = [\"a\"]\n\
             escalate_after = \"5s\"\nescalate_to = [\"b\"]\n\
             [[alerts.routes]]\nevents = [\"oom_kill\"]\nchannels = [\"b\"]\n"
        );
        let mut p = Policy::new(&config(&text));
        let s = 1_000_000_000;
        let n = p.on_event(0, "run", &event(EventKind::ThresholdBreached, 0, 150.0));
        assert_eq!(n[0].channels, vec![ChannelId(0)]);
        assert!(p.due(4 * s).is_empty());
        let e = p.due(5 * s);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].channels, vec![ChannelId(1)]);
        assert!(e[0].alert.escalated);
        assert!(p.due(9 * s).is_empty(), "once");
        // The resolve goes to both tiers.
        let r = p.on_event(10 * s, "run", &event(EventKind::ThresholdCleared, 10, 5.0));
        assert_eq!(r[0].channels, vec![ChannelId(0), ChannelId(1)]);
        let mut oom = event(EventKind::OomKill, 11, 1.0);
        oom.subject = "oom_kill".into();
        let o = p.on_event(11 * s, "run", &oom);
        assert_eq!(o[0].channels, vec![ChannelId(1)]);
        assert_eq!(o[0].alert.severity, Severity::Critical);
        assert!(p.end(12 * s).is_empty(), "nothing fires any more");
        p.on_event(
            12 * s,
            "run",
            &event(EventKind::ThresholdBreached, 12, 150.0),
        );
        let ended = p.end(13 * s);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].alert.state, AlertState::Resolved);
        assert!(ended[0].alert.summary.starts_with("the run ended"));
    }
}
