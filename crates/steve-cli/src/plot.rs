//! `steve plot`: a trace as a picture. Time runs across; above, the pool (tokens held, withheld,
//! and its size); below, one lane per build with a bar for every token it held and a thinner
//! one for every request that waited; limit, pressure and resize events are marked across the
//! whole height. The same intervals go to the Chrome trace event format (`--chrome`), which
//! Perfetto and chrome://tracing open.
//!
//! The intervals come from `steve_core::trace::timeline`; this module only draws them. The SVG
//! is plain (no scripts, no external references): each lane is a `<g class="lane">`, each hold a
//! `<rect class="hold">` and each wait a `<rect class="wait">`, with a `<title>` saying whose it
//! is and how long it lasted.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use steve_core::trace::timeline::{Interval, Lane, Timeline};
use steve_core::trace::{Kind, TraceEvent};

use crate::output;
use crate::trace::{fetch_since, parse_ago, utc, wall_clock_ns, Ago};

/// Options of `steve plot`.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// Trace files of JSON lines (a --trace-file and its .1, or saved `steve trace --json`
    /// output); `-` reads standard input. Without any, the running server's trace.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Without files: the events since this long ago (30s, 5m, 2h, 1d, all) [default: all].
    #[arg(long, value_name = "AGO", value_parser = parse_ago)]
    since: Option<Ago>,
    /// Write the SVG picture to PATH [default: standard output, unless --chrome is given].
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Write the Chrome trace event format (for Perfetto, chrome://tracing) to PATH.
    #[arg(long, value_name = "PATH")]
    chrome: Option<PathBuf>,
    /// The picture's width in pixels.
    #[arg(long, value_name = "PX", default_value_t = 1200, value_parser = clap::value_parser!(u32).range(400..=20000))]
    width: u32,
    /// The server's control socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// `steve plot`.
pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let (events, started_at) = if args.files.is_empty() {
        let (events, _, clocks) =
            fetch_since(args.control.as_deref(), args.since.unwrap_or(Ago::All))?;
        let first = events.first().map(|event| wall_clock_ns(event.mono_ns, &clocks));
        (events, first)
    } else {
        (read_files(&args.files)?, None)
    };
    if events.is_empty() {
        bail!("the trace holds no events");
    }
    let timeline = Timeline::of(&events);
    if let Some(path) = &args.chrome {
        let text = serde_json::to_string(&chrome(&timeline))?;
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let picture = svg(&timeline, args.width, events.len(), started_at);
    match (&args.output, &args.chrome) {
        (Some(path), _) => {
            fs::write(path, picture).with_context(|| format!("writing {}", path.display()))?
        }
        (None, Some(_)) => {}
        (None, None) => output::line(&picture)?,
    }
    Ok(())
}

/// The events of `files`, in time order (a rotated file and its successor may be given in
/// any order).
fn read_files(files: &[PathBuf]) -> anyhow::Result<Vec<TraceEvent>> {
    let mut events = Vec::new();
    for file in files {
        let text = if file == Path::new("-") {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        } else {
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let event: TraceEvent = serde_json::from_str(line).with_context(|| {
                format!("{} line {}: not a trace event", file.display(), number + 1)
            })?;
            events.push(event);
        }
    }
    events.sort_by_key(|event| (event.mono_ns, event.seq));
    Ok(events)
}

/// Colours for the lanes, in turn (Tableau 10).
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];
const LABELS: f64 = 170.0;
const RIGHT: f64 = 20.0;
const POOL_TOP: f64 = 48.0;
const POOL_HEIGHT: f64 = 100.0;
const HOLD_ROW: f64 = 10.0;
const WAIT_ROW: f64 = 5.0;
const LANE_PAD: f64 = 8.0;

/// Where times and token counts go on the picture.
struct Scale {
    start: u64,
    span: f64,
    width: f64,
}

