//! The results table and the small statistics behind it.

use std::fmt::Write as _;
use std::time::Duration;

/// Whether a figure met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// A figure recorded for reference, with no target.
    Info,
}

impl Verdict {
    pub fn check(ok: bool) -> Self {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Info => "",
        }
    }
}

/// One line of the table.
pub struct Row {
    pub section: &'static str,
    pub measurement: String,
    pub figure: String,
    pub target: String,
    pub verdict: Verdict,
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub fn row(
        &mut self,
        section: &'static str,
        measurement: impl Into<String>,
        figure: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
    ) {
        self.rows.push(Row {
            section,
            measurement: measurement.into(),
            figure: figure.into(),
            target: target.into(),
            verdict,
        });
    }

    /// A figure without a target.
    pub fn info(
        &mut self,
        section: &'static str,
        measurement: impl Into<String>,
        figure: impl Into<String>,
    ) {
        self.row(section, measurement, figure, "", Verdict::Info);
    }

    pub fn failed(&self) -> bool {
        self.rows.iter().any(|r| r.verdict == Verdict::Fail)
    }

    /// The table as Markdown, ready to paste into BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("| # | Measurement | Figure | Target | Verdict |\n");
        out.push_str("|---|---|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.section,
                r.measurement,
                r.figure,
                r.target,
                r.verdict.as_str()
            );
        }
        out
    }
}

/// The nearest-rank percentile `p` (0..=100) of `samples`.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn max(samples: &[Duration]) -> Duration {
    samples.iter().copied().max().unwrap_or_default()
}

/// A duration at a readable precision: µs below a millisecond, ms below
/// ten seconds, seconds above.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 0.001 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 0.1 {
        format!("{:.2} ms", secs * 1e3)
    } else if secs < 10.0 {
        format!("{:.0} ms", secs * 1e3)
    } else {
        format!("{secs:.1} s")
    }
}

pub fn fmt_kib(kib: Option<u64>) -> String {
    match kib {
        Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
        None => "unknown".to_owned(),
    }
}
