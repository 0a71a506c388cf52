//! `steve trace`: the server's event trace, read page by page through the control socket.
//! Without `--since` it follows what happens from now on; with `--since` it prints what the
//! server kept since then and stops (or follows on, with `--follow`). A server that stops is
//! waited for, and a new one's trace followed from its start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use steve_core::server::control::{Request, Response};
use steve_core::server::trace_log::Clocks;
use steve_core::trace::TraceEvent;

use crate::control::exchange;
use crate::output;

/// Options of `steve trace`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Print the events since this long ago (30s, 5m, 2h, 1d; `all` for everything the server
    /// kept), then stop unless --follow is given.
    #[arg(long, value_name = "AGO", value_parser = parse_ago)]
    since: Option<Ago>,
    /// Keep printing events as they happen (the default without --since).
    #[arg(short, long)]
    follow: bool,
    /// Print each event as a JSON line, as in a trace file.
    #[arg(long)]
    json: bool,
    /// The server's control socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// How far back `--since` reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ago {
    /// Everything the server kept.
    All,
    /// This long ago.
    Duration(Duration),
}

/// `30s`, `5m`, `2h`, `1d`, `all`; a number alone is seconds.
pub fn parse_ago(text: &str) -> Result<Ago, String> {
    if text == "all" {
        return Ok(Ago::All);
    }
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let seconds = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => f64::NAN,
    };
    digits
        .parse::<f64>()
        .ok()
        .map(|count| count * seconds)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .map(Ago::Duration)
        .ok_or_else(|| format!("{text:?} is not a time ago like 30s, 5m, 2h, 1d or all"))
}

/// Where a reader is in one server's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The server's trace, by when it started.
    pub started_mono_ns: u64,
    /// The next sequence number wanted.
    pub next: u64,
}

/// One answer to a trace request.
pub struct TracePage {
    /// The events, oldest first.
    pub events: Vec<TraceEvent>,
    /// Where to ask from next.
    pub cursor: Cursor,
    /// Events asked for that the server no longer had.
    pub lost: u64,
    /// The server's ring size.
    pub capacity: usize,
    /// The server's clocks as it answered.
    pub clocks: Clocks,
}

/// Asks the server at `control` for the trace from `from` (sequence number) or since
/// `since_mono_ns`.
pub fn fetch_page(
    control: Option<&Path>,
    from: Option<u64>,
    since_mono_ns: Option<u64>,
) -> anyhow::Result<TracePage> {
    match exchange(control, &Request::Trace { from, since_mono_ns })? {
        Response::Trace { events, next, lost, capacity, started_mono_ns, clocks } => {
            Ok(TracePage {
                events,
                cursor: Cursor { started_mono_ns, next },
                lost,
                capacity,
                clocks,
            })
        }
        other => bail!("unexpected answer to trace: {other:?}"),
    }
}

/// Every event the server kept since `ago` (everything, with `All`), page after page; the
/// cursor to follow on from; and the clocks of the last answer.
pub fn fetch_since(
    control: Option<&Path>,
    ago: Ago,
) -> anyhow::Result<(Vec<TraceEvent>, Cursor, Clocks)> {
    let since = match ago {
        Ago::All => None,
        Ago::Duration(ago) => {
            Some(Clocks::now().mono_ns.saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(0)))
        }
    };
    let mut page = fetch_page(control, since.is_none().then_some(0), since)?;
    no_trace_kept(&page)?;
    warn_lost(page.lost, page.capacity);
    let mut events = std::mem::take(&mut page.events);
    loop {
        let more = fetch_page(control, Some(page.cursor.next), None)?;
        if more.events.is_empty() || more.cursor.started_mono_ns != page.cursor.started_mono_ns {
            return Ok((events, page.cursor, page.clocks));
        }
        warn_lost(more.lost, more.capacity);
        events.extend(more.events.iter().cloned());
        page = more;
    }
}

fn no_trace_kept(page: &TracePage) -> anyhow::Result<()> {
    if page.capacity == 0 {
        bail!("this server keeps no trace: it was started with --trace-size 0");
    }
    Ok(())
}

