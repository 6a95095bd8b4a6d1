//! The console's charts: server-rendered SVG, written here by hand.
//!
//! Why not `plotters` (its SVG backend, default features off): its
//! `SVGBackend` writes each shape with fixed colours (`fill="#RRGGBB"`,
//! `opacity`), a fixed pixel `width`/`height` on the root, and text in
//! pixel font sizes; it has no way to put a class, a `data-` attribute, a
//! `<title>` or `role`/`aria-*` on what it draws. The console needs all of
//! those: colours from the stylesheet's classes (so dark mode and the
//! `default-src 'self'` policy hold: no `style=` anywhere), every point
//! readable by tests and assistive technology, and a `viewBox` that scales
//! to a phone's width. What remains of a chart library for three kinds of
//! chart (stacked bars, lines, bars per category) is a scale and a few
//! rectangles: smaller than adapting its output.
//!
//! Each chart is a `figure`: the caption says what it shows and its scale;
//! the SVG (`role="img"`, named by its `<title>` and `<desc>`, or a bars
//! chart's SVG per category by an `aria-label`) holds one element per point
//! with `data-series`, `data-t` (the bin's start, RFC 3339) or
//! `data-label` (the category), and `data-value`; the axis times and the
//! category names are HTML (they stay readable however small the SVG is
//! drawn); a `<details>` below holds the same numbers as a table.

use actors::clock::rfc3339_ms;
use maud::{Markup, html};

/// The drawing's size in SVG user units; CSS scales it to the page width.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 180.0;
/// Room above the highest value.
const TOP: f64 = 6.0;

/// One series: its name (legend, table header, `data-series`), the class
/// that colours it (`s-…` in console.css) and one value per bin.
pub struct Series {
    pub name: String,
    pub class: &'static str,
    pub values: Vec<Option<f64>>,
}

/// How a time chart draws its series.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Stacked bars, the first series at the bottom (counts).
    Stacked,
    /// One line per series; a bin without a value breaks the line.
    Lines,
}

/// The bins of a chart over time: where each starts (Unix ms) and how long
/// they are.
pub struct Axis {
    pub starts: Vec<i64>,
    pub bin_ms: i64,
}

/// A chart over time.
pub struct TimeChart<'a> {
    /// The figure's id, unique in the page; its parts' ids start with it.
    pub id: &'a str,
    pub title: &'a str,
    /// What the values count ("attempts", "ms", "events").
    pub unit: &'a str,
    pub axis: &'a Axis,
    pub shape: Shape,
    pub series: Vec<Series>,
}

/// A label of a series' value, named by the series.
fn series_label(series: &Series, unit: &str) -> String {
    format!("{} ({unit})", series.name)
}

/// The scale's top: the smallest 1, 2 or 5 × 10ⁿ at or above `max`.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|top| *top >= max)
        .unwrap_or(10.0 * magnitude)
}

/// A value as the table and the labels show it: whole numbers as they are,
/// others to one decimal.
pub fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// `HH:MM` UTC of a bin's start.
fn clock(ms: i64) -> String {
    let exact = rfc3339_ms(ms);
    exact.get(11..16).unwrap_or(&exact).to_owned()
}

fn y_of(value: f64, top: f64) -> f64 {
    HEIGHT - value / top * (HEIGHT - TOP)
}

