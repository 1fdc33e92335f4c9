//! A hand-written SVG: the latency CDF (log-scale hours, one curve per policy, the goals
//! as vertical marks) above queue depth over time.

use std::fmt::Write;

use super::report::Report;

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];
const W: f64 = 900.0;
const PH: f64 = 300.0;
const L: f64 = 70.0;
const R: f64 = 160.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn render(reports: &[Report]) -> String {
    let mut s = String::new();
    let height = 2.0 * PH + 140.0;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let Some(first) = reports.first() else {
        s += "</svg>\n";
        return s;
    };
    // --- CDF ----------------------------------------------------------------------------
    let top = 40.0;
    let pw = W - L - R;
    let (lo, hi) = (0.1f64.log10(), 1000.0f64.log10());
    let x_of = |hours: f64| L + (hours.max(0.1).log10().min(hi) - lo) / (hi - lo) * pw;
    let y_of = |f: f64| top + PH - f * PH;
    let _ = writeln!(
        s,
        r#"<text x="{L}" y="22" font-size="14" font-weight="bold">Latency from accept to landed and to the channel (CDF), {} seed {}</text>"#,
        esc(&first.scenario),
        first.seed
    );
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{top}" width="{pw}" height="{PH}" fill="none" stroke="#888"/>"##
    );
    for hrs in [0.1, 1.0, 6.0, 12.0, 24.0, 48.0, 100.0, 1000.0] {
        let x = x_of(hrs);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{hrs} h</text>"##,
            top + PH,
            top + PH + 16.0
        );
    }
    for f in [0.0, 0.25, 0.5, 0.75, 0.95, 1.0] {
        let y = y_of(f);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            L + pw,
            L - 6.0,
            y + 4.0,
            f * 100.0
        );
    }
    for (name, g) in &first.goals_hours {
        let x = x_of(*g);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" font-size="10">goal {name}</text>"##,
            top + PH,
            x + 3.0,
            top + 12.0
        );
    }
    let mut legend = 0.0;
    for (i, r) in reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (curve, dash, label) in [
            (&r.cdf_all, "", "all"),
            (&r.cdf_small, "6 3", "small"),
            (&r.cdf_channel_small, "2 2", "small, to channel"),
        ] {
            if curve.is_empty() {
                continue;
            }
            let n = curve.len() as f64;
            let mut pts = String::new();
            let mut last = (x_of(0.1), y_of(0.0));
            let _ = write!(pts, "{:.1},{:.1} ", last.0, last.1);
            for (k, v) in curve.iter().enumerate() {
                if !v.is_finite() {
                    break;
                }
                let x = x_of(*v);
                let y = y_of((k + 1) as f64 / n);
                let _ = write!(pts, "{x:.1},{:.1} {x:.1},{y:.1} ", last.1);
                last = (x, y);
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="{dash}" points="{}"/>"#,
                pts.trim_end()
            );
            let ly = top + 10.0 + legend * 16.0;
            legend += 1.0;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{} ({label})</text>"#,
                L + pw + 10.0,
                L + pw + 34.0,
                L + pw + 38.0,
                ly + 4.0,
                esc(&r.policy)
            );
        }
    }
    // --- queue depth --------------------------------------------------------------------
    let top2 = top + PH + 70.0;
    let tmax = reports
        .iter()
        .flat_map(|r| r.samples.last().map(|x| x.hour))
        .fold(1.0, f64::max);
    let dmax = reports
        .iter()
        .flat_map(|r| r.samples.iter().map(|x| x.queued + x.testing))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let xt = |t: f64| L + t / tmax * pw;
    let yd = |d: f64| top2 + PH - d / dmax * PH;
    let _ = writeln!(
        s,
        r#"<text x="{L}" y="{:.1}" font-size="14" font-weight="bold">Changes queued or testing over time</text>"#,
        top2 - 14.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{top2}" width="{pw}" height="{PH}" fill="none" stroke="#888"/>"##
    );
    let step = if tmax > 72.0 {
        24.0
    } else if tmax > 24.0 {
        6.0
    } else {
        3.0
    };
    let mut t = 0.0;
    while t <= tmax + 1e-9 {
        let x = xt(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top2}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{t} h</text>"##,
            top2 + PH,
            top2 + PH + 16.0
        );
        t += step;
    }
    for f in [0.0, 0.5, 1.0] {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"#,
            L - 6.0,
            yd(f * dmax) + 4.0,
            f * dmax
        );
    }
    for (i, r) in reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = r
            .samples
            .iter()
            .map(|p| format!("{:.1},{:.1}", xt(p.hour), yd((p.queued + p.testing) as f64)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = top2 + 10.0 + i as f64 * 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            L + pw + 10.0,
            L + pw + 34.0,
            L + pw + 38.0,
            ly + 4.0,
            esc(&r.policy)
        );
    }
    s += "</svg>\n";
    s
}