impl Scale {
    fn x(&self, at: u64) -> f64 {
        LABELS + (at.saturating_sub(self.start)) as f64 / self.span * self.width
    }
}

fn lane_name(lane: &Lane) -> String {
    match lane.build {
        Some(build) if build == 1 << 63 => "companion FIFO".to_string(),
        Some(build) => format!("build {build}"),
        None => "no build".to_string(),
    }
}

/// The lane's second line: its command (the program's name and its arguments), else its
/// processes.
fn lane_detail(lane: &Lane) -> String {
    if lane.build == Some(1 << 63) {
        return "its readers (ninja...)".to_string();
    }
    let Some(command) = &lane.command else { return lane_pids(lane) };
    let (program, rest) = command.split_once(' ').unwrap_or((command, ""));
    let program = program.rsplit('/').next().unwrap_or(program);
    let short = format!("{program} {rest}");
    if short.chars().count() > 26 {
        format!("{}…", short.chars().take(25).collect::<String>())
    } else {
        short.trim_end().to_string()
    }
}

fn lane_pids(lane: &Lane) -> String {
    let shown: Vec<String> = lane.pids.iter().take(4).map(u32::to_string).collect();
    let more = lane.pids.len().saturating_sub(4);
    let mut text = format!("pid {}", shown.join(", "));
    if more > 0 {
        let _ = write!(text, " +{more}");
    }
    text
}

fn seconds(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// Escapes `text` for XML.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The picture.
fn svg(timeline: &Timeline, width: u32, events: usize, started_at: Option<u64>) -> String {
    let width = f64::from(width);
    let scale = Scale {
        start: timeline.start,
        span: (timeline.end.saturating_sub(timeline.start)).max(1) as f64,
        width: width - LABELS - RIGHT,
    };
    let lanes_top = POOL_TOP + POOL_HEIGHT + 28.0;
    let lane_height = |lane: &Lane| {
        let waits = if lane.wait_rows > 0 { lane.wait_rows as f64 * WAIT_ROW + 3.0 } else { 0.0 };
        lane.hold_rows.max(1) as f64 * HOLD_ROW + waits + 2.0 * LANE_PAD
    };
    let lanes_height: f64 = timeline.lanes.iter().map(lane_height).sum();
    let height = lanes_top + lanes_height + 50.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0}" viewBox="0 0 {width} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let span = timeline.end - timeline.start;
    let when = started_at.map(|ns| format!(" from {}", utc(ns))).unwrap_or_default();
    let _ = writeln!(
        out,
        r#"<text class="title" x="10" y="20" font-size="14" font-weight="bold">steve: {} builds, {events} events over {}{}</text>"#,
        timeline.lanes.len(),
        seconds(span),
        xml(&when)
    );
    pool_panel(&mut out, timeline, &scale);
    let mut y = lanes_top;
    for (index, lane) in timeline.lanes.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let height = lane_height(lane);
        let build = lane.build.map_or_else(|| "none".to_string(), |b| b.to_string());
        let _ = writeln!(out, r#"<g class="lane" data-build="{build}">"#);
        let stripe = if index % 2 == 0 { "#f7f7f7" } else { "#ffffff" };
        let _ = writeln!(
            out,
            r#"<rect class="stripe" x="0" y="{y:.1}" width="{width}" height="{height:.1}" fill="{stripe}"/>"#
        );
        let _ = writeln!(
            out,
            r##"<text x="10" y="{:.1}" font-weight="bold">{}</text><text x="10" y="{:.1}" fill="#555">{}</text>"##,
            y + 14.0,
            xml(&lane_name(lane)),
            y + 27.0,
            xml(&lane_detail(lane))
        );
        let holds_top = y + LANE_PAD;
        for hold in &lane.holds {
            let top = holds_top + hold.row as f64 * HOLD_ROW;
            bar(&mut out, "hold", hold, &scale, top, HOLD_ROW - 2.0, color);
        }
        let waits_top = holds_top + lane.hold_rows.max(1) as f64 * HOLD_ROW + 3.0;
        for wait in &lane.waits {
            let top = waits_top + wait.row as f64 * WAIT_ROW;
            bar(&mut out, "wait", wait, &scale, top, WAIT_ROW - 1.0, "#d62728");
        }
        let _ = writeln!(out, "</g>");
        y += height;
    }
    marks(&mut out, timeline, &scale, POOL_TOP, y);
    axis(&mut out, timeline, &scale, y + 4.0);
    let _ = writeln!(
        out,
        r##"<text x="{LABELS}" y="{:.1}" fill="#555">bars: tokens held (a row per token at once); thin red bars: requests waiting; dashed lines: limit, pressure and resize events</text>"##,
        y + 40.0
    );
    out.push_str("</svg>\n");
    out
}

