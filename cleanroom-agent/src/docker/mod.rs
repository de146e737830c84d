//! The Docker engine, spoken to over its Unix socket: `client` is a small HTTP/1.1 client (a
//! request, a JSON answer, or a stream of JSON events), `events` reads what the engine says
//! about containers. No `docker` CLI is run.

pub mod client;
pub mod events;

/// Where the engine listens unless `DOCKER_HOST` says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The engine's socket: `DOCKER_HOST` when it names a Unix socket (`unix:///path`), else
/// [`DEFAULT_SOCKET`].
pub fn socket_path() -> std::path::PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(std::path::PathBuf::from))
        .unwrap_or_else(|| DEFAULT_SOCKET.into())
}
