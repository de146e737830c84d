//! Each finished run's totals and verdicts sent to an OpenTelemetry collector (`[export.otlp]`)
//! as OTLP metrics over HTTP/protobuf (`POST {endpoint}/v1/metrics`): one gauge a figure,
//! stamped with the run's start and end, under a resource naming the host, the service, the
//! run, and its git commit and branch. Tried a few times with a growing wait; a collector
//! that does not take it is said on stderr and never fails the run.
//!
//! The agent sends the same for each finished watch, and every `interval` the figures of the
//! cgroups it watches ([`cgroups_request`]), off its sampling loop.
//!
//! The metrics: `cleanroom.run.<total>` for each total (`cleanroom.run.cpu_time_ns`, ...),
//! `cleanroom.run.<latency>.p50_ns` (`p90`, `p99`, `max`) for each latency measured,
//! `cleanroom.run.wall_time_ns`, `cleanroom.run.exit_code`, `cleanroom.run.passed` (1 or 0,
//! when there was a verdict) and `cleanroom.slo.passed` (1 or 0, attribute `slo.name`).

use std::time::{Duration, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data,
        number_data_point,
    },
    resource::v1::Resource,
};
use prost::Message as _;
use serde::Deserialize;

use crate::{
    judge::verdict::{Status, Verdict},
    measure::collect::Total,
    output::report::Report,
    trust::Trust,
    units::de_duration,
};

/// `[export.otlp]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP address (`http://127.0.0.1:4318`); metrics go to
    /// `/v1/metrics` below it.
    pub endpoint: String,
    /// `service.name` of the resource (default `cleanroom`).
    #[serde(default = "default_service")]
    pub service_name: String,
    /// How long one try may take (default 5 s).
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Tries in all (default 3), 1 s apart and then twice as long each time.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// The CA certificates (PEM) an `https://` collector's certificate must be signed by,
    /// instead of the public roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The agent: how often the watched cgroups' figures are sent (default 10 s, at least
    /// 1 s).
    #[serde(default, deserialize_with = "crate::units::de_opt_duration")]
    pub interval: Option<Duration>,
}

fn default_service() -> String {
    "cleanroom".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_attempts() -> u32 {
    3
}

impl OtlpConfig {
    /// Checks what serde cannot; the message names the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err((
                "endpoint",
                format!("{:?} is not an http:// or https:// URL", self.endpoint),
            ));
        }
        if !(1..=10).contains(&self.attempts) {
            return Err(("attempts", "must be 1 to 10".into()));
        }
        if self.interval.is_some_and(|i| i < Duration::from_secs(1)) {
            return Err(("interval", "must be at least 1s".into()));
        }
        Ok(())
    }

    /// How often the agent sends the watched cgroups' figures.
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(10))
    }

    /// Where metrics are POSTed.
    pub fn url(&self) -> String {
        format!("{}/v1/metrics", self.endpoint.trim_end_matches('/'))
    }
}

/// Sends `report`'s metrics to the collector, trying up to `attempts` times. `Err` says why
/// the last try failed, and how many were made.
pub fn export(config: &OtlpConfig, report: &Report) -> Result<(), String> {
    send(
        config,
        &request(report, &config.service_name),
        config.attempts,
    )
}

/// Sends `request` to the collector, trying up to `attempts` times.
pub fn send(
    config: &OtlpConfig,
    request: &ExportMetricsServiceRequest,
    attempts: u32,
) -> Result<(), String> {
    let trust = Trust::load(config.ca_file.as_deref())?;
    let agent = trust.http_agent(config.timeout);
    let body = request.encode_to_vec();
    let url = config.url();
    let mut wait = Duration::from_secs(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        let sent = agent
            .post(&url)
            .header("Content-Type", "application/x-protobuf")
            .send(&body[..]);
        match sent {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if attempt < attempts {
            std::thread::sleep(wait);
            wait *= 2;
        }
    }
    Err(format!("{url}: {last} ({attempts} tries)"))
}

/// Pure: the agent's figures of the cgroups it watches, at `now_ns` (Unix time): one resource
/// a cgroup (`cleanroom.cgroup`, `cleanroom.rule`, `host.name`, `service.name`), each total
/// a cumulative sum since its watch began (`cleanroom.cgroup.cpu_time_ns`, ...).
pub fn cgroups_request(
    cgroups: &[crate::output::exposition::CgroupSnapshot],
    host: &str,
    service_name: &str,
    now_ns: u64,
) -> ExportMetricsServiceRequest {
    use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Sum};
    let resource_metrics = cgroups
        .iter()
        .map(|c| {
            let metrics = c
                .totals
                .iter()
                .map(|(metric, value)| Metric {
                    name: format!("cleanroom.cgroup.{}", metric.name()),
                    unit: match metric.unit() {
                        crate::metric::Unit::Nanoseconds => "ns",
                        crate::metric::Unit::Bytes => "By",
                        crate::metric::Unit::Count => "1",
                    }
                    .to_owned(),
                    data: Some(Data::Sum(Sum {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: now_ns,
                            value: Some(number_data_point::Value::AsInt(
                                i64::try_from(*value).unwrap_or(i64::MAX),
                            )),
                            ..NumberDataPoint::default()
                        }],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })),
                    ..Metric::default()
                })
                .collect();
            resource_metrics(
                vec![
                    attribute("service.name", service_name),
                    attribute("host.name", host),
                    attribute("cleanroom.cgroup", &c.cgroup),
                    attribute("cleanroom.rule", &c.rule),
                ],
                metrics,
            )
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

/// This program, as the instrumentation scope.
fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "cleanroom".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    }
}

