//! PNG training curves: one image, two panels stacked vertically (three with [`plot_training_with_health`]): training loss per step (raw, light, and a
//! trailing moving average, dark) and kNN top-1 per epoch (in percent). The loss panel shades the first steps,
//! taken while the queue still holds some of its random initial vectors, and marks the step from which it holds
//! only real keys ([`PlotOptions::queue_full_step`]); the kNN panel marks the epoch-0 point as the random
//! initialisation.
//!
//! plotters is built without system font lookup, so the text is drawn with DejaVu Sans embedded in the binary
//! (`src/report/DejaVuSans.ttf`, licence in `src/report/DejaVuSans-LICENSE.txt`), registered once with plotters'
//! `ab_glyph` font table under the family names `"sans-serif"` and [`FONT_FAMILY`]. The picture is rendered into
//! memory and encoded with `image`; the file is written to a temporary name and renamed, so a reader never sees a
//! half-written PNG.

use crate::error::{Error, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::OnceLock;

/// The embedded font file.
static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");

/// Family name the embedded font is registered under (besides `"sans-serif"`).
pub const FONT_FAMILY: &str = "DejaVu Sans";

/// Registers the embedded DejaVu Sans with plotters (once per process; later calls return the first outcome).
/// Errors with [`Error::BadFile`] when ab_glyph cannot parse the font.
pub fn register_embedded_font() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for family in ["sans-serif", FONT_FAMILY] {
            for style in [FontStyle::Normal, FontStyle::Bold] {
                plotters::style::register_font(family, style, FONT).map_err(|_| "ab_glyph cannot parse the embedded font".to_string())?;
            }
        }
        Ok(())
    })
    .clone()
    .map_err(|reason| Error::BadFile { path: "src/report/DejaVuSans.ttf (embedded)".into(), reason })
}

/// Size, title and smoothing of [`plot_training`].
#[derive(Clone, Debug, PartialEq)]
pub struct PlotOptions {
    /// Title over both panels.
    pub title: String,
    /// Image width in pixels (200..=8192). Default 1000.
    pub width: u32,
    /// Image height in pixels (200..=8192). Default 800.
    pub height: u32,
    /// Trailing moving-average window over loss points; 0 picks `len / 50` (at least 1), 1 disables smoothing.
    pub smooth: usize,
    /// Step from which the queue holds only real keys (shaded before, marked with a vertical line).
    pub queue_full_step: Option<f64>,
    /// Pairs per step, for the step axis's label.
    pub batch_size: Option<usize>,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self { title: "MoCo training".into(), width: 1000, height: 800, smooth: 0, queue_full_step: None, batch_size: None }
    }
}

/// Trailing moving average over `w` points (the first points average what exists so far).
fn moving_average(pts: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let w = w.max(1);
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(pts.len());
    for (i, &(x, y)) in pts.iter().enumerate() {
        sum += y;
        if i >= w {
            sum -= pts[i - w].1;
        }
        out.push((x, sum / (i + 1).min(w) as f64));
    }
    out
}

/// Axis range over finite values, padded; a default when there are none.
fn range(vals: impl Iterator<Item = f64>, pad: f64, default: (f64, f64)) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return default;
    }
    if hi - lo < 1e-12 {
        let p = if lo.abs() > 1e-12 { lo.abs() * 0.05 } else { 1.0 };
        return (lo - p, hi + p);
    }
    let p = (hi - lo) * pad;
    (lo - p, hi + p)
}

