//! Synthetic run directories shared by the report tests (included with `mod`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small PNG thumbnail (a colour gradient), base64-encoded.
pub fn thumbnail_base64(w: u32, h: u32) -> String {
    use base64::Engine;
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 128]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png.into_inner())
}

/// A caption run: train lines every 10 updates, validation every 100, with
/// `samples` predictions carrying thumbnails.
pub fn caption_run(root: &Path, name: &str, scale: f64, samples: usize) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut metrics = String::new();
    for u in (10..=500).step_by(10) {
        let t = f64::from(u);
        let line = serde_json::json!({"kind": "train", "num_updates": u, "loss": scale * 3.0 * (-t / 150.0).exp(),
            "nll_loss": scale * 2.0 * (-t / 150.0).exp() + 0.5, "lr": 1e-5 * (1.0 - t / 500.0), "gnorm": 1.0 + (t / 40.0).sin().abs()});
        writeln!(metrics, "{line}").unwrap();
        if u % 100 == 0 {
            writeln!(
                metrics,
                "{}",
                serde_json::json!({"kind": "valid", "num_updates": u, "loss": 1.0, "cider": 1.0 + t / 1000.0 / scale})
            )
            .unwrap();
        }
    }
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    let mut predictions = String::new();
    for i in 0..samples {
        let line = serde_json::json!({"id": format!("{name}-{i}"), "prediction": "a man <riding> a wave",
            "references": ["a man riding a wave", "a surfer & a wave"], "cider": 1.25, "image": thumbnail_base64(64, 48)});
        writeln!(predictions, "{line}").unwrap();
    }
    std::fs::write(dir.join("predictions.jsonl"), predictions).unwrap();
    dir
}

/// A grounding run whose predictions have boxes (with a thumbnail, without, with a broken one).
pub fn grounding_run(root: &Path) -> PathBuf {
    let dir = root.join("refcoco");
    std::fs::create_dir_all(&dir).unwrap();
    let mut metrics = String::new();
    for u in (10..=300).step_by(10) {
        writeln!(
            metrics,
            "{}",
            serde_json::json!({"kind": "train", "num_updates": u, "loss": 2.0 / f64::from(u), "lr": 3e-5})
        )
        .unwrap();
        if u % 100 == 0 {
            writeln!(
                metrics,
                "{}",
                serde_json::json!({"kind": "valid", "num_updates": u, "score": 0.5 + f64::from(u) / 1000.0})
            )
            .unwrap();
        }
    }
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    let lines = [
        serde_json::json!({"id": "g1", "box": [100.0, 80.0, 400.0, 300.0], "ref_box": [120.0, 90.0, 420.0, 310.0],
            "iou": 0.8, "hit": true, "image": thumbnail_base64(160, 120), "image_size": [640, 480]}),
        serde_json::json!({"id": 2, "box": [10.0, 10.0, 100.0, 100.0], "ref_box": [300.0, 200.0, 600.0, 450.0],
            "iou": 0.0, "hit": false, "image_size": [640, 480]}),
        // Not an image: the card says so, and the boxes are drawn on a blank canvas.
        serde_json::json!({"id": "g3", "box": [0.0, 0.0, 50.0, 50.0], "ref_box": [10.0, 10.0, 60.0, 60.0],
            "image": "bm90IGFuIGltYWdl", "image_size": [100, 100]}),
    ];
    std::fs::write(dir.join("predictions.jsonl"), lines.map(|l| l.to_string() + "\n").concat()).unwrap();
    dir
}

/// Runs `elfin report` and returns the page.
pub fn report(runs: &[&Path], out: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_elfin"))
        .arg("report")
        .args(runs)
        .arg("--out")
        .arg(out)
        .output()
        .expect("running elfin");
    assert!(output.status.success(), "elfin report failed: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::read_to_string(out).unwrap()
}

/// Every `src="data:image/png;base64,…"` in the page, decoded.
pub fn embedded_pngs(html: &str) -> Vec<image::DynamicImage> {
    use base64::Engine;
    html.split("src=\"data:image/png;base64,")
        .skip(1)
        .map(|rest| {
            let payload = &rest[..rest.find('"').unwrap()];
            let bytes = base64::engine::general_purpose::STANDARD.decode(payload).expect("valid base64");
            image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).expect("a decodable PNG")
        })
        .collect()
}
