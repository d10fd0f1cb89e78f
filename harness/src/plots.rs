//! Small, dependency-free SVG charts for the run report: a line chart (access share over
//! time), grouped bars (throughput by engine x folio size x batch size) and a histogram
//! (batch latency distribution). Axes get "nice" ticks, every chart has a title, axis labels
//! and a legend.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// Colour-blind-safe palette (Okabe-Ito).
const COLORS: &[&str] = &[
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Tick values covering `[lo, hi]`: steps of 1, 2 or 5 times a power of ten, about `n` of them.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).ceil() * step;
    let mut v = Vec::new();
    let mut t = start;
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_owned()
    }
}

struct Frame {
    svg: String,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn new(title: &str, x_label: &str, y_label: &str, y: (f64, f64)) -> Self {
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"##,
            (LEFT + W - RIGHT) / 2.0,
            esc(title),
            (LEFT + W - RIGHT) / 2.0,
            H - 12.0,
            esc(x_label),
            (TOP + H - BOTTOM) / 2.0,
            esc(y_label),
        );
        let f = Self {
            svg,
            x0: 0.0,
            x1: 1.0,
            y0: y.0,
            y1: y.1,
        };
        let mut f = f;
        for t in ticks(f.y0, f.y1, 5) {
            let py = f.py(t);
            let _ = write!(
                f.svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                py + 4.0,
                fmt_tick(t)
            );
        }
        let _ = write!(
            f.svg,
            r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="#333"/><line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="#333"/>"##,
            H - BOTTOM,
            W - RIGHT,
            H - BOTTOM,
            H - BOTTOM
        );
        f
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0).max(1e-12) * (W - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y0) / (self.y1 - self.y0).max(1e-12) * (H - TOP - BOTTOM)
    }

    fn legend(&mut self, names: &[String]) {
        for (i, n) in names.iter().enumerate() {
            let y = TOP + 10.0 + i as f64 * 18.0;
            let _ = write!(
                self.svg,
                r##"<rect x="{}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"##,
                W - RIGHT + 12.0,
                y - 10.0,
                COLORS[i % COLORS.len()],
                W - RIGHT + 30.0,
                y,
                esc(n)
            );
        }
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

/// Lines through `(x, y)` points, one per named series.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    y_range: (f64, f64),
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let xmax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut f = Frame::new(title, x_label, y_label, y_range);
    f.x1 = xmax;
    for t in ticks(0.0, xmax, 8) {
        let px = f.px(t);
        let _ = write!(
            f.svg,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{}" y2="{}" stroke="#333"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 18.0,
            fmt_tick(t)
        );
    }
    for (i, (_, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", f.px(x), f.py(y)))
            .collect();
        let c = COLORS[i % COLORS.len()];
        let _ = write!(
            f.svg,
            r##"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = write!(
                f.svg,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"##,
                f.px(x),
                f.py(y)
            );
        }
    }
    f.legend(&series.iter().map(|s| s.0.clone()).collect::<Vec<_>>());
    f.finish()
}

/// Grouped bars: for each group (x label) one bar per series; missing values are skipped.
pub fn bar_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series_names: &[String],
    groups: &[(String, Vec<Option<f64>>)],
) -> String {
    let ymax = groups
        .iter()
        .flat_map(|g| g.1.iter().flatten().copied())
        .fold(0.0f64, f64::max);
    let top = ticks(0.0, ymax.max(1e-9) * 1.1, 5)
        .last()
        .copied()
        .unwrap_or(1.0)
        .max(ymax * 1.05)
        .max(1e-9);
    let mut f = Frame::new(title, x_label, y_label, (0.0, top));
    let n = groups.len().max(1) as f64;
    let gw = (W - LEFT - RIGHT) / n;
    let bw = gw * 0.8 / series_names.len().max(1) as f64;
    for (gi, (label, vals)) in groups.iter().enumerate() {
        let gx = LEFT + gi as f64 * gw + gw * 0.1;
        for (si, v) in vals.iter().enumerate() {
            let Some(v) = v.filter(|v| *v > 0.0) else {
                continue;
            };
            let (x, y) = (gx + si as f64 * bw, f.py(v));
            let _ = write!(
                f.svg,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"##,
                (bw - 1.0).max(1.0),
                (H - BOTTOM - y).max(0.0),
                COLORS[si % COLORS.len()],
                esc(&series_names[si]),
                fmt_tick(v)
            );
        }
        let _ = write!(
            f.svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            LEFT + (gi as f64 + 0.5) * gw,
            H - BOTTOM + 18.0,
            esc(label)
        );
    }
    f.legend(series_names);
    f.finish()
}

/// Counts of `values` in logarithmic buckets (powers of two), as bars.
pub fn histogram(title: &str, x_label: &str, series: &[(String, Vec<u64>)]) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let buckets = (64 - max.leading_zeros()) as usize;
    let lo = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .min()
        .unwrap_or(1)
        .max(1);
    let first = (63 - lo.leading_zeros()) as usize;
    let groups: Vec<(String, Vec<Option<f64>>)> = (first..buckets)
        .map(|b| {
            let (a, z) = (1u64 << b, 1u64 << (b + 1));
            (
                fmt_us(a),
                series
                    .iter()
                    .map(|s| Some(s.1.iter().filter(|&&v| v >= a && v < z).count() as f64))
                    .collect(),
            )
        })
        .collect();
    let names: Vec<String> = series.iter().map(|s| s.0.clone()).collect();
    bar_chart(title, x_label, "batches", &names, &groups)
}

fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{}s", us / 1_000_000)
    } else if us >= 1000 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(
            ticks(0.0, 8000.0, 8),
            vec![0.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0]
        );
        let t = ticks(0.0, 0.137, 5);
        assert!(t.len() >= 3 && t[1] > 0.0);
    }

    #[test]
    fn charts_are_well_formed_svg_with_their_labels() {
        let s = line_chart(
            "share",
            "ms",
            "fraction",
            (0.0, 1.0),
            &[("node 0".into(), vec![(0.0, 0.0), (100.0, 0.5)])],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("share") && s.contains("node 0") && s.contains("polyline"));
        let b = bar_chart(
            "GB/s <x>",
            "case",
            "GB/s",
            &["cpu".into(), "sdxi".into()],
            &[("4k/1".into(), vec![Some(1.0), None])],
        );
        assert_eq!(
            b.matches("<rect x=").count(),
            1 + 2,
            "one bar and two legend keys"
        );
        assert!(b.contains("GB/s &lt;x&gt;"));
        let h = histogram("lat", "us", &[("sdxi".into(), vec![3, 5, 900, 1100])]);
        assert!(h.contains("2us") && h.contains("1ms"));
    }
}