/// Tick label: integers without a fraction ("50", not "50.0"), other values with what their size needs.
fn tick(v: &f64) -> String {
    let integral = (v - v.round()).abs() < 1e-9 * v.abs().max(1.0);
    if integral || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The representation-health curves of the third panel, each `(step, value)`; non-finite points are skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthCurves {
    /// Effective rank (RankMe) of the batch's normalised queries.
    pub effective_rank: Vec<(f64, f64)>,
    /// Mean per-dimension std of the normalised queries.
    pub dim_std: Vec<(f64, f64)>,
    /// Alignment `E‖q̂ − k̂‖²`.
    pub alignment: Vec<(f64, f64)>,
    /// Uniformity `log E exp(−2‖x̂ − ŷ‖²)`.
    pub uniformity: Vec<(f64, f64)>,
    /// Step of the collapse alarm, marked on both charts.
    pub alarm_step: Option<f64>,
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn finite(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    pts.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect()
}

/// One chart of the health panel: `left` on the left axis, `right` on a secondary axis, the alarm as a vertical
/// red line.
#[allow(clippy::too_many_arguments)]
fn dual_axis_chart(
    area: &Area<'_>,
    caption: &str,
    left: (&str, &str, &[(f64, f64)], RGBColor),
    right: (&str, &str, &[(f64, f64)], RGBColor),
    x_desc: &str,
    alarm: Option<f64>,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (l, r) = (finite(left.2), finite(right.2));
    let (x0, x1) = range(l.iter().chain(&r).map(|p| p.0), 0.02, (0.0, 1.0));
    let (y0, y1) = range(l.iter().map(|p| p.1), 0.08, (0.0, 1.0));
    let (s0, s1) = range(r.iter().map(|p| p.1), 0.08, (0.0, 1.0));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT_FAMILY, 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(62)
        .right_y_label_area_size(62)
        .build_cartesian_2d(x0..x1, y0..y1)?
        .set_secondary_coord(x0..x1, s0..s1);
    chart.configure_mesh().x_desc(x_desc).x_label_formatter(&tick).y_desc(left.1).y_label_formatter(&tick).label_style((FONT_FAMILY, 13)).axis_desc_style((FONT_FAMILY, 14)).draw()?;
    chart.configure_secondary_axes().y_desc(right.1).y_label_formatter(&tick).label_style((FONT_FAMILY, 13)).axis_desc_style((FONT_FAMILY, 14)).draw()?;
    if l.is_empty() && r.is_empty() {
        chart.draw_series(std::iter::once(Text::new("no data", ((x0 + x1) / 2.0, (y0 + y1) / 2.0), (FONT_FAMILY, 18))))?;
        return Ok(());
    }
    let (lc, rc) = (left.3, right.3);
    chart.draw_series(LineSeries::new(l.iter().copied(), lc.stroke_width(2)))?.label(left.0).legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], lc.stroke_width(2)));
    chart.draw_series(l.iter().map(|&p| Circle::new(p, 2, lc.filled())))?;
    chart.draw_secondary_series(LineSeries::new(r.iter().copied(), rc.stroke_width(2)))?.label(right.0).legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], rc.stroke_width(2)));
    chart.draw_secondary_series(r.iter().map(|&p| TriangleMarker::new(p, 3, rc.filled())))?;
    if let Some(a) = alarm.filter(|a| a.is_finite()) {
        let red = RGBColor(200, 30, 30);
        chart
            .draw_series(std::iter::once(PathElement::new([(a, y0), (a, y1)], red.stroke_width(2))))?
            .label(format!("collapse alarm (step {a:.0})"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], red.stroke_width(2)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).label_font((FONT_FAMILY, 13)).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}

/// The third panel: rank and std on one chart, alignment and uniformity on the other.
fn draw_health(area: &Area<'_>, h: &HealthCurves, x_desc: &str) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (left, right) = area.split_horizontally(area.dim_in_pixel().0 / 2);
    let (blue, orange, purple, teal) = (RGBColor(20, 70, 160), RGBColor(220, 110, 20), RGBColor(120, 40, 150), RGBColor(20, 130, 120));
    dual_axis_chart(
        &left,
        "collapse: effective rank and per-dimension std",
        ("effective rank", "effective rank (RankMe; 1 = collapsed)", &h.effective_rank, blue),
        ("per-dimension std", "std of normalised embeddings (1/sqrt(d) healthy)", &h.dim_std, orange),
        x_desc,
        h.alarm_step,
    )?;
    dual_axis_chart(
        &right,
        "alignment and uniformity (Wang & Isola)",
        ("alignment", "alignment E|q - k|^2 (squared distance, 0..4)", &h.alignment, purple),
        ("uniformity", "uniformity (nats, <= 0; lower = more uniform)", &h.uniformity, teal),
        x_desc,
        h.alarm_step,
    )
}

