//! The `warden` binary: parse the command line, load and validate the
//! configuration, run the verb, map the outcome to an exit code
//! (0 ok, 1 runtime failure, 2 bad usage or bad configuration).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI talks on stdout and stderr"
)]

mod banner;
mod cli;
mod commands;
mod health;
mod logging;
mod model;
mod model_init;

use std::process::ExitCode;

use clap::Parser;

/// How a verb failed, and so which exit code it gets.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad usage or bad configuration: exit 2.
    Usage(String),
    /// Anything else: exit 1.
    Runtime(String),
}

impl Failure {
    pub(crate) fn usage(message: impl std::fmt::Display) -> Self {
        Self::Usage(message.to_string())
    }
    pub(crate) fn runtime(message: impl std::fmt::Display) -> Self {
        Self::Runtime(message.to_string())
    }
}

/// jemalloc, with its background purging thread on, rather than glibc's
/// malloc: after an attack glibc kept 6.5x the idle RSS a minute later,
/// jemalloc came back to idle (measured with bench/battery.py; the figures
/// and the alternatives tried are in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse(); // clap exits 2 on bad usage
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("warden: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("warden: {message}");
            ExitCode::from(1)
        }
    }
}
