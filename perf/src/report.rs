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
    let fan_top = cdf_top + 320.0;
    let notes_top = fan_top + 300.0;
    let peers_top = notes_top + 130.0;
    let peer_rows = s["peers"]["tools"].as_object().map_or(0, |t| t.len());
    let peer_verdicts = s["peers"]["targets"].as_object().map_or(0, |t| t.len());
    let h = peers_top + 60.0 + 22.0 * (peer_rows + peer_verdicts) as f64;
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
    fanout_chart(&mut out, s, fan_top);
    notes(&mut out, s, notes_top);
    peers(&mut out, s, peers_top);
    out.push_str("</svg>\n");
    out
}

/// Fan-out: added latency (p50, p99) against viewers, with the 5 ms target.
fn fanout_chart(out: &mut String, s: &Value, top: f64) {
    let Some(rounds) = s["fanout"]["rounds"].as_array().filter(|r| !r.is_empty()) else {
        return;
    };
    let (x0, y0, w, h) = (60.0, top + 10.0, 800.0, 220.0);
    let ms = |r: &Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let top_ms = rounds
        .iter()
        .map(|r| ms(r, "latency_p99_ms"))
        .fold(5.0f64, f64::max)
        .min(100.0)
        * 1.15;
    let _ = write!(
        out,
        r##"<text x="20" y="{t}" font-size="15" font-weight="bold">Video fan-out: camera-to-viewer latency (ms) against viewers, one 8 Mbit/s stream</text>
<text x="{sub_x}" y="{sub_y}" fill="#555" text-anchor="end">dashed: 5 ms target; red dot: a round with drops</text>
<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>
"##,
        t = top - 10.0,
        sub_x = x0 + w - 10.0,
        sub_y = y0 + 18.0,
    );
    let n = rounds.len().max(2) as f64;
    let px = |i: usize| x0 + 40.0 + i as f64 / (n - 1.0) * (w - 80.0);
    let py = |v: f64| y0 + h - v.min(top_ms) / top_ms * h;
    let _ = write!(
        out,
        r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="black" stroke-dasharray="6,4"/>
<text x="{tx}" y="{ty}">5 ms</text>
<text x="{x0}" y="{top_y}" fill="#555">{top_ms:.0} ms</text>
"##,
        y = py(5.0),
        x1 = x0 + w,
        tx = x0 + w + 4.0,
        ty = py(5.0) + 4.0,
        top_y = y0 - 2.0,
    );
    for (key, color, name) in [
        ("latency_p50_ms", "#1f6feb", "p50"),
        ("latency_p99_ms", "#e36209", "p99"),
    ] {
        let mut path = String::new();
        for (i, r) in rounds.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1} ",
                if i == 0 { "M" } else { "L" },
                px(i),
                py(ms(r, key))
            );
        }
        let _ = write!(
            out,
            r##"<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>
<text x="{lx}" y="{ly}" fill="{color}">{name}</text>
"##,
            lx = x0 + 10.0,
            ly = y0 + 18.0 + if name == "p50" { 0.0 } else { 18.0 }
        );
    }
    for (i, r) in rounds.iter().enumerate() {
        let drops = r["dropped_packets"].as_u64().unwrap_or(0);
        let fill = if drops == 0 { "#2a9d4b" } else { "#d1495b" };
        let _ = write!(
            out,
            r##"<circle cx="{x}" cy="{y}" r="4" fill="{fill}"/>
<text x="{x}" y="{ly}" text-anchor="middle">{v}</text>
"##,
            x = px(i),
            y = py(ms(r, "latency_p99_ms")),
            ly = y0 + h + 18.0,
            v = r["viewers"].as_u64().unwrap_or(0),
        );
    }
}

/// revtun beside the other tunnels (`peers`): a row per tool, then the
/// targets against the best peer, green when met.
fn peers(out: &mut String, s: &Value, top: f64) {
    let Some(tools) = s["peers"]["tools"].as_object() else {
        return;
    };
    let _ = writeln!(
        out,
        r##"<text x="20" y="{top}" font-size="15" font-weight="bold">Beside the other reverse tunnels (peers, default settings, same run)</text>
<text x="20" y="{y}" fill="#555">tool: 1 stream / 8 streams Gbit/s, 64 B round trip p50 / p99 µs, new connection p50 µs</text>"##,
        y = top + 20.0
    );
    let mut y = top + 44.0;
    for (name, t) in tools {
        let f = |k: &str| num(t, &[k]).unwrap_or(0.0);
        let weight = if name == "revtun" { "bold" } else { "normal" };
        let _ = writeln!(
            out,
            r##"<text x="20" y="{y}" font-weight="{weight}">{name}: {:.2} / {:.2} Gbit/s, {:.0} / {:.0} µs, {:.0} µs</text>"##,
            f("one_stream_gbit_s"),
            f("eight_streams_gbit_s"),
            f("round_trip_p50_us"),
            f("round_trip_p99_us"),
            f("connect_p50_us"),
        );
        y += 22.0;
    }
    if let Some(targets) = s["peers"]["targets"].as_object() {
        for (name, v) in targets {
            let met = v["met"].as_bool().unwrap_or(false);
            let color = if met { "#2a9d4b" } else { "#d1495b" };
            let peer = v["best_peer"].as_str().unwrap_or("");
            let verdict = match (met, peer.is_empty()) {
                (true, true) => "met".to_string(),
                (false, true) => "missed".to_string(),
                (true, false) => format!("met against {peer}"),
                (false, false) => format!("missed against {peer}"),
            };
            let _ = writeln!(
                out,
                r##"<text x="20" y="{y}" fill="{color}">{}: {verdict}</text>"##,
                name.replace('_', " "),
            );
            y += 22.0;
        }
    }
}

/// One line each for the scenarios that are counts rather than ratios.
fn notes(out: &mut String, s: &Value, top: f64) {
    let mut lines = Vec::new();
    if let (Some(e), Some(r), Some(f)) = (
        num(s, &["handshake", "enrollments_per_s"]),
        num(s, &["handshake", "reauth_per_s"]),
        num(s, &["handshake", "flooded_over_quiet"]),
    ) {
        lines.push(format!(
            "handshake: {e:.0} enrollments/s, {r:.0} re-authentications/s; data plane under a handshake flood: {f:.2} of its quiet throughput"
        ));
    }
    if let (Some(p50), Some(p99)) = (
        num(s, &["connect", "ratio", "p50"]),
        num(s, &["connect", "ratio", "p99"]),
    ) {
        lines.push(format!(
            "connect: new stream through the tunnel {p50:.2}x (p50) / {p99:.2}x (p99) a direct connection"
        ));
    }
    if let (Some(n), Some(all), Some(peak)) = (
        num(s, &["storm", "sites"]),
        num(s, &["storm", "back_all_s"]),
        num(s, &["storm", "peak_share_per_100ms"]),
    ) {
        let outage = num(s, &["storm", "outage_s"]).unwrap_or(0.0);
        lines.push(format!(
            "storm: {n:.0} site agents, host down {outage:.0} s: all back {all:.1} s after its return (target 60 s); at most {:.1}% of them in any 100 ms",
            peak * 100.0
        ));
    }
    if let Some(v) = num(s, &["fanout", "max_viewers_all_keeping_up"]) {
        lines.push(format!(
            "fan-out: {v:.0} viewers, the largest step with zero drops (target 1,000)"
        ));
    }
    for (i, l) in lines.iter().enumerate() {
        let _ = writeln!(
            out,
            r##"<text x="20" y="{y}">{l}</text>"##,
            y = top + i as f64 * 22.0
        );
    }
}
