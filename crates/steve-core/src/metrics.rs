//! A status report as metrics: the Prometheus text exposition (version 0.0.4, what the
//! node-exporter's textfile collector and every Prometheus read) or OpenMetrics 1.0 (what a
//! scraper asks for with `Accept: application/openmetrics-text`). `steve metrics` prints it; a
//! server's `--metrics-listen` serves it. Made from the same [`StatusReport`] as
//! `steve status --json`, so the two never disagree.
//!
//! Names follow Prometheus's conventions: a `steve_` prefix, base units in the name
//! (`_seconds`, `_bytes`, a `_ratio` for a share), `_total` on counters, and labels for what
//! varies within one quantity (a resource, a kind of stall). Values a backend cannot know
//! (a pipe's waiters) are left out rather than given as zero.
//!
//! ```text
//! # HELP steve_pool_held_tokens Tokens out with clients.
//! # TYPE steve_pool_held_tokens gauge
//! steve_pool_held_tokens 3
//! # HELP steve_grants Tokens handed out.
//! # TYPE steve_grants counter
//! steve_grants_total 1289
//! ```
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use crate::accounting::pressure::Resource;
use crate::status::StatusReport;

/// Which text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0.
    OpenMetrics,
}

impl Format {
    /// The HTTP content type of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an HTTP `Accept` header asks for: OpenMetrics only if it is named.
    pub fn for_accept(accept: &str) -> Format {
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// What kind of metric a family is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Type {
    Gauge,
    Counter,
    Histogram,
}

/// The text being written, family by family.
struct Writer {
    format: Format,
    out: String,
}

impl Writer {
    /// Starts family `name` (without `_total` for a counter).
    fn family(&mut self, name: &str, kind: Type, help: &str) {
        let (type_name, shown) = match (kind, self.format) {
            (Type::Gauge, _) => ("gauge", name.to_string()),
            (Type::Histogram, _) => ("histogram", name.to_string()),
            // 0.0.4 names a counter's family by its sample; OpenMetrics without `_total`.
            (Type::Counter, Format::Prometheus) => ("counter", format!("{name}_total")),
            (Type::Counter, Format::OpenMetrics) => ("counter", name.to_string()),
        };
        let _ = writeln!(self.out, "# HELP {shown} {help}");
        let _ = writeln!(self.out, "# TYPE {shown} {type_name}");
    }

    /// One sample.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> =
                labels.iter().map(|(key, value)| format!("{key}=\"{}\"", escape(value))).collect();
            let _ = write!(self.out, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, Type::Gauge, help);
        self.sample(name, &[], value);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Type::Counter, help);
        self.sample(&format!("{name}_total"), &[], value as f64);
    }
}

/// A value as the formats write it: integers without a fraction, `+Inf`, `NaN`.
fn number(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if value.is_nan() {
        "NaN".to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        value.to_string()
    }
}

