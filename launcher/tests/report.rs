//! `elfin report` on synthetic runs: the page embeds real plots and pictures.

mod report_common;
use report_common::*;

/// Number of distinct colours, to tell a drawn chart from a blank canvas.
fn colours(img: &image::DynamicImage) -> usize {
    img.to_rgb8().pixels().map(|p| p.0).collect::<std::collections::HashSet<_>>().len()
}

#[test]
fn two_caption_runs_and_a_grounding_run() {
    let dir = tempfile::tempdir().unwrap();
    let a = caption_run(dir.path(), "run-a", 1.0, 3);
    let b = caption_run(dir.path(), "run-b", 1.3, 2);
    let g = grounding_run(dir.path());
    let html = report(&[&a, &b, &g], &dir.path().join("report.html"));

    assert!(html.starts_with("<!DOCTYPE html>"));
    // No external resources: everything is inline.
    assert!(!html.contains("src=\"http") && !html.contains("href=") && !html.contains("<script"));
    for title in
        ["train loss", "train nll_loss", "learning rate", "gradient norm", "validation cider", "validation score"]
    {
        assert!(html.contains(&format!("alt=\"{title}\"")), "missing chart {title}");
    }
    let pngs = embedded_pngs(&html);
    // 6 charts + 3 + 2 caption thumbnails + 3 grounding pictures.
    assert_eq!(pngs.len(), 14);
    for chart in &pngs[..6] {
        assert_eq!((chart.width(), chart.height()), (560, 340));
        assert!(colours(chart) > 20, "a chart with almost no colours is blank");
    }
    // Grounding pictures carry the red predicted and green reference boxes.
    for picture in &pngs[11..] {
        let rgb = picture.to_rgb8();
        assert!(rgb.pixels().any(|p| p.0 == [220, 30, 30]) && rgb.pixels().any(|p| p.0 == [20, 170, 60]));
    }
    // Captions are escaped, both runs named, the summary has the best metric.
    assert!(html.contains("a man &lt;riding&gt; a wave") && html.contains("a surfer &amp; a wave"));
    assert!(html.contains("cider 1.5000 at 500") && html.contains("score 0.8000 at 300"));
    assert!(html.contains("IoU 0.800 (hit)") && html.contains("IoU 0.000 (miss)"));
    assert!(html.contains("image not shown: &quot;image&quot; is neither PNG nor JPEG"));
}

#[test]
fn a_run_without_predictions_and_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let a = caption_run(dir.path(), "only-metrics", 1.0, 0);
    std::fs::remove_file(a.join("predictions.jsonl")).unwrap();
    let html = report(&[&a], &dir.path().join("r.html"));
    assert_eq!(embedded_pngs(&html).len(), 5);
    assert!(!html.contains("Validation samples"));

    let elfin = env!("CARGO_BIN_EXE_elfin");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = std::process::Command::new(elfin).arg("report").arg(&empty).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no metrics.jsonl"));

    std::fs::write(empty.join("metrics.jsonl"), "{\"kind\": \"train\", \"num_updates\": 1}\n{oops\n").unwrap();
    let out = std::process::Command::new(elfin).arg("report").arg(&empty).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("metrics.jsonl:2"), "{stderr}");
}
