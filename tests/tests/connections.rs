//! The run's traffic by remote endpoint in the report's `connections`, against the interface
//! counters of a veth pair to each endpoint (traffic nobody else sends over them).

use cleanroom_tests::{
    TestCgroup, VethPeer, privileged, rel_diff, run_measured, u64_at, workload_bin,
};

const MIB: u64 = 1 << 20;

/// A run sends 8 MiB to one peer and 2 MiB to another (each echoed back), and talks over
/// loopback: both peers are listed with bytes and packets each way within 1% of their veth's
/// IP-level counters, one connect each, and loopback apart; the connections add up to the run's
/// network totals. Each process is charged its own sockets' traffic: each sender within 1% of
/// its peer's veth counters, and over loopback the accepting process what its client sent.
#[test]
fn each_remote_endpoint_is_listed_with_its_own_traffic() {
    if !privileged("each_remote_endpoint_is_listed_with_its_own_traffic") {
        return;
    }
    let w = workload_bin!().to_str().unwrap().to_owned();
    let (big, small) = (VethPeer::new("crbig", 78), VethPeer::new("crsmall", 79));
    let servers = [
        big.echo_server(&workload_bin!()),
        small.echo_server(&workload_bin!()),
    ];
    let before = [big.ip_counters(), small.ip_counters()];
    let script = format!(
        "{w} tcp-send {}:5001 {} && {w} tcp-send {}:5001 {} && {w} tcp-loop {}",
        big.peer_addr,
        8 * MIB,
        small.peer_addr,
        2 * MIB,
        MIB
    );
    let cg = TestCgroup::new("connections");
    let (output, report) = run_measured(&cg, &["sh", "-c", &script]);
    assert!(output.status.success(), "{output:?}");
    let after = [big.ip_counters(), small.ip_counters()];
    for mut server in servers {
        assert!(server.wait().unwrap().success(), "a peer failed");
    }
    cleanroom_tests::assert_matches_schema(&report);
    let connections = report["connections"]
        .as_array()
        .expect("connections in the report");

    for (i, (peer, bytes)) in [(&big, 8 * MIB), (&small, 2 * MIB)].into_iter().enumerate() {
        let d: Vec<u64> = after[i].iter().zip(before[i]).map(|(a, b)| a - b).collect();
        let (if_rx, if_rx_packets, if_tx, if_tx_packets) = (d[0], d[1], d[2], d[3]);
        let listed: Vec<&serde_json::Value> = connections
            .iter()
            .filter(|c| c["remote_addr"] == peer.peer_addr.as_str())
            .collect();
        assert_eq!(listed.len(), 1, "{}: {connections:#?}", peer.peer_addr);
        let c = listed[0];
        assert_eq!(
            (
                c["protocol"].as_str(),
                c["remote_port"].as_u64(),
                c["loopback"].as_bool()
            ),
            (Some("tcp"), Some(5001), Some(false)),
            "{c:#}"
        );
        let (tx, rx) = (u64_at(c, "/tx_bytes"), u64_at(c, "/rx_bytes"));
        eprintln!(
            "{}: sent {tx} B ({} packets), veth {if_tx} B ({if_tx_packets}); received {rx} B ({} \
             packets), veth {if_rx} B ({if_rx_packets})",
            peer.peer_addr,
            u64_at(c, "/tx_packets"),
            u64_at(c, "/rx_packets")
        );
        assert!(tx >= bytes && rx >= bytes, "{c:#}");
        assert!(
            rel_diff(tx, if_tx) < 0.01,
            "sent {tx} B, the veth {if_tx} B"
        );
        assert!(
            rel_diff(rx, if_rx) < 0.01,
            "received {rx} B, the veth {if_rx} B"
        );
        assert!(
            rel_diff(u64_at(c, "/tx_packets"), if_tx_packets) < 0.01,
            "{c:#}"
        );
        assert!(
            rel_diff(u64_at(c, "/rx_packets"), if_rx_packets) < 0.01,
            "{c:#}"
        );
        assert_eq!(u64_at(c, "/connects"), 1, "{c:#}");
        assert!(u64_at(c, "/connect_max_ns") > 0, "{c:#}");
        assert!(u64_at(c, "/local_port") > 0, "{c:#}");
    }

    // Loopback: both ends of the loopback connection are the run's, each listed.
    let loopback: Vec<&serde_json::Value> = connections
        .iter()
        .filter(|c| c["loopback"] == true)
        .collect();
    assert!(loopback.len() >= 2, "{connections:#?}");
    assert!(
        loopback.iter().all(|c| c["remote_addr"] == "127.0.0.1"),
        "{loopback:#?}"
    );
    let loop_tx: u64 = loopback.iter().map(|c| u64_at(c, "/tx_bytes")).sum();
    assert!(loop_tx >= 2 * MIB, "{loopback:#?}");

    // Each process is charged its own sockets' traffic.
    let processes = report["processes"].as_array().expect("processes");
    let net = |p: &serde_json::Value, field: &str| u64_at(p, &format!("/net/{field}"));
    for (i, peer) in [&big, &small].into_iter().enumerate() {
        let d: Vec<u64> = after[i].iter().zip(before[i]).map(|(a, b)| a - b).collect();
        let sender = find_process(processes, &format!("tcp-send {}:5001", peer.peer_addr));
        let (tx, rx) = (net(sender, "tx_bytes"), net(sender, "rx_bytes"));
        eprintln!(
            "{}: the sending process sent {tx} B, received {rx} B",
            peer.peer_addr
        );
        assert!(rel_diff(tx, d[2]) < 0.01, "{sender:#}: veth sent {}", d[2]);
        assert!(
            rel_diff(rx, d[0]) < 0.01,
            "{sender:#}: veth received {}",
            d[0]
        );
    }
    let looping: Vec<&serde_json::Value> = processes
        .iter()
        .filter(|p| {
            p["command_line"]
                .as_str()
                .is_some_and(|l| l.contains("tcp-loop") && !l.starts_with("sh "))
        })
        .collect();
    assert_eq!(looping.len(), 2, "{processes:#?}");
    let (server, client) = if looping[1]["ppid"] == looping[0]["pid"] {
        (looping[0], looping[1])
    } else {
        (looping[1], looping[0])
    };
    eprintln!(
        "loopback: the accepting process received {} B and sent {} B; its client sent {} B and \
         received {} B",
        net(server, "rx_bytes"),
        net(server, "tx_bytes"),
        net(client, "tx_bytes"),
        net(client, "rx_bytes")
    );
    for (a, b) in [("rx_bytes", "tx_bytes"), ("tx_bytes", "rx_bytes")] {
        assert!(net(server, a) >= MIB, "{server:#}");
        assert!(
            rel_diff(net(server, a), net(client, b)) < 0.01,
            "{server:#} {client:#}"
        );
    }
    let loop_both: u64 = loopback.iter().map(|c| u64_at(c, "/tx_bytes")).sum();
    let by_processes = net(server, "tx_bytes") + net(client, "tx_bytes");
    assert!(
        rel_diff(by_processes, loop_both) < 0.01,
        "loopback sent {loop_both} B, its processes {by_processes} B"
    );

    // Every packet of the run's sockets is in some connection.
    for (total, field) in [("net_tx_bytes", "tx_bytes"), ("net_rx_bytes", "rx_bytes")] {
        let sum: u64 = connections
            .iter()
            .map(|c| u64_at(c, &format!("/{field}")))
            .sum();
        assert_eq!(sum, u64_at(&report, &format!("/totals/{total}")), "{field}");
    }

    // The Markdown names the peers, the most bytes first, and loopback apart.
    let md = cleanroom_tests::markdown_of(&report);
    let endpoints: Vec<&str> = md
        .lines()
        .skip_while(|l| !l.starts_with("**Remote endpoints** (2)"))
        .filter(|l| l.starts_with("| `tcp "))
        .take(2)
        .collect();
    assert_eq!(endpoints.len(), 2, "{md}");
    assert!(
        endpoints[0].contains(&format!("{}:5001", big.peer_addr)),
        "{md}"
    );
    assert!(
        endpoints[1].contains(&format!("{}:5001", small.peer_addr)),
        "{md}"
    );
    assert!(md.contains("Loopback ("), "{md}");
}

/// The one process whose command line holds `words` (not the shell running the script).
fn find_process<'a>(processes: &'a [serde_json::Value], words: &str) -> &'a serde_json::Value {
    let found: Vec<&serde_json::Value> = processes
        .iter()
        .filter(|p| {
            p["command_line"]
                .as_str()
                .is_some_and(|l| l.contains(words) && !l.starts_with("sh "))
        })
        .collect();
    assert_eq!(found.len(), 1, "{words}: {processes:#?}");
    found[0]
}
