//! The command line, as clap definitions only: parsing here, work in
//! [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::env::BrokerKind;

/// Measure RabbitMQ, NATS JetStream and Kafka on your own event traffic.
#[derive(Debug, Parser)]
#[command(name = "brokerbench", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Brokers as local processes: check the installation, start them, try them.
    #[command(subcommand)]
    Env(EnvCommand),
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Show which broker programs are installed and their versions.
    ///
    /// Exits with 2 and prints the install command when one is missing.
    Check,
    /// Start brokers on free loopback ports and keep them running until Ctrl-C.
    ///
    /// Prints each endpoint so other tools can be pointed at it. Ctrl-C (or
    /// SIGTERM) stops every broker gracefully; nothing is left running.
    Up(UpArgs),
    /// Start brokers, send one persistent message through each, stop them.
    ///
    /// A quick proof that brokerbench can drive every broker on this machine.
    Smoke(BrokersArgs),
}

#[derive(Debug, Args)]
pub struct BrokersArgs {
    /// Brokers to use, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rabbitmq,jetstream,kafka"
    )]
    pub brokers: Vec<BrokerKind>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub brokers: BrokersArgs,
    /// Directory for the brokers' data and logs [default: a new temporary
    /// directory, removed on exit].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl clap::ValueEnum for BrokerKind {
    fn value_variants<'a>() -> &'a [Self] {
        &BrokerKind::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn brokers_are_comma_separated() {
        let cli =
            Cli::try_parse_from(["brokerbench", "env", "smoke", "--brokers", "kafka,rabbitmq"])
                .unwrap();
        let Command::Env(EnvCommand::Smoke(args)) = cli.command else {
            panic!("parsed {cli:?}")
        };
        assert_eq!(args.brokers, [BrokerKind::Kafka, BrokerKind::Rabbitmq]);
        let err =
            Cli::try_parse_from(["brokerbench", "env", "up", "--brokers", "kafak"]).unwrap_err();
        assert!(err.to_string().contains("kafak"), "{err}");
    }
}
