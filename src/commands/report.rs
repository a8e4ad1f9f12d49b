//! `brokerbench report RESULTS... --format F [--out PATH]`: a report from
//! saved results, written where CI wants it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::ReportArgs;
use crate::exit;
use crate::report::export::{exporter, Document};
use crate::results::Results;

pub(crate) fn run(args: ReportArgs) -> Result<ExitCode> {
    let paths: Vec<PathBuf> = args.results.iter().map(|p| results_file(p)).collect();
    let runs = paths
        .iter()
        .map(|p| Results::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let documents = exporter(args.format).export(&runs)?;
    match (documents.as_slice(), &args.out) {
        ([one], None) => {
            std::io::stdout()
                .write_all(&one.content)
                .context("writing to stdout")?;
        }
        ([one], Some(file)) if !file.is_dir() => write(file, one)?,
        (_, out) => {
            let dir = match out {
                Some(dir) => dir.clone(),
                None => paths[0].parent().unwrap_or(Path::new(".")).to_path_buf(),
            };
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("could not create '{}'", dir.display()))?;
            for d in &documents {
                let path = dir.join(&d.file_name);
                write(&path, d)?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// `path` itself, or the `results.json` in it when it is a directory.
pub(crate) fn results_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("results.json")
    } else {
        path.to_path_buf()
    }
}

fn write(path: &Path, document: &Document) -> Result<()> {
    std::fs::write(path, &document.content)
        .with_context(|| format!("could not write '{}'", path.display()))
}
