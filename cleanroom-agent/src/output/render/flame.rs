//! A profile as a flame graph (inferno): for `--report FILE.svg` with inferno's script
//! (click to zoom, search), and inside the HTML report without any (a frame's name, figure
//! and share show on hover).

use inferno::flamegraph::{self, Options};

use crate::{
    judge::verdict::StackChange,
    profile::{ProfileKind, View},
};

/// Width of the picture, px.
const WIDTH: usize = 1200;

/// The flame graph of `view`, titled `title` over `subtitle`, with inferno's script if
/// `interactive`; `None` when it has no stacks.
pub fn svg(view: &View<'_>, title: &str, subtitle: &str, interactive: bool) -> Option<String> {
    if view.stacks.is_empty() {
        return None;
    }
    let mut options = Options::default();
    options.title = title.to_owned();
    options.subtitle = Some(format!("{subtitle}; kernel frames end in _[k]"));
    options.count_name = match view.kind {
        ProfileKind::Cpu => "samples",
        ProfileKind::OffCpu => "ns",
        ProfileKind::Faults => "faults",
        ProfileKind::Block => "bytes",
    }
    .to_owned();
    options.no_javascript = !interactive;
    options.deterministic = true;
    options.hash = true;
    options.image_width = Some(WIDTH);
    // Frames under 0.5% of the total are left out (they are in the folded stacks): a deep,
    // rare stack would otherwise make the picture mostly empty height.
    options.min_width = WIDTH as f64 * 0.005;
    let lines: Vec<String> = view
        .stacks
        .iter()
        .map(|s| format!("{} {}", s.stack, s.samples))
        .collect();
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out).ok()?;
    String::from_utf8(out).ok()
}

/// The differential flame graph of two CPU profiles (inferno's, as `difffolded` makes them):
/// each box as wide as the function's samples in the new run, red where it grew against the
/// base (scaled to the same total), blue where it shrank. `None` when there are no stacks.
pub fn differential_svg(changes: &[StackChange], title: &str, interactive: bool) -> Option<String> {
    if changes.is_empty() {
        return None;
    }
    let mut options = Options::default();
    options.title = title.to_owned();
    options.subtitle = Some(
        "widths: the new run's samples; red grew, blue shrank against the base, scaled to the \
         same total"
            .to_owned(),
    );
    options.count_name = "samples".to_owned();
    options.no_javascript = !interactive;
    options.deterministic = true;
    options.image_width = Some(WIDTH);
    options.min_width = WIDTH as f64 * 0.005;
    let lines = differential_folded(changes);
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.lines(), &mut out).ok()?;
    String::from_utf8(out).ok()
}

/// `changes` as differential folded stacks: `frames base new` lines.
pub fn differential_folded(changes: &[StackChange]) -> String {
    let mut out = String::new();
    for c in changes {
        out.push_str(&format!("{} {} {}\n", c.stack, c.base, c.new));
    }
    out
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
    use crate::profile::FoldedStack;

    #[test]
    fn a_flame_graph_names_each_frame_without_script() {
        let stacks = vec![
            FoldedStack {
                stack: "p;main;outer;hot_a".into(),
                samples: 70,
            },
            FoldedStack {
                stack: "p;main;outer;hot_b".into(),
                samples: 30,
            },
        ];
        let view = View {
            kind: ProfileKind::Cpu,
            stacks: &stacks,
            top_functions: &[],
            total: 100,
            by_kind: &[],
        };
        let svg = inline(&svg(&view, "CPU", "100 samples", false).expect("an SVG"));
        for name in ["main", "outer", "hot_a", "hot_b"] {
            assert!(svg.contains(&format!(">{name}")), "{name} in {svg}");
        }
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(!svg.contains("<script") && !svg.contains("onload"), "{svg}");
        let interactive = super::svg(&view, "CPU", "", true).unwrap();
        assert!(interactive.contains("<script") && interactive.starts_with("<?xml"));
        let empty = View {
            stacks: &[],
            ..view
        };
        assert_eq!(super::svg(&empty, "CPU", "", true), None);
    }

    #[test]
    fn a_differential_flame_graph_colours_what_grew_red_and_what_shrank_blue() {
        let changes = [
            StackChange {
                stack: "p;main;grew".into(),
                base: 10,
                new: 90,
            },
            StackChange {
                stack: "p;main;shrank".into(),
                base: 90,
                new: 10,
            },
        ];
        let svg = differential_svg(&changes, "diff", false).expect("an SVG");
        let colour_of = |name: &str| {
            let at = svg.find(&format!("<title>{name} ")).expect(name);
            let rect = &svg[at..];
            let fill = rect.find("fill=\"").unwrap() + 6;
            rect[fill..fill + rect[fill..].find('"').unwrap()].to_owned()
        };
        let (grew, shrank) = (colour_of("grew"), colour_of("shrank"));
        let rgb = |c: &str| -> Vec<u32> {
            c.trim_start_matches("rgb(")
                .trim_end_matches(')')
                .split(',')
                .map(|x| x.trim().parse().unwrap())
                .collect()
        };
        let (g, s) = (rgb(&grew), rgb(&shrank));
        assert!(g[0] > g[2], "grew is red: {grew}");
        assert!(s[2] > s[0], "shrank is blue: {shrank}");
        assert_eq!(
            differential_folded(&changes),
            "p;main;grew 10 90\np;main;shrank 90 10\n"
        );
    }
}
