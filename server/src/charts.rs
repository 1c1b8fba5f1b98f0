//! Pictures for the pages: small SVG charts drawn by hand, with no IO, no JavaScript and
//! nothing loaded from elsewhere. Each function takes the figures already computed (by
//! [`crate::http::workflow`] from the read model) and returns one `<svg>` element as text, to
//! be put inline in a page; every text in it is escaped ([`escape`]).
//!
//! Each mark carries its numbers as `data-` attributes (`data-visited="3" data-due="5"`) and
//! its kind as its class (`bar`, `received`, `met` ...), so a test, or a person saving the
//! page, reads back exactly what was drawn.
//!
//! ```
//! use qiaomen_server::charts::{self, CoveragePoint};
//! let svg = charts::coverage_bars(&[
//!     CoveragePoint { day: "2026-03-15".into(), due: 5, visited: 3 },
//!     CoveragePoint { day: "2026-03-31".into(), due: 4, visited: 4 },
//! ]);
//! assert!(svg.starts_with("<svg") && svg.contains(r#"data-visited="3" data-due="5""#));
//! assert!(svg.contains("60%") && svg.contains("100%"));
//! ```

use std::fmt::Write;

/// Width and height of every chart's drawing, in SVG units (it scales to its box).
const W: f64 = 640.0;
const H: f64 = 240.0;
/// Margins: left (the axis labels), right, top (a bar's label), bottom (the day labels).
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 40.0;

/// Text made safe for SVG (and HTML) content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number for an SVG attribute: at most one decimal, no `-0`.
fn n(x: f64) -> String {
    let r = (x * 10.0).round() / 10.0;
    if r == r.trunc() {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

fn open(out: &mut String, class: &str, label: &str, height: f64) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart {class}" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{label}" style="max-width:{w}px;font-family:sans-serif;font-size:12px"><title>{label}</title>"#,
        w = n(W),
        h = n(height),
        label = escape(label),
    );
}

/// The axis and its grid lines at 0, 50 and 100% of `top` (labelled by `tick`).
fn axis(out: &mut String, tick: impl Fn(f64) -> String) {
    let plot = H - TOP - BOTTOM;
    for frac in [0.0, 0.5, 1.0] {
        let y = TOP + plot * (1.0 - frac);
        let _ = write!(
            out,
            r##"<line class="grid" x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#ddd"/><text class="tick" x="{tx}" y="{ty}" text-anchor="end" fill="#777">{t}</text>"##,
            x1 = n(LEFT),
            x2 = n(W - RIGHT),
            y = n(y),
            tx = n(LEFT - 4.0),
            ty = n(y + 4.0),
            t = escape(&tick(frac)),
        );
    }
}

/// One visit day's coverage: who was due and who was met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoveragePoint {
    /// The visit day, `YYYY-MM-DD` (shown as `MM-DD`).
    pub day: String,
    pub due: u64,
    pub visited: u64,
}

/// A visit day's label: `MM-DD` of `YYYY-MM-DD`, else the text as it is.
fn short_day(day: &str) -> &str {
    if day.len() == 10 && day.is_char_boundary(5) {
        &day[5..]
    } else {
        day
    }
}

