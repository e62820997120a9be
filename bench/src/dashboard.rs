//! `bench dashboard`: one static HTML page from the history. No scripts, no
//! network: the charts are inline SVG drawn here (polylines and bars).
//!
//! Sections: the latest peer table (if `bench peers` ever ran), isolation
//! ratios per stress scenario (latest run, with the 1.1 target), the latest
//! value of every case, then per case its history: frames/s, commands/s and
//! p50/p99 fence latency, one point per history line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::history::{self, PeerRow, Record};

/// The isolation target of DESIGN.md: others' p99 during / before.
const ISOLATION_TARGET: f64 = 1.1;

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One named series of a line chart; `None` where a line lacks the metric.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: Vec<Option<f64>>,
}

/// A line chart over the history: x = history line, y from 0.
pub fn line_chart(title: &str, unit: &str, labels: &[String], series: &[Series<'_>]) -> String {
    let (w, h, left, right, top, bottom) = (380.0, 170.0, 56.0, 10.0, 24.0, 34.0);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let ymax = if max > 0.0 { max * 1.1 } else { 1.0 };
    let n = labels.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            left + (w - left - right) / 2.0
        } else {
            left + (w - left - right) * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / ymax);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{t}</title>"#,
        t = esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="14" font-size="12" font-weight="bold">{} ({})</text>"#,
        esc(title),
        esc(unit)
    );
    // Axes and the y scale.
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{yb}" stroke="#888"/><line x1="{left}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#888"/>"##,
        yb = h - bottom,
        xr = w - right
    );
    for frac in [0.0, 0.5, 1.0] {
        let v = ymax * frac;
        let _ = write!(
            s,
            r##"<text x="{tx}" y="{ty}" font-size="10" text-anchor="end">{}</text><line x1="{left}" y1="{yy}" x2="{xr}" y2="{yy}" stroke="#eee"/>"##,
            num(v),
            tx = left - 4.0,
            ty = y(v) + 3.0,
            yy = y(v),
            xr = w - right
        );
    }
    if let (Some(first), Some(last)) = (labels.first(), labels.last()) {
        let _ = write!(
            s,
            r#"<text x="{left}" y="{ly}" font-size="10">{}</text><text x="{xr}" y="{ly}" font-size="10" text-anchor="end">{}</text>"#,
            esc(first),
            esc(last),
            ly = h - bottom + 14.0,
            xr = w - right
        );
    }
    for (k, ser) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts: Vec<(usize, f64)> = ser
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .collect();
        if pts.len() > 1 {
            let path: Vec<String> = pts
                .iter()
                .map(|&(i, v)| format!("{:.1},{:.1}", x(i), y(v)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                path.join(" ")
            );
        }
        for &(i, v) in &pts {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"><title>{}: {} {} ({})</title></circle>"#,
                x(i),
                y(v),
                esc(ser.name),
                num(v),
                esc(unit),
                esc(labels.get(i).map_or("", String::as_str))
            );
        }
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{ly}" width="10" height="3" fill="{color}"/><text x="{tx}" y="{ty}" font-size="10">{}</text>"#,
            esc(ser.name),
            lx = left + 90.0 * k as f64,
            ly = h - 9.0,
            tx = left + 14.0 + 90.0 * k as f64,
            ty = h - 5.0
        );
    }
    s.push_str("</svg>");
    s
}

/// A horizontal bar chart with an optional target line.
pub fn bar_chart(title: &str, bars: &[(String, f64)], target: Option<f64>) -> String {
    let (w, left, right, row) = (640.0, 190.0, 60.0, 20.0);
    let h = 30.0 + row * bars.len() as f64 + 10.0;
    let max = bars
        .iter()
        .map(|b| b.1)
        .chain(target)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |v: f64| left + (w - left - right) * v / max;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{t}</title><text x="4" y="16" font-size="12" font-weight="bold">{t}</text>"#,
        t = esc(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let yy = 30.0 + row * i as f64;
        let over = target.is_some_and(|t| *v > t);
        let fill = if over { "#d62728" } else { "#2ca02c" };
        let _ = write!(
            s,
            r#"<text x="{lx}" y="{ty}" font-size="11" text-anchor="end">{}</text><rect x="{left}" y="{yy}" width="{bw:.1}" height="{bh}" fill="{fill}"><title>{}: {}</title></rect><text x="{vx:.1}" y="{ty}" font-size="11">{}</text>"#,
            esc(label),
            esc(label),
            num(*v),
            num(*v),
            lx = left - 6.0,
            ty = yy + 12.0,
            bw = (x(*v) - left).max(0.5),
            bh = row - 5.0,
            vx = x(*v) + 4.0
        );
    }
    if let Some(t) = target {
        let _ = write!(
            s,
            r##"<line x1="{tx:.1}" y1="24" x2="{tx:.1}" y2="{yb}" stroke="#000" stroke-dasharray="4 3"/><text x="{lx:.1}" y="{yb2}" font-size="10">target {}</text>"##,
            num(t),
            tx = x(t),
            yb = h - 8.0,
            lx = x(t) + 3.0,
            yb2 = h - 1.0
        );
    }
    s.push_str("</svg>");
    s
}

