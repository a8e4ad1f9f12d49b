//! brokerbench's integration tests, in one binary (as ripgrep keeps its
//! own): one link of the crate, one copy of the helpers in [`util`].
//!
//! Tests of broker behaviour start real brokers on free loopback ports;
//! `.config/nextest.toml` says which of them run alone or take turns, by
//! module. Each module opens with what it covers.

mod advise;
mod agents;
mod brokers;
mod ci;
mod clusters;
mod compose;
mod dead_letters;
mod drivers;
mod durability;
mod env_cli;
mod external;
mod faults;
mod find_max;
mod layers;
mod network;
mod run;
mod security;
mod util;