/// Coverage per visit day: one bar a day (`class="bar"`, `data-visited`, `data-due`), its
/// height the share of due households met (a full bar is 100%), the percentage above it and
/// the day below. A day with no household due has an empty bar labelled `—`.
pub fn coverage_bars(points: &[CoveragePoint]) -> String {
    let mut out = String::new();
    open(
        &mut out,
        "coverage-chart",
        "各敲门日走访覆盖率（已见面/应访）",
        H,
    );
    axis(&mut out, |f| format!("{}%", n(f * 100.0)));
    let plot = H - TOP - BOTTOM;
    let slot = (W - LEFT - RIGHT) / points.len().max(1) as f64;
    let bar = (slot * 0.6).min(56.0);
    for (i, p) in points.iter().enumerate() {
        let rate = if p.due > 0 {
            Some((p.visited as f64 / p.due as f64).clamp(0.0, 1.0))
        } else {
            None
        };
        let h = plot * rate.unwrap_or(0.0);
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let cx = x + bar / 2.0;
        let label = rate.map_or("—".to_string(), |r| format!("{}%", n(r * 100.0)));
        let _ = write!(
            out,
            r##"<g class="day" data-day="{day}"><rect class="bar" data-day="{day}" data-visited="{v}" data-due="{d}" x="{x}" y="{y}" width="{w}" height="{h}" fill="#2e7d32"><title>{day}：已见面 {v} / 应访 {d}</title></rect><text class="value" x="{cx}" y="{ly}" text-anchor="middle">{label}</text><text class="label" x="{cx}" y="{dy}" text-anchor="middle" fill="#555">{short}</text><text class="count" x="{cx}" y="{cy}" text-anchor="middle" fill="#777">{v}/{d}</text></g>"##,
            day = escape(&p.day),
            short = escape(short_day(&p.day)),
            v = p.visited,
            d = p.due,
            x = n(x),
            y = n(TOP + plot - h),
            w = n(bar),
            h = n(h),
            cx = n(cx),
            ly = n(TOP + plot - h - 5.0),
            dy = n(H - BOTTOM + 16.0),
            cy = n(H - BOTTOM + 31.0),
        );
    }
    out.push_str("</svg>");
    out
}

/// One month's demands: received (raised in it) and resolved (of those, done by now).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MonthPoint {
    /// `YYYY-MM`.
    pub month: String,
    pub received: u64,
    pub resolved: u64,
}

/// Demands per month: two bars a month, received (`class="received"`) and resolved
/// (`class="resolved"`), each with `data-month` and `data-value`, heights proportional to
/// the largest count, the count above each bar and a legend.
pub fn demand_bars(months: &[MonthPoint]) -> String {
    let mut out = String::new();
    open(&mut out, "demand-chart", "每月受理与办结诉求", H);
    let max = months
        .iter()
        .map(|m| m.received.max(m.resolved))
        .max()
        .unwrap_or(0)
        .max(1);
    axis(&mut out, |f| {
        let v = f * max as f64;
        // Whole numbers only: a half-way tick of an odd maximum is left blank.
        if v == v.trunc() { n(v) } else { String::new() }
    });
    let plot = H - TOP - BOTTOM;
    let slot = (W - LEFT - RIGHT) / months.len().max(1) as f64;
    let bar = (slot * 0.32).min(28.0);
    for (i, m) in months.iter().enumerate() {
        let x0 = LEFT + slot * i as f64 + slot / 2.0 - bar;
        let _ = write!(
            out,
            r#"<g class="month" data-month="{}">"#,
            escape(&m.month)
        );
        for (j, (class, fill, word, v)) in [
            ("received", "#1565c0", "受理", m.received),
            ("resolved", "#2e7d32", "办结", m.resolved),
        ]
        .into_iter()
        .enumerate()
        {
            let h = plot * v as f64 / max as f64;
            let x = x0 + bar * j as f64;
            let _ = write!(
                out,
                r#"<rect class="{class}" data-month="{month}" data-value="{v}" x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}"><title>{month} {word} {v}</title></rect><text class="value" x="{cx}" y="{ly}" text-anchor="middle" font-size="10">{v}</text>"#,
                month = escape(&m.month),
                x = n(x),
                y = n(TOP + plot - h),
                w = n(bar - 1.0),
                h = n(h),
                cx = n(x + bar / 2.0),
                ly = n(TOP + plot - h - 3.0),
            );
        }
        let _ = write!(
            out,
            r##"<text class="label" x="{cx}" y="{y}" text-anchor="middle" fill="#555">{month}</text></g>"##,
            cx = n(x0 + bar),
            y = n(H - BOTTOM + 16.0),
            month = escape(&m.month),
        );
    }
    legend(
        &mut out,
        H - 10.0,
        &[
            (
                "received",
                r##"<rect x="0" y="-9" width="10" height="10" fill="#1565c0"/>"##,
                "受理",
            ),
            (
                "resolved",
                r##"<rect x="0" y="-9" width="10" height="10" fill="#2e7d32"/>"##,
                "办结",
            ),
        ],
    );
    out.push_str("</svg>");
    out
}

