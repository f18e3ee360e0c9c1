//! The report: one table per topic with the project's figure, the client-go peer's, their
//! ratio, the target and pass/miss. Pure: the scenarios fill in [`Row`]s, this judges and
//! renders them.

use serde::Serialize;

/// One condition of a target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Bound {
    /// project ≤ x
    AtMost(f64),
    /// project ≥ x
    AtLeast(f64),
    /// project / peer ≤ x
    RatioAtMost(f64),
}

impl Bound {
    fn text(self, unit: &str) -> String {
        match self {
            Bound::AtMost(x) => format!("≤ {}", fmt_value(x, unit)),
            Bound::AtLeast(x) => format!("≥ {}", fmt_value(x, unit)),
            Bound::RatioAtMost(x) => format!("≤ {x}× peer"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Miss,
    /// No target: reported for comparison only.
    Info,
}

/// One figure of one topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub topic: String,
    pub figure: String,
    pub unit: String,
    pub project: Option<f64>,
    pub peer: Option<f64>,
    /// project / peer; None without both (or with a zero peer).
    pub ratio: Option<f64>,
    pub bounds: Vec<Bound>,
    pub target: String,
    pub verdict: Verdict,
    /// Why a figure is missing or how to read it (e.g. "no peer equivalent").
    pub note: String,
}

impl Row {
    pub fn new(
        topic: &str,
        figure: impl Into<String>,
        unit: &str,
        project: Option<f64>,
        peer: Option<f64>,
        bounds: &[Bound],
    ) -> Row {
        let ratio = ratio(project, peer);
        Row {
            topic: topic.into(),
            figure: figure.into(),
            unit: unit.into(),
            project,
            peer,
            ratio,
            bounds: bounds.to_vec(),
            target: bounds
                .iter()
                .map(|b| b.text(unit))
                .collect::<Vec<_>>()
                .join(" and "),
            verdict: verdict(project, ratio, bounds),
            note: String::new(),
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }
}

/// project / peer when both are known and the peer's is not zero.
pub fn ratio(project: Option<f64>, peer: Option<f64>) -> Option<f64> {
    match (project, peer) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// Pass when every bound holds; a figure with a target but no value misses (the scenario that
/// should have measured it failed), and so does a ratio bound without a peer figure, except
/// for a project figure of 0, which is within any ratio.
pub fn verdict(project: Option<f64>, ratio: Option<f64>, bounds: &[Bound]) -> Verdict {
    if bounds.is_empty() {
        return Verdict::Info;
    }
    let Some(p) = project.filter(|p| !p.is_nan()) else {
        return Verdict::Miss;
    };
    let ok = bounds.iter().all(|b| match *b {
        Bound::AtMost(x) => p <= x,
        Bound::AtLeast(x) => p >= x,
        Bound::RatioAtMost(x) => p == 0.0 || ratio.is_some_and(|r| r <= x),
    });
    if ok { Verdict::Pass } else { Verdict::Miss }
}

pub fn misses(rows: &[Row]) -> Vec<&Row> {
    rows.iter().filter(|r| r.verdict == Verdict::Miss).collect()
}

pub fn fmt_value(v: f64, unit: &str) -> String {
    let num = if v.is_infinite() {
        "∞".to_string()
    } else if v.abs() >= 100.0 || v == v.trunc() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if unit.is_empty() {
        num
    } else {
        format!("{num} {unit}")
    }
}

fn cell(v: Option<f64>, unit: &str) -> String {
    v.map(|v| fmt_value(v, unit)).unwrap_or_else(|| "-".into())
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Miss => "MISS",
        Verdict::Info => "",
    }
}

const HEADER: [&str; 6] = ["figure", "project", "peer", "ratio", "target", "verdict"];

fn cells(r: &Row) -> [String; 6] {
    let mut figure = r.figure.clone();
    if !r.note.is_empty() {
        figure = format!("{figure} ({})", r.note);
    }
    [
        figure,
        cell(r.project, &r.unit),
        cell(r.peer, &r.unit),
        r.ratio
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into()),
        if r.target.is_empty() {
            "-".into()
        } else {
            r.target.clone()
        },
        verdict_text(r.verdict).into(),
    ]
}

/// Topics in the order they first appear.
fn topics(rows: &[Row]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for r in rows {
        if !out.contains(&r.topic.as_str()) {
            out.push(&r.topic);
        }
    }
    out
}

/// One aligned text table per topic.
pub fn render_tables(rows: &[Row]) -> String {
    let mut out = String::new();
    for topic in topics(rows) {
        let body: Vec<[String; 6]> = rows
            .iter()
            .filter(|r| r.topic == topic)
            .map(cells)
            .collect();
        let header = HEADER.map(String::from);
        let mut widths = header.clone().map(|h| h.chars().count());
        for r in &body {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |r: &[String; 6]| {
            let cells: Vec<String> = r
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    let pad = w.saturating_sub(c.chars().count());
                    if (1..=3).contains(&i) {
                        format!("{}{c}", " ".repeat(pad))
                    } else {
                        format!("{c}{}", " ".repeat(pad))
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        };
        out += &format!("{topic}\n");
        out += &(line(&header) + "\n");
        out += &(widths.map(|w| "-".repeat(w)).join("  ") + "\n");
        for r in &body {
            out += &(line(r) + "\n");
        }
        out += "\n";
    }
    out
}

/// The same tables in Markdown (the README's Performance section).
pub fn render_markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    for topic in topics(rows) {
        out += &format!(
            "**{topic}**\n\n| {} |\n|---|--:|--:|--:|---|---|\n",
            HEADER.join(" | ")
        );
        for r in rows.iter().filter(|r| r.topic == topic) {
            let c = cells(r).map(|c| c.replace('|', "\\|"));
            out += &format!("| {} |\n", c.join(" | "));
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_table() {
        use Bound::*;
        type Case<'a> = (Option<f64>, Option<f64>, &'a [Bound], Verdict);
        let cases: &[Case] = &[
            (Some(1.0), None, &[], Verdict::Info),
            (
                Some(0.1),
                Some(2.0),
                &[AtMost(0.2), RatioAtMost(0.1)],
                Verdict::Pass,
            ),
            (
                Some(0.1),
                Some(0.5),
                &[AtMost(0.2), RatioAtMost(0.1)],
                Verdict::Miss,
            ),
            (
                Some(0.3),
                Some(30.0),
                &[AtMost(0.2), RatioAtMost(0.1)],
                Verdict::Miss,
            ),
            (Some(0.2), None, &[AtMost(0.2)], Verdict::Pass),
            (None, Some(1.0), &[AtMost(0.2)], Verdict::Miss),
            (Some(f64::NAN), None, &[AtMost(0.2)], Verdict::Miss),
            (Some(f64::INFINITY), None, &[AtMost(2.0)], Verdict::Miss),
            (Some(5000.0), None, &[AtLeast(5000.0)], Verdict::Pass),
            (Some(4999.0), None, &[AtLeast(5000.0)], Verdict::Miss),
            // A ratio bound needs the peer, unless the project's figure is 0.
            (Some(1.0), None, &[RatioAtMost(0.5)], Verdict::Miss),
            (Some(0.0), Some(0.0), &[RatioAtMost(0.5)], Verdict::Pass),
            (Some(3.0), Some(0.0), &[RatioAtMost(0.5)], Verdict::Miss),
        ];
        for (project, peer, bounds, want) in cases {
            let r = Row::new("t", "f", "s", *project, *peer, bounds);
            assert_eq!(r.verdict, *want, "{project:?} {peer:?} {bounds:?}");
        }
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn tables_per_topic_with_targets_and_misses() {
        let rows = vec![
            Row::new(
                "elector",
                "graceful handover median",
                "s",
                Some(0.05),
                Some(2.1),
                &[Bound::AtMost(0.2), Bound::RatioAtMost(0.1)],
            ),
            Row::new(
                "webhook",
                "p99 @ 200/s",
                "ms",
                Some(3.0),
                None,
                &[Bound::AtMost(2.0)],
            )
            .note("hey"),
            Row::new("elector", "RSS", "MiB", Some(3.2), Some(40.0), &[]),
        ];
        let text = render_tables(&rows);
        let elector = text.find("elector\n").expect("elector table");
        let webhook = text.find("webhook\n").expect("webhook table");
        assert!(elector < webhook, "{text}");
        assert!(text.contains("≤ 0.20 s and ≤ 0.1× peer"), "{text}");
        assert!(text.contains("0.02"), "ratio 0.05/2.1: {text}");
        assert!(text.contains("MISS"), "{text}");
        assert!(text.contains("p99 @ 200/s (hey)"), "{text}");
        assert_eq!(misses(&rows).len(), 1);
        let md = render_markdown(&rows);
        assert!(
            md.contains("| graceful handover median | 0.050 s | 2.10 s | 0.02 |"),
            "{md}"
        );
        assert_eq!(md.matches("\n|---|").count(), 2, "a table per topic: {md}");
    }
}