/// One hold or wait.
fn bar(
    out: &mut String,
    class: &str,
    interval: &Interval,
    scale: &Scale,
    top: f64,
    height: f64,
    color: &str,
) {
    let x = scale.x(interval.start);
    let w = (scale.x(interval.end) - x).max(0.5);
    let how = interval.via.map(|via| format!(" by {via:?}").to_lowercase()).unwrap_or_default();
    let open = if interval.open { ", still open at the end" } else { "" };
    let what = if class == "hold" { "held a token" } else { "waited" };
    let _ = writeln!(
        out,
        r#"<rect class="{class}" x="{x:.2}" y="{top:.1}" width="{w:.2}" height="{height:.1}" fill="{color}"><title>pid {} {what} {}{how}{open}</title></rect>"#,
        interval.pid,
        seconds(interval.end - interval.start),
    );
}

/// The pool above the lanes: withheld stacked on held, the size as a line.
fn pool_panel(out: &mut String, timeline: &Timeline, scale: &Scale) {
    let most = timeline.pool.iter().map(|point| point.books.size).max().unwrap_or(1).max(1);
    let y = |tokens: usize| POOL_TOP + POOL_HEIGHT - tokens as f64 / most as f64 * POOL_HEIGHT;
    let step = |value: &dyn Fn(&steve_core::trace::Books) -> usize| {
        let mut path = format!("M{:.2},{:.1}", scale.x(timeline.start), y(0));
        let mut last = 0;
        for point in &timeline.pool {
            let x = scale.x(point.at);
            let now = value(&point.books);
            let _ = write!(path, " L{x:.2},{:.1} L{x:.2},{:.1}", y(last), y(now));
            last = now;
        }
        let _ = write!(path, " L{:.2},{:.1}", scale.x(timeline.end), y(last));
        path
    };
    let _ = writeln!(
        out,
        r##"<text x="10" y="{:.1}" font-weight="bold">pool</text><text x="10" y="{:.1}" fill="#555">{most} tokens at most</text>"##,
        POOL_TOP + 14.0,
        POOL_TOP + 27.0
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LABELS}" y="{POOL_TOP}" width="{:.1}" height="{POOL_HEIGHT}" fill="none" stroke="#ddd"/>"##,
        scale.width
    );
    let withheld = step(&|books| books.held + books.withheld);
    let held = step(&|books| books.held);
    let size = step(&|books| books.size);
    let base = y(0);
    let _ = writeln!(
        out,
        r##"<path class="pool-withheld" d="{withheld} V{base:.1} Z" fill="#bab0ac"><title>withheld by the limits</title></path>"##
    );
    let _ = writeln!(
        out,
        r##"<path class="pool-held" d="{held} V{base:.1} Z" fill="#4e79a7"><title>held</title></path>"##
    );
    let _ = writeln!(
        out,
        r##"<path class="pool-size" d="{size}" fill="none" stroke="black" stroke-width="1"><title>pool size</title></path>"##
    );
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" fill="#555" text-anchor="end">held (blue), withheld (grey), size (line)</text>"##,
        LABELS + scale.width,
        POOL_TOP - 4.0
    );
}

