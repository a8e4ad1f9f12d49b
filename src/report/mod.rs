//! Views of results: the terminal table, one exporter per report format,
//! and the comparison of two runs. They only read [`crate::results`].

pub mod compare;
pub mod export;
pub mod table;

#[cfg(test)]
mod tests;
