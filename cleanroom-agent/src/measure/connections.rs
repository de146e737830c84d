//! A run's network traffic by remote endpoint: for each remote address and port (and local
//! port), bytes and packets each way, TCP retransmits and connect latencies, as the kernel
//! programs counted them for the run's sockets. Read once, at the end of the run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::{
    Error,
    kernel::probe::{ConnKey, ConnStats, Probes},
};

/// The transport of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// Another IP protocol (ICMP, SCTP, …), by number.
    #[serde(untagged)]
    Other(u8),
}

impl Protocol {
    fn from_number(n: u8) -> Self {
        match n {
            6 => Self::Tcp,
            17 => Self::Udp,
            n => Self::Other(n),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Udp => f.write_str("udp"),
            Self::Other(n) => write!(f, "ip-{n}"),
        }
    }
}

/// The traffic of the run's sockets with one remote endpoint from one local port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// Its transport.
    pub protocol: Protocol,
    /// The remote address.
    pub remote_addr: IpAddr,
    /// The remote port (0 for a protocol without ports).
    pub remote_port: u16,
    /// The local port.
    pub local_port: u16,
    /// Whether the remote address is a loopback one (the traffic never left the host).
    pub loopback: bool,
    /// Bytes sent, from the IP header on.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received, from the IP header on.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// TCP segments retransmitted.
    pub retransmits: u64,
    /// TCP connects made (SYN sent → established).
    pub connects: u64,
    /// Their mean latency, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_mean_ns: Option<u64>,
    /// The longest, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_max_ns: Option<u64>,
}

impl Connection {
    /// The connection of one entry of the kernel's map.
    pub fn from_wire(key: &ConnKey, stats: &ConnStats) -> Self {
        let remote_addr = if key.family == 6 {
            IpAddr::V6(Ipv6Addr::from(key.remote_addr))
        } else {
            let a = key.remote_addr;
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        };
        Self {
            protocol: Protocol::from_number(key.protocol),
            remote_addr,
            remote_port: key.remote_port,
            local_port: key.local_port,
            loopback: is_loopback(remote_addr),
            tx_bytes: stats.tx_bytes,
            tx_packets: stats.tx_packets,
            rx_bytes: stats.rx_bytes,
            rx_packets: stats.rx_packets,
            retransmits: stats.retransmits,
            connects: stats.connects,
            connect_mean_ns: stats.connect_ns_sum.checked_div(stats.connects),
            connect_max_ns: (stats.connects > 0).then_some(stats.connect_ns_max),
        }
    }

    /// `addr:port`, or `[addr]:port` for IPv6.
    pub fn remote(&self) -> String {
        match self.remote_addr {
            IpAddr::V4(a) => format!("{a}:{}", self.remote_port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.remote_port),
        }
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.tx_bytes + self.rx_bytes
    }
}

/// A loopback address, IPv4-mapped ones included.
fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The traffic with one remote endpoint, every local port together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Talker {
    /// Its transport.
    pub protocol: Protocol,
    /// `addr:port`.
    pub remote: String,
    /// How many local ports talked to it.
    pub connections: usize,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Retransmits.
    pub retransmits: u64,
    /// The longest connect, ns.
    pub connect_max_ns: Option<u64>,
}

/// The remote endpoints the run talked to, loopback or not, the most bytes first.
pub fn talkers(connections: &[Connection], loopback: bool) -> Vec<Talker> {
    let mut by_remote: std::collections::BTreeMap<(Protocol, String), Talker> = Default::default();
    for c in connections.iter().filter(|c| c.loopback == loopback) {
        let t = by_remote
            .entry((c.protocol, c.remote()))
            .or_insert_with(|| Talker {
                protocol: c.protocol,
                remote: c.remote(),
                connections: 0,
                tx_bytes: 0,
                rx_bytes: 0,
                retransmits: 0,
                connect_max_ns: None,
            });
        t.connections += 1;
        t.tx_bytes += c.tx_bytes;
        t.rx_bytes += c.rx_bytes;
        t.retransmits += c.retransmits;
        t.connect_max_ns = t.connect_max_ns.max(c.connect_max_ns);
    }
    let mut out: Vec<Talker> = by_remote.into_values().collect();
    out.sort_by_key(|t| std::cmp::Reverse(t.tx_bytes + t.rx_bytes));
    out
}

