//! How the `kiln` command speaks: results on stdout (a readable table, or
//! with `-o json` one JSON document per line), and progress, bars, notes
//! and prompts on stderr, so that `id=$(kiln submit ...)` or
//! `kiln ... -o json | jq` capture results only. Bars are drawn only when
//! stderr is a terminal; `--quiet` leaves stderr to errors; `NO_COLOR`
//! turns colours off.

use crate::error::{CliError, Result};
use serde::Serialize;
use std::io::{IsTerminal, Write};

/// The output format of commands that print data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Readable lines and tables.
    #[default]
    Table,
    /// One JSON document per line.
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Ui {
    pub json: bool,
    pub quiet: bool,
    /// Progress bars (stderr is a terminal, and not `--quiet`).
    pub bars: bool,
    /// Colours in bars (`NO_COLOR` unset or empty).
    pub color: bool,
}

impl Ui {
    pub fn new(output: Output, quiet: bool) -> Ui {
        Ui {
            json: output == Output::Json,
            quiet,
            bars: !quiet && std::io::stderr().is_terminal(),
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// This, with JSON output also when a command's own hidden `--json`
    /// asked for it.
    pub fn with_json(self, json: bool) -> Ui {
        Ui {
            json: self.json || json,
            ..self
        }
    }

    /// A note or a progress line on stderr, unless `--quiet`.
    pub fn note(&self, text: impl std::fmt::Display) {
        if !self.quiet {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
        }
    }

    /// One JSON document on one line of stdout. A closed stdout is
    /// [`CliError::Closed`]: the command stops quietly.
    pub fn json_line<T: Serialize>(&self, value: &T) -> Result<()> {
        let text = serde_json::to_string(value)
            .map_err(|e| CliError::Other(anyhow::Error::new(e).context("encoding JSON")))?;
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{text}").and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::Closed),
            Err(e) => Err(CliError::local("writing to stdout", e)),
        }
    }
}
