//! The CPU profile as a flame graph (inferno): for `--report FILE.svg` with inferno's script
//! (click to zoom, search), and inside the HTML report without any (a frame's name, samples
//! and share show on hover).

use inferno::flamegraph::{self, Options};

use crate::profile::Profile;

/// Width of the picture, px.
const WIDTH: usize = 1200;

/// The flame graph of `profile`, titled `title`, with inferno's script if `interactive`;
/// `None` when it has no stacks.
pub fn svg(profile: &Profile, title: &str, interactive: bool) -> Option<String> {
    if profile.stacks.is_empty() {
        return None;
    }
    let mut options = Options::default();
    options.title = title.to_owned();
    options.subtitle = Some(format!(
        "{} samples, {} at {} Hz; kernel frames end in _[k]",
        profile.samples, profile.clock, profile.frequency_hz
    ));
    options.count_name = "samples".to_owned();
    options.no_javascript = !interactive;
    options.deterministic = true;
    options.hash = true;
    options.image_width = Some(WIDTH);
    // Frames under 0.5% of the samples are left out (they are in the folded stacks): a deep,
    // rare stack would otherwise make the picture mostly empty height.
    options.min_width = WIDTH as f64 * 0.005;
    let lines: Vec<String> = profile
        .stacks
        .iter()
        .map(|s| format!("{} {}", s.stack, s.samples))
        .collect();
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out).ok()?;
    String::from_utf8(out).ok()
}

/// A flame graph made without script (`interactive` false) as it sits inside an HTML page: no
/// XML declaration or doctype, and not even the variables and `onload` inferno leaves.
pub fn inline(svg: &str) -> String {
    let svg = svg.find("<svg").map_or(svg, |at| &svg[at..]);
    let mut out = svg.replacen(" onload=\"init(evt)\"", "", 1);
    while let (Some(start), Some(end)) = (out.find("<script"), out.find("</script>")) {
        if end < start {
            break;
        }
        out.replace_range(start..end + "</script>".len(), "");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{FoldedStack, Unwinding};

    #[test]
    fn a_flame_graph_names_each_frame_without_script() {
        let profile = Profile {
            clock: "cpu-clock".into(),
            frequency_hz: 99,
            samples: 100,
            lost: 0,
            stacks_not_kept: 0,
            unwinding: Unwinding::default(),
            top_functions: Vec::new(),
            stacks: vec![
                FoldedStack {
                    stack: "p;main;outer;hot_a".into(),
                    samples: 70,
                },
                FoldedStack {
                    stack: "p;main;outer;hot_b".into(),
                    samples: 30,
                },
            ],
        };
        let svg = inline(&svg(&profile, "CPU", false).expect("an SVG"));
        for name in ["main", "outer", "hot_a", "hot_b"] {
            assert!(svg.contains(&format!(">{name}")), "{name} in {svg}");
        }
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(!svg.contains("<script") && !svg.contains("onload"), "{svg}");
        let interactive = super::svg(&profile, "CPU", true).unwrap();
        assert!(interactive.contains("<script") && interactive.starts_with("<?xml"));
        let empty = Profile {
            stacks: Vec::new(),
            ..profile
        };
        assert_eq!(super::svg(&empty, "CPU", true), None);
    }
}