/// A label value escaped: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `report` in `format`.
pub fn exposition(report: &StatusReport, format: Format) -> String {
    let mut w = Writer { format, out: String::new() };
    let pool = &report.pool;
    w.family("steve_server", Type::Gauge, "1 for the running server, labelled by its backend.");
    w.sample("steve_server", &[("backend", &report.backend)], 1.0);
    w.gauge("steve_uptime_seconds", "Seconds since the server started.", report.uptime_seconds);
    w.gauge("steve_jobs", "The configured pool size (-j).", pool.jobs as f64);
    w.gauge("steve_pool_size_tokens", "Tokens that exist now.", pool.size as f64);
    w.gauge("steve_pool_free_tokens", "Tokens a client could take now.", pool.free as f64);
    w.gauge("steve_pool_held_tokens", "Tokens out with clients.", pool.held as f64);
    w.gauge(
        "steve_pool_withheld_tokens",
        "Tokens the server keeps back (limits, or a shrink waiting for returns).",
        pool.withheld as f64,
    );
    w.gauge(
        "steve_limited",
        "1 while a limit holds tokens back, else 0.",
        f64::from(u8::from(report.limited_by.is_some())),
    );
    w.gauge(
        "steve_holders",
        "Processes holding tokens (for a pipe: having it open).",
        report.holders.len() as f64,
    );
    if let Some(waiters) = &report.waiters {
        w.gauge("steve_waiters", "Requests waiting for a token.", waiters.len() as f64);
        let longest = waiters.iter().map(|waiter| waiter.waiting_seconds).fold(0.0, f64::max);
        w.gauge(
            "steve_longest_wait_seconds",
            "How long the oldest waiting request has waited.",
            longest,
        );
    }
    if let Some(builds) = &report.builds {
        w.gauge("steve_builds", "Builds holding or waiting for tokens.", builds.len() as f64);
    }
    let counters = &report.counters;
    let optional = [
        ("steve_grants", "Tokens handed out.", counters.grants),
        ("steve_returns", "Tokens written back by their holders.", counters.returns),
        ("steve_refusals", "Writes refused with ENOSPC (a token not held).", counters.enospc),
        (
            "steve_grace_returns",
            "Implicit tokens lent to the pool by grace returns.",
            counters.grace_returns,
        ),
        ("steve_interrupts", "Waiting reads ended by a signal.", counters.interrupts),
        (
            "steve_expired_reservations",
            "Tokens reserved for pollers that went unread.",
            counters.expired_reservations,
        ),
    ];
    for (name, help, value) in optional {
        if let Some(value) = value {
            w.counter(name, help, value);
        }
    }
    w.counter(
        "steve_reclaimed_tokens",
        "Tokens taken back from processes that died holding them (a pipe: put back).",
        counters.reclaimed,
    );
    if let Some(waits) = &counters.wait_seconds {
        w.family("steve_wait_seconds", Type::Histogram, "How long requests waited for a token.");
        for bucket in &waits.buckets {
            w.sample("steve_wait_seconds_bucket", &[("le", &bucket.le)], bucket.count as f64);
        }
        w.sample("steve_wait_seconds_count", &[], waits.count as f64);
        w.sample("steve_wait_seconds_sum", &[], waits.sum);
    }
    let system = &report.system;
    if let Some(load) = system.load_average_1m {
        w.gauge("steve_load_average", "The 1-minute load average, as the limits read it.", load);
    }
    if let Some(mib) = system.memory_available_mib {
        w.gauge(
            "steve_memory_available_bytes",
            "Memory available to the server's builds, as the limits read it.",
            (mib * 1024 * 1024) as f64,
        );
    }
    if let Some(mib) = system.memory_limit_mib {
        w.gauge(
            "steve_memory_limit_bytes",
            "Memory the server may use.",
            (mib * 1024 * 1024) as f64,
        );
    }
    let pressures: Vec<(Resource, crate::accounting::pressure::Stalls)> = Resource::ALL
        .iter()
        .filter_map(|resource| Some((*resource, system.pressure.get(*resource)?)))
        .collect();
    if !pressures.is_empty() {
        w.family(
            "steve_pressure_stall_ratio",
            Type::Gauge,
            "Share of the last 2 s that tasks stalled on a resource (pressure stall information).",
        );
        for (resource, stalls) in pressures {
            let name = resource.to_string();
            w.sample(
                "steve_pressure_stall_ratio",
                &[("resource", &name), ("kind", "some")],
                stalls.some / 100.0,
            );
            if let Some(full) = stalls.full {
                w.sample(
                    "steve_pressure_stall_ratio",
                    &[("resource", &name), ("kind", "full")],
                    full / 100.0,
                );
            }
        }
    }
    if format == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        serde_json::from_str(include_str!("../tests/data/fuse-status.json")).unwrap()
    }

    #[test]
    fn counters_are_named_as_each_format_wants() {
        let prometheus = exposition(&report(), Format::Prometheus);
        assert!(prometheus.contains("# TYPE steve_grants_total counter\nsteve_grants_total "));
        assert!(!prometheus.contains("# EOF"));
        let open = exposition(&report(), Format::OpenMetrics);
        assert!(open.contains("# TYPE steve_grants counter\nsteve_grants_total "));
        assert!(open.ends_with("# EOF\n"));
    }

    #[test]
    fn the_figures_are_the_reports() {
        let text = exposition(&report(), Format::Prometheus);
        for line in [
            "steve_server{backend=\"fuse\"} 1",
            "steve_jobs 3",
            "steve_waiters 1",
            "steve_longest_wait_seconds 0.75",
            "steve_wait_seconds_bucket{le=\"0.001\"} 3",
            "steve_wait_seconds_bucket{le=\"+Inf\"} 5",
            "steve_wait_seconds_sum 1.5",
            "steve_load_average 2.5",
            "steve_pressure_stall_ratio{resource=\"cpu\",kind=\"some\"} 0.125",
            "steve_pressure_stall_ratio{resource=\"memory\",kind=\"full\"} 0.005",
        ] {
            assert!(text.lines().any(|have| have == line), "no {line:?} in\n{text}");
        }
        // No io pressure was read, and cpu had no full line: neither is made up.
        assert!(!text.contains("resource=\"io\"") && !text.contains("\"cpu\",kind=\"full\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(
            (number(3.0), number(0.25), number(f64::INFINITY)),
            ("3".into(), "0.25".into(), "+Inf".into())
        );
    }
}