fn warn_lost(lost: u64, capacity: usize) {
    if lost > 0 {
        eprintln!(
            "steve: {lost} events were lost before these: the server keeps the newest \
             {capacity} (raise --trace-size, or keep a --trace-file)"
        );
    }
}

/// How often a follower asks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// `steve trace`.
pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let control = args.control.as_deref();
    let print = |events: &[TraceEvent], clocks: &Clocks| -> anyhow::Result<()> {
        for event in events {
            let line =
                if args.json { serde_json::to_string(event)? } else { human_line(event, clocks) };
            output::line(&line)?;
        }
        Ok(())
    };
    let mut cursor = match args.since {
        Some(ago) => {
            let (events, cursor, clocks) = fetch_since(control, ago)?;
            print(&events, &clocks)?;
            if !args.follow {
                return Ok(());
            }
            cursor
        }
        None => {
            let page = fetch_page(control, Some(u64::MAX), None)?;
            no_trace_kept(&page)?;
            page.cursor
        }
    };
    // Following: a server that goes away is waited for; a new one is followed from its start.
    let mut waiting = false;
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let page = match fetch_page(control, Some(cursor.next), None) {
            Ok(page) => page,
            Err(error) => {
                if !waiting {
                    eprintln!("steve: server stopped ({error:#}); waiting for it");
                    waiting = true;
                }
                continue;
            }
        };
        if page.cursor.started_mono_ns != cursor.started_mono_ns {
            eprintln!("steve: the server was restarted: its trace from the start");
            cursor = Cursor { started_mono_ns: page.cursor.started_mono_ns, next: 0 };
            waiting = false;
            continue;
        }
        waiting = false;
        warn_lost(page.lost, page.capacity);
        print(&page.events, &page.clocks)?;
        cursor = page.cursor;
    }
}

/// One event for people: its wall-clock time (UTC), what happened, to whom, and the books.
pub fn human_line(event: &TraceEvent, clocks: &Clocks) -> String {
    let record = &event.record;
    let realtime = wall_clock_ns(event.mono_ns, clocks);
    let mut line = format!("{} #{:<6} {:<9}", utc(realtime), event.seq, record.event.name());
    if let Some(pid) = record.pid {
        line.push_str(&format!(" pid {pid}"));
    }
    if let Some(build) = record.build {
        line.push_str(&format!(" build {build}"));
    }
    line.push_str(&format!(" tokens {}", record.tokens));
    if let Some(via) = record.via {
        line.push_str(&format!(" by {via:?}").to_lowercase());
    }
    if let Some(waited) = record.waited_ns {
        line.push_str(&format!(" after {:.3} s", waited as f64 / 1e9));
    }
    if let Some(books) = record.books {
        line.push_str(&format!(
            " | size {} free {} held {} withheld {}",
            books.size, books.free, books.held, books.withheld
        ));
    }
    if let Some(note) = &record.note {
        line.push_str(&format!(" | {note}"));
    }
    line
}

/// A monotonic stamp on the wall clock, by the pair of clocks a server read together.
pub fn wall_clock_ns(mono_ns: u64, clocks: &Clocks) -> u64 {
    (clocks.realtime_ns + mono_ns).saturating_sub(clocks.mono_ns)
}

/// `2026-12-01T15:04:05.123456Z` for nanoseconds since the epoch.
pub fn utc(realtime_ns: u64) -> String {
    let seconds = realtime_ns / 1_000_000_000;
    let micros = (realtime_ns % 1_000_000_000) / 1_000;
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_ago_parse_and_nonsense_is_refused() {
        assert_eq!(parse_ago("90"), Ok(Ago::Duration(Duration::from_secs(90))));
        assert_eq!(parse_ago("5m"), Ok(Ago::Duration(Duration::from_secs(300))));
        assert_eq!(parse_ago("1.5h"), Ok(Ago::Duration(Duration::from_secs(5400))));
        assert_eq!(parse_ago("all"), Ok(Ago::All));
        for bad in ["", "5x", "-3s", "m", "1e400"] {
            assert!(parse_ago(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utc_dates_match_known_days() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day of a century year) and 2026-12-01 15:04:05.000123.
        assert_eq!(utc(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(utc(1_796_137_445_000_123_456), "2026-12-01T15:04:05.000123Z");
    }
}