/// A legend in one line at `y`: (class, its mark drawn at the origin, its words).
fn legend(out: &mut String, y: f64, entries: &[(&str, &str, &str)]) {
    let _ = write!(out, r#"<g class="legend">"#);
    let mut x = LEFT;
    for (class, mark, words) in entries {
        let _ = write!(
            out,
            r#"<g class="key key-{class}" transform="translate({x},{y})">{mark}<text x="14" y="0">{words}</text></g>"#,
            class = escape(class),
            x = n(x),
            y = n(y),
            words = escape(words),
        );
        x += 28.0 + 13.0 * words.chars().count() as f64;
    }
    out.push_str("</g>");
}

/// What a point on the map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A due household met on the visit day (or its catch-up).
    Met,
    /// Visited, nobody met (nobody home, refused, moved).
    NotMet,
    /// Not visited yet, or missed.
    NotVisited,
    /// Where a visit of the day was recorded (the visit's own GPS).
    Visit,
}

impl Mark {
    /// Its class in the SVG.
    pub fn class(self) -> &'static str {
        match self {
            Mark::Met => "met",
            Mark::NotMet => "not_met",
            Mark::NotVisited => "not_visited",
            Mark::Visit => "visit",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Mark::Met => "已见面",
            Mark::NotMet => "未见面",
            Mark::NotVisited => "未走访",
            Mark::Visit => "走访定位",
        }
    }

    /// The mark drawn at (x, y): three shapes that differ in black and white too.
    fn draw(self, class: &str, x: f64, y: f64, extra: &str) -> String {
        match self {
            Mark::Met => format!(
                r##"<circle class="{class}" cx="{}" cy="{}" r="6" fill="#2e7d32"{extra}"##,
                n(x),
                n(y)
            ),
            Mark::NotMet => format!(
                r##"<rect class="{class}" x="{}" y="{}" width="11" height="11" fill="#e65100"{extra}"##,
                n(x - 5.5),
                n(y - 5.5)
            ),
            Mark::NotVisited => format!(
                r##"<path class="{class}" d="M{} {}l12 0l-6 -11z" fill="none" stroke="#b22222" stroke-width="2"{extra}"##,
                n(x - 6.0),
                n(y + 4.5)
            ),
            Mark::Visit => format!(
                r##"<circle class="{class}" cx="{}" cy="{}" r="2.5" fill="#1565c0"{extra}"##,
                n(x),
                n(y)
            ),
        }
    }
}

/// A point to place on the map.
#[derive(Clone, Debug, PartialEq)]
pub struct MapPoint {
    pub lat: f64,
    pub lon: f64,
    pub mark: Mark,
    /// What hovering it says (a door number).
    pub label: String,
}

/// Height of the map chart.
const MAP_H: f64 = 420.0;

