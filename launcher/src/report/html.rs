//! The page itself: plain HTML and CSS, no scripts, every picture a data URI.

use super::gallery::Sample;
use super::png::data_uri;
use super::{Chart, Run};
use std::fmt::Write;

pub fn page(runs: &[Run], charts: &[Chart]) -> String {
    let mut out = String::new();
    let title = format!("elfin report: {}", runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "));
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{STYLE}</style></head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    summary(&mut out, runs);
    out.push_str("<h2>Curves</h2>\n<div class=\"charts\">\n");
    for chart in charts {
        let _ =
            writeln!(out, "<img class=\"chart\" alt=\"{}\" src=\"{}\">", escape(&chart.title), data_uri(&chart.png));
    }
    if charts.is_empty() {
        out.push_str("<p>No numeric series in metrics.jsonl yet.</p>\n");
    }
    out.push_str("</div>\n");
    for run in runs.iter().filter(|r| !r.samples.is_empty()) {
        gallery(&mut out, run);
    }
    out.push_str("</body></html>\n");
    out
}

fn summary(out: &mut String, runs: &[Run]) {
    out.push_str("<table><tr><th>run</th><th>directory</th><th>updates</th><th>last train loss</th><th>best validation</th></tr>\n");
    for run in runs {
        let m = &run.metrics;
        let updates = m.series.values().flatten().map(|p| p.0).fold(f64::NAN, f64::max);
        let last_loss = m.get("train", "loss").and_then(|s| s.last()).map(|p| format!("{:.3}", p.1));
        let best = m.valid_metric().and_then(|(name, s)| {
            s.iter().copied().reduce(|a, b| if b.1 > a.1 { b } else { a }).map(|(u, v)| format!("{name} {v:.4} at {u}"))
        });
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&run.name),
            escape(&run.dir.display().to_string()),
            if updates.is_nan() { "–".into() } else { updates.to_string() },
            last_loss.unwrap_or_else(|| "–".into()),
            escape(&best.unwrap_or_else(|| "–".into()))
        );
    }
    out.push_str("</table>\n");
}

fn gallery(out: &mut String, run: &Run) {
    let _ = writeln!(out, "<h2>Validation samples: {}</h2>", escape(&run.name));
    if run.samples.iter().any(|s| s.boxes.is_some()) {
        out.push_str("<p class=\"legend\"><span class=\"pred\">■</span> predicted box &nbsp; <span class=\"ref\">■</span> reference box</p>\n");
    }
    out.push_str("<div class=\"gallery\">\n");
    for sample in &run.samples {
        card(out, sample);
    }
    out.push_str("</div>\n");
}

fn card(out: &mut String, s: &Sample) {
    out.push_str("<figure>");
    if let Some(png) = &s.picture {
        let _ = write!(out, "<img alt=\"sample {}\" src=\"{}\">", escape(&s.id), data_uri(png));
    }
    let _ = write!(out, "<figcaption><div class=\"id\">{}</div>", escape(&s.id));
    if let Some(problem) = &s.picture_problem {
        let _ = write!(out, "<div class=\"problem\">image not shown: {}</div>", escape(problem));
    }
    if let Some(p) = &s.prediction {
        let _ = write!(out, "<div class=\"hyp\">{}</div>", escape(p));
    }
    if !s.references.is_empty() {
        out.push_str("<ul class=\"refs\">");
        for r in &s.references {
            let _ = write!(out, "<li>{}</li>", escape(r));
        }
        out.push_str("</ul>");
    }
    if let Some(c) = s.cider {
        let _ = write!(out, "<div class=\"score\">CIDEr-D {c:.3}</div>");
    }
    if let Some((p, r)) = s.boxes {
        let fmt = |b: [f32; 4]| format!("[{:.1}, {:.1}, {:.1}, {:.1}]", b[0], b[1], b[2], b[3]);
        let _ = write!(out, "<div class=\"boxes\">pred {}<br>ref {}</div>", fmt(p), fmt(r));
    }
    if let Some(iou) = s.iou {
        let verdict = match s.hit {
            Some(true) => " (hit)",
            Some(false) => " (miss)",
            None => "",
        };
        let _ = write!(out, "<div class=\"score\">IoU {iou:.3}{verdict}</div>");
    }
    out.push_str("</figcaption></figure>\n");
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222}\
table{border-collapse:collapse;margin-bottom:16px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}\
.charts{display:flex;flex-wrap:wrap;gap:8px}.chart{border:1px solid #ddd}\
.gallery{display:flex;flex-wrap:wrap;gap:12px}\
figure{margin:0;width:330px;border:1px solid #ddd;padding:5px}figure img{display:block;max-width:320px}\
figcaption{font-size:13px}.id{color:#777}.hyp{font-weight:bold;margin:4px 0}.refs{margin:2px 0;padding-left:18px;color:#444}\
.score{color:#036}.problem{color:#a00}.pred{color:#dc1e1e}.ref{color:#14aa3c}";