fn draw(
    root: &Area<'_>,
    loss: &[(f64, f64)],
    knn: &[(f64, f64)],
    health: Option<&HealthCurves>,
    opts: &PlotOptions,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let root = root.titled(&opts.title, (FONT_FAMILY, 28).into_font())?;
    let step_desc = match opts.batch_size {
        Some(b) => format!("training step (optimiser steps of {b} pairs)"),
        None => "training step (optimiser steps)".to_string(),
    };
    let h = root.dim_in_pixel().1;
    let (top, bottom) = match health {
        Some(curves) => {
            let (top, rest) = root.split_vertically(h / 3);
            let (middle, third) = rest.split_vertically(h / 3);
            draw_health(&third, curves, &step_desc)?;
            (top, middle)
        }
        None => root.split_vertically(h / 2),
    };
    let light = RGBColor(160, 190, 230);
    let dark = RGBColor(20, 70, 160);
    let green = RGBColor(20, 130, 60);

    // Panel 1: loss per step.
    let pts: Vec<(f64, f64)> = loss.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let w = if opts.smooth == 0 { (pts.len() / 50).max(1) } else { opts.smooth };
    let smooth = moving_average(&pts, w);
    let (x0, x1) = range(pts.iter().map(|p| p.0).chain(std::iter::once(0.0)), 0.0, (0.0, 1.0));
    let (y0, y1) = range(pts.iter().map(|p| p.1), 0.05, (0.0, 1.0));
    let (y0, y1) = (y0.min(0.0), y1);
    let mut chart = ChartBuilder::on(&top)
        .caption("training loss", (FONT_FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(step_desc.as_str())
        .x_label_formatter(&tick)
        .y_desc("InfoNCE loss (nats)")
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 16))
        .draw()?;
    if let Some(qf) = opts.queue_full_step.filter(|v| v.is_finite() && *v > x0) {
        let grey = RGBColor(235, 235, 235);
        let edge = qf.min(x1);
        chart
            .draw_series(std::iter::once(Rectangle::new([(x0, y0), (edge, y1)], grey.filled())))?
            .label("queue still holds random initial vectors")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], grey.filled()));
        if qf <= x1 {
            let orange = RGBColor(220, 110, 20);
            chart
                .draw_series(std::iter::once(PathElement::new([(qf, y0), (qf, y1)], orange.stroke_width(2))))?
                .label(format!("queue full of real keys (step {qf:.0})"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], orange.stroke_width(2)));
        }
    }
    if pts.is_empty() {
        chart.draw_series(std::iter::once(Text::new("no data", (0.45, 0.5), (FONT_FAMILY, 18))))?;
    } else {
        chart.draw_series(LineSeries::new(pts.iter().copied(), &light))?.label("loss").legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], light));
        if w > 1 {
            chart
                .draw_series(LineSeries::new(smooth.iter().copied(), dark.stroke_width(2)))?
                .label(format!("moving average ({w})"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], dark.stroke_width(2)));
        }
        chart.configure_series_labels().label_font((FONT_FAMILY, 14)).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }

    // Panel 2: kNN top-1 per epoch, in percent.
    let acc: Vec<(f64, f64)> = knn.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| (x, 100.0 * y)).collect();
    let (x0, x1) = range(acc.iter().map(|p| p.0), 0.02, (0.0, 1.0));
    let (y0, y1) = range(acc.iter().map(|p| p.1), 0.1, (0.0, 100.0));
    let mut chart = ChartBuilder::on(&bottom)
        .caption("kNN top-1 on the test split (colab monitor)", (FONT_FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0.max(0.0)..y1.min(100.0).max(y0.max(0.0) + 1e-6))?;
    chart
        .configure_mesh()
        .x_desc("epoch (0 = random init, before training)")
        .x_label_formatter(&tick)
        .y_desc("kNN top-1 (%)")
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 16))
        .draw()?;
    if acc.is_empty() {
        chart.draw_series(std::iter::once(Text::new("no data", ((x0 + x1) / 2.0, (y0 + y1) / 2.0), (FONT_FAMILY, 18))))?;
    } else {
        chart.draw_series(LineSeries::new(acc.iter().copied(), green.stroke_width(2)))?.label("kNN top-1").legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], green.stroke_width(2)));
        chart.draw_series(acc.iter().filter(|p| p.0 != 0.0).map(|&p| Circle::new(p, 3, green.filled())))?;
        if let Some(&p0) = acc.iter().find(|p| p.0 == 0.0) {
            let red = RGBColor(200, 30, 30);
            chart
                .draw_series(std::iter::once(Cross::new(p0, 7, red.stroke_width(3))))?
                .label(format!("random init (epoch 0): {:.1}%", p0.1))
                .legend(move |(x, y)| Cross::new((x + 8, y), 5, red.stroke_width(2)));
            chart
                .draw_series(std::iter::once(PathElement::new([(x0, p0.1), (x1, p0.1)], red.mix(0.5).stroke_width(1))))?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).label_font((FONT_FAMILY, 14)).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