/// Pure: the OTLP request of `report`'s metrics.
pub fn request(report: &Report, service_name: &str) -> ExportMetricsServiceRequest {
    let start = humantime::parse_rfc3339_weak(&report.started_at)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let end = start.saturating_add(report.wall_time_ns);
    let point = |value: f64, attributes: Vec<KeyValue>| NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: end,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    };
    let gauge = |name: String, unit: &str, points: Vec<NumberDataPoint>| Metric {
        name,
        unit: unit.to_owned(),
        data: Some(Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Metric::default()
    };
    let unit_of = |name: &str| {
        if name.ends_with("_ns") {
            "ns"
        } else if name.ends_with("_bytes") {
            "By"
        } else {
            "1"
        }
    };
    let mut metrics = vec![
        gauge(
            "cleanroom.run.wall_time_ns".into(),
            "ns",
            vec![point(report.wall_time_ns as f64, vec![])],
        ),
        gauge(
            "cleanroom.run.exit_code".into(),
            "1",
            vec![point(f64::from(report.exit_code), vec![])],
        ),
    ];
    for (name, total) in &report.totals {
        match total {
            Total::Value(v) => metrics.push(gauge(
                format!("cleanroom.run.{name}"),
                unit_of(name),
                vec![point(*v as f64, vec![])],
            )),
            Total::Latency(l) if l.count > 0 => {
                for (suffix, v) in [
                    ("p50_ns", l.p50_ns),
                    ("p90_ns", l.p90_ns),
                    ("p99_ns", l.p99_ns),
                    ("max_ns", l.max_ns),
                ] {
                    metrics.push(gauge(
                        format!("cleanroom.run.{name}.{suffix}"),
                        "ns",
                        vec![point(v as f64, vec![])],
                    ));
                }
            }
            Total::Latency(_) => {}
        }
    }
    match report.verdict {
        Verdict::Pass | Verdict::Fail => metrics.push(gauge(
            "cleanroom.run.passed".into(),
            "1",
            vec![point(
                if report.verdict == Verdict::Pass {
                    1.0
                } else {
                    0.0
                },
                vec![],
            )],
        )),
        _ => {}
    }
    let slos: Vec<NumberDataPoint> = report
        .slos
        .iter()
        .filter(|s| matches!(s.status, Status::Pass | Status::Fail))
        .map(|s| {
            point(
                if s.status == Status::Pass { 1.0 } else { 0.0 },
                vec![attribute("slo.name", &s.name)],
            )
        })
        .collect();
    if !slos.is_empty() {
        metrics.push(gauge("cleanroom.slo.passed".into(), "1", slos));
    }
    let mut attributes = vec![
        attribute("service.name", service_name),
        attribute("host.name", &report.host.hostname),
    ];
    let optional = [
        ("cleanroom.run.name", report.name.as_deref()),
        ("cleanroom.run.id", report.run_id.as_deref()),
        ("vcs.ref.head.revision", report.host.git_commit.as_deref()),
        ("vcs.ref.head.name", report.host.git_branch.as_deref()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attributes.push(attribute(key, value));
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![resource_metrics(attributes, metrics)],
    }
}

/// One resource's metrics, under this program's scope.
fn resource_metrics(attributes: Vec<KeyValue>, metrics: Vec<Metric>) -> ResourceMetrics {
    ResourceMetrics {
        resource: Some(Resource {
            attributes,
            ..Resource::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(scope()),
            metrics,
            ..ScopeMetrics::default()
        }],
        ..ResourceMetrics::default()
    }
}

/// A string attribute.
fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_its_totals_under_a_resource_naming_it() {
        let mut r = Report::example();
        r.name = Some("unit-tests".into());
        r.totals.insert("cpu_time_ns".into(), Total::Value(1234));
        r.verdict = Verdict::Fail;
        let req = request(&r, "ci");
        let rm = &req.resource_metrics[0];
        let attrs: Vec<(&str, String)> = rm
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.as_str(), v)
            })
            .collect();
        assert!(attrs.contains(&("service.name", "ci".into())), "{attrs:?}");
        assert!(attrs.contains(&("cleanroom.run.name", "unit-tests".into())));
        let value_of = |name: &str| {
            let m = rm.scope_metrics[0]
                .metrics
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("no {name}"));
            match &m.data {
                Some(Data::Gauge(g)) => match g.data_points[0].value {
                    Some(number_data_point::Value::AsDouble(v)) => v,
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(value_of("cleanroom.run.cpu_time_ns"), 1234.0);
        assert_eq!(value_of("cleanroom.run.passed"), 0.0);
        // It survives the wire.
        let bytes = req.encode_to_vec();
        assert_eq!(
            ExportMetricsServiceRequest::decode(&bytes[..]).unwrap(),
            req
        );
    }
}
