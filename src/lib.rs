//! brokerbench: measure RabbitMQ, NATS JetStream and Kafka on your own event
//! traffic, under the same conditions, and choose with figures.
//!
//! The binary is a thin shell around [`run`], so tests drive the same code in
//! process. `docs/architecture.md` walks the layout; each module opens with
//! why it exists.

pub(crate) mod advisor;
pub mod agent;
pub mod broker;
pub mod cli;
pub(crate) mod commands;
pub mod driver;
pub mod env;
pub mod event;
#[doc(hidden)]
pub mod fuzz;
pub mod kind;
pub mod metrics;
pub(crate) mod report;
pub(crate) mod results;
pub mod run;
pub mod scenario;

use std::process::ExitCode;

/// Exit codes shared by every command.
pub mod exit {
    /// Ran, and every check held.
    pub const OK: u8 = 0;
    /// Ran, but a threshold, regression or correctness check failed.
    pub const CHECK_FAILED: u8 = 1;
    /// Could not run: bad input, a broker not reachable, a missing program.
    pub const CANNOT_RUN: u8 = 2;
}

/// Runs one parsed command line. `Err` means the command could not run
/// (exit code 2); `Ok` carries the exit code of a command that ran.
pub async fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Env(command) => commands::env::run(command).await,
        cli::Command::Run(args) => commands::run::run(args).await,
        cli::Command::Advise(args) => commands::advise::run(args),
        cli::Command::Report(args) => commands::report::run(args),
        cli::Command::Compare(args) => commands::compare::run(args),
    }
}
