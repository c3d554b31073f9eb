//! The comparison of two result files: the key metrics side by side with their ratio,
//! printed as a Markdown table and drawn as an SVG bar chart (hand-written SVG: one row
//! per metric, two bars scaled to the larger of the pair, lower is better everywhere).

use std::fmt::Write as _;

use crate::cli::ChartArgs;
use crate::results::{LifecycleResult, Results};

/// Chart geometry, in SVG user units.
const WIDTH: f64 = 1000.0;
const LABEL_WIDTH: f64 = 340.0;
const BAR_MAX: f64 = 420.0;
const ROW_HEIGHT: f64 = 50.0;
const BAR_HEIGHT: f64 = 16.0;
const TOP: f64 = 92.0;
/// Series colours: ours, theirs.
const COLOURS: [&str; 2] = ["#d9480f", "#1c7ed6"];

/// One compared metric. Lower is better for all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// What is measured.
    pub label: String,
    /// The unit the values are in.
    pub unit: &'static str,
    /// Our value and series name.
    pub ours: (String, f64),
    /// Their value and series name.
    pub theirs: (String, f64),
}

impl Metric {
    /// ours / theirs.
    pub fn ratio(&self) -> f64 {
        if self.theirs.1 == 0.0 {
            f64::NAN
        } else {
            self.ours.1 / self.theirs.1
        }
    }
}

/// Reads the files, prints the table and writes the chart.
pub fn run(args: &ChartArgs) -> anyhow::Result<()> {
    let ours = Results::read(&args.ours)?;
    let theirs = Results::read(&args.theirs)?;
    let conmon = args.conmon.as_deref().map(Results::read).transpose()?;
    let metrics = metrics(&ours, &theirs, conmon.as_ref());
    anyhow::ensure!(
        !metrics.is_empty(),
        "the two result files have no metric in common"
    );
    print!("{}", markdown(&metrics, &ours.name, &theirs.name));
    let title = format!(
        "{} vs {} on {} CPUs (Linux {}), lower is better",
        ours.name, theirs.name, ours.host.cpus, ours.host.kernel
    );
    std::fs::write(&args.out, svg(&title, &metrics))?;
    eprintln!("chart: {}", args.out.display());
    Ok(())
}

