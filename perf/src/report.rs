//! A self-contained SVG report: ratios against the targets, and the
//! latency distributions, so a reader can look rather than read.

use serde_json::Value;
use std::fmt::Write;

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// One bar: label, measured ratio, target, and whether higher is better.
struct Bar {
    label: &'static str,
    value: f64,
    target: f64,
    higher_is_better: bool,
}

/// Renders the report for the `scenarios` object of a results file.
pub fn svg(results: &Value) -> String {
    let s = &results["scenarios"];
    let mut bars = Vec::new();
    let mut add = |label, path: &[&str], target, higher_is_better| {
        if let Some(value) = num(s, path) {
            bars.push(Bar {
                label,
                value,
                target,
                higher_is_better,
            });
        }
    };
    add(
        "throughput 1 stream / raw",
        &["throughput", "ratio_one"],
        0.40,
        true,
    );
    add(
        "throughput 8 streams / 1 stream",
        &["throughput", "eight_over_one"],
        1.0,
        true,
    );
    add(
        "latency p50 / raw",
        &["latency", "ratio", "p50"],
        1.6,
        false,
    );
    add(
        "latency p99 / raw",
        &["latency", "ratio", "p99"],
        2.0,
        false,
    );
    add(
        "idle KiB per tunnel / 64",
        &["idle", "kib_per_tunnel"],
        64.0,
        false,
    );
    for b in bars
        .iter_mut()
        .filter(|b| b.label.starts_with("idle") || b.label.starts_with("fan-out"))
    {
        b.value /= b.target;
        b.target = 1.0;
    }
    let (w, row) = (900.0, 34.0);
    let top = 60.0;
    let cdf_top = top + row * bars.len() as f64 + 60.0;
    let h = cdf_top + 320.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="28" font-size="18" font-weight="bold">revtun perf lab: tunnel vs raw loopback TCP (same run)</text>
<text x="20" y="48" fill="#555">bar = measured ratio, black tick = target; green meets the target, red misses it</text>
"##
    );
    let scale = |x: f64| 300.0 + x.min(4.0) / 4.0 * 560.0;
    for (i, b) in bars.iter().enumerate() {
        let y = top + i as f64 * row;
        let ok = if b.higher_is_better {
            b.value >= b.target
        } else {
            b.value <= b.target
        };
        let color = if ok { "#2a9d4b" } else { "#d1495b" };
        let _ = write!(
            out,
            r##"<text x="20" y="{ty}">{label}</text>
<rect x="300" y="{y}" width="{bw}" height="20" fill="{color}"/>
<line x1="{tx}" y1="{y0}" x2="{tx}" y2="{y1}" stroke="black" stroke-width="3"/>
<text x="{vx}" y="{ty}">{value:.2}</text>
"##,
            ty = y + 15.0,
            label = b.label,
            bw = scale(b.value) - 300.0,
            tx = scale(b.target),
            y0 = y - 3.0,
            y1 = y + 23.0,
            vx = scale(b.value) + 6.0,
            value = b.value,
        );
    }
    // Latency CDFs on a log axis.
    let _ = write!(
        out,
        r##"<text x="20" y="{t}" font-size="15" font-weight="bold">64-byte round trip: latency distribution (log scale, µs)</text>
<rect x="60" y="{y0}" width="800" height="240" fill="none" stroke="#999"/>
"##,
        t = cdf_top - 10.0,
        y0 = cdf_top + 10.0
    );
    let lx = |us: f64| 60.0 + ((us.max(1.0)).log10() / 4.0).min(1.0) * 800.0;
    for decade in 0..=4 {
        let x = lx(10f64.powi(decade));
        let _ = write!(
            out,
            r##"<text x="{x}" y="{y}" text-anchor="middle">{v}</text>"##,
            y = cdf_top + 268.0,
            v = 10u64.pow(decade as u32)
        );
    }
    for (name, color) in [("raw", "#1f6feb"), ("tunnel", "#e36209")] {
        let Some(points) = s["latency"]["cdf_us"][name].as_array() else {
            continue;
        };
        let mut path = String::new();
        for (i, p) in points.iter().enumerate() {
            let (us, q) = (p[0].as_f64().unwrap_or(1.0), p[1].as_f64().unwrap_or(0.0));
            let x = lx(us);
            let y = cdf_top + 250.0 - q * 240.0;
            let _ = write!(path, "{}{x:.1},{y:.1} ", if i == 0 { "M" } else { "L" });
        }
        let _ = write!(
            out,
            r##"<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>
<text x="{lx}" y="{ly}" fill="{color}">{name}</text>
"##,
            lx = 70.0,
            ly = cdf_top + 30.0 + if name == "raw" { 0.0 } else { 18.0 }
        );
    }
    out.push_str("</svg>\n");
    out
}
