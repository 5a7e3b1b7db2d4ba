//! Pictures of a run: PNG line charts (loss curves, the paper's Figs. 2–4) and a grid of
//! originals, reconstructions and the codebook chosen at each latent position.

use std::path::Path;
use std::sync::Once;

use candle_core::{Module, Tensor};
use image::RgbImage;
use plotters::prelude::*;
use plotters::style::FontStyle;
use vq_core::Quantizer;
use vq_data::Cursor;

use crate::checkpoint::write_atomic;
use crate::error::{Result, TrainError};
use crate::metrics::{read_metrics, Record};
use crate::session::Session;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static FONT_ONCE: Once = Once::new();

fn register_font() {
    FONT_ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).ok();
    });
}

/// Distinct colours (Tableau 10, then repeated darker).
pub fn palette(i: usize) -> RGBColor {
    const C: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = C[i % 10];
    let k = 1 + i / 10;
    RGBColor(r / k as u8, g / k as u8, b / k as u8)
}

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot {
        path: path.into(),
        reason: e.to_string(),
    }
}

fn save_rgb(path: &Path, buf: Vec<u8>, w: u32, h: u32) -> Result<()> {
    let img = RgbImage::from_raw(w, h, buf).expect("buffer size");
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| plot_err(path, e))?;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| TrainError::io(p, e))?;
    }
    write_atomic(path, &png)
}

/// Draws `series` as lines into a PNG (`log_y`: log10 of the values, non-positive dropped).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    register_font();
    let (w, h) = (900u32, 540u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let series = plotted(series, log_y);
    let y_desc = if log_y {
        format!("log10 {y_label}")
    } else {
        y_label.to_string()
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw_lines(&root, title, (x_label, &y_desc), &series).map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    save_rgb(path, buf, w, h)
}

/// The points a chart draws: finite ones (and positive ones, as log10, on a log scale); series
/// left empty are dropped.
fn plotted(series: &[Series], log_y: bool) -> Vec<Series> {
    series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s
                .points
                .iter()
                .filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0))
                .map(|&(x, y)| (x, if log_y { y.log10() } else { y }))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// The x and y ranges of a chart: the points' extent, the y range padded by 5% (a unit square
/// when there are no points, a unit width when every x is the same).
fn chart_ranges(series: &[Series]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0).abs() * 0.05).max(1e-9);
    (x0..x1, (y0 - pad)..(y1 + pad))
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Axes, one coloured line per series (with markers when sparse) and the legend.
fn draw_lines(
    root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[Series],
) -> DrawResult {
    root.fill(&WHITE)?;
    let (xs, ys) = chart_ranges(series);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs, ys)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = palette(i);
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
        // Sparse series (e.g. a validation pass at the end only) get markers, since a line
        // through one point draws nothing.
        if s.points.len() <= 5 {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
        }
    }
    if series.len() > 1 || series.first().is_some_and(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    Ok(())
}

/// Writes `plots/*.png` from a run's `metrics.jsonl` and `reconstructions.png`.
pub fn write_run_report(session: &Session, run: &Path) -> Result<()> {
    let records = read_metrics(&run.join("metrics.jsonl"))?;
    write_metric_plots(records, &session.pool_labels(), &run.join("plots"))?;
    reconstruction_grid(session, &run.join("reconstructions.png"), 16)
}

