//! The brokers brokerbench compares, by name.
//!
//! This is shared vocabulary at the bottom of the house: a scenario names
//! brokers, results are keyed by them and the advisor ranks them, none of
//! which needs the drivers. It imports nothing of ours; what each broker
//! *is* (its program, client and launch) lives in [`crate::broker`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The brokers brokerbench compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// RabbitMQ, spoken to over AMQP 0-9-1 (lapin).
    Rabbitmq,
    /// NATS with JetStream (async-nats).
    Jetstream,
    /// Apache Kafka (rdkafka); locally, Apache Kafka 4.x in KRaft mode.
    Kafka,
}

/// Every broker, in the order results list them.
pub const ALL: [BrokerKind; 3] = [
    BrokerKind::Rabbitmq,
    BrokerKind::Jetstream,
    BrokerKind::Kafka,
];

impl BrokerKind {
    /// The name used on the command line, in scenario files and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Rabbitmq => "rabbitmq",
            BrokerKind::Jetstream => "jetstream",
            BrokerKind::Kafka => "kafka",
        }
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BrokerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|k| k.as_str()).collect();
            format!(
                "unknown broker '{s}' (expected one of: {})",
                names.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_names_round_trip() {
        for kind in ALL {
            assert_eq!(kind.as_str().parse::<BrokerKind>().unwrap(), kind);
            assert_eq!(kind.as_str(), format!("{kind}"));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        let err = "kafak".parse::<BrokerKind>().unwrap_err();
        assert!(err.contains("kafak") && err.contains("jetstream"), "{err}");
    }
}
