//! Pictures of a run: PNG line charts (loss curves, the paper's Figs. 2–4) and a grid of
//! originals, reconstructions and the codebook chosen at each latent position.

use std::path::Path;
use std::sync::Once;

use candle_core::Module;
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
    let series: Vec<Series> = series
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
        .collect();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
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
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| plot_err(path, e))?;
        let y_desc = if log_y {
            format!("log10 {y_label}")
        } else {
            y_label.to_string()
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let color = palette(i);
            chart
                .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
            // Sparse series (e.g. a validation pass at the end only) get markers, since a line
            // through one point draws nothing.
            if s.points.len() <= 5 {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))
                    .map_err(|e| plot_err(path, e))?;
            }
        }
        if series.len() > 1 || series.first().is_some_and(|s| !s.name.is_empty()) {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    save_rgb(path, buf, w, h)
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
    let batcher = session.ordered_batcher(false)?;
    let norm = batcher.normalization().clone();
    let mut images = Vec::new();
    for b in batcher.stream(Cursor::default(), true) {
        images.push(b?.images);
        if images.iter().map(|t| t.dim(0).unwrap_or(0)).sum::<usize>() >= n {
            break;
        }
    }
    let x = candle_core::Tensor::cat(&images, 0)?;
    let n = n.min(x.dim(0)?);
    let x = x.narrow(0, 0, n)?.to_device(&session.device)?;
    let z_e = session.model.encoder().forward(&x)?;
    // Argmax routing, the decoder fed the quantizer's output (not the codes decoded again: the
    // authors' variant cannot be decoded from per-position codes).
    let quant = session
        .model
        .quantizer()
        .forward(&z_e, &mut vq_core::Step::eval())?;
    let codes = quant.codes;
    let recon = session.model.decoder().forward(&quant.z_q)?;
    let (_, c, h, w) = x.dims4()?;
    let scale = (96 / h).max(1);
    let (th, tw) = (h * scale, w * scale);
    let m = session.pool.len();
    let rows = if m > 1 { 3 } else { 2 };
    let (left, gap, legend_h) = (150usize, 6usize, if m > 1 { 40 } else { 0 });
    let width = left + n * (tw + gap) + gap;
    let height = rows * (th + gap) + gap + legend_h;
    let mut buf = vec![255u8; width * height * 3];
    let put = |buf: &mut Vec<u8>, x0: usize, y0: usize, px: &dyn Fn(usize, usize) -> [u8; 3]| {
        for y in 0..th {
            for xx in 0..tw {
                let o = ((y0 + y) * width + x0 + xx) * 3;
                buf[o..o + 3].copy_from_slice(&px(y, xx));
            }
        }
    };
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let rs = recon.flatten_all()?.to_vec1::<f32>()?;
    let book = codes.codebook.flatten_all()?.to_vec1::<u32>()?;
    let (lh, lw) = (codes.codebook.dim(1)?, codes.codebook.dim(2)?);
    for i in 0..n {
        let x0 = left + gap + i * (tw + gap);
        for (row, src) in [(0usize, &xs), (1, &rs)] {
            let pix = |y: usize, xx: usize| -> [u8; 3] {
                let (py, px) = (y / scale, xx / scale);
                let v = |ch: usize| {
                    norm.invert(
                        ch.min(c - 1),
                        src[((i * c + ch.min(c - 1)) * h + py) * w + px],
                    )
                };
                if c == 1 {
                    let g = v(0);
                    [g, g, g]
                } else {
                    [v(0), v(1), v(2)]
                }
            };
            put(&mut buf, x0, gap + row * (th + gap), &pix);
        }
        if m > 1 {
            let pix = |y: usize, xx: usize| -> [u8; 3] {
                let b = book[(i * lh + y * lh / th) * lw + xx * lw / tw] as usize;
                let col = palette(b);
                [col.0, col.1, col.2]
            };
            put(&mut buf, x0, gap + 2 * (th + gap), &pix);
        }
    }
    {
        let root =
            BitMapBackend::with_buffer(&mut buf, (width as u32, height as u32)).into_drawing_area();
        let style = ("sans-serif", 16).into_font().color(&BLACK);
        let names = ["original", "reconstruction", "codebook"];
        for (r, name) in names.iter().take(rows).enumerate() {
            root.draw_text(name, &style, (8, (gap + r * (th + gap) + th / 2) as i32))
                .map_err(|e| plot_err(path, e))?;
        }
        if m > 1 {
            let y = (rows * (th + gap) + gap + 8) as i32;
            for (i, l) in session.pool_labels().iter().enumerate() {
                let x = 8 + i as i32 * 120;
                root.draw(&Rectangle::new(
                    [(x, y), (x + 16, y + 16)],
                    palette(i).filled(),
                ))
                .map_err(|e| plot_err(path, e))?;
                root.draw_text(l, &style, (x + 20, y))
                    .map_err(|e| plot_err(path, e))?;
            }
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    save_rgb(path, buf, width as u32, height as u32)
}

/// Re-draws the plots of a finished run from its metrics (no model needed).
pub fn plot_run(run: &Path) -> Result<()> {
    let config = crate::config::TrainConfig::load(&run.join("config.toml"), &[])?;
    let labels: Vec<String> = config
        .model
        .validate(config.data.channels)?
        .quantizer()
        .pool()
        .iter()
        .map(|[n, d]| format!("[{n},{d}]"))
        .collect();
    let records = read_metrics(&run.join("metrics.jsonl"))?;
    write_metric_plots(records, &labels, &run.join("plots"))
}
