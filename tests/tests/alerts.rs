//! Alerts delivered to real receivers while a real run goes on: a local HTTP server taking
//! webhook, Slack and SMS-gateway POSTs (checking the webhook's HMAC signature with `openssl`,
//! failing or hanging on demand), and a run whose memory crosses a threshold and falls back.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cleanroom_tests::{
    assert_matches_schema, cleanroom_bin, free_loopback_port, privileged, tool, workload_bin,
};

/// What the receiver does with requests to a path.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// 200.
    Accept,
    /// 503 for the first N requests, then 200.
    FailFirst(usize),
    /// Reads the request and never answers.
    Hang,
}

/// One request the receiver took.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A local HTTP receiver on a free loopback port.
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(behaviour: fn(&str) -> Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve(stream, &log, behaviour));
            }
        });
        Self { port, received }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn on(&self, path: &str) -> Vec<Received> {
        let all = self.received.lock().unwrap();
        all.iter().filter(|r| r.path == path).cloned().collect()
    }
}

fn serve(stream: TcpStream, log: &Mutex<Vec<Received>>, behaviour: fn(&str) -> Behaviour) {
    let at = Instant::now();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let seen = {
        let mut all = log.lock().unwrap();
        all.push(Received {
            path: path.clone(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            at,
        });
        all.iter().filter(|r| r.path == path).count()
    };
    let status = match behaviour(&path) {
        Behaviour::Accept => "200 OK",
        Behaviour::FailFirst(n) if seen <= n => "503 Service Unavailable",
        Behaviour::FailFirst(_) => "200 OK",
        Behaviour::Hang => {
            std::thread::sleep(Duration::from_secs(120));
            return;
        }
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// `sha256=HEX` of the HMAC-SHA256 of `body` under `key`, by `openssl`.
fn openssl_hmac(key: &str, body: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256={}", text.trim().rsplit(' ').next().unwrap())
}

/// Runs `cleanroom run` with `config`, the report and the history store in `dir`, and the
/// environment `env`; the command holds 128 MiB for `hold_ms`, then lives on 1.5 s without it.
fn run_holding(dir: &Path, config: &str, env: &[(&str, &str)], hold_ms: u64) -> (Output, f64) {
    let cfg = dir.join("cleanroom.toml");
    std::fs::write(&cfg, config).unwrap();
    let script = format!(
        "{} hold 32768 {hold_ms}; sleep 1.5",
        workload_bin!().display()
    );
    let started = Instant::now();
    let out = Command::new(cleanroom_bin())
        .envs(env.iter().copied())
        .env("CLEANROOM_STORE", dir.join("history.db"))
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--report")
        .arg(dir.join("report.json"))
        .args(["--name", "alerting", "--", "sh", "-c", &script])
        .output()
        .expect("starting cleanroom");
    (out, started.elapsed().as_secs_f64())
}

const THRESHOLD: &str = r#"
[performance_monitoring]
metrics_interval = "200ms"
[performance_monitoring.thresholds]
max_memory_usage_bytes = "64MiB"
"#;

const HOOK_SECRET: &str = "s3cr3t-hook-key-7f1d9a";
const SMS_TOKEN: &str = "tok-5c2e8b0a-sms";

/// Asserts `secret` is nowhere in the run's output, report or history.
fn assert_secret_kept(secret: &str, out: &Output, dir: &Path) {
    for (what, bytes) in [
        ("stdout", out.stdout.clone()),
        ("stderr", out.stderr.clone()),
        ("report", std::fs::read(dir.join("report.json")).unwrap()),
        ("history", std::fs::read(dir.join("history.db")).unwrap()),
    ] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is in the {what}"
        );
    }
}

#[test]
fn a_breach_sends_one_alert_and_one_resolve_to_every_channel() {
    if !privileged("a_breach_sends_one_alert_and_one_resolve_to_every_channel") {
        return;
    }
    let receiver = Receiver::start(|_| Behaviour::Accept);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{THRESHOLD}
[[alerts.channels]]
name = "hook"
kind = "webhook"
url = "{hook}"
secret_env = "CLEANROOM_TEST_HOOK_SECRET"

[[alerts.channels]]
name = "chat"
kind = "slack"
url = "{slack}"

[[alerts.channels]]
name = "phone"
kind = "sms"
url = "{sms}"
account = "AC0001"
to = "+15550100"
from = "+15550199"
secret_env = "CLEANROOM_TEST_SMS_TOKEN"
"#,
        hook = receiver.url("/hook"),
        slack = receiver.url("/slack"),
        sms = receiver.url("/sms"),
    );
    let (out, _) = run_holding(
        dir.path(),
        &config,
        &[
            ("CLEANROOM_TEST_HOOK_SECRET", HOOK_SECRET),
            ("CLEANROOM_TEST_SMS_TOKEN", SMS_TOKEN),
        ],
        2000,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A breached threshold fails the verdict (exit 3); the alerts do not change that.
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_matches_schema(&report);

    // The webhook: a firing then its resolve, signed, with the measured values.
    let hook = receiver.on("/hook");
    assert_eq!(hook.len(), 2, "{hook:#?}\n{stderr}");
    let (firing, resolved) = (hook[0].json(), hook[1].json());
    assert_eq!(firing["state"], "firing");
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(firing["id"], resolved["id"]);
    assert_eq!(firing["type"], "memory");
    assert_eq!(firing["target"], "alerting");
    let limit = 64.0 * 1024.0 * 1024.0;
    assert_eq!(firing["limit"].as_f64(), Some(limit));
    let over = firing["value"].as_f64().unwrap();
    assert!(over > limit && over < 200.0 * 1024.0 * 1024.0, "{firing}");
    assert!(resolved["value"].as_f64().unwrap() <= limit, "{resolved}");
    // The breach the report's events hold is the one alerted.
    let breach = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "threshold_breached")
        .expect("a breach event");
    assert_eq!(breach["value"].as_f64(), Some(over));
    for r in &hook {
        assert_eq!(
            r.header("X-Cleanroom-Signature"),
            Some(openssl_hmac(HOOK_SECRET, &r.body).as_str()),
            "the signature is the HMAC-SHA256 of the body"
        );
    }
    // Resolved some 2 s after it fired (the hold), not at the end of the run.
    let gap = hook[1].at.duration_since(hook[0].at);
    assert!(
        gap > Duration::from_millis(1200) && gap < Duration::from_millis(3500),
        "{gap:?}"
    );

    // Slack: readable blocks; the SMS gateway: a form with the account's basic auth.
    let slack = receiver.on("/slack");
    assert_eq!(slack.len(), 2, "{slack:#?}");
    let s = slack[0].json();
    assert!(
        s["text"]
            .as_str()
            .unwrap()
            .contains("max_memory_usage_bytes"),
        "{s}"
    );
    assert!(s["blocks"].as_array().unwrap().len() >= 2, "{s}");
    let sms = receiver.on("/sms");
    assert_eq!(sms.len(), 2, "{sms:#?}");
    assert!(sms[0].body.contains("To=%2B15550100"), "{}", sms[0].body);
    assert!(sms[0].body.contains("FIRING"), "{}", sms[0].body);
    assert!(sms[1].body.contains("RESOLVED"), "{}", sms[1].body);
    assert!(
        sms[0]
            .header("Authorization")
            .is_some_and(|a| a.starts_with("Basic ")),
        "{sms:#?}"
    );

    // The report: six deliveries, each delivered at its first try.
    let alerts = &report["alerts"];
    assert_eq!(alerts["undelivered"], 0, "{alerts:#}");
    let deliveries = alerts["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 6, "{alerts:#}");
    for d in deliveries {
        assert_eq!(d["delivered"], true, "{d}");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
    }
    assert_secret_kept(HOOK_SECRET, &out, dir.path());
    assert_secret_kept(SMS_TOKEN, &out, dir.path());
}

#[test]
fn failing_receivers_are_retried_and_hanging_ones_cost_neither_samples_nor_the_end() {
    if !privileged(
        "failing_receivers_are_retried_and_hanging_ones_cost_neither_samples_nor_the_end",
    ) {
        return;
    }
    let receiver = Receiver::start(|path| match path {
        "/flaky" => Behaviour::FailFirst(2),
        "/hang" => Behaviour::Hang,
        _ => Behaviour::Accept,
    });
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{THRESHOLD}
[alerts]
flush_timeout = "2s"

[alerts.retry]
attempts = 3
backoff = "400ms"
timeout = "1s"

[[alerts.channels]]
name = "flaky"
kind = "webhook"
url = "{flaky}"

[[alerts.channels]]
name = "stuck"
kind = "webhook"
url = "{hang}"
"#,
        flaky = receiver.url("/flaky"),
        hang = receiver.url("/hang"),
    );
    let (out, took) = run_holding(dir.path(), &config, &[], 1000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "the verdict's code: {stderr}");
    assert!(stderr.contains("not delivered"), "{stderr}");
    assert!(
        stderr.contains("  alerts: 2 notification(s) delivered, "),
        "{stderr}"
    );
    assert!(stderr.contains(" not (stuck)"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_matches_schema(&report);

    // The flaky receiver: 503, 503, 200 for the firing, at the configured backoff (400 ms,
    // then 800 ms, each ±20%); then the resolve at its first try.
    let flaky = receiver.on("/flaky");
    assert_eq!(flaky.len(), 4, "{flaky:#?}\n{stderr}");
    let waits = [
        flaky[1].at.duration_since(flaky[0].at),
        flaky[2].at.duration_since(flaky[1].at),
    ];
    for (wait, backoff) in waits.iter().zip([400u64, 800]) {
        let ms = wait.as_millis() as u64;
        assert!(
            ms >= backoff * 8 / 10 && ms <= backoff * 12 / 10 + 150,
            "waited {ms} ms for a backoff of {backoff} ms"
        );
    }
    let deliveries = report["alerts"]["deliveries"].as_array().unwrap();
    let of = |channel: &str| -> Vec<&serde_json::Value> {
        deliveries
            .iter()
            .filter(|d| d["channel"] == channel)
            .collect()
    };
    let firing = of("flaky")[0];
    let outcomes: Vec<&str> = firing["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.len(), 3, "{firing}");
    assert!(
        outcomes[..2].iter().all(|o| o.starts_with("HTTP 503")) && outcomes[2] == "delivered",
        "{firing}"
    );
    assert_eq!(firing["delivered"], true);

    // The hanging receiver: every try timed out, listed undelivered; the run ended within the
    // flush timeout of the command's end.
    let stuck = of("stuck");
    assert!(!stuck.is_empty());
    assert!(stuck.iter().all(|d| d["delivered"] == false), "{stuck:#?}");
    assert!(report["alerts"]["undelivered"].as_u64().unwrap() >= 1);
    let command_s = report["wall_time_ns"].as_f64().unwrap() / 1e9;
    assert!(
        took < command_s + 2.0 + 2.5,
        "the run took {took:.1} s, its command {command_s:.1} s, flush timeout 2 s"
    );
    assert!(report["alerts"]["flush_ms"].as_u64().unwrap() <= 2300);

    // The samples kept their pace: every full interval within 10% of 200 ms.
    let series = report["series"].as_array().unwrap();
    assert!(series.len() >= 10, "{} points", series.len());
    for p in &series[..series.len() - 1] {
        let ns = p["interval_ns"].as_f64().unwrap();
        assert!(
            (ns - 200e6).abs() <= 20e6,
            "an interval of {:.1} ms",
            ns / 1e6
        );
    }
}

#[test]
fn a_bad_alerts_config_is_named_and_costs_no_run() {
    if !privileged("a_bad_alerts_config_is_named_and_costs_no_run") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let hook =
        "[[alerts.channels]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n";
    for (config, expected) in [
        (
            format!("{hook}\n[[alerts.routes]]\nchannels = [\"opz\"]\n"),
            "cleanroom.toml:7: key `alerts.routes[0].channels`: no channel is named \"opz\"",
        ),
        (
            hook.replace("webhook", "webhok"),
            "cleanroom.toml:3: key `kind`: unknown variant `webhok`",
        ),
        (
            format!("{hook}secret_env = \"CLEANROOM_TEST_UNSET_SECRET\"\n"),
            "the environment variable CLEANROOM_TEST_UNSET_SECRET (secret_env) is not set",
        ),
    ] {
        let cfg = dir.path().join("cleanroom.toml");
        std::fs::write(&cfg, &config).unwrap();
        let out = Command::new(cleanroom_bin())
            .env_remove("CLEANROOM_TEST_UNSET_SECRET")
            .args(["run", "--no-store", "--config"])
            .arg(&cfg)
            .args(["--", "touch"])
            .arg(&ran)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!ran.exists(), "the command ran despite {stderr}");
    }
}

/// A message received: subject, plain-text body, attachments (file name, MIME type, content).
type Mail = (String, String, Vec<(String, String, String)>);

/// An SMTP server (`aiosmtpd`, Debian's) on a loopback port, keeping what it receives in a
/// Maildir; stopped on drop.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    maildir: std::path::PathBuf,
}

impl SmtpServer {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, "maildir", &[])
    }

    /// A server keeping its mail in `dir/name`, with aiosmtpd's `options` (TLS).
    fn start_with(dir: &Path, name: &str, options: &[&str]) -> Self {
        let port = free_loopback_port();
        let maildir = dir.join(name);
        let child = Command::new("aiosmtpd")
            .args(["-n", "-l", &format!("127.0.0.1:{port}")])
            .args(options)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting aiosmtpd");
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "aiosmtpd never listened on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            maildir,
        }
    }

    /// Each message received, parsed by Python's `email` package: subject, the plain-text
    /// body, and each attachment (file name, MIME type, content).
    fn messages(&self) -> Vec<Mail> {
        let script = r#"
import email, email.policy, json, pathlib, sys
out = []
for p in sorted(pathlib.Path(sys.argv[1], "new").iterdir(), key=lambda p: p.stat().st_mtime_ns):
    m = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
    files = [[a.get_filename(), a.get_content_type(), a.get_content()] for a in m.iter_attachments()]
    files = [[n, t, c if isinstance(c, str) else c.decode("utf-8", "replace")] for n, t, c in files]
    out.append([m["subject"], m.get_body(preferencelist=("plain",)).get_content(), files])
print(json.dumps(out))
"#;
        let out = Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(&self.maildir)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn alerts_and_the_report_arrive_by_email_and_the_report_is_posted_and_copied() {
    let test = "alerts_and_the_report_arrive_by_email_and_the_report_is_posted_and_copied";
    if !privileged(test) || !tool(test, "aiosmtpd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let receiver = Receiver::start(|_| Behaviour::Accept);
    let copies = dir.path().join("copies");
    let config = format!(
        r#"{THRESHOLD}
[[alerts.channels]]
name = "mail"
kind = "email"
host = "127.0.0.1"
port = {port}
security = "plain"
from = "cleanroom@ci.example"
to = "oncall@ci.example, lead@ci.example"

[[distribute]]
kind = "email"
host = "127.0.0.1"
port = {port}
security = "plain"
from = "cleanroom@ci.example"
to = "lead@ci.example"
attach = "html"

[[distribute]]
kind = "post"
url = "{post}"
secret_env = "CLEANROOM_TEST_HOOK_SECRET"

[[distribute]]
kind = "directory"
path = "{copies}"

[[distribute]]
kind = "post"
url = "http://127.0.0.1:{closed}/nobody-listens"
timeout = "2s"
"#,
        port = smtp.port,
        post = receiver.url("/reports"),
        copies = copies.display(),
        closed = free_loopback_port(),
    );
    let (out, _) = run_holding(
        dir.path(),
        &config,
        &[("CLEANROOM_TEST_HOOK_SECRET", HOOK_SECRET)],
        2000,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A distribution that failed is an output not written: exit 2, as for a report file.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("report not distributed (post to http://127.0.0.1:"),
        "{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["alerts"]["undelivered"], 0, "{:#}", report["alerts"]);
    let firing = report["alerts"]["deliveries"][0]["alert"].clone();
    let messages = smtp.messages();
    assert_eq!(messages.len(), 3, "{messages:#?}");
    let (subject, body, _) = &messages[0];
    assert!(
        subject.starts_with("[Cleanroom] FIRING: performance_monitoring.thresholds.max_memory_usage_bytes on alerting"),
        "{subject}"
    );
    // The measured value and the limit, as the report has them.
    assert!(
        body.contains(&format!("measured:  {}", firing["value"].as_f64().unwrap())),
        "{body}"
    );
    assert!(body.contains("limit:     67108864"), "{body}");
    assert!(
        messages[1].0.starts_with("[Cleanroom] RESOLVED"),
        "{messages:#?}"
    );

    // The report by email: the verdict in the subject, the summary's figures in the body, the
    // HTML report attached.
    let (subject, body, files) = &messages[2];
    assert_eq!(subject, "[Cleanroom] FAIL: alerting");
    assert!(body.contains("verdict: FAIL"), "{body}");
    assert!(body.contains("max_memory_usage_bytes"), "{body}");
    assert_eq!(files.len(), 1, "{files:#?}");
    let (name, mime, html) = &files[0];
    assert_eq!(
        (name.as_str(), mime.as_str()),
        ("cleanroom-report.html", "text/html")
    );
    assert!(
        html.contains("<html") && html.contains("alerting"),
        "{}",
        &html[..200]
    );

    // POSTed: the JSON report, signed; copied: the same report, under its name and start.
    let posted = receiver.on("/reports");
    assert_eq!(posted.len(), 1);
    assert_eq!(
        posted[0].header("X-Cleanroom-Signature"),
        Some(openssl_hmac(HOOK_SECRET, &posted[0].body).as_str())
    );
    let sent: serde_json::Value = posted[0].json();
    assert_eq!(sent["totals"], report["totals"]);
    assert!(
        sent.get("distribution").is_none(),
        "a copy does not list its own sending"
    );
    let copied: Vec<_> = std::fs::read_dir(&copies).unwrap().flatten().collect();
    assert_eq!(copied.len(), 1);
    let copy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copied[0].path()).unwrap()).unwrap();
    assert_eq!(copy, sent);
    assert!(
        copied[0]
            .file_name()
            .to_string_lossy()
            .starts_with("alerting-")
    );

    // The local report lists how each went: three delivered, one not, with why.
    let listed: Vec<(&str, bool)> = report["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap(),
                d["delivered"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("email", true),
            ("post", true),
            ("directory", true),
            ("post", false)
        ]
    );
    assert_secret_kept(HOOK_SECRET, &out, dir.path());
}

#[test]
fn flapping_is_rate_limited_and_a_long_breach_escalates_once() {
    if !privileged("flapping_is_rate_limited_and_a_long_breach_escalates_once") {
        return;
    }
    let receiver = Receiver::start(|_| Behaviour::Accept);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[performance_monitoring]
metrics_interval = "100ms"
[performance_monitoring.thresholds]
max_memory_usage_bytes = "64MiB"

[[alerts.channels]]
name = "all"
kind = "webhook"
url = "{all}"

[[alerts.channels]]
name = "limited"
kind = "webhook"
url = "{limited}"
max_per_minute = 3

[[alerts.channels]]
name = "pager"
kind = "webhook"
url = "{pager}"

[[alerts.routes]]
events = ["threshold"]
channels = ["all", "limited"]
escalate_after = "1s"
escalate_to = ["pager"]
"#,
        all = receiver.url("/all"),
        limited = receiver.url("/limited"),
        pager = receiver.url("/pager"),
    );
    let cfg = dir.path().join("cleanroom.toml");
    std::fs::write(&cfg, config).unwrap();
    // One breach of 2.5 s, then 20 of 300 ms, 400 ms apart.
    let w = workload_bin!().display().to_string();
    let script = format!(
        "{w} hold 32768 2500; sleep 0.5; for i in $(seq 20); do {w} hold 32768 300; sleep 0.4; done"
    );
    let out = Command::new(cleanroom_bin())
        .args(["run", "--no-store", "-q", "--config"])
        .arg(&cfg)
        .arg("--report")
        .arg(dir.path().join("report.json"))
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    // The documented numbers, from the breaches the run's events say (each flap is one when
    // the samples catch it).
    let breaches = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "threshold_breached")
        .count();
    assert!(breaches >= 15, "{breaches} breaches seen of 21");
    let all = receiver.on("/all");
    let limited = receiver.on("/limited");
    let pager = receiver.on("/pager");
    let states = |rs: &[Received]| -> Vec<String> {
        rs.iter()
            .map(|r| r.json()["state"].as_str().unwrap().to_owned())
            .collect()
    };
    // Every alert and its resolve where there is no limit.
    assert_eq!(all.len(), 2 * breaches, "{:?}", states(&all));
    // The limit: 3 alerts a minute (the run is shorter) and their 3 resolves.
    assert_eq!(limited.len(), 6, "{:?}", states(&limited));
    let channels = report["alerts"]["channels"].as_array().unwrap();
    let limited_summary = channels.iter().find(|c| c["name"] == "limited").unwrap();
    assert_eq!(limited_summary["suppressed"], breaches as u64 - 3);
    // The long breach reached the pager once, escalated, about 1 s after it began; its resolve
    // followed it there. No 300 ms flap did.
    assert_eq!(states(&pager), ["firing", "resolved"], "{pager:#?}");
    let escalated = pager[0].json();
    assert_eq!(escalated["escalated"], true);
    assert_eq!(escalated["id"], all[0].json()["id"]);
    let after = pager[0].at.duration_since(all[0].at);
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(1600),
        "escalated {after:?} after the alert"
    );
}

