//! The report renders in a real browser: headless Chromium loads every image
//! (complete, non-zero natural width) and the screenshot is not blank.
//! Needs `chromium` (scripts/setup.sh installs it).

mod report_common;
use report_common::*;
use std::process::Command;

fn chromium(args: &[&str], profile: &std::path::Path) -> std::process::Output {
    let profile = format!("--user-data-dir={}", profile.display());
    Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--no-first-run", &profile])
        .args(args)
        .output()
        .expect("chromium not found: run scripts/setup.sh (it installs the Debian package chromium)")
}

#[test]
fn chromium_loads_every_image() {
    let dir = tempfile::tempdir().unwrap();
    let a = caption_run(dir.path(), "run-a", 1.0, 2);
    let g = grounding_run(dir.path());
    let html = report(&[&a, &g], &dir.path().join("report.html"));
    let images = html.matches("<img ").count();
    assert_eq!(images, 6 + 2 + 3);
    assert_eq!(embedded_pngs(&html).len(), images);

    // A copy with a probe that records, after load, how many images decoded.
    let probe = "<script>window.addEventListener('load', () => { const all = Array.from(document.images); \
        const ok = all.filter(i => i.complete && i.naturalWidth > 0).length; \
        document.body.setAttribute('data-probe', 'images=' + all.length + ' loaded=' + ok); });</script>";
    let probed = dir.path().join("probed.html");
    std::fs::write(&probed, html.replace("</body>", &format!("{probe}</body>"))).unwrap();
    let url = format!("file://{}", probed.display());
    let out = chromium(&["--virtual-time-budget=5000", "--dump-dom", &url], &dir.path().join("profile"));
    let dom = String::from_utf8_lossy(&out.stdout);
    let expected = format!("data-probe=\"images={images} loaded={images}\"");
    assert!(
        dom.contains(&expected),
        "expected {expected} in the dumped DOM; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let shot = dir.path().join("shot.png");
    let page = format!("file://{}", dir.path().join("report.html").display());
    let out = chromium(
        &[&format!("--screenshot={}", shot.display()), "--window-size=1200,2000", &page],
        &dir.path().join("profile2"),
    );
    assert!(shot.is_file(), "no screenshot; stderr: {}", String::from_utf8_lossy(&out.stderr));
    let rgb = image::open(&shot).unwrap().to_rgb8();
    let distinct = rgb.pixels().map(|p| p.0).collect::<std::collections::HashSet<_>>().len();
    assert!(distinct > 100, "the screenshot looks blank ({distinct} colours)");
}
