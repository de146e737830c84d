//! Every report format, checked for structure (no golden files): the JSON against its schema,
//! the CSV and XML parsed, the PDF rendered to pixels, the HTML loaded in a real browser; and
//! the history: round trips, concurrent writers, comparisons and trends.

use std::{fs, path::Path, process::Command};

use cleanroom_tests::{
    cleanroom, cleanroom_bin, ink_fraction, privileged, temp_file, tool, u64_at, workload_bin,
};

fn workload() -> String {
    workload_bin!().to_str().unwrap().to_owned()
}

/// Runs the demo, which touches every chart (CPU, memory, disk, network, faults), writing every
/// format into `dir`, with one SLO that passes and one that fails.
fn run_every_format(dir: &Path) -> std::process::Output {
    let (_d, slos) = temp_file(
        "slo.toml",
        "[[slos]]\nname = \"fast\"\nobjective = \"wall_time <= 60s\"\n\
         [[slos]]\nname = \"frugal\"\nobjective = \"cpu_time <= 1ms\"\n",
    );
    let mut cmd = Command::new(cleanroom_bin());
    cmd.env("CLEANROOM_STORE", dir.join("history.db")).args([
        "demo",
        "--interval",
        "100ms",
        "--slo",
        &slos,
    ]);
    for ext in ["json", "csv", "totals.csv", "md", "xml", "html", "pdf"] {
        cmd.arg("--report").arg(dir.join(format!("r.{ext}")));
    }
    cmd.output().expect("starting cleanroom")
}

#[test]
fn every_format_is_structurally_sound() {
    if !privileged("every_format_is_structurally_sound") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = run_every_format(dir.path());
    assert_eq!(
        output.status.code(),
        Some(3),
        "the `frugal` SLO fails: {output:?}"
    );

    // JSON, against the published schema.
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    cleanroom_tests::assert_matches_schema(&json);
    let points = json["series"].as_array().unwrap().len();
    assert!(points >= 3, "only {points} intervals");

    // CSV: the series, one row per interval, units in the header, every cell a number.
    let mut rdr = csv::Reader::from_path(dir.path().join("r.csv")).unwrap();
    let header = rdr.headers().unwrap().clone();
    assert_eq!(&header[0], "t_s");
    assert!(header.iter().any(|h| h == "cpu_percent (%)"), "{header:?}");
    assert!(
        header.iter().any(|h| h == "net_rx_bytes_per_sec (B/s)"),
        "{header:?}"
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), points, "one row per interval");
    for row in &rows {
        assert_eq!(row.len(), header.len());
        for cell in row.iter().filter(|c| !c.is_empty()) {
            cell.parse::<f64>()
                .unwrap_or_else(|_| panic!("not a number: {cell:?} in {row:?}"));
        }
    }
    // CSV totals.
    let mut rdr = csv::Reader::from_path(dir.path().join("r.totals.csv")).unwrap();
    assert_eq!(
        rdr.headers().unwrap().iter().collect::<Vec<_>>(),
        ["metric", "value", "unit"]
    );
    let totals: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    let cpu = totals
        .iter()
        .find(|r| &r[0] == "cpu_time_ns")
        .expect("cpu_time_ns row");
    assert_eq!(
        cpu[1].parse::<u64>().unwrap(),
        u64_at(&json, "/totals/cpu_time_ns")
    );

    // JUnit XML: the command's own outcome, then one case per SLO, the failed one with the
    // measured value and objective.
    let xml = fs::read_to_string(dir.path().join("r.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
    let cases: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 3, "{xml}");
    assert_eq!(
        cases[0].attribute("classname"),
        Some("cleanroom.run"),
        "{xml}"
    );
    let failed = cases
        .iter()
        .find(|c| c.attribute("name") == Some("frugal"))
        .and_then(|c| c.children().find(|n| n.has_tag_name("failure")))
        .expect("the frugal case failed");
    let message = failed.attribute("message").unwrap();
    assert!(
        message.contains("measured") && message.contains("<= 1.0 ms"),
        "{message}"
    );
    let suites = doc.root_element();
    assert_eq!(suites.attribute("failures"), Some("1"));

    // Markdown: verdict first, SLO table, totals, insights.
    let md = fs::read_to_string(dir.path().join("r.md")).unwrap();
    assert!(
        md.lines()
            .next()
            .unwrap()
            .starts_with("## Cleanroom: ❌ FAIL"),
        "{md}"
    );
    assert!(
        md.contains("| SLO / threshold | measured | objective | verdict |"),
        "{md}"
    );
    assert!(md.contains("| `cpu_time_ns` |"), "{md}");
    assert!(md.contains("**Insights**"), "{md}");

    // PDF: real pages, not blank.
    if tool("every_format_is_structurally_sound", "pdftoppm") {
        let prefix = dir.path().join("page");
        let status = Command::new("pdftoppm")
            .args(["-r", "40"])
            .arg(dir.path().join("r.pdf"))
            .arg(&prefix)
            .status()
            .unwrap();
        assert!(status.success(), "pdftoppm failed");
        let mut pages: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("page"))
            .map(|e| e.path())
            .collect();
        pages.sort();
        assert!(pages.len() >= 2, "{} pages", pages.len());
        for page in pages {
            let ink = ink_fraction(&fs::read(&page).unwrap());
            assert!(ink > 0.001, "{} is blank ({ink})", page.display());
        }
    }
}

