//! The history shared by a fleet of runners in a real PostgreSQL, a throwaway cluster each test
//! starts itself (Debian's `postgresql`, `initdb` and `pg_ctl` as `postgres`): the same
//! history, comparisons and trends as the SQLite file's, runs of several hosts and of runners
//! starting together landing in one database, and a password never shown.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use cleanroom_tests::{
    PgCluster, Started, TestCgroup, cleanroom, cleanroom_bin, free_loopback_port, privileged,
    run_in_cgroup, v2_mount, wait_for_port, workload_bin,
};

/// A git repository of one commit on branch `main`, and that commit.
fn repo_on_main() -> (tempfile::TempDir, String) {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=ci", "-c", "user.email=ci@example.com"])
            .args(args)
            .current_dir(repo.path())
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["commit", "-q", "--allow-empty", "-m", "base"]);
    let commit = git(&["rev-parse", "HEAD"]);
    (repo, commit)
}

/// True when the schema's versions are 1 to N, each once.
const EACH_MIGRATION_ONCE: &str = "SELECT count(*) = count(DISTINCT version) AND count(*) = \
                                   max(version) AND count(*) >= 2 FROM cleanroom_schema";

/// `cleanroom run -q --name NAME --store STORE -- ARGS`.
fn run_stored(store: &str, name: &str, args: &[&str]) -> Output {
    Command::new(cleanroom_bin())
        .args(["run", "-q", "--name", name, "--store", store, "--"])
        .args(args)
        .output()
        .expect("starting cleanroom")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn history_compare_and_trend_agree_between_sqlite_and_postgres() {
    let test = "history_compare_and_trend_agree_between_sqlite_and_postgres";
    if !privileged(test) {
        return;
    }
    let Some(pg) = PgCluster::start(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.db");
    let file = file.to_str().unwrap();
    let workload = workload_bin!().display().to_string();
    for ms in ["40", "80", "120"] {
        let out = run_stored(file, "suite", &[&workload, "spin-ms", ms]);
        assert!(out.status.success(), "{out:?}");
    }
    let url = pg.url();
    let out = cleanroom(&url, &["store", "import", file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3 run(s) copied"), "{stderr}");
    // The tables were made by the migrations, each applied once and in order, and hold the
    // three runs; importing them again adds none (each run's id is kept once).
    assert_eq!(pg.psql(EACH_MIGRATION_ONCE).trim(), "t");
    assert!(cleanroom(&url, &["store", "import", file]).status.success());
    assert_eq!(pg.psql("SELECT count(*) FROM runs").trim(), "3");

    for args in [
        &["history", "--last", "10"][..],
        &["history", "--name", "suite"],
        &["compare", "1", "3", "--format", "json"],
        &["trend", "--name", "suite", "--format", "json"],
        &["report", "2", "--format", "json"],
    ] {
        let (local, shared) = (cleanroom(file, args), cleanroom(&url, args));
        assert!(local.status.code() == shared.status.code(), "{args:?}");
        assert!(!text(&local).is_empty(), "{args:?}: {local:?}");
        assert_eq!(text(&local), text(&shared), "{args:?}");
    }
    // The spins took longer each run: the trend has seen them.
    let trend: serde_json::Value = serde_json::from_str(&text(&cleanroom(
        &url,
        &["trend", "--name", "suite", "--format", "json"],
    )))
    .unwrap();
    assert!(trend.to_string().contains("cpu_time"), "{trend}");
}

#[test]
fn runs_of_two_hosts_starting_together_all_land_in_one_database() {
    let test = "runs_of_two_hosts_starting_together_all_land_in_one_database";
    if !privileged(test) {
        return;
    }
    let Some(pg) = PgCluster::start(test) else {
        return;
    };
    let url = pg.url();
    // Eight runners at once, on a fresh database: all of them make sure of its schema first.
    // Half run on a host named `runner-b` (a UTS namespace of its own).
    let children: Vec<_> = (0..8)
        .map(|i| {
            let run = format!(
                "{} run -q --name fleet --store {url} -- true",
                cleanroom_bin().display()
            );
            let script = if i % 2 == 0 {
                run
            } else {
                format!("hostname runner-b && {run}")
            };
            let mut cmd = if i % 2 == 0 {
                Command::new("sh")
            } else {
                let mut c = Command::new("unshare");
                c.args(["--uts", "sh"]);
                c
            };
            cmd.args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let local = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut expected = vec![format!("{}|4", local.trim()), "runner-b|4".to_owned()];
    expected.sort();
    let mut hosts: Vec<String> = pg
        .psql("SELECT host, count(*) FROM runs GROUP BY host")
        .lines()
        .map(str::to_owned)
        .collect();
    hosts.sort();
    assert_eq!(hosts, expected);
    assert_eq!(
        pg.psql("SELECT count(DISTINCT id) FROM runs WHERE name = 'fleet'")
            .trim(),
        "8"
    );
    assert_eq!(pg.psql(EACH_MIGRATION_ONCE).trim(), "t");
    let history = text(&cleanroom(&url, &["history", "--name", "fleet"]));
    assert_eq!(history.lines().count(), 9, "{history}");
}

#[test]
fn an_unreachable_database_is_said_in_time_without_its_password() {
    let test = "an_unreachable_database_is_said_in_time_without_its_password";
    if !privileged(test) {
        return;
    }
    let url = format!(
        "postgres://ci:hunter2-secret@127.0.0.1:{}/cleanroom",
        free_loopback_port()
    );
    let began = Instant::now();
    let out = cleanroom(&url, &["history"]);
    let took = began.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("postgres://ci:***@127.0.0.1:"),
        "the store is named: {stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password is shown: {stderr}"
    );
    // Retried, then given up on: within the connection deadline (10 s) and a margin.
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(stderr.contains("tries"), "{stderr}");
    // Nor does help show it, though the URL is in the environment.
    let help = cleanroom(&url, &["history", "--help"]);
    assert!(!text(&help).contains("hunter2"), "{}", text(&help));
}

/// `cleanroom agent` watching the children of `parent` every 200 ms and storing their reports
/// in `pg`, with `env` set; once it listens. Its log is piped to stderr.
fn agent_storing_in(
    pg: &PgCluster,
    parent: &TestCgroup,
    env: &[(&str, &std::ffi::OsStr)],
) -> Started {
    let relative = parent
        .path()
        .strip_prefix(v2_mount())
        .unwrap()
        .display()
        .to_string();
    let port = free_loopback_port();
    let agent = Command::new(cleanroom_bin())
        .envs(env.iter().copied())
        .args(["agent", "--no-socket", "--interval", "200ms"])
        .args(["--watch", &format!("{relative}/*")])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            &pg.url(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cleanroom agent");
    let agent = Started::new(agent);
    wait_for_port(port, "the agent");
    agent
}

/// A child `name` of `parent` (which an agent watches every 200 ms) that spins `spin_ms` and
/// is removed: the agent picks it up first, and its watch has ended when this returns.
fn watched_job(parent: &TestCgroup, name: &str, spin_ms: u32) {
    let job = parent.path().join(name);
    std::fs::create_dir(&job).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    run_in_cgroup(
        &job,
        &format!("{} spin-ms {spin_ms}", workload_bin!().display()),
    );
    std::fs::remove_dir(&job).unwrap();
    std::thread::sleep(Duration::from_millis(800));
}

/// The agent keeps its watched cgroups' reports in the fleet's database too (its store calls
/// made from its async loop).
#[test]
fn the_agent_stores_a_watched_cgroups_report_in_postgres() {
    let test = "the_agent_stores_a_watched_cgroups_report_in_postgres";
    if !privileged(test) {
        return;
    }
    let Some(pg) = PgCluster::start(test) else {
        return;
    };
    let parent = TestCgroup::new("fleet-agent");
    let agent = agent_storing_in(&pg, &parent, &[]);
    watched_job(&parent, "job", 300);
    let out = agent.terminate();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let cpu: u64 = pg
        .psql("SELECT report->'totals'->>'cpu_time_ns' FROM runs")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {log}"));
    assert!(cpu > 250_000_000, "{cpu} ns for 300 ms of spinning");
    assert_eq!(pg.psql("SELECT count(*) FROM runs").trim(), "1", "{log}");
}

/// The agent outlives its database's restart: a watch that ends while the database is down is
/// spooled, and once it is back the agent connects again (its first try after the failed one
/// waits `RECONNECT_EVERY`, 10 s) and stores the next report with the spooled one.
#[test]
fn the_agent_spools_while_its_database_is_down_and_connects_again() {
    let test = "the_agent_spools_while_its_database_is_down_and_connects_again";
    if !privileged(test) {
        return;
    }
    let Some(pg) = PgCluster::start(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let parent = TestCgroup::new("fleet-agent-restart");
    let agent = agent_storing_in(&pg, &parent, &[("CLEANROOM_SPOOL", spool.as_os_str())]);
    let watch = |name: &str| watched_job(&parent, name, 100);
    let stored = || pg.psql("SELECT count(*) FROM runs").trim().to_owned();
    watch("first");
    assert_eq!(stored(), "1");

    pg.pause();
    let down_at = Instant::now();
    watch("second");
    let spooled = walk(&spool);
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    let second: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spooled[0]).unwrap()).unwrap();

    pg.resume();
    if let Some(wait) = Duration::from_secs(11).checked_sub(down_at.elapsed()) {
        std::thread::sleep(wait);
    }
    watch("third");
    let out = agent.terminate();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("report spooled in"), "{log}");
    assert!(log.contains("1 spooled run(s) stored too"), "{log}");
    assert_eq!(stored(), "3", "{log}");
    assert!(walk(&spool).is_empty(), "{log}");
    let run_ids = pg.psql("SELECT run_id FROM runs ORDER BY id");
    assert!(
        run_ids.contains(second["run_id"].as_str().unwrap()),
        "{run_ids}"
    );
}

/// `--baseline NAME@BRANCH` finds the latest passing run of that name on that branch, from
/// whichever host ran it; `--baseline-window N` compares with the medians of the latest N,
/// and the comparison lists the runs it used.
#[test]
fn a_baseline_by_name_comes_from_any_host_and_a_window_is_its_medians() {
    let test = "a_baseline_by_name_comes_from_any_host_and_a_window_is_its_medians";
    if !privileged(test) {
        return;
    }
    let Some(pg) = PgCluster::start(test) else {
        return;
    };
    let url = pg.url();
    let (repo, _) = repo_on_main();
    let workload = workload_bin!().display().to_string();
    // `cleanroom run` in the repository, on this host or, with `other_host`, on `runner-b`.
    let run = |extra: &str, command: &str, other_host: bool| {
        let line = format!(
            "{} run -q --name suite --store {url} {extra} -- {command}",
            cleanroom_bin().display()
        );
        let mut cmd = if other_host {
            let mut c = Command::new("unshare");
            c.args(["--uts", "sh", "-c", &format!("hostname runner-b && {line}")]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &line]);
            c
        };
        cmd.current_dir(repo.path()).output().expect("sh")
    };
    let spin = format!("{workload} spin-ms 100");
    for _ in 0..3 {
        assert!(run("", &spin, false).status.success());
    }
    // Neither a failed run on main nor a passing one on another branch is a baseline.
    assert_eq!(run("", "sh -c 'exit 1'", false).status.code(), Some(1));
    let topic = run("", &format!("env CLEANROOM_GIT_BRANCH=topic {spin}"), false);
    assert!(topic.status.success());
    let ids = |sql: &str| -> Vec<i64> {
        pg.psql(sql)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    };
    let passing_on_main = "SELECT id FROM runs WHERE name = 'suite' AND git_branch = 'main' \
                           AND exit_code = 0 ORDER BY id DESC";
    let latest = ids(passing_on_main)[0];

    // The other host: the latest passing run on main is this host's third.
    let report = repo.path().join("one.json");
    let out = run(
        &format!("--baseline suite@main --report {}", report.display()),
        &spin,
        true,
    );
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["host"]["hostname"], "runner-b");
    let base = &r["comparison"]["base"];
    assert_eq!(base["runs"], serde_json::json!([latest]), "{base}");
    assert_eq!(base["label"], format!("suite@main (run {latest})"));

    // A window of three: the medians of the three latest passing runs on main, whichever host.
    let window = ids(passing_on_main)[..3].to_vec();
    let report = repo.path().join("three.json");
    let out = run(
        &format!(
            "--baseline suite@main --baseline-window 3 --report {}",
            report.display()
        ),
        &spin,
        true,
    );
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        r["comparison"]["base"]["runs"],
        serde_json::json!(window),
        "{:#}",
        r["comparison"]["base"]
    );
    let mut cpus: Vec<u64> = window
        .iter()
        .map(|id| {
            pg.psql(&format!(
                "SELECT report->'totals'->>'cpu_time_ns' FROM runs WHERE id = {id}"
            ))
            .trim()
            .parse()
            .unwrap()
        })
        .collect();
    cpus.sort_unstable();
    let change = r["comparison"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "cpu_time_ns")
        .unwrap();
    assert_eq!(change["base"].as_f64(), Some(cpus[1] as f64), "{change}");

    // Nothing of that name: said before the command runs (exit 2).
    let out = run("--baseline nosuch@main", "true", false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no passing run named `nosuch` on branch `main`"),
        "{stderr}"
    );
}

/// With the database stopped, a run still writes its report and spools itself (said, exit
/// code unchanged); the next run that reaches the database stores both, and a run offered
/// twice is kept once.
#[test]
fn a_run_while_the_database_is_away_is_spooled_and_sent_with_the_next() {
    let test = "a_run_while_the_database_is_away_is_spooled_and_sent_with_the_next";
    if !privileged(test) {
        return;
    }
    let Some(pg) = PgCluster::start(test) else {
        return;
    };
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let run = |report: &str| {
        Command::new(cleanroom_bin())
            .env("CLEANROOM_SPOOL", &spool)
            .args(["run", "-q", "--name", "away", "--store", &url, "--report"])
            .arg(dir.path().join(report))
            .args(["--", "true"])
            .output()
            .expect("starting cleanroom")
    };
    assert!(run("first.json").status.success());
    pg.pause();
    let out = run("second.json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("spooled in"), "{stderr}");
    let second: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("second.json")).unwrap()).unwrap();
    let spooled: Vec<_> = walk(&spool);
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    // Kept aside, to offer it again later.
    let copy = std::fs::read(&spooled[0]).unwrap();

    pg.resume();
    let out = run("third.json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 spooled run(s) stored too"), "{stderr}");
    assert!(walk(&spool).is_empty());
    let run_ids = pg.psql("SELECT run_id FROM runs ORDER BY id");
    assert_eq!(run_ids.lines().count(), 3, "{run_ids}");
    assert!(
        run_ids.contains(second["run_id"].as_str().unwrap()),
        "{run_ids}"
    );

    // The same run spooled again (a flush cut short after the store took it): kept once.
    std::fs::write(&spooled[0], copy).unwrap();
    let out = Command::new(cleanroom_bin())
        .env("CLEANROOM_SPOOL", &spool)
        .args(["store", "flush", "--store", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 spooled run(s) stored"), "{stderr}");
    assert_eq!(pg.psql("SELECT count(*) FROM runs").trim(), "3");
    assert!(walk(&spool).is_empty());
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// One request an OTLP receiver took: path, content type, body.
type Posted = (String, String, Vec<u8>);

/// A receiver on a free loopback port answering 503 to the first request and 200 after,
/// keeping each request.
fn otlp_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Posted>>>) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = got.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (mut len, mut kind) = (0, String::new());
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => len = v.trim().parse().unwrap_or(0),
                        "content-type" => kind = v.trim().to_owned(),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let first = {
                let mut all = log.lock().unwrap();
                all.push((path, kind, body));
                all.len() == 1
            };
            let status = if first {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, got)
}