/// Writes a PNG of the training curves to `path`: `loss` as `(step, loss)` pairs, `knn` as `(epoch, top-1)` pairs
/// with top-1 a fraction in [0, 1] (what [`crate::eval::KnnReport::top1`] holds; drawn in percent). Non-finite
/// points are skipped; an empty series gives an empty panel marked "no data". Creates the parent folder.
pub fn plot_training(path: impl AsRef<Path>, loss: &[(f64, f64)], knn: &[(f64, f64)], opts: &PlotOptions) -> Result<()> {
    plot(path.as_ref(), loss, knn, None, opts)
}

/// [`plot_training`] with a third panel of representation health ([`HealthCurves`]): the effective rank and the
/// per-dimension std on one chart (two labelled axes), alignment and uniformity on another, the collapse alarm
/// marked on both.
pub fn plot_training_with_health(path: impl AsRef<Path>, loss: &[(f64, f64)], knn: &[(f64, f64)], health: &HealthCurves, opts: &PlotOptions) -> Result<()> {
    plot(path.as_ref(), loss, knn, Some(health), opts)
}

fn plot(path: &Path, loss: &[(f64, f64)], knn: &[(f64, f64)], health: Option<&HealthCurves>, opts: &PlotOptions) -> Result<()> {
    for (what, v) in [("width", opts.width), ("height", opts.height)] {
        if !(200..=8192).contains(&v) {
            return Err(Error::shape("plot_training", format!("{what} in 200..=8192 pixels"), format!("{what} = {v}")));
        }
    }
    register_embedded_font()?;
    let io = |e: std::io::Error| Error::io(path, e);
    let (w, h) = (opts.width, opts.height);
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root, loss, knn, health, opts)
            .map_err(|e| io(std::io::Error::other(format!("drawing the plot: {e}"))))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| io(std::io::Error::other("plot buffer size")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let file_name = path.file_name().ok_or_else(|| io(std::io::Error::other("no file name")))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    img.save_with_format(&tmp, image::ImageFormat::Png).map_err(|e| match e {
        image::ImageError::IoError(source) => Error::io(&tmp, source),
        other => io(std::io::Error::other(other.to_string())),
    })?;
    std::fs::rename(&tmp, path).map_err(io)
}
