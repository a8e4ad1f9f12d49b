//! Scenario errors that point at the exact place: file, line, column, field.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// A scenario that cannot be used, and where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A problem at a place in the file.
    #[error("{}:{line}:{column}: {field}: {message}", file.display())]
    At {
        /// The scenario file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted path of the field, e.g. `load.rate` or `consumers[1].group`.
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A command-line override that cannot be used.
    #[error("{flag}: {message}")]
    Flag {
        /// The flag, e.g. `--rate`.
        flag: String,
        /// What is wrong.
        message: String,
    },
    /// The file cannot be read at all.
    #[error("could not read {}: {message}", file.display())]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// The operating system's reason.
        message: String,
    },
}

impl ScenarioError {
    pub(crate) fn unreadable(file: &Path, err: &std::io::Error) -> Self {
        ScenarioError::Unreadable {
            file: file.to_path_buf(),
            message: err.to_string(),
        }
    }

    pub(super) fn flag(flag: &str, message: String) -> Self {
        ScenarioError::Flag {
            flag: flag.to_string(),
            message,
        }
    }

    /// The field this error names, if it is about a place in the file.
    pub fn field(&self) -> Option<&str> {
        match self {
            ScenarioError::At { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// An error found while parsing or validating, before it knows its file.
#[derive(Debug)]
pub(crate) struct RawError {
    /// Byte range in the text, when known.
    pub span: Option<Range<usize>>,
    /// The field's dotted path, when the code knows it better than the span.
    pub field: Option<String>,
    pub message: String,
}

impl RawError {
    /// A TOML syntax or type error, at its place.
    pub fn toml(err: &toml::de::Error) -> Self {
        RawError {
            span: err.span(),
            field: None,
            message: err.message().trim().to_string(),
        }
    }

    pub fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        RawError {
            span: Some(span),
            field: None,
            message: message.into(),
        }
    }

    pub fn field(
        field: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        RawError {
            span,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn in_file(self, file: &Path, text: &str) -> ScenarioError {
        let offset = self.span.as_ref().map_or(0, |s| s.start.min(text.len()));
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        let field = self
            .field
            .unwrap_or_else(|| field_at(text, offset, &self.message));
        ScenarioError::At {
            file: file.to_path_buf(),
            line,
            column,
            field,
            message: self.message,
        }
    }
}

/// The dotted path of the field at `offset`: the table from the nearest
/// header at or above it (`[load]`, the n-th `[[consumers]]`, its
/// `[consumers.failures]`), and the key
/// named in the message (unknown/missing field) or written on that line.
fn field_at(text: &str, offset: usize, message: &str) -> String {
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let mut table = String::new();
    let mut arrays: Vec<(String, usize)> = Vec::new();
    for header in text[..line_end]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('['))
    {
        let name = header
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if header.starts_with("[[") {
            let index = match arrays.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    arrays.push((name.clone(), 1));
                    0
                }
            };
            table = format!("{name}[{index}]");
        } else {
            // `[consumers.failures]` belongs to the last `[[consumers]]`.
            let element = name.split_once('.').and_then(|(first, rest)| {
                let (_, count) = arrays.iter().find(|(n, _)| n == first)?;
                Some(format!("{first}[{}].{rest}", count - 1))
            });
            table = element.unwrap_or(name);
        }
    }
    let line = &text[line_start..line_end];
    let key = quoted_name(message).or_else(|| {
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        (!key.is_empty() && !key.starts_with('[')).then(|| key.trim_matches('"').to_string())
    });
    match (table.is_empty(), key) {
        (true, Some(key)) => key,
        (false, Some(key)) => format!("{table}.{key}"),
        (_, None) => {
            if table.is_empty() {
                "(top level)".to_string()
            } else {
                table
            }
        }
    }
}

/// `unknown field `rat`, expected ...` -> `rat`.
fn quoted_name(message: &str) -> Option<String> {
    [
        "unknown field `",
        "missing field `",
        "duplicate key `",
        "duplicate field `",
    ]
    .iter()
    .find_map(|prefix| {
        let rest = &message[message.find(prefix)? + prefix.len()..];
        Some(rest[..rest.find('`')?].to_string())
    })
}