/// The run's connections, the most bytes first, and a note when they cannot be told apart
/// here.
pub fn read(probes: &Probes, run_id: u64) -> Result<(Vec<Connection>, Vec<String>), Error> {
    let mut notes = Vec::new();
    if let Some(why) = probes.connections_unavailable() {
        notes.push(format!("connections are not listed: {why}"));
    }
    let mut connections: Vec<Connection> = probes
        .connections(run_id)?
        .iter()
        .map(|(key, stats)| Connection::from_wire(key, stats))
        .collect();
    connections.sort_by(|a, b| {
        b.bytes()
            .cmp(&a.bytes())
            .then_with(|| a.remote().cmp(&b.remote()))
            .then(a.local_port.cmp(&b.local_port))
    });
    Ok((connections, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(family: u8, addr: &[u8], rport: u16, lport: u16) -> ConnKey {
        let mut k = ConnKey {
            run_id: 1,
            remote_port: rport,
            local_port: lport,
            family,
            protocol: 6,
            ..ConnKey::default()
        };
        k.remote_addr[..addr.len()].copy_from_slice(addr);
        k
    }

    #[test]
    fn an_entry_reads_as_an_endpoint_with_its_latencies() {
        let stats = ConnStats {
            tx_bytes: 100,
            rx_bytes: 50,
            connects: 2,
            connect_ns_sum: 3_000,
            connect_ns_max: 2_000,
            ..ConnStats::default()
        };
        let c = Connection::from_wire(&key(4, &[10, 0, 0, 2], 5001, 40_000), &stats);
        assert_eq!(c.remote(), "10.0.0.2:5001");
        assert_eq!(
            (c.connect_mean_ns, c.connect_max_ns),
            (Some(1_500), Some(2_000))
        );
        assert!(!c.loopback);
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        let c = Connection::from_wire(&key(6, &v6, 80, 1), &ConnStats::default());
        assert_eq!(c.remote(), "[::1]:80");
        assert!(c.loopback);
        assert_eq!((c.connect_mean_ns, c.connect_max_ns), (None, None));
        let c = Connection::from_wire(&key(4, &[127, 0, 0, 53], 53, 1), &ConnStats::default());
        assert!(c.loopback);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            (json["protocol"].as_str(), json["remote_addr"].as_str()),
            (Some("tcp"), Some("127.0.0.53"))
        );
        let mut udp = key(4, &[1, 1, 1, 1], 53, 1);
        udp.protocol = 17;
        assert_eq!(
            Connection::from_wire(&udp, &ConnStats::default()).protocol,
            Protocol::Udp
        );
        udp.protocol = 1;
        let icmp = Connection::from_wire(&udp, &ConnStats::default());
        assert_eq!(serde_json::to_value(icmp.protocol).unwrap(), 1);
        assert_eq!(icmp.protocol.to_string(), "ip-1");
    }

    #[test]
    fn talkers_gather_local_ports_and_keep_loopback_apart() {
        let s = |tx| ConnStats {
            tx_bytes: tx,
            ..ConnStats::default()
        };
        let conns = [
            Connection::from_wire(&key(4, &[10, 0, 0, 2], 80, 1), &s(10)),
            Connection::from_wire(&key(4, &[10, 0, 0, 2], 80, 2), &s(20)),
            Connection::from_wire(&key(4, &[10, 0, 0, 3], 80, 3), &s(25)),
            Connection::from_wire(&key(4, &[127, 0, 0, 1], 80, 4), &s(1_000)),
        ];
        let t = talkers(&conns, false);
        let shape: Vec<(&str, usize, u64)> = t
            .iter()
            .map(|t| (t.remote.as_str(), t.connections, t.tx_bytes))
            .collect();
        assert_eq!(shape, [("10.0.0.2:80", 2, 30), ("10.0.0.3:80", 1, 25)]);
        assert_eq!(talkers(&conns, true)[0].remote, "127.0.0.1:80");
    }
}
