//! `steve metrics`: a running server's figures in the Prometheus text format (or OpenMetrics),
//! for the node-exporter's textfile collector (`--output`, written whole or not at all) or a
//! look by hand. The same text a server's `--metrics-listen` serves.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use steve_core::metrics::{exposition, Format};

use crate::control::fetch_status;
use crate::output;

/// Options of `steve metrics`.
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// OpenMetrics 1.0 rather than the Prometheus text format 0.0.4.
    #[arg(long)]
    openmetrics: bool,
    /// Write to FILE instead of standard output: to FILE.tmp first, then renamed over FILE,
    /// so that a collector never reads half of it (the textfile collector wants a .prom name).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The server's control socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// `steve metrics`.
pub fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let report = fetch_status(args.control.as_deref())?;
    let format = if args.openmetrics { Format::OpenMetrics } else { Format::Prometheus };
    let text = exposition(&report, format);
    let Some(path) = args.output else {
        return Ok(output::line(text.trim_end())?);
    };
    let mut temporary = path.clone().into_os_string();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = fs::File::create(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, &path)
        .with_context(|| format!("cannot rename {} to {}", temporary.display(), path.display()))?;
    Ok(())
}