/// Loss curves, selection frequency (Fig. 3), gradient gap (Figs. 2 and 4), per-codebook VQ
/// loss and perplexity, from the records of one run.
pub fn write_metric_plots(records: Vec<Record>, labels: &[String], dir: &Path) -> Result<()> {
    let (train, val) = crate::metrics::split(records);
    let pts = |f: &dyn Fn(&crate::metrics::TrainRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        train
            .iter()
            .filter_map(|t| f(t).map(|v| (t.step as f64, v)))
            .collect()
    };
    let mut loss = vec![
        Series {
            name: "train reconstruction MSE".into(),
            points: pts(&|t| Some(t.recon_loss)),
        },
        Series {
            name: "train VQ loss".into(),
            points: pts(&|t| Some(t.vq_loss)),
        },
    ];
    loss.push(Series {
        name: "validation MSE".into(),
        points: val.iter().map(|v| (v.step as f64, v.mse)).collect(),
    });
    line_chart(&dir.join("loss.png"), "Losses", "step", "loss", &loss, true)?;
    let per = |f: &dyn Fn(&crate::metrics::TrainRecord, usize) -> f64| -> Vec<Series> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| Series {
                name: l.clone(),
                points: train.iter().map(|t| (t.step as f64, f(t, i))).collect(),
            })
            .collect()
    };
    if labels.len() > 1 {
        line_chart(
            &dir.join("selection.png"),
            "Codebook selection frequency (Fig. 3)",
            "step",
            "fraction of data points",
            &per(&|t, i| t.selection[i]),
            false,
        )?;
    }
    line_chart(
        &dir.join("quantization_loss.png"),
        "Quantization loss per codebook",
        "step",
        "VQ loss",
        &per(&|t, i| t.codebook_loss[i]),
        true,
    )?;
    line_chart(
        &dir.join("perplexity.png"),
        "Code usage perplexity per codebook",
        "step",
        "perplexity",
        &per(&|t, i| t.perplexity[i]),
        true,
    )?;
    let gap = vec![Series {
        name: "‖∂L(G(z_e))/∂z_e − ∂L(G(z_q))/∂z_e‖₂".into(),
        points: pts(&|t| t.grad_gap_l2),
    }];
    line_chart(
        &dir.join("gradient_gap.png"),
        "Gradient gap (Figs. 2 and 4)",
        "step",
        "gradient gap",
        &gap,
        true,
    )
}

