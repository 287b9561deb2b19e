//! SVG figures for `diagnose --plot DIR` (and the model cards of `fit` and
//! `whiten`), drawn by hand so the binary needs no plotting library: the
//! cosine histogram, average cosine by layer, and Wang & Isola's two
//! pictures: the embeddings on the unit circle, and the histogram of
//! positive-pair distances.

use std::f64::consts::{PI, TAU};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::diagnose::Diagnosis;
use crate::error::{Error, Result};
use crate::output::AtomicFile;

const COLORS: [&str; 2] = ["#1f77b4", "#d62728"];
/// Concentration of the von Mises–Fisher kernel for the angle density.
const KAPPA: f64 = 20.0;

/// Writes the figures of one or two diagnoses (a comparison overlays them)
/// into `dir`, creating it if needed. Returns the files written.
pub fn write_plots(dir: &Path, diagnoses: &[&Diagnosis]) -> Result<Vec<PathBuf>> {
    prepare_dir(dir)?;
    let mut files = vec![(dir.join("cosine_histogram.svg"), histogram(diagnoses))];
    // Saved vectors have no layers.
    if diagnoses.iter().any(|d| !d.per_layer_avg_cosine.is_empty()) {
        files.push((dir.join("per_layer_avg_cosine.svg"), layers(diagnoses)));
    }
    if diagnoses.iter().any(|d| !d.alignment_distances.is_empty()) {
        files.push((
            dir.join("alignment_histogram.svg"),
            alignment_histogram(diagnoses),
        ));
    }
    for (i, d) in diagnoses.iter().enumerate() {
        let name = if i == 0 {
            "circle.svg".to_string()
        } else {
            format!("circle_{}.svg", i + 1)
        };
        files.push((dir.join(name), circle(d, COLORS[i % 2])));
    }
    // Every figure is written in full before any appears: a full disk
    // leaves none rather than some.
    let mut finished = Vec::with_capacity(files.len());
    for (path, svg) in &files {
        let mut f = AtomicFile::create(path)?;
        f.write_all(svg.as_bytes())
            .map_err(|e| Error::io(path, e))?;
        finished.push(f.finish()?);
    }
    for f in finished {
        f.commit()?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Creates `dir` and checks it can be written, so a bad `--plot` fails
/// before any model runs.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = dir.join(format!(".embedtune-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// A plot area of `W × H` with margins, mapping data to pixels.
struct Chart {
    svg: String,
    x: (f64, f64),
    y: (f64, f64),
}

const W: f64 = 640.0;
const H: f64 = 400.0;
const L: f64 = 60.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;

impl Chart {
    fn new(title: &str, x: (f64, f64), y: (f64, f64), xlabel: &str, ylabel: &str) -> Self {
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
            W / 2.0,
            esc(title)
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            L + (W - L - R) / 2.0,
            H - 12.0,
            esc(xlabel)
        );
        let _ = writeln!(
            svg,
            "<text transform=\"translate(16,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            T + (H - T - B) / 2.0,
            esc(ylabel)
        );
        let mut c = Chart { svg, x, y };
        c.axes();
        c
    }

    fn px(&self, x: f64) -> f64 {
        L + (x - self.x.0) / (self.x.1 - self.x.0) * (W - L - R)
    }

    fn py(&self, y: f64) -> f64 {
        H - B - (y - self.y.0) / (self.y.1 - self.y.0) * (H - T - B)
    }

    fn axes(&mut self) {
        let (x0, x1, y0, y1) = (
            self.px(self.x.0),
            self.px(self.x.1),
            self.py(self.y.0),
            self.py(self.y.1),
        );
        let _ = writeln!(
            self.svg,
            "<rect x=\"{x0}\" y=\"{y1}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>",
            x1 - x0,
            y0 - y1
        );
        for i in 0..=4 {
            let f = i as f64 / 4.0;
            let xv = self.x.0 + f * (self.x.1 - self.x.0);
            let yv = self.y.0 + f * (self.y.1 - self.y.0);
            let (xp, yp) = (self.px(xv), self.py(yv));
            let _ = writeln!(
                self.svg,
                "<line x1=\"{xp}\" y1=\"{y0}\" x2=\"{xp}\" y2=\"{}\" stroke=\"#444\"/><text x=\"{xp}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                y0 + 5.0,
                y0 + 18.0,
                tick(xv)
            );
            let _ = writeln!(
                self.svg,
                "<line x1=\"{}\" y1=\"{yp}\" x2=\"{x0}\" y2=\"{yp}\" stroke=\"#444\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                x0 - 5.0,
                x0 - 8.0,
                yp + 4.0,
                tick(yv)
            );
        }
    }

    fn polyline(&mut self, points: &[(f64, f64)], color: &str) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", self.px(*x), self.py(*y)))
            .collect();
        let _ = writeln!(
            self.svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            pts.join(" ")
        );
    }

    /// One coloured entry per diagnosis, in plotting order.
    /// Half-transparent bars of a density histogram: bin `i` spans
    /// `[x0 + i·width, x0 + (i+1)·width)` in data units.
    fn bars(&mut self, x0: f64, width: f64, density: &[f64], color: &str) {
        for (i, v) in density.iter().enumerate() {
            let (a, b) = (
                self.px(x0 + i as f64 * width),
                self.px(x0 + (i + 1) as f64 * width),
            );
            let (y, y0) = (self.py(*v), self.py(0.0));
            let _ = writeln!(
                self.svg,
                "<rect x=\"{a:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\" fill-opacity=\"0.5\"/>",
                (b - a).max(0.5),
                y0 - y
            );
        }
    }

    fn legend(&mut self, ds: &[&Diagnosis]) {
        self.legend_with(ds, label);
    }

    fn legend_with(&mut self, ds: &[&Diagnosis], label: impl Fn(&Diagnosis) -> String) {
        for (i, d) in ds.iter().enumerate() {
            let (y, color) = (T + 16.0 + 16.0 * i as f64, COLORS[i % 2]);
            let _ = writeln!(
                self.svg,
                "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                L + 10.0,
                y - 10.0,
                L + 28.0,
                y,
                esc(&label(d))
            );
        }
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn label(d: &Diagnosis) -> String {
    if d.pooling.is_empty() {
        return format!("{}, avg cos {:.2}", d.model, d.avg_cosine);
    }
    format!("{} ({}), avg cos {:.2}", d.model, d.pooling, d.avg_cosine)
}

fn histogram(ds: &[&Diagnosis]) -> String {
    // Densities, so probes of different sizes overlay.
    let dens: Vec<Vec<f64>> = ds
        .iter()
        .map(|d| {
            let total = d.histogram.counts.iter().sum::<u64>().max(1) as f64;
            let width = 2.0 / d.histogram.counts.len() as f64;
            d.histogram
                .counts
                .iter()
                .map(|c| *c as f64 / total / width)
                .collect()
        })
        .collect();
    let ymax = dens.iter().flatten().fold(0f64, |a, b| a.max(*b)).max(1e-9) * 1.05;
    let mut c = Chart::new(
        "Pairwise cosine similarity",
        (-1.0, 1.0),
        (0.0, ymax),
        "cosine",
        "density",
    );
    for (k, (d, den)) in ds.iter().zip(&dens).enumerate() {
        c.bars(
            d.histogram.bin_start(0),
            2.0 / den.len() as f64,
            den,
            COLORS[k % 2],
        );
    }
    c.legend(ds);
    c.finish()
}

/// Bins of the alignment histogram.
const DISTANCE_BINS: usize = 40;

/// Wang & Isola's alignment analysis: the histogram (density) of
/// positive-pair distances `‖f(x) − f(y)‖` over two dropout encodings,
/// each model's mean marked by a dashed line.
fn alignment_histogram(ds: &[&Diagnosis]) -> String {
    let top = ds
        .iter()
        .flat_map(|d| d.alignment_distances.iter())
        .fold(0f64, |a, b| a.max(*b));
    // Up to the next tenth above the largest distance (at most 2).
    let xmax = ((top * 10.0).floor() + 1.0).min(20.0) / 10.0;
    let width = xmax / DISTANCE_BINS as f64;
    let dens: Vec<Vec<f64>> = ds
        .iter()
        .map(|d| {
            let mut counts = vec![0f64; DISTANCE_BINS];
            for v in &d.alignment_distances {
                counts[((v / width) as usize).min(DISTANCE_BINS - 1)] += 1.0;
            }
            let n = d.alignment_distances.len().max(1) as f64;
            counts.iter().map(|c| c / n / width).collect()
        })
        .collect();
    let ymax = dens.iter().flatten().fold(0f64, |a, b| a.max(*b)).max(1e-9) * 1.05;
    let mut c = Chart::new(
        "Alignment: positive-pair distances (two dropout encodings)",
        (0.0, xmax),
        (0.0, ymax),
        "‖f(x) − f(y)‖ (unit vectors)",
        "density",
    );
    for (k, (d, den)) in ds.iter().zip(&dens).enumerate() {
        let color = COLORS[k % 2];
        c.bars(0.0, width, den, color);
        if d.alignment_distances.is_empty() {
            continue;
        }
        let mean = d.alignment_distances.iter().sum::<f64>() / d.alignment_distances.len() as f64;
        let (xm, ytop, y0) = (c.px(mean), c.py(ymax), c.py(0.0));
        let _ = writeln!(
            c.svg,
            "<line x1=\"{xm:.1}\" y1=\"{ytop:.1}\" x2=\"{xm:.1}\" y2=\"{y0:.1}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">mean {mean:.3}</text>",
            xm + 4.0,
            ytop + 14.0 + 14.0 * k as f64
        );
    }
    c.legend_with(ds, |d| {
        format!("{} ({}), alignment {:.3}", d.model, d.pooling, d.alignment)
    });
    c.finish()
}

fn layers(ds: &[&Diagnosis]) -> String {
    let nl = ds
        .iter()
        .map(|d| d.per_layer_avg_cosine.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let lo = ds
        .iter()
        .flat_map(|d| d.per_layer_avg_cosine.iter())
        .fold(0f64, |a, b| a.min(*b));
    let mut c = Chart::new(
        "Average cosine by layer",
        (0.0, (nl - 1) as f64),
        (lo.min(0.0), 1.0),
        "layer (0 = embeddings)",
        "average cosine",
    );
    for (k, d) in ds.iter().enumerate() {
        let pts: Vec<(f64, f64)> = d
            .per_layer_avg_cosine
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64, *v))
            .collect();
        c.polyline(&pts, COLORS[k % 2]);
        for (x, y) in &pts {
            let _ = writeln!(
                c.svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                c.px(*x),
                c.py(*y),
                COLORS[k % 2]
            );
        }
    }
    c.legend(ds);
    c.finish()
}

/// Modified Bessel function I₀ by its power series (fine for κ ≤ ~100).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term) = (1.0, 1.0);
    for k in 1..200 {
        term *= (x / 2.0) * (x / 2.0) / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// von Mises–Fisher kernel density of `angles` at `theta`.
fn vmf_density(angles: &[f64], theta: f64) -> f64 {
    let norm = TAU * bessel_i0(KAPPA);
    angles
        .iter()
        .map(|a| (KAPPA * (theta - a).cos()).exp())
        .sum::<f64>()
        / (angles.len() as f64 * norm)
}

fn circle(d: &Diagnosis, color: &str) -> String {
    // At most 5,000 angles: the figure cannot show more, and the density
    // costs grid × points.
    let step = (d.circle_angles.len() / 5000).max(1);
    let angles: Vec<f64> = d.circle_angles.iter().step_by(step).copied().collect();
    let grid: Vec<f64> = (0..=360).map(|i| -PI + TAU * i as f64 / 360.0).collect();
    let dens: Vec<f64> = grid.iter().map(|t| vmf_density(&angles, *t)).collect();
    let dmax = dens.iter().fold(0f64, |a, b| a.max(*b)).max(1e-9);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"420\" viewBox=\"0 0 900 420\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"450\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        esc(&format!(
            "{} on S¹ (top-2 principal directions), uniformity {:.2}",
            d.model, d.uniformity
        ))
    );
    // Left: the unit circle with the points and the density as a ring.
    let (cx, cy, r) = (200.0, 225.0, 120.0);
    let _ = writeln!(
        svg,
        "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"{r}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for a in angles.iter().take(2000) {
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{color}\" fill-opacity=\"0.35\"/>",
            cx + r * a.cos(),
            cy - r * a.sin()
        );
    }
    let ring: Vec<String> = grid
        .iter()
        .zip(&dens)
        .map(|(t, v)| {
            let rr = r + 8.0 + 70.0 * v / dmax;
            format!("{:.1},{:.1}", cx + rr * t.cos(), cy - rr * t.sin())
        })
        .collect();
    let _ = writeln!(
        svg,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
        ring.join(" ")
    );
    // Right: the density against the angle.
    let (x0, y0, w, h) = (470.0, 360.0, 400.0, 280.0);
    let _ = writeln!(
        svg,
        "<rect x=\"{x0}\" y=\"{}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#444\"/>",
        y0 - h
    );
    let pts: Vec<String> = grid
        .iter()
        .zip(&dens)
        .map(|(t, v)| {
            format!(
                "{:.1},{:.1}",
                x0 + (t + PI) / TAU * w,
                y0 - v / dmax * h * 0.95
            )
        })
        .collect();
    let _ = writeln!(
        svg,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
        pts.join(" ")
    );
    let uniform_y = y0 - (1.0 / TAU) / dmax * h * 0.95;
    if uniform_y > y0 - h {
        let _ = writeln!(
            svg,
            "<line x1=\"{x0}\" y1=\"{uniform_y:.1}\" x2=\"{}\" y2=\"{uniform_y:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#666\">uniform</text>",
            x0 + w,
            x0 + w - 4.0,
            uniform_y - 4.0
        );
    }
    for (i, lab) in ["−π", "−π/2", "0", "π/2", "π"].iter().enumerate() {
        let x = x0 + w * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{lab}</text>",
            y0 + 18.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">angle (vMF kernel density, κ = {KAPPA})</text>",
        x0 + w / 2.0,
        y0 + 40.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmf_density_integrates_to_one() {
        let angles = [0.3, -2.0, 1.0];
        let n = 2000;
        let integral: f64 = (0..n)
            .map(|i| vmf_density(&angles, -PI + TAU * i as f64 / n as f64))
            .sum::<f64>()
            * TAU
            / n as f64;
        assert!((integral - 1.0).abs() < 1e-6, "{integral}");
    }
}
