//! Docker containers a run starts, followed as part of it: each in the report's `containers`
//! with its start-up time, its CPU against its own cgroup's `cpu.stat`, and its block bytes
//! against what it wrote with O_DIRECT to a loop device; both in the run's totals; and
//! `max_container_startup_time` judged.

use std::fs;

use cleanroom_tests::{
    LoopDevice, TEST_IMAGE, TestCgroup, docker_ready, privileged, rel_diff, run_measured_with,
    u64_at, v2_mount,
};

const MIB: u64 = 1 << 20;

/// One container listens on a TCP port and spins about 500 ms of CPU, then sleeps until the script has read its cgroup's
/// `cpu.stat` and removes it; another writes 8 MiB with O_DIRECT to a loop device passed in.
/// With `max_container_startup_time = "1ms"` and `max_container_count = 1` the run fails
/// (exit 3) on both.
#[test]
fn containers_the_run_starts_are_measured_as_part_of_it() {
    if !privileged("containers_the_run_starts_are_measured_as_part_of_it")
        || !docker_ready("containers_the_run_starts_are_measured_as_part_of_it")
    {
        return;
    }
    let dev = LoopDevice::new(16 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("spin.cpu.stat");
    let config = dir.path().join("slo.toml");
    fs::write(
        &config,
        "[performance_monitoring.thresholds]\nmax_container_startup_time = \"1ms\"\n\
         [resource_limits]\nmax_container_count = 1\n",
    )
    .unwrap();
    let id = std::process::id();
    let script = format!(
        r#"set -e
spin=$(docker run -d --name crt-spin-{id} {TEST_IMAGE} sh -c 'nc -l -p 7777 & while :; do :; done & p=$!; sleep 0.5; kill $p; wait $p || true; echo spun; sleep 60')
until docker logs "$spin" 2>&1 | grep -q spun; do sleep 0.05; done
pid=$(docker inspect -f '{{{{.State.Pid}}}}' "$spin")
cg=$(sed -n 's/^0:://p' /proc/$pid/cgroup)
cat "{v2}$cg/cpu.stat" > "{truth}"
docker rm -f "$spin" > /dev/null
docker run --rm --name crt-io-{id} --device {dev} {TEST_IMAGE} dd if=/dev/zero of={dev} bs=65536 count=128 oflag=direct
"#,
        v2 = v2_mount().display(),
        truth = truth.display(),
        dev = dev.path,
    );
    let cg = TestCgroup::new("containers");
    let (output, report) = run_measured_with(
        &cg,
        &["--follow-containers", "--config", config.to_str().unwrap()],
        &["sh", "-c", &script],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    cleanroom_tests::assert_matches_schema(&report);
    let containers = report["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("no containers in the report; stderr:\n{stderr}"));
    assert_eq!(containers.len(), 2, "{containers:#?}");
    let named = |prefix: &str| {
        containers
            .iter()
            .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .unwrap_or_else(|| panic!("no container {prefix}: {containers:#?}"))
    };
    let (spin, io) = (named("crt-spin-"), named("crt-io-"));
    for c in [spin, io] {
        assert_eq!(c["image"], TEST_IMAGE, "{c:#}");
        assert!(c.get("unmeasured").is_none(), "{c:#}");
        let startup = u64_at(c, "/startup_ns");
        assert!(startup > 0 && startup < 60_000_000_000, "{c:#}");
        assert!(
            u64_at(c, "/started_ns") >= u64_at(c, "/created_ns"),
            "{c:#}"
        );
    }
    assert_eq!(io["exit_code"], 0, "{io:#}");
    // The spinning one listened first thing: after it was created (the engine's start event
    // comes after the container's process started, so a listen can come before it).
    assert!(
        u64_at(spin, "/listening_ns") > u64_at(spin, "/created_ns"),
        "{spin:#}"
    );
    assert_eq!(
        u64_at(spin, "/startup_to_listen_ns"),
        u64_at(spin, "/listening_ns") - u64_at(spin, "/created_ns"),
        "{spin:#}"
    );
    assert!(io.get("listening_ns").is_none(), "{io:#}");

    // CPU: the spinning container against its own cgroup's cpu.stat, read after the spin.
    let stat = fs::read_to_string(&truth).expect("the script read the container's cpu.stat");
    let usage_us: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no usage_usec in {stat}"));
    let cpu = u64_at(spin, "/totals/cpu_time_ns");
    eprintln!(
        "spinning container: {cpu} ns, its cpu.stat {} ns; startups {} and {} ns",
        usage_us * 1_000,
        u64_at(spin, "/startup_ns"),
        u64_at(io, "/startup_ns")
    );
    assert!(usage_us > 300_000, "the container did spin: {stat}");
    assert!(
        rel_diff(cpu, usage_us * 1_000) < 0.02,
        "container CPU {cpu} ns vs its cpu.stat {usage_us} µs"
    );

    // Block: exactly what dd wrote with O_DIRECT, in the container and in the run.
    assert_eq!(u64_at(io, "/totals/block_write_bytes"), 8 * MIB, "{io:#}");
    let loop_dev = cleanroom_tests::block_device(&report, &dev.major_minor());
    assert_eq!(u64_at(loop_dev, "/write_bytes"), 8 * MIB, "{loop_dev:#}");
    // The run's totals hold the containers' own.
    assert!(
        u64_at(&report, "/totals/cpu_time_ns") > cpu,
        "{:#}",
        report["totals"]
    );

    // The 1 ms start-up limit fails the run.
    let threshold = report["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["metric"] == "container_startup_time")
        .unwrap_or_else(|| panic!("no start-up threshold: {:#}", report["thresholds"]));
    assert_eq!(threshold["status"], "fail", "{threshold:#}");
    assert_eq!(threshold["breaches"], 2, "{threshold:#}");
    let count = report["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["metric"] == "container_count")
        .unwrap_or_else(|| panic!("no container count: {:#}", report["thresholds"]));
    assert_eq!(
        (count["status"].as_str(), count["peak"].as_f64()),
        (Some("fail"), Some(2.0))
    );
    assert_eq!(output.status.code(), Some(3), "stderr:\n{stderr}");
    let starts = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "container")
        .count();
    assert_eq!(starts, 2, "each start is an event: {:#}", report["events"]);
}

/// `cleanroom agent` watching `docker/*` names a container's cgroup by the container: its
/// name and image, as the engine has them, in the list of live cgroups.
#[test]
fn the_agent_names_the_containers_it_watches() {
    if !privileged("the_agent_names_the_containers_it_watches")
        || !docker_ready("the_agent_names_the_containers_it_watches")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", cleanroom_tests::free_loopback_port());
    let mut agent = std::process::Command::new(cleanroom_tests::cleanroom_bin())
        .args([
            "agent",
            "--watch",
            "docker/*",
            "--no-store",
            "--no-socket",
            "--listen",
            &listen,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let name = format!("crt-agent-{}", std::process::id());
    let started = std::process::Command::new("docker")
        .args([
            "run", "-d", "--rm", "--name", &name, TEST_IMAGE, "sleep", "30",
        ])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .into();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let found = loop {
        let cgroups: Option<serde_json::Value> = http
            .get(format!("http://{listen}/api/v1/cgroups"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|body| serde_json::from_str(&body).ok());
        let tagged = cgroups.as_ref().and_then(|v| {
            v["cgroups"]
                .as_array()?
                .iter()
                .find(|c| {
                    c["container"]
                        .as_str()
                        .is_some_and(|c| c.starts_with(&format!("{name} (")))
                })
                .cloned()
        });
        if let Some(c) = tagged {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the container was not named: {cgroups:#?}\n{}",
            fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &name])
        .output();
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(
        found["container"].as_str(),
        Some(format!("{name} ({TEST_IMAGE})").as_str()),
        "{found:#}"
    );
}