/// A run's anomalies make one alert at its end, sent only where a route names `anomaly`: a
/// route of every kind does not take it (most runs have anomalies), nor its verdict.
#[test]
fn anomalies_are_one_alert_and_only_where_a_route_names_them() {
    if !privileged("anomalies_are_one_alert_and_only_where_a_route_names_them") {
        return;
    }
    let receiver = Receiver::start(|_| Behaviour::Accept);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cleanroom.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[performance_monitoring]
metrics_interval = "100ms"

[[alerts.channels]]
name = "all"
kind = "webhook"
url = "{all}"

[[alerts.channels]]
name = "odd"
kind = "webhook"
url = "{odd}"

[[alerts.routes]]
channels = ["all"]

[[alerts.routes]]
events = ["anomaly"]
channels = ["odd"]
"#,
            all = receiver.url("/all"),
            odd = receiver.url("/odd"),
        ),
    )
    .unwrap();
    // A CPU busy some 20% of each 100 ms, then a second of it all, then as before.
    let w = workload_bin!().display().to_string();
    let script = format!(
        "for i in $(seq 25); do {w} spin-ms 20; sleep 0.08; done; {w} spin-ms 1000; \
         for i in $(seq 10); do {w} spin-ms 20; sleep 0.08; done"
    );
    let out = Command::new(cleanroom_bin())
        .env("CLEANROOM_STORE", dir.path().join("history.db"))
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--report")
        .arg(dir.path().join("report.json"))
        .args(["--name", "spiky", "--", "sh", "-c", &script])
        .output()
        .expect("starting cleanroom");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_matches_schema(&report);
    let anomalies = report["anomalies"].as_array().unwrap();
    assert!(!anomalies.is_empty(), "the spike was not found: {stderr}");
    let count = report["anomalies_found"]
        .as_u64()
        .unwrap_or(0)
        .max(anomalies.len() as u64);

    let odd = receiver.on("/odd");
    assert_eq!(odd.len(), 1, "{odd:#?}");
    let alert = odd[0].json();
    assert_eq!(alert["kind"], "anomaly");
    assert_eq!(alert["severity"], "info");
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["target"], "spiky");
    assert_eq!(alert["value"].as_f64(), Some(count as f64), "{alert}");
    let strongest = anomalies
        .iter()
        .max_by(|a, b| {
            let score = |x: &serde_json::Value| x["score"].as_f64().unwrap().abs();
            score(a).total_cmp(&score(b))
        })
        .unwrap();
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains(strongest["metric"].as_str().unwrap()),
        "{alert}"
    );
    assert!(receiver.on("/all").is_empty(), "{:#?}", receiver.on("/all"));
}