/// The HTML report in headless Chromium: it loads, logs no console error, fetches nothing,
/// and renders to a screenshot with charts on it (kept at target/report-screenshot.png where
/// target/ is writable).
#[test]
fn html_report_renders_in_a_browser() {
    if !privileged("html_report_renders_in_a_browser")
        || !tool("html_report_renders_in_a_browser", "chromium")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = run_every_format(dir.path());
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let html_path = dir.path().join("r.html");
    let html = fs::read_to_string(&html_path).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page refers to the network"
    );
    assert!(html.matches("<svg").count() >= 5, "charts missing");

    // Kept in target/ for a person to look at, where target/ is writable (not in a guest that
    // sees this checkout read-only); the temporary directory otherwise.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let shot_dir = if tempfile::tempfile_in(&target).is_ok() {
        target
    } else {
        dir.path().to_owned()
    };
    let shot = shot_dir.join("report-screenshot.png");
    let _ = fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2200",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html_path.display()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(shot.is_file(), "no screenshot; chromium said:\n{log}");
    assert!(
        fs::metadata(&shot).unwrap().len() > 20_000,
        "the screenshot is nearly empty"
    );
}

#[test]
fn history_round_trips_and_concurrent_runs_both_land() {
    if !privileged("history_round_trips_and_concurrent_runs_both_land") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("history.db");
    let report = dir.path().join("first.json");
    let out = Command::new(cleanroom_bin())
        .env("CLEANROOM_STORE", &store)
        .args(["run", "-q", "--name", "rt", "--tag", "k=v", "--report"])
        .arg(&report)
        .args(["--", &workload(), "spin", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Two runs at once, same store.
    let spawn = || {
        Command::new(cleanroom_bin())
            .env("CLEANROOM_STORE", &store)
            .args(["run", "-q", "--name", "rt", "--", &workload(), "spin", "1"])
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());

    let history = cleanroom(&store, &["history", "--name", "rt"]);
    let text = String::from_utf8_lossy(&history.stdout);
    let ids: Vec<i64> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "all three runs landed:\n{text}");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // The stored report of the first run is the report it wrote.
    let stored = cleanroom(&store, &["report", &ids[2].to_string(), "--format", "json"]);
    assert!(stored.status.success(), "{stored:?}");
    let stored: serde_json::Value = serde_json::from_slice(&stored.stdout).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(stored, written, "the store changed the report");
    assert_eq!(stored["tags"]["k"], "v");

    // A trend over them.
    let trend = cleanroom(&store, &["trend", "--name", "rt", "--format", "json"]);
    let trend: serde_json::Value = serde_json::from_slice(&trend.stdout).unwrap();
    let cpu = trend["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["metric"] == "cpu_time_ns")
        .unwrap();
    assert_eq!(cpu["values"].as_array().unwrap().len(), 3, "{cpu:#}");
    // Read by people, each figure in its unit: no bare nanoseconds or bytes.
    let md = cleanroom(&store, &["trend", "--name", "rt"]);
    let md = String::from_utf8_lossy(&md.stdout);
    for (metric, unit) in [
        ("cpu_time_ns", "s |"),
        ("wall_time", "s |"),
        // Not memory_peak_bytes: unavailable where cgroup v2 has no memory.peak (before 5.19).
        ("process_peak_rss_bytes", "B |"),
    ] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| `{metric}` |")))
            .unwrap_or_else(|| panic!("no {metric} row:\n{md}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for cell in &cells[2..5] {
            assert!(
                format!("{cell} |").ends_with(unit),
                "{metric}: {cell:?} has no unit in {row}"
            );
        }
    }
}

#[test]
fn comparison_flags_a_planted_regression_and_not_identical_runs() {
    if !privileged("comparison_flags_a_planted_regression_and_not_identical_runs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("history.db");
    let base = dir.path().join("base.json");
    let out = cleanroom(
        &store,
        &[
            "run",
            "-q",
            "--no-store",
            "--report",
            base.to_str().unwrap(),
            "--",
            &workload(),
            "spin",
            "1",
        ],
    );
    assert!(out.status.success(), "{out:?}");

    let same = cleanroom(
        &store,
        &[
            "compare",
            base.to_str().unwrap(),
            base.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    let same: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!(same["regressions"], 0);

    // Plant a regression: twice the CPU time.
    let mut planted: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&base).unwrap()).unwrap();
    let cpu = u64_at(&planted, "/totals/cpu_time_ns");
    planted["totals"]["cpu_time_ns"] = (cpu * 2).into();
    let new = dir.path().join("new.json");
    fs::write(&new, planted.to_string()).unwrap();
    for format in ["json", "md", "csv", "xml", "html", "pdf"] {
        let out_file = dir.path().join(format!("cmp.{format}"));
        let c = cleanroom(
            &store,
            &[
                "compare",
                base.to_str().unwrap(),
                new.to_str().unwrap(),
                "-o",
                out_file.to_str().unwrap(),
            ],
        );
        assert_eq!(c.status.code(), Some(3), "{format}: {c:?}");
        assert!(
            fs::metadata(&out_file).unwrap().len() > 100,
            "{format} is empty"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("cmp.json")).unwrap()).unwrap();
    let flagged: Vec<&str> = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["regression"] == true)
        .map(|c| c["metric"].as_str().unwrap())
        .collect();
    assert_eq!(flagged, ["cpu_time_ns"]);
    let xml = fs::read_to_string(dir.path().join("cmp.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("failure"))
            .count(),
        1
    );

    // `run --baseline`: against a baseline ten times worse in every figure there is nothing to
    // flag; against the quiet base, a run three times busier regresses.
    let mut slow: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&base).unwrap()).unwrap();
    let worse = |v: &mut serde_json::Value| {
        if let Some(n) = v.as_u64() {
            *v = (n * 10 + 1_000_000_000).into();
        }
    };
    worse(&mut slow["wall_time_ns"]);
    for (_, total) in slow["totals"].as_object_mut().unwrap().iter_mut() {
        worse(total);
        for key in ["p50_ns", "p90_ns", "p99_ns", "max_ns"] {
            if let Some(v) = total.get_mut(key) {
                worse(v);
            }
        }
    }
    let slow_path = dir.path().join("slow.json");
    fs::write(&slow_path, slow.to_string()).unwrap();
    let ok = cleanroom(
        &store,
        &[
            "run",
            "-q",
            "--no-store",
            "--baseline",
            slow_path.to_str().unwrap(),
            "--",
            &workload(),
            "spin",
            "1",
        ],
    );
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let worse = cleanroom(
        &store,
        &[
            "run",
            "-q",
            "--no-store",
            "--baseline",
            base.to_str().unwrap(),
            "--",
            &workload(),
            "spin",
            "3",
        ],
    );
    assert_eq!(worse.status.code(), Some(3), "{worse:?}");

    // `run --tolerance`: the same busier run passes once every figure is given room (the
    // figures' names from a comparison of the two runs).
    let flagged_report = dir.path().join("worse.json");
    let flagged = cleanroom(
        &store,
        &[
            "run",
            "-q",
            "--no-store",
            "--report",
            flagged_report.to_str().unwrap(),
            "--",
            &workload(),
            "spin",
            "3",
        ],
    );
    assert!(flagged.status.success(), "{flagged:?}");
    let cmp = cleanroom(
        &store,
        &[
            "compare",
            base.to_str().unwrap(),
            flagged_report.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(cmp.status.code(), Some(3), "{cmp:?}");
    let cmp: serde_json::Value = serde_json::from_slice(&cmp.stdout).unwrap();
    let figures: Vec<String> = cmp["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["metric"].as_str())
        .map(|m| format!("{m}=100000%"))
        .collect();
    assert!(figures.len() > 5, "{cmp:#}");
    let mut args = vec![
        "run",
        "-q",
        "--no-store",
        "--baseline",
        base.to_str().unwrap(),
    ];
    for f in &figures {
        args.extend(["--tolerance", f.as_str()]);
    }
    let w = workload();
    args.extend(["--", w.as_str(), "spin", "3"]);
    let tolerated = cleanroom(&store, &args);
    assert_eq!(
        tolerated.status.code(),
        Some(0),
        "{figures:?}: {tolerated:?}"
    );
}

#[test]
fn anomalies_are_the_strongest_five_in_their_units() {
    if !privileged("anomalies_are_the_strongest_five_in_their_units") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A saved run with 175 anomalies of memory, the strongest in the middle.
    let anomalies: Vec<serde_json::Value> = (0..175u64)
        .map(|i| {
            serde_json::json!({
                "t_ns": i * 1_000_000_000, "metric": "memory_current_bytes",
                "value": 97_001_472.0, "median": 84_754_432.0,
                "score": if i == 100 { 40.0 } else { 4.0 + i as f64 / 1000.0 }
            })
        })
        .collect();
    let report = serde_json::json!({
        "schema_version": 1, "command": ["make", "test"], "exit_code": 0,
        "started_at": "2026-01-01T00:00:00Z", "wall_time_ns": 180_000_000_000u64,
        "cgroup": {"path": "/x", "id": 1}, "totals": {"cpu_time_ns": 1_000_000_000},
        "kernel": {}, "unavailable": [], "dropped": {}, "verdict": "none",
        "anomalies": anomalies, "anomaly_method": "modified z-score"
    });
    let path = dir.path().join("run.json");
    fs::write(&path, report.to_string()).unwrap();
    let store = dir.path().join("history.db");
    for format in ["md", "html"] {
        let out = cleanroom(
            &store,
            &["report", path.to_str().unwrap(), "--format", format],
        );
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("97001472"),
            "{format}: a raw figure in:\n{text}"
        );
        assert_eq!(
            text.matches("92.5 MiB vs median 80.8 MiB").count(),
            5,
            "{format}: not the five strongest in MiB:\n{text}"
        );
        assert!(
            text.contains("at 100.0s: 92.5 MiB vs median 80.8 MiB (score 40.0)"),
            "{format}: the strongest is missing:\n{text}"
        );
        assert!(text.contains("… and 170 more"), "{format}:\n{text}");
    }
}