/// The points in the bounding box of their coordinates (no map tiles): east to the right,
/// north up, one degree of longitude shortened by the cosine of the latitude so distances
/// look right; each point one mark by its class (`met`, `not_met`, `not_visited`, `visit`),
/// with a legend. Points whose coordinates are not finite or not on Earth are left out.
pub fn scatter(points: &[MapPoint]) -> String {
    let points: Vec<&MapPoint> = points
        .iter()
        .filter(|p| {
            p.lat.is_finite()
                && p.lon.is_finite()
                && (-90.0..=90.0).contains(&p.lat)
                && (-180.0..=180.0).contains(&p.lon)
        })
        .collect();
    let mut out = String::new();
    open(&mut out, "map-chart", "住户与走访位置分布（按定位）", MAP_H);
    let (left, top, right, bottom) = (20.0, 16.0, W - 20.0, MAP_H - 44.0);
    let _ = write!(
        out,
        r##"<rect class="frame" x="{}" y="{}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>"##,
        n(left - 10.0),
        n(top - 10.0),
        n(right - left + 20.0),
        n(bottom - top + 20.0)
    );
    if !points.is_empty() {
        let min_lat = points.iter().map(|p| p.lat).fold(f64::INFINITY, f64::min);
        let max_lat = points
            .iter()
            .map(|p| p.lat)
            .fold(f64::NEG_INFINITY, f64::max);
        let min_lon = points.iter().map(|p| p.lon).fold(f64::INFINITY, f64::min);
        let max_lon = points
            .iter()
            .map(|p| p.lon)
            .fold(f64::NEG_INFINITY, f64::max);
        let k = ((min_lat + max_lat) / 2.0).to_radians().cos().max(0.01);
        // Spans in "north-south degrees"; a single point (or a line) still has a box.
        let span_x = ((max_lon - min_lon) * k).max(1e-6);
        let span_y = (max_lat - min_lat).max(1e-6);
        let scale = ((right - left) / span_x).min((bottom - top) / span_y);
        // Centred in the frame.
        let ox = left + ((right - left) - span_x * scale) / 2.0;
        let oy = top + ((bottom - top) - span_y * scale) / 2.0;
        let single_x = max_lon - min_lon < 1e-12;
        let single_y = max_lat - min_lat < 1e-12;
        // Households first, visits on top.
        let mut ordered = points.clone();
        ordered.sort_by_key(|p| p.mark == Mark::Visit);
        for p in ordered {
            let x = if single_x {
                (left + right) / 2.0
            } else {
                ox + (p.lon - min_lon) * k * scale
            };
            let y = if single_y {
                (top + bottom) / 2.0
            } else {
                oy + (max_lat - p.lat) * scale
            };
            let title = format!("><title>{}</title></{}>", escape(&p.label), tag(p.mark));
            out.push_str(&p.mark.draw(p.mark.class(), x, y, &title));
        }
    }
    let entries: Vec<(&str, String, &str)> =
        [Mark::Met, Mark::NotMet, Mark::NotVisited, Mark::Visit]
            .into_iter()
            .map(|m| (m.class(), m.draw("key-mark", 5.0, -4.0, "/>"), m.words()))
            .collect();
    let entries: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|(c, m, w)| (*c, m.as_str(), *w))
        .collect();
    legend(&mut out, MAP_H - 14.0, &entries);
    out.push_str("</svg>");
    out
}