/// The metrics both files have, in chart order.
pub fn metrics(ours: &Results, theirs: &Results, conmon: Option<&Results>) -> Vec<Metric> {
    let mut out = Vec::new();
    let mut add = |label: String, unit, f: &dyn Fn(&Results) -> Option<f64>| {
        if let (Some(a), Some(b)) = (f(ours), f(theirs)) {
            out.push(Metric {
                label,
                unit,
                ours: (ours.name.clone(), a),
                theirs: (theirs.name.clone(), b),
            });
        }
    };
    let seq = |r: &Results| r.lifecycle.iter().find(|l| l.concurrency == 1).cloned();
    let par = |r: &Results| r.lifecycle.iter().find(|l| l.concurrency > 1).cloned();
    let par_c = par(ours).map(|l| l.concurrency).unwrap_or(0);
    let pods = ours.list.as_ref().map(|l| l.pods).unwrap_or(0);
    let containers = ours.list.as_ref().map(|l| l.containers).unwrap_or(0);
    let kb_to_mib = |kb: u64| kb as f64 / 1024.0;

    add("pod running p50, sequential".into(), "ms", &|r| {
        seq(r).map(|l| l.pod_running.p50_ms)
    });
    add(format!("pod running p50, {par_c} at once"), "ms", &|r| {
        par(r).map(|l| l.pod_running.p50_ms)
    });
    add("whole pod lifecycle p50, sequential".into(), "ms", &|r| {
        seq(r).map(|l| l.total.p50_ms)
    });
    add("cold pull p50, multi-layer image".into(), "ms", &|r| {
        r.pull.as_ref().map(|p| p.summary.p50_ms)
    });
    add(
        format!("ListContainers p99, {containers} containers"),
        "ms",
        &|r| list_p99(r, "ListContainers"),
    );
    add(format!("ListPodSandbox p99, {pods} pods"), "ms", &|r| {
        list_p99(r, "ListPodSandbox")
    });
    add("daemon RSS, idle".into(), "MiB", &|r| {
        r.daemon_idle.map(|m| kb_to_mib(m.vm_rss_kb))
    });
    add(
        "daemon RssAnon (private memory), idle".into(),
        "MiB",
        &|r| r.daemon_idle.map(|m| kb_to_mib(m.rss_anon_kb)),
    );
    add("daemon RssAnon, after the cold pulls".into(), "MiB", &|r| {
        r.pull
            .as_ref()
            .and_then(|p| p.daemon_after)
            .map(|m| kb_to_mib(m.rss_anon_kb))
    });
    add("daemon RSS, peak during lifecycles".into(), "MiB", &|r| {
        r.lifecycle
            .iter()
            .filter_map(|l| l.daemon.as_ref())
            .map(|d| kb_to_mib(d.peak.vm_rss_kb))
            .reduce(f64::max)
    });
    add(format!("daemon RSS with {pods} pods"), "MiB", &|r| {
        r.list
            .as_ref()
            .and_then(|l| l.daemon_with_pods)
            .map(|m| kb_to_mib(m.vm_rss_kb))
    });
    add("daemon CPU per pod lifecycle".into(), "ms", &|r| {
        seq(r)
            .and_then(|l: LifecycleResult| l.daemon_cpu_s_per_pod)
            .map(|s| s * 1e3)
    });
    add("helper processes' RssAnon per pod".into(), "KiB", &|r| {
        r.list.as_ref().and_then(|l| l.helpers_rss_anon_kb_per_pod)
    });
    add("helper processes' Pss per pod".into(), "KiB", &|r| {
        r.list.as_ref().and_then(|l| l.helpers_pss_kb_per_pod)
    });
    // The monitor against CRI-O's conmon, both one per container: on a node with one
    // pod, and with all the list scenario's pods.
    if let Some(conmon_h) = conmon.and_then(|c| c.helpers.as_ref())
        && conmon_h.count > 0
    {
        let list = ours.list.as_ref();
        for (label, helpers) in [
            (
                "per-container monitor RssAnon, 1 pod".to_string(),
                list.and_then(|l| l.helpers_one_pod.as_ref()),
            ),
            (
                format!("per-container monitor RssAnon, {pods} pods"),
                list.and_then(|l| l.helpers.as_ref()),
            ),
        ] {
            if let Some(h) = helpers.filter(|h| h.count > 0) {
                out.push(Metric {
                    label,
                    unit: "KiB",
                    ours: (h.name.clone(), h.avg_rss_anon_kb),
                    theirs: (conmon_h.name.clone(), conmon_h.avg_rss_anon_kb),
                });
            }
        }
    }
    out
}

fn list_p99(r: &Results, call: &str) -> Option<f64> {
    r.list.as_ref()?.calls.get(call).map(|s| s.p99_ms)
}

/// The metrics as a Markdown table.
pub fn markdown(metrics: &[Metric], ours: &str, theirs: &str) -> String {
    let mut t =
        format!("| metric | {ours} | {theirs} | {ours}/{theirs} |\n| --- | ---: | ---: | ---: |\n");
    for m in metrics {
        let (a, b) = (value(m.ours.1, m.unit), value(m.theirs.1, m.unit));
        // Rows comparing other series (the monitor against conmon) say so.
        let label = if m.ours.0 != ours || m.theirs.0 != theirs {
            format!("{} ({} vs {})", m.label, m.ours.0, m.theirs.0)
        } else {
            m.label.clone()
        };
        let _ = writeln!(t, "| {label} | {a} | {b} | {:.2} |", m.ratio());
    }
    t
}

/// A value with its unit, with sensible precision.
fn value(v: f64, unit: &str) -> String {
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {unit}")
}

