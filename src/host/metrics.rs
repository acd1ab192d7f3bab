//! The per-epoch metrics log of a training run: a CSV table and an SVG plot (loss curves and
//! accuracy curves), both rewritten atomically after every epoch.
//!
//! CSV columns: `epoch, step, lr, train_loss, <one column per loss part>, train_top1,
//! test_top1, test_top5, images_per_sec, seconds`. Accuracies are fractions in [0, 1]; a test
//! accuracy not measured that epoch is an empty field. The plot is hand-written SVG.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use crate::host::atomic::write_atomic;
use crate::host::read::read_text;

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    /// Epoch number (1-based: the epoch just completed).
    pub epoch: u64,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean total training loss over the epoch.
    pub train_loss: f64,
    /// Mean of each loss part (e.g. cross-entropy, distillation), in the log's part order.
    pub loss_parts: Vec<f64>,
    /// Training top-1 accuracy, a fraction.
    pub train_top1: f64,
    /// Test top-1 accuracy, if evaluated.
    pub test_top1: Option<f64>,
    /// Test top-5 accuracy, if evaluated.
    pub test_top5: Option<f64>,
    /// Training throughput.
    pub images_per_sec: f64,
    /// Wall-clock seconds the epoch took.
    pub seconds: f64,
}

/// The metrics of a run, kept in memory and mirrored to `<name>.csv` and `<name>.svg`.
#[derive(Clone, Debug)]
pub struct MetricsLog {
    csv_path: PathBuf,
    svg_path: PathBuf,
    parts: Vec<String>,
    rows: Vec<EpochMetrics>,
}