impl TimeChart<'_> {
    fn top(&self) -> f64 {
        let bins = self.axis.starts.len();
        let max = match self.shape {
            Shape::Stacked => (0..bins)
                .map(|i| {
                    self.series
                        .iter()
                        .filter_map(|s| s.values.get(i).copied().flatten())
                        .sum::<f64>()
                })
                .fold(0.0, f64::max),
            Shape::Lines => self
                .series
                .iter()
                .flat_map(|s| s.values.iter().copied().flatten())
                .fold(0.0, f64::max),
        };
        nice_ceiling(max)
    }

    /// What a screen reader hears for the picture: each series' total or
    /// peak over the window.
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .series
            .iter()
            .map(|s| {
                let values = s.values.iter().copied().flatten();
                match self.shape {
                    Shape::Stacked => format!("{} {} in all", number(values.sum()), s.name),
                    Shape::Lines => match values.reduce(f64::max) {
                        Some(peak) => format!("{} at most {} {}", s.name, number(peak), self.unit),
                        None => format!("no {}", s.name),
                    },
                }
            })
            .collect();
        let (from, to) = self.span();
        format!(
            "{} from {from} to {to} UTC, {} bins: {}.",
            self.title,
            self.axis.starts.len(),
            parts.join(", ")
        )
    }

    fn span(&self) -> (String, String) {
        let first = self.axis.starts.first().copied().unwrap_or(0);
        let end = self.axis.starts.last().copied().unwrap_or(first) + self.axis.bin_ms;
        (clock(first), clock(end))
    }

    fn marks(&self, top: f64) -> Markup {
        let band = WIDTH / self.axis.starts.len().max(1) as f64;
        match self.shape {
            Shape::Stacked => {
                // Each bar's segment: (bin, series, value, bottom, top).
                let mut segments = Vec::new();
                for i in 0..self.axis.starts.len() {
                    let mut base = 0.0;
                    for s in &self.series {
                        let value = s.values.get(i).copied().flatten().unwrap_or(0.0);
                        segments.push((i, s, value, y_of(base, top), y_of(base + value, top)));
                        base += value;
                    }
                }
                html! {
                    @for (i, s, value, y0, y1) in segments {
                        rect class={ "bar " (s.class) } x=(format!("{:.2}", i as f64 * band + band * 0.1))
                            y=(format!("{y1:.2}")) width=(format!("{:.2}", band * 0.8)) height=(format!("{:.2}", y0 - y1))
                            data-series=(&s.name) data-t=(rfc3339_ms(self.axis.starts[i])) data-value=(number(value)) {
                            title { (clock(self.axis.starts[i])) " UTC: " (number(value)) " " (s.name) }
                        }
                    }
                }
            }
            Shape::Lines => html! {
                @for s in &self.series {
                    @let points: Vec<(usize, f64)> = s.values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i, v))).collect();
                    @for run in runs(&points) {
                        polyline class={ "line " (s.class) } fill="none" points=(run.iter().map(|&(i, v)| {
                            format!("{:.2},{:.2}", (i as f64 + 0.5) * band, y_of(v, top))
                        }).collect::<Vec<_>>().join(" ")) {}
                    }
                    @for &(i, v) in &points {
                        circle class={ "point " (s.class) } cx=(format!("{:.2}", (i as f64 + 0.5) * band))
                            cy=(format!("{:.2}", y_of(v, top))) r="2.5"
                            data-series=(&s.name) data-t=(rfc3339_ms(self.axis.starts[i])) data-value=(number(v)) {
                            title { (clock(self.axis.starts[i])) " UTC: " (s.name) " " (number(v)) " " (self.unit) }
                        }
                    }
                }
            },
        }
    }

    pub fn render(&self) -> Markup {
        if self.series.is_empty() {
            return html! {
                figure.chart id=(self.id) {
                    figcaption { strong { (self.title) } }
                    p.muted { "Nothing in this window." }
                }
            };
        }
        let top = self.top();
        let (from, to) = self.span();
        let empty = self
            .series
            .iter()
            .all(|s| s.values.iter().all(Option::is_none))
            || (self.shape == Shape::Stacked
                && self
                    .series
                    .iter()
                    .all(|s| s.values.iter().flatten().all(|v| *v == 0.0)));
        html! {
            figure.chart id=(self.id) {
                (caption(self.title, top, self.unit))
                @if empty {
                    p.muted { "Nothing in this window." }
                }
                svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby={ (self.id) "-t " (self.id) "-d" } {
                    title id={ (self.id) "-t" } { (self.title) }
                    desc id={ (self.id) "-d" } { (self.describe()) }
                    line.grid x1="0" x2=(WIDTH) y1=(y_of(top, top)) y2=(y_of(top, top)) {}
                    line.grid x1="0" x2=(WIDTH) y1=(y_of(top / 2.0, top)) y2=(y_of(top / 2.0, top)) {}
                    line.axis x1="0" x2=(WIDTH) y1=(HEIGHT) y2=(HEIGHT) {}
                    (self.marks(top))
                }
                div.chart-x aria-hidden="true" {
                    span { (from) } span { (to) " UTC" }
                }
                (legend(&self.series))
                details {
                    summary { "Table: " (self.title) }
                    div.scroll {
                        table {
                            caption { (self.title) ", " (from) " to " (to) " UTC" }
                            thead { tr {
                                th scope="col" { "From (UTC)" }
                                @for s in &self.series { th scope="col" { (series_label(s, self.unit)) } }
                            } }
                            tbody {
                                @for (i, start) in self.axis.starts.iter().enumerate() {
                                    tr data-t=(rfc3339_ms(*start)) {
                                        @let exact = rfc3339_ms(*start);
                                        th scope="row" { time datetime=(exact) title=(exact) { (clock(*start)) } }
                                        @for s in &self.series { (cell(s, i)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The consecutive stretches of `points` (by bin index): a line is drawn
/// only between neighbouring bins.
fn runs(points: &[(usize, f64)]) -> Vec<&[(usize, f64)]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || points[i].0 != points[i - 1].0 + 1 {
            runs.push(&points[start..i]);
            start = i;
        }
    }
    runs.retain(|run| !run.is_empty());
    runs
}

/// A chart's title and its scale.
fn caption(title: &str, top: f64, unit: &str) -> Markup {
    html! {
        figcaption {
            strong { (title) }
            " "
            span.muted { "(scale 0–" (number(top)) " " (unit) ")" }
        }
    }
}

/// Series `s`'s value at `index` as a table cell ("–" without one).
fn cell(s: &Series, index: usize) -> Markup {
    match s.values.get(index).copied().flatten() {
        Some(v) => html! { td data-series=(&s.name) data-value=(number(v)) { (number(v)) } },
        None => html! { td data-series=(&s.name) { "–" } },
    }
}

fn legend(series: &[Series]) -> Markup {
    html! {
        ul.legend aria-hidden="true" {
            @for s in series {
                li { span class={ "swatch " (s.class) } {} (s.name) }
            }
        }
    }
}

/// Values of several series for each of some categories (apps), drawn as
/// horizontal bars: one group of bars per category.
pub struct CategoryChart<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub unit: &'a str,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

impl CategoryChart<'_> {
    /// Category `c`'s values in words: "p50 12 ms, p95 40 ms".
    fn say(&self, c: usize) -> String {
        let parts: Vec<String> = self
            .series
            .iter()
            .map(|s| match s.values.get(c).copied().flatten() {
                Some(v) => format!("{} {} {}", s.name, number(v), self.unit),
                None => format!("{} none", s.name),
            })
            .collect();
        parts.join(", ")
    }

    pub fn render(&self) -> Markup {
        let max = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied().flatten())
            .fold(0.0, f64::max);
        let top = nice_ceiling(max);
        let bar = 16.0;
        let height = bar * self.series.len() as f64;
        html! {
            figure.chart id=(self.id) {
                (caption(self.title, top, self.unit))
                // Each category's name and values as text, then its bars:
                // names stay readable however narrow the drawing gets.
                ul.categories {
                    @for (c, category) in self.categories.iter().enumerate() {
                        @let said = self.say(c);
                        li {
                            span.category { (category) } " " span.muted { (said) }
                            svg viewBox=(format!("0 0 {WIDTH} {height}")) role="img" aria-label={ (category) ": " (said) } {
                                @for (k, s) in self.series.iter().enumerate() {
                                    @if let Some(v) = s.values.get(c).copied().flatten() {
                                        rect class={ "bar " (s.class) } x="0" y=(format!("{:.2}", k as f64 * bar))
                                            width=(format!("{:.2}", v / top * WIDTH)) height=(format!("{:.2}", bar - 3.0))
                                            data-series=(&s.name) data-label=(category) data-value=(number(v)) {
                                            title { (category) ": " (s.name) " " (number(v)) " " (self.unit) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                (legend(&self.series))
                details {
                    summary { "Table: " (self.title) }
                    div.scroll {
                        table {
                            caption { (self.title) }
                            thead { tr {
                                th scope="col" { "App" }
                                @for s in &self.series { th scope="col" { (series_label(s, self.unit)) } }
                            } }
                            tbody {
                                @for (c, category) in self.categories.iter().enumerate() {
                                    tr data-label=(category) {
                                        th scope="row" { (category) }
                                        @for s in &self.series { (cell(s, c)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_end_on_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(11.0), 20.0);
        assert_eq!(nice_ceiling(480.0), 500.0);
    }

    #[test]
    fn lines_break_where_a_bin_has_no_value() {
        let points = [(0, 1.0), (1, 2.0), (3, 1.0)];
        let runs = runs(&points);
        assert_eq!(runs, [&points[..2], &points[2..]]);
    }

    #[test]
    fn every_point_carries_its_bin_series_and_value_and_nothing_is_styled_inline() {
        let axis = Axis {
            starts: vec![0, 60_000],
            bin_ms: 60_000,
        };
        let chart = TimeChart {
            id: "c",
            title: "Deliveries",
            unit: "attempts",
            axis: &axis,
            shape: Shape::Stacked,
            series: vec![
                Series {
                    name: "delivered".into(),
                    class: "s-delivered",
                    values: vec![Some(3.0), Some(0.0)],
                },
                Series {
                    name: "failed".into(),
                    class: "s-failed",
                    values: vec![Some(1.0), Some(2.0)],
                },
            ],
        }
        .render()
        .into_string();
        assert!(chart.contains(
            r#"data-series="delivered" data-t="1970-01-01T00:00:00.000Z" data-value="3""#
        ));
        assert!(
            chart.contains(
                r#"data-series="failed" data-t="1970-01-01T00:01:00.000Z" data-value="2""#
            )
        );
        assert!(chart.contains(r#"role="img" aria-labelledby="c-t c-d""#));
        assert!(chart.contains("3 delivered in all, 3 failed in all"));
        assert!(!chart.contains("style"), "{chart}");
    }
}