/// Originals (top row), reconstructions (middle) and, for a pool, the codebook chosen at each
/// latent position (bottom, colours as in the legend), for the first `n` validation images.
pub fn reconstruction_grid(session: &Session, path: &Path, n: usize) -> Result<()> {
    register_font();
    let (x, recon, book) = reconstruct_first(session, n)?;
    let norm = session.ordered_batcher(false)?.normalization().clone();
    let (n, c, h, w) = x.dims4()?;
    let scale = (96 / h).max(1);
    let m = session.pool.len();
    let grid = Grid {
        tile: (h * scale, w * scale),
        rows: if m > 1 { 3 } else { 2 },
        left: 150,
        gap: 6,
        legend_h: if m > 1 { 40 } else { 0 },
        n,
    };
    let (width, height) = grid.size();
    let mut buf = vec![255u8; width * height * 3];
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let rs = recon.flatten_all()?.to_vec1::<f32>()?;
    let (th, tw) = grid.tile;
    for i in 0..n {
        for (row, src) in [(0usize, &xs), (1, &rs)] {
            let v = |ch: usize, y: usize, xx: usize| {
                let ch = ch.min(c - 1);
                norm.invert(ch, src[((i * c + ch) * h + y / scale) * w + xx / scale])
            };
            grid.paint(&mut buf, i, row, &|y, xx| match c {
                1 => [v(0, y, xx); 3],
                _ => [v(0, y, xx), v(1, y, xx), v(2, y, xx)],
            });
        }
        if m > 1 {
            let (book, lh, lw) = &book;
            grid.paint(&mut buf, i, 2, &|y, xx| {
                let col = palette(book[(i * lh + y * lh / th) * lw + xx * lw / tw] as usize);
                [col.0, col.1, col.2]
            });
        }
    }
    {
        let root =
            BitMapBackend::with_buffer(&mut buf, (width as u32, height as u32)).into_drawing_area();
        let legend = if m > 1 { session.pool_labels() } else { vec![] };
        grid.label(&root, &legend).map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    save_rgb(path, buf, width as u32, height as u32)
}

/// Codebook id per latent position (`[n·H'·W']`, flattened), with `H'` and `W'`.
type CodeMap = (Vec<u32>, usize, usize);

/// The first `n` validation images `[n, C, H, W]`, their reconstructions under argmax routing
/// and the chosen codebook per latent position.
fn reconstruct_first(session: &Session, n: usize) -> Result<(Tensor, Tensor, CodeMap)> {
    let batcher = session.ordered_batcher(false)?;
    let mut images = Vec::new();
    for b in batcher.stream(Cursor::default(), true) {
        images.push(b?.images);
        if images.iter().map(|t| t.dim(0).unwrap_or(0)).sum::<usize>() >= n {
            break;
        }
    }
    let x = Tensor::cat(&images, 0)?;
    let n = n.min(x.dim(0)?);
    let x = x.narrow(0, 0, n)?.to_device(&session.device)?;
    let z_e = session.model.encoder().forward(&x)?;
    // Argmax routing, the decoder fed the quantizer's output (not the codes decoded again: the
    // authors' variant cannot be decoded from per-position codes).
    let quant = session
        .model
        .quantizer()
        .forward(&z_e, &mut vq_core::Step::eval())?;
    let recon = session.model.decoder().forward(&quant.z_q)?;
    let book = &quant.codes.codebook;
    let book = (
        book.flatten_all()?.to_vec1::<u32>()?,
        book.dim(1)?,
        book.dim(2)?,
    );
    Ok((x, recon, book))
}

/// The layout of a reconstruction grid: `rows` rows of `n` tiles right of a label column, and a
/// legend strip below.
struct Grid {
    /// Tile height and width in pixels.
    tile: (usize, usize),
    rows: usize,
    /// Width of the label column.
    left: usize,
    gap: usize,
    legend_h: usize,
    n: usize,
}

impl Grid {
    /// Width and height in pixels.
    fn size(&self) -> (usize, usize) {
        let (th, tw) = self.tile;
        let width = self.left + self.n * (tw + self.gap) + self.gap;
        (
            width,
            self.rows * (th + self.gap) + self.gap + self.legend_h,
        )
    }

    /// Fills tile `i` of `row` in an RGB buffer with `px(y, x)`.
    fn paint(&self, buf: &mut [u8], i: usize, row: usize, px: &dyn Fn(usize, usize) -> [u8; 3]) {
        let ((th, tw), width) = (self.tile, self.size().0);
        let (x0, y0) = (
            self.left + self.gap + i * (tw + self.gap),
            self.gap + row * (th + self.gap),
        );
        for y in 0..th {
            for xx in 0..tw {
                let o = ((y0 + y) * width + x0 + xx) * 3;
                buf[o..o + 3].copy_from_slice(&px(y, xx));
            }
        }
    }

    /// Row names on the left and, below, a colour legend of `pool` (none when empty).
    fn label(
        &self,
        root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
        pool: &[String],
    ) -> DrawResult {
        let (th, gap) = (self.tile.0, self.gap);
        let style = ("sans-serif", 16).into_font().color(&BLACK);
        let names = ["original", "reconstruction", "codebook"];
        for (r, name) in names.iter().take(self.rows).enumerate() {
            root.draw_text(name, &style, (8, (gap + r * (th + gap) + th / 2) as i32))?;
        }
        let y = (self.rows * (th + gap) + gap + 8) as i32;
        for (i, l) in pool.iter().enumerate() {
            let x = 8 + i as i32 * 120;
            root.draw(&Rectangle::new(
                [(x, y), (x + 16, y + 16)],
                palette(i).filled(),
            ))?;
            root.draw_text(l, &style, (x + 20, y))?;
        }
        Ok(())
    }
}

/// Re-draws the plots of a finished run from its metrics (no model needed).
pub fn plot_run(run: &Path) -> Result<()> {
    let config = crate::config::TrainConfig::load(&run.join("config.toml"), &[])?;
    let labels = config
        .model
        .validate(config.data.channels)?
        .quantizer()
        .labels();
    let records = read_metrics(&run.join("metrics.jsonl"))?;
    write_metric_plots(records, &labels, &run.join("plots"))
}