const FIXED_HEAD: [&str; 4] = ["epoch", "step", "lr", "train_loss"];
const FIXED_TAIL: [&str; 5] = ["train_top1", "test_top1", "test_top5", "images_per_sec", "seconds"];

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl MetricsLog {
    /// The plot written beside the CSV `csv_path`: the same name with extension `svg`.
    pub fn svg_path_for(csv_path: &Path) -> PathBuf {
        csv_path.with_extension("svg")
    }

    /// An empty log writing to `csv_path` and, beside it, [`MetricsLog::svg_path_for`] it.
    /// `parts` names the loss parts (may be empty).
    pub fn new(csv_path: impl Into<PathBuf>, parts: &[&str]) -> Self {
        let csv_path = csv_path.into();
        let svg_path = MetricsLog::svg_path_for(&csv_path);
        MetricsLog { csv_path, svg_path, parts: parts.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    /// A log continuing a resumed run: the rows of an existing `csv_path` with epoch
    /// `<= through_epoch` are kept (none if the file does not exist). Fails if the file's
    /// header does not have the columns [`MetricsLog::new`] would write for `parts`, or a row
    /// does not parse.
    pub fn resume(csv_path: impl Into<PathBuf>, parts: &[&str], through_epoch: u64) -> io::Result<Self> {
        let mut log = MetricsLog::new(csv_path, parts);
        let text = match read_text(&log.csv_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(log),
            Err(e) => return Err(e),
        };
        let mut lines = text.lines();
        let want = log.header();
        if lines.next() != Some(want.as_str()) {
            return Err(invalid(format!("{}: header is not `{want}`", log.csv_path.display())));
        }
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row = log.parse_row(line).ok_or_else(|| {
                invalid(format!("{}: line {} does not parse: `{line}`", log.csv_path.display(), i + 2))
            })?;
            if row.epoch <= through_epoch {
                log.rows.push(row);
            }
        }
        Ok(log)
    }

    /// Path of the CSV file.
    pub fn csv_path(&self) -> &Path {
        &self.csv_path
    }

    /// Path of the SVG plot.
    pub fn svg_path(&self) -> &Path {
        &self.svg_path
    }

    /// The rows so far.
    pub fn rows(&self) -> &[EpochMetrics] {
        &self.rows
    }

    /// Appends a row and rewrites the CSV and the SVG (atomically). Fails if the row's loss
    /// parts do not match the log's part names in number.
    pub fn push(&mut self, row: EpochMetrics) -> io::Result<()> {
        if row.loss_parts.len() != self.parts.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("metrics row has {} loss parts, the log has {}", row.loss_parts.len(), self.parts.len()),
            ));
        }
        self.rows.push(row);
        write_atomic(&self.csv_path, self.to_csv().as_bytes())?;
        write_atomic(&self.svg_path, self.to_svg().as_bytes())
    }

    fn header(&self) -> String {
        let mut cols: Vec<&str> = FIXED_HEAD.to_vec();
        cols.extend(self.parts.iter().map(String::as_str));
        cols.extend(FIXED_TAIL);
        cols.join(",")
    }

    fn parse_row(&self, line: &str) -> Option<EpochMetrics> {
        let f: Vec<&str> = line.split(',').collect();
        let np = self.parts.len();
        if f.len() != FIXED_HEAD.len() + np + FIXED_TAIL.len() {
            return None;
        }
        let num = |s: &str| s.trim().parse::<f64>().ok();
        let opt = |s: &str| if s.trim().is_empty() { Some(None) } else { num(s).map(Some) };
        let t = 4 + np;
        Some(EpochMetrics {
            epoch: f[0].trim().parse().ok()?,
            step: f[1].trim().parse().ok()?,
            lr: num(f[2])?,
            train_loss: num(f[3])?,
            loss_parts: f[4..t].iter().map(|s| num(s)).collect::<Option<_>>()?,
            train_top1: num(f[t])?,
            test_top1: opt(f[t + 1])?,
            test_top5: opt(f[t + 2])?,
            images_per_sec: num(f[t + 3])?,
            seconds: num(f[t + 4])?,
        })
    }

    /// The CSV text: header and one line per row.
    pub fn to_csv(&self) -> String {
        let mut s = self.header();
        s.push('\n');
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        for r in &self.rows {
            let _ = write!(s, "{},{},{:e},{:.6}", r.epoch, r.step, r.lr, r.train_loss);
            for p in &r.loss_parts {
                let _ = write!(s, ",{p:.6}");
            }
            let _ = writeln!(
                s,
                ",{:.6},{},{},{:.1},{:.3}",
                r.train_top1,
                opt(r.test_top1),
                opt(r.test_top5),
                r.images_per_sec,
                r.seconds
            );
        }
        s
    }

    /// The SVG plot: left panel loss curves (total and parts), right panel accuracies in %.
    pub fn to_svg(&self) -> String {
        let epochs: Vec<f64> = self.rows.iter().map(|r| r.epoch as f64).collect();
        let mut loss_series = vec![Series::new("train loss", self.rows.iter().map(|r| Some(r.train_loss)))];
        for (k, name) in self.parts.iter().enumerate() {
            loss_series.push(Series::new(name, self.rows.iter().map(|r| r.loss_parts.get(k).copied())));
        }
        let pct = |v: Option<f64>| v.map(|v| v * 100.0);
        let acc_series = vec![
            Series::new("train top-1", self.rows.iter().map(|r| pct(Some(r.train_top1)))),
            Series::new("test top-1", self.rows.iter().map(|r| pct(r.test_top1))),
            Series::new("test top-5", self.rows.iter().map(|r| pct(r.test_top5))),
        ];
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#,
            W = 2.0 * PANEL_W,
            H = PANEL_H
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        panel(&mut svg, 0.0, "Loss", &epochs, &loss_series, None, false);
        panel(&mut svg, PANEL_W, "Accuracy (%)", &epochs, &acc_series, Some((0.0, 100.0)), true);
        svg.push_str("</svg>\n");
        svg
    }
}

const PANEL_W: f64 = 480.0;
const PANEL_H: f64 = 360.0;
const MARGIN_L: f64 = 60.0;
const MARGIN_R: f64 = 20.0;
const MARGIN_T: f64 = 36.0;
const MARGIN_B: f64 = 48.0;
const COLOURS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// A named curve; `None` or non-finite values are gaps.
struct Series {
    name: String,
    values: Vec<Option<f64>>,
}

