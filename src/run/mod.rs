//! The run engine: load, consumers, drain, accounting.

pub mod ledger;
pub mod pacer;
