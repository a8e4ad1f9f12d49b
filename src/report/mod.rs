//! Views of results: the terminal table, one exporter per report format,
//! and the comparison of two runs. They only read [`crate::results`].

pub(crate) mod compare;
pub(crate) mod export;
pub(crate) mod table;

#[cfg(test)]
mod tests;
