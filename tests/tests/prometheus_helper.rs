//! The [`Prometheus`] helper against a tiny `/metrics` server of the test's own, so that it is
//! known to work before the agent's own tests rely on it: samples come through queries, a bearer
//! token is sent when configured, and a refused scrape shows as the target being down.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use cleanroom_tests::{Prometheus, tool};

/// The fixed text exposition the server answers with.
const EXPOSITION: &str = "# HELP probe_value A fixed value.\n# TYPE probe_value gauge\n\
                          probe_value 42\n";

/// A one-thread HTTP server on a loopback port answering `GET /metrics` with [`EXPOSITION`]
/// (or 401 when it requires a token it was not sent), and recording each request's
/// `Authorization` header. Stopped on drop.
struct MetricsServer {
    addr: String,
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    fn start(required: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().unwrap().to_string();
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let required = required.map(|t| format!("Bearer {t}"));
        let thread = {
            let (authorizations, stop) = (authorizations.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, required.as_deref(), &authorizations);
                    }
                }
            })
        };
        Self {
            addr,
            authorizations,
            stop,
            thread: Some(thread),
        }
    }

    /// The `Authorization` headers of the requests so far (`None` for a request without one).
    fn authorizations(&self) -> Vec<Option<String>> {
        self.authorizations.lock().unwrap().clone()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept so that the thread sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream` and closes it.
fn serve(stream: TcpStream, required: Option<&str>, authorizations: &Mutex<Vec<Option<String>>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    authorizations.lock().unwrap().push(authorization.clone());
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if !path.starts_with("/metrics") {
        ("404 Not Found", "not found\n")
    } else if required.is_some() && authorization.as_deref() != required {
        ("401 Unauthorized", "a bearer token is required\n")
    } else {
        ("200 OK", EXPOSITION)
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = (&stream).write_all(answer.as_bytes());
}

fn is_42(result: &[cleanroom_tests::Sample]) -> bool {
    result.len() == 1 && result[0].1 == 42.0
}

/// The scraped value comes back through a query, labelled with the job and the target; `up` says
/// the target is up; no token is sent when none is configured.
#[test]
fn scrapes_a_metrics_endpoint_and_queries_it() {
    if !tool("scrapes_a_metrics_endpoint_and_queries_it", "prometheus") {
        return;
    }
    let server = MetricsServer::start(None);
    let started = Instant::now();
    let prometheus = Prometheus::start(&server.addr, None);
    eprintln!("prometheus ready in {:?}", started.elapsed());
    let result = prometheus.wait_for("probe_value", Duration::from_secs(30), is_42);
    eprintln!("first sample after {:?}", started.elapsed());
    let labels = &result[0].0;
    assert_eq!(labels["job"], "cleanroom", "{result:?}");
    assert_eq!(labels["instance"], server.addr, "{result:?}");
    assert!(prometheus.targets_up(), "{}", prometheus.targets());
    // A query with characters that must be URL-encoded (`+`, braces, quotes, spaces).
    let sum = prometheus.query(r#"probe_value{job="cleanroom"} + 1"#);
    assert_eq!(sum.len(), 1, "{sum:?}");
    assert_eq!(sum[0].1, 43.0, "{sum:?}");
    let scalar = prometheus.query("scalar(probe_value) * 2");
    assert_eq!(scalar, vec![(Default::default(), 84.0)]);
    let auth = server.authorizations();
    assert!(
        !auth.is_empty() && auth.iter().all(Option::is_none),
        "{auth:?}"
    );
}

/// A configured bearer token is sent with every scrape, and a server that requires it serves.
#[test]
fn sends_the_bearer_token() {
    if !tool("sends_the_bearer_token", "prometheus") {
        return;
    }
    let token = "s3cret token/with+odd\"chars";
    let server = MetricsServer::start(Some(token));
    let prometheus = Prometheus::start(&server.addr, Some(token));
    prometheus.wait_for("probe_value", Duration::from_secs(30), is_42);
    assert!(prometheus.targets_up(), "{}", prometheus.targets());
    let auth = server.authorizations();
    let expected = format!("Bearer {token}");
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a.as_deref() == Some(expected.as_str())),
        "{auth:?}"
    );
}

/// A scrape refused for a missing token shows as the target being down, with no sample.
#[test]
fn a_refused_scrape_is_down() {
    if !tool("a_refused_scrape_is_down", "prometheus") {
        return;
    }
    let server = MetricsServer::start(Some("needed"));
    let prometheus = Prometheus::start(&server.addr, None);
    prometheus.wait_for(r#"up{job="cleanroom"}"#, Duration::from_secs(30), |up| {
        up.len() == 1 && up[0].1 == 0.0
    });
    assert!(!prometheus.targets_up());
    assert!(prometheus.query("probe_value").is_empty());
    assert!(
        prometheus.targets().contains("401"),
        "{}",
        prometheus.targets()
    );
}
