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

/// The name and image of the container whose cgroup is `relative` (to the v2 mount), when the
/// path names one and the engine answers.
pub fn describe_cgroup(relative: &std::path::Path) -> Option<(String, String)> {
    let id = events::container_of_cgroup(relative)?;
    let socket = socket_path();
    if !socket.exists() {
        return None;
    }
    match client::get_json(&socket, &format!("/containers/{}/json", id.0)) {
        Ok(inspection) => events::name_and_image(&inspection),
        Err(e) => {
            log::debug!("naming container {}: {e}", id.short());
            None
        }
    }
}
