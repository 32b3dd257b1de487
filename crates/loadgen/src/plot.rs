//! The latency plot: cumulative distributions of `POST /orders` latency and of
//! created -> final latency, on a log scale, as a self-contained SVG.

use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 50.0;
const TOP: f64 = 40.0;
const RIGHT: f64 = 20.0;

/// Two CDF curves, x in ms (log10), y the fraction of orders at or below it.
pub fn latency_cdfs(post_ms: &[f64], final_ms: &[f64]) -> String {
    let max = post_ms
        .iter()
        .chain(final_ms)
        .copied()
        .fold(1.0_f64, f64::max);
    let (lo, hi) = (-1.0_f64, max.log10().ceil().max(1.0));
    let x = |ms: f64| LEFT + (ms.max(0.1).log10() - lo) / (hi - lo) * (WIDTH - LEFT - RIGHT);
    let y = |fraction: f64| HEIGHT - BOTTOM - fraction * (HEIGHT - BOTTOM - TOP);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="14">Latency CDF ({} orders)</text>
"#,
        post_ms.len()
    );
    for decade in (lo as i32)..=(hi as i32) {
        let ms = 10f64.powi(decade);
        let gx = x(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{ms} ms</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 18.0
        );
    }
    for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
        let gy = y(q);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">p{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            gy + 4.0,
            q * 100.0
        );
    }
    for (samples, colour, label, row) in [
        (post_ms, "#1f77b4", "POST /orders", 0.0),
        (final_ms, "#d62728", "created -> final", 1.0),
    ] {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let points: Vec<String> = sorted
            .iter()
            .enumerate()
            .map(|(i, ms)| {
                format!(
                    "{:.1},{:.1}",
                    x(*ms),
                    y((i + 1) as f64 / sorted.len() as f64)
                )
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 16.0 * row;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="14" height="4" fill="{colour}"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            WIDTH - 190.0,
            ly - 4.0,
            WIDTH - 170.0,
            ly
        );
    }
    svg.push_str("</svg>\n");
    svg
}
