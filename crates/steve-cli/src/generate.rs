//! Files generated from the command-line definitions themselves, so they never disagree with
//! `--help`: shell completions (`steve completions SHELL`) and the man pages, one per
//! subcommand (`steve man-pages DIR`, which scripts/install runs).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

/// Writes the completion script for `shell` to stdout.
pub fn completions<C: CommandFactory>(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = C::command();
    let mut stdout = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, "steve", &mut stdout);
    std::io::Write::flush(&mut stdout).context("writing the completions")?;
    Ok(())
}

/// Writes steve(1) and steve-SUBCOMMAND(1) for every visible subcommand into `dir`.
pub fn man_pages<C: CommandFactory>(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(C::command(), dir)
        .with_context(|| format!("writing the man pages into {}", dir.display()))
}