/// Limit, pressure, resize and recovery events, across the picture.
fn marks(out: &mut String, timeline: &Timeline, scale: &Scale, top: f64, bottom: f64) {
    for mark in &timeline.marks {
        let x = scale.x(mark.at);
        let what = match mark.kind {
            Kind::Jobs => format!("pool resized to {}", mark.tokens),
            Kind::Limit => format!("limits let {} out", mark.tokens),
            Kind::Recovery => format!("{} lost tokens recovered", mark.tokens),
            _ => mark.note.clone().unwrap_or_else(|| mark.kind.name().to_string()),
        };
        let color = if mark.kind == Kind::Pressure { "#d62728" } else { "#888" };
        let _ = writeln!(
            out,
            r#"<line class="mark" x1="{x:.2}" y1="{top:.1}" x2="{x:.2}" y2="{bottom:.1}" stroke="{color}" stroke-dasharray="3,3"><title>{} at {}</title></line>"#,
            xml(&what),
            seconds(mark.at - timeline.start)
        );
    }
}

/// Seconds from the start, at round steps.
fn axis(out: &mut String, timeline: &Timeline, scale: &Scale, y: f64) {
    let span = (timeline.end - timeline.start) as f64 / 1e9;
    let raw = (span / 8.0).max(1e-3);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    let _ = writeln!(
        out,
        r##"<line x1="{LABELS}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333"/>"##,
        LABELS + scale.width
    );
    let mut tick = 0.0;
    while tick <= span + step * 1e-6 {
        let x = scale.x(timeline.start + (tick * 1e9) as u64);
        let label = if step < 1.0 { format!("{tick:.2} s") } else { format!("{tick:.0} s") };
        let _ = writeln!(
            out,
            r##"<line x1="{x:.2}" y1="{y:.1}" x2="{x:.2}" y2="{:.1}" stroke="#333"/><text x="{x:.2}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            y + 4.0,
            y + 16.0
        );
        tick += step;
    }
}

/// The Chrome trace event format: a process per lane (pid 1, 2, ...; the pool's counters on
/// pid 0), a thread per row, a complete event (`ph: X`) per hold and per wait, counters for the
/// pool and instant events for the marks. Times in microseconds from the trace's start.
fn chrome(timeline: &Timeline) -> serde_json::Value {
    let micros = |at: u64| (at - timeline.start) as f64 / 1e3;
    let mut events =
        vec![json!({"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "pool"}})];
    for (index, lane) in timeline.lanes.iter().enumerate() {
        let pid = index + 1;
        events.push(json!({
            "name": "process_name", "ph": "M", "pid": pid,
            "args": {"name": format!("{} ({})", lane_name(lane), lane_pids(lane))}
        }));
        for (cat, name, intervals, first_tid) in
            [("hold", "token", &lane.holds, 0), ("wait", "waiting", &lane.waits, 1000)]
        {
            for interval in intervals.iter() {
                events.push(json!({
                    "name": name, "cat": cat, "ph": "X", "pid": pid, "tid": first_tid + interval.row,
                    "ts": micros(interval.start), "dur": micros(interval.end) - micros(interval.start),
                    "args": {"pid": interval.pid, "via": interval.via, "open": interval.open}
                }));
            }
        }
    }
    for point in &timeline.pool {
        events.push(json!({
            "name": "tokens", "ph": "C", "pid": 0, "ts": micros(point.at),
            "args": {"held": point.books.held, "withheld": point.books.withheld, "free": point.books.free}
        }));
    }
    for mark in &timeline.marks {
        events.push(json!({
            "name": mark.kind.name(), "ph": "i", "s": "g", "pid": 0, "ts": micros(mark.at),
            "args": {"tokens": mark.tokens, "note": mark.note}
        }));
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}
