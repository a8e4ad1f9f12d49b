//! What each subcommand does, on top of the library modules.

pub(crate) mod advise;
pub(crate) mod compare;
pub(crate) mod env;
pub(crate) mod report;
pub(crate) mod run;
mod screen;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A data directory: the one given (kept), or a fresh temporary one (removed).
pub(crate) enum DataDir {
    Given(PathBuf),
    Temporary(tempfile::TempDir),
}

impl DataDir {
    pub(crate) fn new(given: Option<PathBuf>) -> Result<Self> {
        Ok(match given {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                DataDir::Given(dir)
            }
            None => DataDir::Temporary(
                tempfile::Builder::new()
                    .prefix("brokerbench-")
                    .tempdir()
                    .context("creating a temporary directory")?,
            ),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            DataDir::Given(dir) => dir,
            DataDir::Temporary(dir) => dir.path(),
        }
    }
}