/// The history lines of each case, in file order (cases sorted by name).
fn by_case<'a>(records: &'a [Record], kind: &str) -> BTreeMap<&'a str, Vec<&'a Record>> {
    let mut m: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.kind == kind) {
        m.entry(r.case.as_str()).or_default().push(r);
    }
    m
}

fn label(r: &Record) -> String {
    format!("{} {}", r.stamp.rev, r.stamp.date.get(..10).unwrap_or(""))
}

fn metric_series<'a>(rs: &[&Record], pairs: &[(&'a str, &str)]) -> Vec<Series<'a>> {
    pairs
        .iter()
        .map(|(name, key)| Series {
            name,
            values: rs.iter().map(|r| r.metrics.get(*key).copied()).collect(),
        })
        .collect()
}

pub fn peer_table(rows: &[PeerRow]) -> String {
    let mut s = String::from(
        r#"<table id="peers"><thead><tr><th>peer</th><th>profile</th><th>frames/s</th><th>fence p50 µs</th><th>fence p99 µs</th><th>frames delivered</th><th>frames/s ÷ gpu-reactor</th><th>p99 ÷ gpu-reactor</th><th>could not</th></tr></thead><tbody>"#,
    );
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    for r in rows {
        let (fps, p50, p99, del) = if r.ran {
            (
                num(r.frames_per_s),
                r.fence_p50_us.to_string(),
                r.fence_p99_us.to_string(),
                r.frames_delivered.to_string(),
            )
        } else {
            ("-".into(), "-".into(), "-".into(), "-".into())
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{fps}</td><td>{p50}</td><td>{p99}</td><td>{del}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.peer),
            esc(&r.profile),
            opt(r.frames_ratio),
            opt(r.p99_ratio),
            esc(&r.could_not.join("; "))
        );
    }
    s.push_str("</tbody></table>");
    s
}

/// The whole page.
/// The latest `bench guest3d` run (its records share a revision and date):
/// per client count, gpu-reactor beside QEMU's virtio-gpu-gl.
fn guest3d_table(records: &[Record]) -> String {
    let Some(last) = records.iter().rev().find(|r| r.kind == "guest3d") else {
        return "<p>No real-guest comparison in this history (run <code>bench guest3d</code>).</p>"
            .into();
    };
    let run: Vec<&Record> = records
        .iter()
        .filter(|r| r.kind == "guest3d" && r.stamp == last.stamp)
        .collect();
    let mut t = format!(
        "<p>{} at {}</p><table id=\"guest3d\"><thead><tr><th>backend / clients</th><th>frames/s</th><th>KMS frames/s</th><th>glFinish p50 ms</th><th>glFinish p99 ms</th><th>longest gap ms</th><th>readback errors</th><th>kernel errors</th><th>QMP p99 ms</th></tr></thead><tbody>",
        esc(&last.stamp.rev),
        esc(&last.stamp.date)
    );
    for r in run {
        let m = |k: &str| r.metrics.get(k).copied().unwrap_or(f64::NAN);
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
            esc(r.case.trim_start_matches("guest3d/")),
            m("frames_per_s"),
            m("kms_frames_per_s"),
            m("finish_p50_us") / 1e3,
            m("finish_p99_us") / 1e3,
            m("max_gap_ms"),
            m("readback_errors"),
            m("kernel_errors"),
            m("qmp_p99_ms"),
        );
    }
    t.push_str("</tbody></table>");
    t
}