impl Series {
    fn new(name: &str, values: impl Iterator<Item = Option<f64>>) -> Self {
        Series { name: name.to_string(), values: values.map(|v| v.filter(|v| v.is_finite())).collect() }
    }
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `target` intervals over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Draws one panel at horizontal offset `x0`: frame, ticks, grid, curves, legend.
fn panel(
    svg: &mut String,
    x0: f64,
    title: &str,
    xs: &[f64],
    series: &[Series],
    y_range: Option<(f64, f64)>,
    legend_bottom: bool,
) {
    let (plot_l, plot_r) = (x0 + MARGIN_L, x0 + PANEL_W - MARGIN_R);
    let (plot_t, plot_b) = (MARGIN_T, PANEL_H - MARGIN_B);
    let (xmin, mut xmax) = (xs.first().copied().unwrap_or(0.0), xs.last().copied().unwrap_or(1.0));
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    let (ymin, ymax) = y_range.unwrap_or_else(|| {
        let hi = series.iter().flat_map(|s| s.values.iter().flatten()).fold(0.0f64, |m, &v| m.max(v));
        let lo = series.iter().flat_map(|s| s.values.iter().flatten()).fold(0.0f64, |m, &v| m.min(v));
        let step = nice_step((hi - lo).max(1e-3), 5.0);
        ((lo / step).floor() * step, ((hi / step).ceil() * step).max(lo + step))
    });
    let px = |x: f64| plot_l + (x - xmin) / (xmax - xmin) * (plot_r - plot_l);
    let py = |y: f64| plot_b - (y - ymin) / (ymax - ymin) * (plot_b - plot_t);

    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        (plot_l + plot_r) / 2.0,
        escape(title)
    );
    // Y ticks and grid.
    let ystep = nice_step(ymax - ymin, 5.0);
    let mut y = (ymin / ystep).ceil() * ystep;
    while y <= ymax + ystep * 1e-6 {
        let yy = py(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{plot_l:.1}" y1="{yy:.1}" x2="{plot_r:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            plot_l - 6.0,
            yy + 4.0,
            fmt_tick(y, ystep)
        );
        y += ystep;
    }
    // X ticks (epochs are integers: step at least 1).
    let xstep = nice_step(xmax - xmin, 8.0).max(1.0);
    let mut x = (xmin / xstep).ceil() * xstep;
    while x <= xmax + xstep * 1e-6 {
        let xx = px(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{plot_b:.1}" x2="{xx:.1}" y2="{:.1}" stroke="black"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            plot_b + 5.0,
            plot_b + 18.0,
            fmt_tick(x, xstep)
        );
        x += xstep;
    }
    // Axes and labels.
    let _ = writeln!(
        svg,
        r#"<polyline points="{plot_l:.1},{plot_t:.1} {plot_l:.1},{plot_b:.1} {plot_r:.1},{plot_b:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">epoch</text>"#,
        (plot_l + plot_r) / 2.0,
        PANEL_H - 12.0
    );
    // Curves: one polyline through the present values (gaps are bridged), a dot per point.
    for (k, s) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let points: Vec<(f64, f64)> =
            xs.iter().zip(&s.values).filter_map(|(&x, v)| v.map(|v| (px(x), py(v.clamp(ymin, ymax))))).collect();
        if points.len() > 1 {
            let coords: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                coords.join(" ")
            );
        }
        for (cx, cy) in points {
            let _ = writeln!(svg, r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="2.5" fill="{colour}"/>"#);
        }
    }
    // Legend on a white box, in the corner the curves are least likely to cross: top right
    // for decreasing curves (losses), bottom right for increasing ones (accuracies).
    let (lw, lh) = (140.0, 8.0 + 16.0 * series.len() as f64);
    let lx = plot_r - lw - 6.0;
    let ly = if legend_bottom { plot_b - lh - 6.0 } else { plot_t + 6.0 };
    let _ = writeln!(
        svg,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="{lw:.1}" height="{lh:.1}" fill="white" fill-opacity="0.85" stroke="#c0c0c0"/>"##
    );
    for (k, s) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let y = ly + 12.0 + 16.0 * k as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 6.0,
            lx + 26.0,
            lx + 32.0,
            y + 4.0,
            escape(&s.name)
        );
    }
}