/// The agent alerts about the cgroups it watches, as `cleanroom run` does about its command:
/// a watched cgroup's CPU crossing a threshold and falling back sends one alert and one
/// resolve, linking the agent's page (it listens beyond loopback); its verdict goes to the
/// route that names verdicts, and only there; the cgroup's stored report lists them, and is
/// distributed (POSTed and copied into a directory), the stored run listing how. (CPU, not
/// memory: on a hybrid host the v2 hierarchy the agent watches has no memory controller.)
#[test]
fn the_agent_alerts_about_a_watched_cgroup() {
    if !privileged("the_agent_alerts_about_a_watched_cgroup") {
        return;
    }
    let receiver = Receiver::start(|_| Behaviour::Accept);
    let parent = cleanroom_tests::TestCgroup::new("agent-alerts");
    let relative = parent
        .path()
        .strip_prefix(cleanroom_tests::v2_mount())
        .unwrap()
        .display()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"interval = "200ms"
token = "agent-token-1"

[[watch]]
glob = "{relative}/*"
name = "jobs"
thresholds = {{ max_cpu_usage_percent = 50 }}

[[alerts.channels]]
name = "hook"
kind = "webhook"
url = "{hook}"

[[alerts.channels]]
name = "verdicts"
kind = "webhook"
url = "{verdicts}"

[[alerts.routes]]
channels = ["hook"]

[[alerts.routes]]
events = ["verdict"]
channels = ["verdicts"]

[[distribute]]
kind = "post"
url = "{posted}"

[[distribute]]
kind = "directory"
path = "{copies}"
"#,
            hook = receiver.url("/hook"),
            verdicts = receiver.url("/verdict"),
            posted = receiver.url("/report"),
            copies = dir.path().join("copies").display(),
        ),
    )
    .unwrap();
    let store = dir.path().join("history.db");
    let port = free_loopback_port();
    let agent = cleanroom_tests::Started::new(
        Command::new(cleanroom_bin())
            .args(["agent", "--no-socket", "--config"])
            .arg(&config)
            .args(["--listen", &format!("0.0.0.0:{port}"), "--store"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting cleanroom agent"),
    );
    cleanroom_tests::wait_for_port(port, "the agent");
    let job = parent.path().join("job");
    std::fs::create_dir(&job).unwrap();
    // Picked up within an interval; then a CPU busy for 1.5 s, and 1 s idle.
    std::thread::sleep(Duration::from_millis(600));
    cleanroom_tests::run_in_cgroup(
        &job,
        &format!("{} spin-ms 1500; sleep 1", workload_bin!().display()),
    );
    std::fs::remove_dir(&job).unwrap();
    // The watch ends at the next interval; its report is stored.
    std::thread::sleep(Duration::from_millis(800));
    assert!(agent.terminate().status.success());

    let hook = receiver.on("/hook");
    let states: Vec<String> = hook
        .iter()
        .map(|r| r.json()["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["firing", "resolved"], "{hook:#?}");
    let firing = hook[0].json();
    assert_eq!(firing["target"], format!("{relative}/job"));
    assert_eq!(firing["type"], "cpu");
    assert!(firing["value"].as_f64().unwrap() > 50.0, "{firing}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        firing["link"],
        format!("http://{}:{port}/", hostname.trim()),
        "the agent's page, by the host's name"
    );
    // The verdict: to its route's channel alone, and only the verdict goes there.
    let verdict = receiver.on("/verdict");
    assert_eq!(verdict.len(), 1, "{verdict:#?}");
    let verdict = verdict[0].json();
    assert_eq!(verdict["kind"], "verdict");
    assert_eq!(
        verdict["severity"], "critical",
        "a breached threshold fails it"
    );
    assert_eq!(verdict["target"], format!("{relative}/job"));
    assert!(
        verdict["summary"]
            .as_str()
            .unwrap()
            .starts_with("verdict fail after"),
        "{verdict}"
    );

    let out = cleanroom_tests::cleanroom(&store, &["history", "--last", "10"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = text
        .lines()
        .skip(1)
        .find_map(|l| l.split_whitespace().next()?.parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no stored run: {text}"));
    let out = cleanroom_tests::cleanroom(&store, &["report", &id.to_string(), "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_matches_schema(&report);
    let deliveries = report["alerts"]["deliveries"].as_array().unwrap();
    // The firing and the resolve, delivered; the verdict, raised as the watch ended, listed
    // with the tries made by then.
    assert_eq!(deliveries.len(), 3, "{:#}", report["alerts"]);
    assert!(
        deliveries
            .iter()
            .filter(|d| d["alert"]["kind"] == "threshold")
            .all(|d| d["delivered"] == true),
        "{deliveries:#?}"
    );
    assert_eq!(
        deliveries
            .iter()
            .filter(|d| d["alert"]["kind"] == "verdict")
            .count(),
        1
    );

    // Distributed: the JSON POSTed and the copy are the cgroup's report; the stored run lists
    // both destinations, delivered.
    let posted = receiver.on("/report");
    assert_eq!(posted.len(), 1, "{posted:#?}");
    let posted = posted[0].json();
    assert_eq!(posted["cgroup"]["path"], report["cgroup"]["path"]);
    assert_eq!(posted["totals"], report["totals"]);
    let copies: Vec<_> = std::fs::read_dir(dir.path().join("copies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&copies[0]).unwrap()).unwrap();
    assert_eq!(copy["totals"], report["totals"]);
    let distribution = report["distribution"].as_array().unwrap();
    let kinds: Vec<&str> = distribution
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["post", "directory"], "{distribution:#?}");
    assert!(
        distribution.iter().all(|d| d["delivered"] == true),
        "{distribution:#?}"
    );
}

/// A certificate authority of the test's own and a server certificate it signed for
/// 127.0.0.1, made by `openssl` in `dir`: (the CA's PEM, the server's certificate, its key).
fn test_pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    // Each command line in `dir` (no argument has a space).
    let openssl = |line: &str| {
        let out = Command::new("openssl")
            .args(line.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {line}: {out:?}");
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=cleanroom-test-ca \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    ));
    openssl(&format!(
        "req -new {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"
    ));
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile server.ext -out server.pem",
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// An HTTPS receiver (Python's `http.server` behind `ssl`) answering 200 to every POST and
/// writing each down, a JSON line of path and body; stopped on drop.
struct HttpsReceiver {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl HttpsReceiver {
    fn start(dir: &Path, cert: &Path, key: &Path) -> Self {
        let script = r#"
import http.server, json, ssl, sys
log = open(sys.argv[3], "a")
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        log.write(json.dumps({"path": self.path, "body": body}) + "\n"); log.flush()
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
        let log = dir.join("https.log");
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", script])
            .args([cert, key, &log])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the receiver's port");
        Self { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// The bodies POSTed to `path`.
    fn on(&self, path: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["path"] == path)
            .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
            .collect()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Receivers behind TLS, with a certificate of a CA of their own: reached by HTTPS, SMTP with
/// STARTTLS and SMTPS when `ca_file` names that CA, and refused (the certificate unknown, not
/// delivered, said in the report) by a channel trusting the public roots only.
#[test]
fn tls_receivers_are_reached_when_their_ca_is_trusted_and_only_then() {
    if !privileged("tls_receivers_are_reached_when_their_ca_is_trusted_and_only_then") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let https = HttpsReceiver::start(dir.path(), &cert, &key);
    let starttls = SmtpServer::start_with(
        dir.path(),
        "starttls",
        &["--tlscert", &cert_s, "--tlskey", &key_s],
    );
    let smtps = SmtpServer::start_with(
        dir.path(),
        "smtps",
        &["--smtpscert", &cert_s, "--smtpskey", &key_s],
    );
    let config = format!(
        r#"{THRESHOLD}
[alerts.retry]
attempts = 1

[[alerts.channels]]
name = "secure"
kind = "webhook"
url = "{secure}"
ca_file = "{ca}"

[[alerts.channels]]
name = "untrusted"
kind = "webhook"
url = "{untrusted}"

[[alerts.channels]]
name = "mail"
kind = "email"
host = "127.0.0.1"
port = {starttls}
security = "starttls"
from = "cleanroom@ci.example"
to = "oncall@ci.example"
ca_file = "{ca}"

[[distribute]]
kind = "email"
host = "127.0.0.1"
port = {smtps}
security = "tls"
from = "cleanroom@ci.example"
to = "lead@ci.example"
attach = "json"
ca_file = "{ca}"

[[distribute]]
kind = "post"
url = "{report}"
ca_file = "{ca}"
"#,
        secure = https.url("/secure"),
        untrusted = https.url("/untrusted"),
        report = https.url("/report"),
        starttls = starttls.port,
        smtps = smtps.port,
        ca = ca.display(),
    );
    let (out, _) = run_holding(dir.path(), &config, &[], 2000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_matches_schema(&report);

    // HTTPS with the CA trusted: the firing and the resolve.
    let states: Vec<String> = https
        .on("/secure")
        .iter()
        .map(|a| a["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["firing", "resolved"], "{stderr}");
    // The public roots only: never reached past the handshake, and the report says why.
    assert!(https.on("/untrusted").is_empty());
    let deliveries = report["alerts"]["deliveries"].as_array().unwrap();
    let refused: Vec<&serde_json::Value> = deliveries
        .iter()
        .filter(|d| d["channel"] == "untrusted")
        .collect();
    assert_eq!(refused.len(), 2, "{deliveries:#?}");
    for d in &refused {
        assert_eq!(d["delivered"], false, "{d}");
        let outcome = d["attempts"][0]["outcome"].as_str().unwrap().to_lowercase();
        assert!(outcome.contains("certificate"), "{outcome}");
    }
    assert!(
        deliveries
            .iter()
            .filter(|d| d["channel"] != "untrusted")
            .all(|d| d["delivered"] == true),
        "{deliveries:#?}"
    );
    // SMTP upgraded with STARTTLS (the server refuses mail without it): both alerts.
    let mails = starttls.messages();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(mails[0].0.starts_with("[Cleanroom] FIRING"), "{mails:#?}");
    // SMTPS: the report, its JSON attached; HTTPS: the report POSTed.
    let mails = smtps.messages();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let attached: serde_json::Value = serde_json::from_str(&mails[0].2[0].2).unwrap();
    assert_eq!(attached["totals"], report["totals"]);
    let posted = https.on("/report");
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0]["totals"], report["totals"]);
    let distribution = report["distribution"].as_array().unwrap();
    assert!(
        distribution.iter().all(|d| d["delivered"] == true),
        "{distribution:#?}"
    );
}