/// The element name of a mark (to close it after its title).
fn tag(m: Mark) -> &'static str {
    match m {
        Mark::Met | Mark::Visit => "circle",
        Mark::NotMet => "rect",
        Mark::NotVisited => "path",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(el: &str, name: &str) -> f64 {
        let key = format!(" {name}=\"");
        let start = el.find(&key).unwrap() + key.len();
        el[start..start + el[start..].find('"').unwrap()]
            .parse()
            .unwrap()
    }

    /// The opening tags of the elements of `class`.
    fn elements<'a>(svg: &'a str, class: &str) -> Vec<&'a str> {
        let key = format!("class=\"{class}\"");
        svg.match_indices(&key)
            .map(|(i, _)| {
                let start = svg[..i].rfind('<').unwrap();
                &svg[start..i + svg[i..].find('>').unwrap()]
            })
            .collect()
    }

    #[test]
    fn coverage_bars_are_one_a_day_with_heights_in_proportion_to_the_rate() {
        let svg = coverage_bars(&[
            CoveragePoint {
                day: "2026-03-15".into(),
                due: 5,
                visited: 3,
            },
            CoveragePoint {
                day: "2026-03-31".into(),
                due: 4,
                visited: 4,
            },
            CoveragePoint {
                day: "2026-04-15".into(),
                due: 0,
                visited: 0,
            },
        ]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 3);
        let bars = elements(&svg, "bar");
        assert_eq!(bars.len(), 3);
        assert!(bars[0].contains(r#"data-visited="3" data-due="5""#));
        let full = attr(bars[1], "height");
        assert!((full - (H - TOP - BOTTOM)).abs() < 0.1);
        assert!((attr(bars[0], "height") - full * 0.6).abs() < 0.1);
        assert_eq!(attr(bars[2], "height"), 0.0);
        // Bottoms on the axis.
        for b in &bars {
            assert!((attr(b, "y") + attr(b, "height") - (H - BOTTOM)).abs() < 0.1);
        }
        assert!(svg.contains(">60%<") && svg.contains(">100%<") && svg.contains(">—<"));
        assert!(svg.contains(">03-15<"));
    }

    #[test]
    fn demand_bars_are_two_a_month_scaled_to_the_largest() {
        let svg = demand_bars(&[
            MonthPoint {
                month: "2026-02".into(),
                received: 8,
                resolved: 6,
            },
            MonthPoint {
                month: "2026-03".into(),
                received: 4,
                resolved: 0,
            },
        ]);
        let received = elements(&svg, "received");
        let resolved = elements(&svg, "resolved");
        assert_eq!((received.len(), resolved.len()), (2, 2));
        // Two bars a month and two legend swatches.
        assert_eq!(svg.matches("<rect").count(), 6);
        let full = attr(received[0], "height");
        assert!((full - (H - TOP - BOTTOM)).abs() < 0.1);
        assert!((attr(resolved[0], "height") - full * 0.75).abs() < 0.1);
        assert!((attr(received[1], "height") - full * 0.5).abs() < 0.1);
        assert_eq!(attr(resolved[1], "height"), 0.0);
        assert!(received[1].contains(r#"data-month="2026-03" data-value="4""#));
        assert!(svg.contains(">受理<") && svg.contains(">办结<"));
        // No months: an empty chart, not a division by zero.
        assert!(!demand_bars(&[]).contains("NaN"));
    }

    #[test]
    fn every_text_is_escaped() {
        let evil = r#"<script>alert("x")</script>&'"#;
        let bars = coverage_bars(&[CoveragePoint {
            day: evil.into(),
            due: 1,
            visited: 1,
        }]);
        let months = demand_bars(&[MonthPoint {
            month: evil.into(),
            received: 1,
            resolved: 1,
        }]);
        let map = scatter(&[MapPoint {
            lat: 31.0,
            lon: 121.0,
            mark: Mark::Met,
            label: evil.into(),
        }]);
        for svg in [bars, months, map] {
            assert!(!svg.contains("<script"), "{svg}");
            assert!(svg.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"));
        }
    }

    #[test]
    fn the_scatter_places_each_mark_by_its_class_north_up_east_right() {
        let p = |lat, lon, mark, label: &str| MapPoint {
            lat,
            lon,
            mark,
            label: label.into(),
        };
        let svg = scatter(&[
            p(31.000, 121.000, Mark::Met, "1号"),
            p(31.010, 121.010, Mark::Met, "2号"),
            p(31.005, 121.002, Mark::NotMet, "3号"),
            p(31.002, 121.008, Mark::NotVisited, "4号"),
            p(31.0101, 121.0101, Mark::Visit, "2号"),
            p(f64::NAN, 121.0, Mark::Met, "坏点"),
        ]);
        assert_eq!(elements(&svg, "met").len(), 2);
        assert_eq!(elements(&svg, "not_met").len(), 1);
        assert_eq!(elements(&svg, "not_visited").len(), 1);
        assert_eq!(elements(&svg, "visit").len(), 1);
        assert!(!svg.contains("坏点") && !svg.contains("NaN"));
        let met = elements(&svg, "met");
        // 2号 is north-east of 1号: right of it and above it.
        assert!(attr(met[1], "cx") > attr(met[0], "cx"));
        assert!(attr(met[1], "cy") < attr(met[0], "cy"));
        // Every mark inside the chart.
        for m in &met {
            assert!((0.0..=W).contains(&attr(m, "cx")) && (0.0..=MAP_H).contains(&attr(m, "cy")));
        }
        // The legend names the four marks.
        for w in ["已见面", "未见面", "未走访", "走访定位"] {
            assert!(svg.contains(&format!(">{w}<")), "{w}");
        }
        // One point alone is put in the middle, not divided by a zero span.
        let one = scatter(&[p(31.0, 121.0, Mark::NotMet, "1号")]);
        assert!(!one.contains("NaN") && !one.contains("inf"));
        assert_eq!(elements(&one, "not_met").len(), 1);
        assert!(!scatter(&[]).contains("NaN"));
    }
}