/// The chart as an SVG document.
pub fn svg(title: &str, metrics: &[Metric]) -> String {
    let height = TOP + ROW_HEIGHT * metrics.len() as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>
<text x="20" y="30" font-size="17" font-weight="bold">{}</text>"##,
        escape(title)
    );
    // The legend names the two main series from the first row.
    if let Some(first) = metrics.first() {
        for (i, name) in [&first.ours.0, &first.theirs.0].into_iter().enumerate() {
            let x = 20.0 + 180.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="46" width="14" height="14" fill="{}"/><text x="{}" y="58">{}</text>"#,
                COLOURS[i],
                x + 20.0,
                escape(name)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="58" text-anchor="end" fill="#555">ratio</text>"##,
            WIDTH - 20.0
        );
    }
    for (row, m) in metrics.iter().enumerate() {
        let y = TOP + ROW_HEIGHT * row as f64;
        let max = m.ours.1.max(m.theirs.1);
        let _ = writeln!(
            s,
            r##"<line x1="20" x2="{}" y1="{}" y2="{}" stroke="#e9ecef"/>"##,
            WIDTH - 20.0,
            y - 8.0,
            y - 8.0
        );
        let _ = writeln!(
            s,
            r#"<text x="20" y="{}">{}</text>"#,
            y + BAR_HEIGHT - 2.0,
            escape(&m.label)
        );
        // A row comparing other series than the legend's names them under its label.
        if metrics
            .first()
            .is_some_and(|f| f.ours.0 != m.ours.0 || f.theirs.0 != m.theirs.0)
        {
            let _ = writeln!(
                s,
                r##"<text x="20" y="{}" font-size="12" fill="#555">{} (top) vs {} (bottom)</text>"##,
                y + 2.0 * BAR_HEIGHT + 1.0,
                escape(&m.ours.0),
                escape(&m.theirs.0)
            );
        }
        for (i, v) in [m.ours.1, m.theirs.1].into_iter().enumerate() {
            let by = y + i as f64 * (BAR_HEIGHT + 3.0);
            let w = if max > 0.0 {
                (v / max * BAR_MAX).max(1.0)
            } else {
                1.0
            };
            let _ = writeln!(
                s,
                r#"<rect x="{LABEL_WIDTH}" y="{by}" width="{w:.1}" height="{BAR_HEIGHT}" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
                COLOURS[i],
                LABEL_WIDTH + w + 6.0,
                by + BAR_HEIGHT - 3.0,
                escape(&value(v, m.unit))
            );
        }
        let ratio = m.ratio();
        let colour = if ratio <= 1.0 { "#2b8a3e" } else { "#c92a2a" };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" font-weight="bold" fill="{colour}">{ratio:.2}×</text>"#,
            WIDTH - 20.0,
            y + BAR_HEIGHT + 2.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="20" y="{}" fill="#555" font-size="12">ratio = first / second series; below 1 (green) the first is faster or smaller</text>"##,
        height - 16.0
    );
    s.push_str("</svg>\n");
    s
}

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::PullResult;
    use crate::stats::Summary;

    fn with_pull(name: &str, p50: f64) -> Results {
        Results {
            name: name.into(),
            pull: Some(PullResult {
                image: "x".into(),
                runs_ms: vec![p50],
                summary: Summary {
                    n: 1,
                    p50_ms: p50,
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_metrics_both_have_are_compared() {
        let ours = with_pull("crust", 500.0);
        let theirs = with_pull("containerd", 1000.0);
        let m = metrics(&ours, &theirs, None);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].ratio(), 0.5);
        assert!(metrics(&ours, &Results::default(), None).is_empty());
    }

    #[test]
    fn svg_is_escaped_and_has_a_row_per_metric() {
        let m = metrics(&with_pull("a<b", 1.0), &with_pull("c", 2.0), None);
        let doc = svg("t & t", &m);
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("a&lt;b") && doc.contains("t &amp; t"));
        assert!(doc.contains("0.50×"));
        assert!(markdown(&m, "a<b", "c").contains("| 0.50 |"));
    }
}
