//! What the engine says about containers: its events (created, started, died, destroyed) and a
//! container's inspection (its name, image and main process). Pure: JSON in, typed values out.

use serde_json::Value;

/// A container's id as the engine gives it (64 hexadecimal digits).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(pub String);

impl ContainerId {
    /// The 12 digits `docker ps` shows.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

/// What happened to a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Created (not yet running).
    Create,
    /// Its main process started.
    Start,
    /// Its main process ended.
    Die,
    /// Removed.
    Destroy,
}

/// One event about a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// What happened.
    pub action: Action,
    /// To which container.
    pub id: ContainerId,
    /// Its name.
    pub name: String,
    /// Its image, as it was asked for.
    pub image: String,
    /// When, ns since the epoch (the engine's clock).
    pub time_ns: u64,
    /// The main process's exit code (`Die` only).
    pub exit_code: Option<i32>,
}

/// The query of the events endpoint: container events of these kinds, from now on, of
/// containers with every label of `labels` (`key` or `key=value`).
pub fn events_path(labels: &[String]) -> String {
    let mut filters = serde_json::json!({
        "type": ["container"],
        "event": ["create", "start", "die", "destroy"],
    });
    if !labels.is_empty() {
        filters["label"] = serde_json::json!(labels);
    }
    format!("/events?filters={}", percent_encode(&filters.to_string()))
}

/// `text` safe in a query string.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An event of the stream, if it is one about a container this module knows.
pub fn parse_event(event: &Value) -> Option<ContainerEvent> {
    if event["Type"].as_str() != Some("container") {
        return None;
    }
    let action = match event["Action"].as_str()? {
        "create" => Action::Create,
        "start" => Action::Start,
        "die" => Action::Die,
        "destroy" => Action::Destroy,
        _ => return None,
    };
    let attributes = &event["Actor"]["Attributes"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Some(ContainerEvent {
        action,
        id: ContainerId(
            event["Actor"]["ID"]
                .as_str()
                .or(event["id"].as_str())?
                .to_owned(),
        ),
        name: text(&attributes["name"]),
        image: attributes["image"]
            .as_str()
            .or(event["from"].as_str())
            .unwrap_or_default()
            .to_owned(),
        time_ns: event["timeNano"]
            .as_u64()
            .or_else(|| event["time"].as_u64().map(|s| s * 1_000_000_000))?,
        exit_code: attributes["exitCode"].as_str().and_then(|c| c.parse().ok()),
    })
}

/// The container a cgroup belongs to, by the names engines give their cgroups: `…/<id>`
/// (Docker's cgroupfs driver, `docker/<id>`) or `…/docker-<id>.scope` (its systemd driver), an
/// id being 64 hexadecimal digits.
pub fn container_of_cgroup(relative: &std::path::Path) -> Option<ContainerId> {
    let last = relative.file_name()?.to_str()?;
    let id = last
        .strip_prefix("docker-")
        .and_then(|rest| rest.strip_suffix(".scope"))
        .unwrap_or(last);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| ContainerId(id.to_ascii_lowercase()))
}

/// A container's name and image, from its inspection.
pub fn name_and_image(inspection: &Value) -> Option<(String, String)> {
    let name = inspection["Name"]
        .as_str()?
        .trim_start_matches('/')
        .to_owned();
    let image = inspection["Config"]["Image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Some((name, image))
}

/// What an inspection says of a running container: its main process, if it runs.
pub fn main_pid(inspection: &Value) -> Option<u32> {
    inspection["State"]["Pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_as_the_engine_sends_them() {
        let die = serde_json::json!({
            "status": "die", "id": "41343c817d78f03025cbbb55896b09646551e6845741dcf2698cc00072d3ba02",
            "from": "busybox", "Type": "container", "Action": "die",
            "Actor": {"ID": "41343c817d78f03025cbbb55896b09646551e6845741dcf2698cc00072d3ba02",
                      "Attributes": {"exitCode": "3", "image": "busybox", "name": "spin"}},
            "scope": "local", "time": 1_764_390_000, "timeNano": 1_764_390_000_123_456_789u64
        });
        let e = parse_event(&die).unwrap();
        assert_eq!(
            (e.action, e.id.short(), e.name.as_str(), e.image.as_str()),
            (Action::Die, "41343c817d78", "spin", "busybox")
        );
        assert_eq!(
            (e.time_ns, e.exit_code),
            (1_764_390_000_123_456_789, Some(3))
        );
        let mut other = die.clone();
        other["Action"] = "exec_start".into();
        assert_eq!(parse_event(&other), None);
        other["Type"] = "network".into();
        assert_eq!(parse_event(&other), None);
        let mut old = die;
        old.as_object_mut().unwrap().remove("timeNano");
        assert_eq!(
            parse_event(&old).unwrap().time_ns,
            1_764_390_000_000_000_000
        );
    }

    #[test]
    fn container_cgroups_are_told_by_their_names() {
        let id = "41343c817d78f03025cbbb55896b09646551e6845741dcf2698cc00072d3ba02";
        let of = |p: &str| container_of_cgroup(std::path::Path::new(p)).map(|c| c.0);
        assert_eq!(of(&format!("docker/{id}")).as_deref(), Some(id));
        assert_eq!(
            of(&format!("system.slice/docker-{id}.scope")).as_deref(),
            Some(id)
        );
        assert_eq!(of("system.slice/docker.service"), None);
        assert_eq!(of(&format!("docker/{}", &id[1..])), None);
        let inspection = serde_json::json!({"Name": "/web", "Config": {"Image": "nginx:1"}});
        assert_eq!(
            name_and_image(&inspection),
            Some(("web".to_owned(), "nginx:1".to_owned()))
        );
    }

    #[test]
    fn the_query_asks_for_container_events_with_the_labels() {
        let path = events_path(&["ci.job=42".into()]);
        assert!(path.starts_with("/events?filters=%7B"), "{path}");
        assert!(path.contains("ci.job%3D42"), "{path}");
        assert!(!events_path(&[]).contains("label"));
        let running = serde_json::json!({"State": {"Pid": 4242, "Running": true}});
        assert_eq!(main_pid(&running), Some(4242));
        assert_eq!(main_pid(&serde_json::json!({"State": {"Pid": 0}})), None);
    }
}
