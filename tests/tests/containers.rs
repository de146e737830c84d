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
/// With `max_container_startup_time = "1ms"` the run fails (exit 3) on that threshold.
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
        "[performance_monitoring.thresholds]\nmax_container_startup_time = \"1ms\"\n",
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
    // The spinning one listened first thing: from created to listening, at least its start-up.
    assert!(
        u64_at(spin, "/listening_ns") >= u64_at(spin, "/started_ns"),
        "{spin:#}"
    );
    assert!(
        u64_at(spin, "/startup_to_listen_ns") >= u64_at(spin, "/startup_ns"),
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
    assert_eq!(output.status.code(), Some(3), "stderr:\n{stderr}");
    let starts = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "container")
        .count();
    assert_eq!(starts, 2, "each start is an event: {:#}", report["events"]);
}