pub fn render(records: &[Record], skipped: usize) -> String {
    let mut h = String::from(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>gpu-reactor bench dashboard</title><style>
body{font-family:sans-serif;margin:16px;color:#222}
table{border-collapse:collapse;margin:8px 0;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}
.case{display:inline-block;vertical-align:top;margin:6px;border:1px solid #ddd;padding:4px}
.case h3{font-size:13px;margin:2px 0}
</style></head><body><h1>gpu-reactor benchmarks</h1>"#,
    );
    let runs: std::collections::BTreeSet<(&str, &str)> = records
        .iter()
        .map(|r| (r.stamp.rev.as_str(), r.stamp.date.as_str()))
        .collect();
    let _ = write!(
        h,
        "<p id=\"summary\">{} history lines from {} runs{}.",
        records.len(),
        runs.len(),
        if skipped > 0 {
            format!(" ({skipped} malformed lines skipped)")
        } else {
            String::new()
        }
    );
    if let Some(last) = records.last() {
        let m = &last.stamp.machine;
        let _ = write!(
            h,
            " Latest: revision {} at {} on {} cores, {}, kernel {}.",
            esc(&last.stamp.rev),
            esc(&last.stamp.date),
            m.cores,
            esc(&m.cpu),
            esc(&m.kernel)
        );
    }
    h.push_str("</p><p>How to read: every point is one history line (hover for revision and value). Throughput should stay flat or rise, latency flat or fall. Compare runs of the same machine only; for a merge decision use <code>bench ab</code>, which measures both revisions interleaved in one run. Isolation ratios above the dashed 1.1 line mean a stressed desktop slowed the others.</p>");

    // Peers: the latest `peers` line.
    h.push_str("<h2>Peers (latest)</h2>");
    match records.iter().rev().find(|r| r.kind == "peers") {
        Some(p) => {
            let _ = write!(
                h,
                "<p>{} at {}, {}</p>",
                esc(&p.stamp.rev),
                esc(&p.stamp.date),
                esc(&p
                    .params
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "))
            );
            h.push_str(&peer_table(&p.peers));
        }
        None => {
            h.push_str("<p>No peer comparison in this history (run <code>bench peers</code>).</p>")
        }
    }

    h.push_str("<h2>Real 3D guest (latest <code>bench guest3d</code>)</h2>");
    h.push_str(&guest3d_table(records));

    let loadgen = by_case(records, "loadgen");

    // Isolation: latest ratio per stressed case.
    h.push_str("<h2>Isolation (latest, others' p99 during ÷ before)</h2>");
    let iso: Vec<(String, f64, &Record)> = loadgen
        .iter()
        .filter_map(|(case, rs)| {
            let last = rs.last()?;
            Some((
                case.to_string(),
                *last.metrics.get("isolation_ratio")?,
                *last,
            ))
        })
        .collect();
    if iso.is_empty() {
        h.push_str("<p>No stress scenario in this history.</p>");
    } else {
        let bars: Vec<(String, f64)> = iso.iter().map(|(c, v, _)| (c.clone(), *v)).collect();
        h.push_str(&bar_chart(
            "isolation ratio per scenario",
            &bars,
            Some(ISOLATION_TARGET),
        ));
        h.push_str("<table id=\"isolation\"><thead><tr><th>case</th><th>ratio</th><th>revision</th><th>fences lost</th></tr></thead><tbody>");
        for (c, v, r) in &iso {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{v:.3}</td><td>{}</td><td>{}</td></tr>",
                esc(c),
                esc(&r.stamp.rev),
                num(r.metrics.get("fences_lost").copied().unwrap_or(f64::NAN))
            );
        }
        h.push_str("</tbody></table>");
    }

    // Latest values.
    h.push_str("<h2>Latest values</h2><table id=\"latest\"><thead><tr><th>case</th><th>revision</th><th>frames/s</th><th>commands/s</th><th>fence p50 µs</th><th>p99 µs</th><th>p999 µs</th><th>overhead p99 µs</th><th>lost</th><th>errors</th></tr></thead><tbody>");
    for (case, rs) in &loadgen {
        let Some(r) = rs.last() else { continue };
        let g = |k: &str| num(r.metrics.get(k).copied().unwrap_or(f64::NAN));
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(case),
            esc(&r.stamp.rev),
            g("frames_per_s"),
            g("commands_per_s"),
            g("fence_latency_p50_us"),
            g("fence_latency_p99_us"),
            g("fence_latency_p999_us"),
            g("fence_overhead_p99_us"),
            g("fences_lost"),
            g("errors")
        );
    }
    h.push_str("</tbody></table>");

    // History per loadgen case.
    h.push_str("<h2>Loadgen cases over time</h2><div id=\"history\">");
    for (case, rs) in &loadgen {
        let labels: Vec<String> = rs.iter().map(|r| label(r)).collect();
        let _ = write!(h, "<div class=\"case\"><h3>{}</h3>", esc(case));
        h.push_str(&line_chart(
            "frames/s",
            "1/s",
            &labels,
            &metric_series(rs, &[("frames/s", "frames_per_s")]),
        ));
        h.push_str(&line_chart(
            "commands/s",
            "1/s",
            &labels,
            &metric_series(rs, &[("commands/s", "commands_per_s")]),
        ));
        h.push_str(&line_chart(
            "fence latency",
            "µs",
            &labels,
            &metric_series(
                rs,
                &[
                    ("p50", "fence_latency_p50_us"),
                    ("p99", "fence_latency_p99_us"),
                ],
            ),
        ));
        h.push_str("</div>");
    }
    h.push_str("</div>");

    // Micro-benchmarks.
    h.push_str("<h2>Micro-benchmarks over time</h2><div id=\"micro\">");
    for (case, rs) in by_case(records, "reactor") {
        let labels: Vec<String> = rs.iter().map(|r| label(r)).collect();
        let _ = write!(h, "<div class=\"case\"><h3>{}</h3>", esc(case));
        h.push_str(&line_chart(
            "wake-up latency",
            "µs",
            &labels,
            &metric_series(
                &rs,
                &[
                    ("reactor p50", "reactor_p50_us"),
                    ("reactor p99", "reactor_p99_us"),
                    ("raw floor p50", "io_uring_raw_p50_us"),
                ],
            ),
        ));
        h.push_str("</div>");
    }
    for (case, rs) in by_case(records, "device") {
        let labels: Vec<String> = rs.iter().map(|r| label(r)).collect();
        let _ = write!(h, "<div class=\"case\"><h3>{}</h3>", esc(case));
        h.push_str(&line_chart(
            "commands/s",
            "1/s",
            &labels,
            &metric_series(&rs, &[("commands/s", "commands_per_s")]),
        ));
        h.push_str("</div>");
    }
    h.push_str("</div></body></html>\n");
    h
}

/// Reads `history`, writes `out/index.html`, returns its path.
pub fn write(history: &Path, out: &Path) -> Result<PathBuf, String> {
    let (records, skipped) = history::read(history)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = out.join("index.html");
    std::fs::write(&path, render(&records, skipped))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_history_is_escaped() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let (recs, _) = history::parse(
            r#"{"kind":"loadgen","case":"<script>x</script>","rev":"r","date":"d","machine":{"cores":1,"kernel":"k","cpu":"c"},"metrics":{"frames_per_s":1.0}}"#,
        );
        let page = render(&recs, 0);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
    }

    #[test]
    fn a_line_chart_has_a_polyline_per_series_with_two_points_or_more() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let svg = line_chart(
            "t",
            "µs",
            &labels,
            &[
                Series {
                    name: "p50",
                    values: vec![Some(1.0), Some(2.0), None],
                },
                Series {
                    name: "p99",
                    values: vec![None, None, Some(5.0)],
                },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3);
    }

    #[test]
    fn the_latest_guest3d_run_is_a_table_row_per_backend_and_count() {
        let line = |rev: &str, case: &str, fps: f64| {
            format!(
                r#"{{"kind":"guest3d","case":"guest3d/{case}","rev":"{rev}","date":"d","machine":{{"cores":2,"kernel":"k","cpu":"c"}},"metrics":{{"frames_per_s":{fps}}}}}"#
            )
        };
        let text = [
            line("old", "gpu-reactor/1", 1.0),
            line("new", "gpu-reactor/1", 61.5),
            line("new", "qemu-virtio-gpu-gl/1", 30.25),
        ]
        .join("\n");
        let (recs, _) = history::parse(&text);
        let page = render(&recs, 0);
        let table = &page[page.find(r#"<table id="guest3d">"#).expect("the table")..];
        let table = &table[..table.find("</table>").unwrap()];
        assert_eq!(table.matches("<tr><td>").count(), 2, "{table}");
        assert!(table.contains("<td>gpu-reactor/1</td><td>61.5</td>"));
        assert!(table.contains("<td>qemu-virtio-gpu-gl/1</td><td>30.2</td>"));
        assert!(render(&[], 0).contains("run <code>bench guest3d</code>"));
    }

    #[test]
    fn isolation_bars_over_the_target_are_red() {
        let svg = bar_chart(
            "i",
            &[("ok".into(), 1.0), ("bad".into(), 3.0)],
            Some(ISOLATION_TARGET),
        );
        assert_eq!(svg.matches("#d62728").count(), 1);
        assert_eq!(svg.matches("#2ca02c").count(), 1);
    }
}