/// `[export.otlp]`: the run's totals reach an OTLP/HTTP receiver (decoded with the
/// OpenTelemetry protocol's own types) under a resource naming the host, the service, the
/// run and its git commit and branch, after one refusal; the CPU time is the report's.
#[test]
fn a_runs_metrics_reach_an_otlp_receiver_under_its_resource() {
    use opentelemetry_proto::tonic::{
        collector::metrics::v1::ExportMetricsServiceRequest,
        common::v1::any_value,
        metrics::v1::{metric::Data, number_data_point},
    };
    use prost::Message as _;
    let test = "a_runs_metrics_reach_an_otlp_receiver_under_its_resource";
    if !privileged(test) {
        return;
    }
    let (port, got) = otlp_receiver();
    let (dir, commit) = repo_on_main();
    let config = dir.path().join("cleanroom.toml");
    std::fs::write(
        &config,
        format!("[export.otlp]\nendpoint = \"http://127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let report = dir.path().join("r.json");
    let out = Command::new(cleanroom_bin())
        .current_dir(dir.path())
        .args(["run", "-q", "--no-store", "--name", "otlp-run", "--config"])
        .arg(&config)
        .arg("--report")
        .arg(&report)
        .args([
            "--",
            &workload_bin!().display().to_string(),
            "spin-ms",
            "100",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();

    let got = got.lock().unwrap();
    assert_eq!(got.len(), 2, "one refusal, then the retry");
    let (path, kind, body) = &got[1];
    assert_eq!(path, "/v1/metrics");
    assert_eq!(kind, "application/x-protobuf");
    let request = ExportMetricsServiceRequest::decode(&body[..]).unwrap();
    let rm = &request.resource_metrics[0];
    let attribute = |key: &str| {
        rm.resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no attribute {key}"))
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(attribute("host.name"), hostname.trim());
    assert_eq!(attribute("service.name"), "cleanroom");
    assert_eq!(attribute("cleanroom.run.name"), "otlp-run");
    assert_eq!(attribute("vcs.ref.head.revision"), commit);
    assert_eq!(attribute("vcs.ref.head.name"), "main");
    let cpu = rm.scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "cleanroom.run.cpu_time_ns")
        .and_then(|m| match m.data.as_ref()? {
            Data::Gauge(g) => match g.data_points.first()?.value? {
                number_data_point::Value::AsDouble(v) => Some(v),
                number_data_point::Value::AsInt(v) => Some(v as f64),
            },
            _ => None,
        })
        .expect("cleanroom.run.cpu_time_ns");
    assert_eq!(cpu, report["totals"]["cpu_time_ns"].as_f64().unwrap());
    assert!(cpu > 90e6, "{cpu} ns for 100 ms of spinning");
}

/// The agent exports every `[export.otlp] interval` its watched cgroups' figures so far (a
/// cumulative sum a figure, a resource a cgroup) and, when a watch ends, its run's metrics:
/// the CPU time exported is the stored report's.
#[test]
fn the_agent_exports_its_cgroups_figures_and_each_finished_watch() {
    use opentelemetry_proto::tonic::{
        collector::metrics::v1::ExportMetricsServiceRequest,
        common::v1::any_value,
        metrics::v1::{ResourceMetrics, metric::Data, number_data_point},
    };
    use prost::Message as _;
    let test = "the_agent_exports_its_cgroups_figures_and_each_finished_watch";
    if !privileged(test) {
        return;
    }
    let (port, got) = otlp_receiver();
    let parent = TestCgroup::new("fleet-otlp");
    let relative = parent
        .path()
        .strip_prefix(v2_mount())
        .unwrap()
        .display()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "interval = \"200ms\"\n\n[[watch]]\nglob = \"{relative}/*\"\nname = \"jobs\"\n\n\
             [export.otlp]\nendpoint = \"http://127.0.0.1:{port}\"\ninterval = \"1s\"\n"
        ),
    )
    .unwrap();
    let store = dir.path().join("history.db");
    let listen = free_loopback_port();
    let agent = Command::new(cleanroom_bin())
        .args(["agent", "--no-socket", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{listen}"), "--store"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cleanroom agent");
    let agent = Started::new(agent);
    wait_for_port(listen, "the agent");
    let job = parent.path().join("job");
    std::fs::create_dir(&job).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    run_in_cgroup(&job, &format!("{} spin-ms 2500", workload_bin!().display()));
    std::fs::remove_dir(&job).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = agent.terminate();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");

    let requests: Vec<ExportMetricsServiceRequest> = got
        .lock()
        .unwrap()
        .iter()
        .skip(1) // refused
        .map(|(_, _, body)| ExportMetricsServiceRequest::decode(&body[..]).unwrap())
        .collect();
    let attribute = |rm: &ResourceMetrics, key: &str| -> Option<String> {
        rm.resource
            .as_ref()?
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    };
    let value = |rm: &ResourceMetrics, name: &str| -> Option<f64> {
        let m = rm.scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)?;
        let point = match m.data.as_ref()? {
            Data::Gauge(g) => g.data_points.first()?,
            Data::Sum(s) => s.data_points.first()?,
            _ => return None,
        };
        Some(match point.value? {
            number_data_point::Value::AsDouble(v) => v,
            number_data_point::Value::AsInt(v) => v as f64,
        })
    };
    let cgroup = format!("{relative}/job");
    let periodic: Vec<f64> = requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .filter(|rm| attribute(rm, "cleanroom.cgroup").as_deref() == Some(cgroup.as_str()))
        .filter_map(|rm| value(rm, "cleanroom.cgroup.cpu_time_ns"))
        .collect();
    assert!(
        periodic.iter().any(|v| *v > 0.0),
        "no periodic figures of {cgroup}: {periodic:?}\n{log}"
    );
    let run_cpu: Vec<f64> = requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .filter(|rm| attribute(rm, "cleanroom.run.name").as_deref() == Some("jobs"))
        .filter_map(|rm| value(rm, "cleanroom.run.cpu_time_ns"))
        .collect();
    let out = cleanroom(&store, &["report", "1", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = report["totals"]["cpu_time_ns"].as_f64().unwrap();
    assert_eq!(run_cpu, [stored], "{log}");
    assert!(stored > 2.0e9, "{stored} ns for 2.5 s of spinning");
    // The periodic figures are the watch's so far: never above its end.
    assert!(
        periodic.iter().all(|v| *v <= stored),
        "{periodic:?} vs {stored}"
    );
}
