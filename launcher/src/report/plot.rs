//! Line charts as PNG bytes, drawn in memory with plotters. Text uses a font
//! compiled into the binary (a DejaVu Sans subset, see FONT-LICENSE.txt), so
//! no system fonts are needed.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::sync::Once;

pub const WIDTH: u32 = 560;
pub const HEIGHT: u32 = 340;
const FONT: &[u8] = include_bytes!("DejaVuSans-subset.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is a fixed file in the source tree; failing to parse it is a build defect.
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            panic!("the embedded report font does not parse");
        }
    });
}

/// Run colours (the "tab10" palette), by a run's position on the command
/// line so a run keeps its colour in every chart.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    /// Position of the run on the command line (picks the colour).
    pub run_index: usize,
    pub points: &'a [(f64, f64)],
}

/// Draws `series` against updates, with a legend naming the runs. Returns PNG bytes.
pub fn line_chart(title: &str, y_label: &str, series: &[Series]) -> Result<Vec<u8>> {
    register_font();
    let (x_range, y_range) = ranges(series);
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .margin_right(28)
            .x_label_area_size(38)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, y_range.clone())
            .map_err(plot_error)?;
        let span = y_range.end - y_range.start;
        let y_format = move |v: &f64| tick_label(*v, span);
        chart
            .configure_mesh()
            .x_desc("updates")
            .y_desc(y_label)
            .y_label_formatter(&y_format)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(plot_error)?;
        for s in series {
            let colour = COLOURS[s.run_index % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            // Sparse series (validation every few hundred updates) need markers to be seen.
            if s.points.len() <= 50 {
                chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(plot_error)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    super::png::encode_rgb(&pixels, WIDTH, HEIGHT)
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e:?}")
}

fn ranges(series: &[Series]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return (0.0..1.0, 0.0..1.0);
    }
    if x1 - x0 < 1.0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let pad = if y1 > y0 { (y1 - y0) * 0.05 } else { y0.abs().max(1e-12) * 0.1 };
    (x0..x1, (y0 - pad)..(y1 + pad))
}

/// Tick labels readable for both learning rates (1e-5) and losses (2.31).
fn tick_label(v: f64, span: f64) -> String {
    let magnitude = v.abs().max(span);
    if v == 0.0 {
        "0".into()
    } else if !(1e-2..1e5).contains(&magnitude) {
        format!("{v:.1e}")
    } else if span < 0.05 {
        format!("{v:.4}")
    } else {
        format!("{v:.2}")
    }
}
