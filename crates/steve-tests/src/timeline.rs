//! How many jobs ran at once, from a log where each job wrote `start NAME NANOS` when it began
//! and `end NAME NANOS` when it finished (nanoseconds since the epoch, from `date +%s%N`).
//!
//! A job logs its start after its token was granted and its end before the token goes back, so
//! the peak seen here never exceeds the number of tokens really out: an assertion that the peak
//! is at most N cannot pass by accident of timing.

use std::fs;
use std::path::Path;

/// One job's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The job's name.
    pub name: String,
    /// When it started.
    pub start: u128,
    /// When it ended.
    pub end: u128,
}

/// The jobs a log records, each with a start and an end.
pub fn spans(log: &Path) -> Vec<Span> {
    let text = fs::read_to_string(log)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", log.display()));
    let mut open: Vec<(String, u128)> = Vec::new();
    let mut spans = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(name), Some(time)) = (words.next(), words.next(), words.next())
        else {
            panic!("malformed timeline line {line:?} in {}", log.display());
        };
        let time: u128 = time.parse().unwrap_or_else(|_| panic!("bad time in {line:?}"));
        match kind {
            "start" => open.push((name.to_string(), time)),
            "end" => {
                let index = open
                    .iter()
                    .position(|(open_name, _)| open_name == name)
                    .unwrap_or_else(|| panic!("{name} ended without starting"));
                let (name, start) = open.remove(index);
                spans.push(Span { name, start, end: time });
            }
            other => panic!("unknown event {other:?} in {}", log.display()),
        }
    }
    assert!(open.is_empty(), "jobs that never ended: {open:?}");
    spans
}

/// The most spans that overlap at any moment. A span ending at the instant another starts does
/// not overlap it.
pub fn peak(spans: &[Span]) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for span in spans {
        events.push((span.start, 1));
        events.push((span.end, -1));
    }
    // At equal times, ends (-1) sort before starts (+1).
    events.sort();
    let mut running = 0i32;
    let mut peak = 0i32;
    for (_, change) in events {
        running += change;
        peak = peak.max(running);
    }
    peak as usize
}

/// The peak of the log at `log`, which must record `expected_jobs` jobs.
pub fn peak_of(log: &Path, expected_jobs: usize) -> usize {
    let spans = spans(log);
    assert_eq!(spans.len(), expected_jobs, "jobs recorded in {}", log.display());
    peak(&spans)
}

/// The most spans that overlap at any moment between `from` and `to` (nanoseconds since the
/// epoch, like the spans).
pub fn peak_between(spans: &[Span], from: u128, to: u128) -> usize {
    let clipped: Vec<Span> = spans
        .iter()
        .filter(|span| span.start < to && span.end > from)
        .map(|span| Span {
            name: span.name.clone(),
            start: span.start.max(from),
            end: span.end.min(to),
        })
        .collect();
    peak(&clipped)
}

/// Now, in the timeline's unit (nanoseconds since the epoch).
pub fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos()
}

/// The peak of the log at `log` (which must record `jobs` jobs), checked against the jobserver's
/// `bound`, and at least 2 so that a client running one job at a time fails too. The figure is
/// printed for the record (`cargo test -- --nocapture` shows it).
pub fn assert_peak_within(log: &Path, jobs: usize, bound: usize, what: &str) -> usize {
    let peak = peak_of(log, jobs);
    eprintln!("{what}: peak {peak} jobs at once (bound {bound})");
    assert!(peak <= bound, "{what}: peak {peak} exceeds the bound {bound}");
    assert!(peak >= 2, "{what}: peak {peak}, no jobs ran in parallel");
    peak
}

/// The seconds of each span within `[from, to]` (nanoseconds), summed: two jobs at once count
/// twice. The token-seconds of a build whose every job holds one token.
pub fn seconds_within(spans: &[Span], from: u128, to: u128) -> f64 {
    let nanos: u128 =
        spans.iter().map(|span| span.end.min(to).saturating_sub(span.start.max(from))).sum();
    nanos as f64 / 1e9
}

/// Jain's fairness index of `shares`: 1 when all are equal, 1/n when one has everything.
pub fn jain_index(shares: &[f64]) -> f64 {
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|share| share * share).sum();
    if squares == 0.0 {
        return 1.0;
    }
    sum * sum / (shares.len() as f64 * squares)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u128, end: u128) -> Span {
        Span { name: format!("{start}"), start, end }
    }

    #[test]
    fn counts_overlaps_and_not_touching_ends() {
        assert_eq!(peak(&[]), 0);
        assert_eq!(peak(&[span(0, 10), span(10, 20)]), 1);
        assert_eq!(peak(&[span(0, 10), span(5, 20), span(6, 7)]), 3);
        assert_eq!(peak(&[span(0, 10), span(5, 20), span(12, 30)]), 2);
    }

    #[test]
    fn peaks_within_a_window() {
        let spans = [span(0, 10), span(5, 20), span(12, 30), span(14, 16)];
        assert_eq!(peak_between(&spans, 0, 11), 2);
        assert_eq!(peak_between(&spans, 21, 40), 1);
        assert_eq!(peak_between(&spans, 13, 17), 3);
    }

    #[test]
    fn reads_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fs::write(&log, "start a 1\nstart b 2\nend a 3\nstart c 4\nend b 5\nend c 6\n").unwrap();
        assert_eq!(peak_of(&log, 3), 2);
    }

    #[test]
    fn jain_index_and_seconds_within_a_window() {
        assert!((jain_index(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-9);
        assert!((jain_index(&[4.0, 0.0, 0.0]) - 1.0 / 3.0).abs() < 1e-9);
        assert!((jain_index(&[3.1, 0.45, 0.45]) - 0.5326).abs() < 1e-3);
        let span = |start: u128, end: u128| Span { name: "j".into(), start, end };
        let spans = [span(0, 2_000_000_000), span(1_000_000_000, 5_000_000_000)];
        assert!((seconds_within(&spans, 1_000_000_000, 3_000_000_000) - 3.0).abs() < 1e-9);
        assert_eq!(seconds_within(&spans, 6_000_000_000, 7_000_000_000), 0.0);
    }
}
