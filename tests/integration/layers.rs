//! The dependency rules of `docs/architecture.md`, checked on the source:
//! every `crate::` and `super::` path in every file under `src/`, in a `use`
//! (re-exports included) or inline, must point to the same floor or below.
//!
//! The floors, bottom to top, are [`FLOORS`]. They give the four rules of
//! the architecture and more: scenario never imports broker or env; broker
//! never imports env; run never imports report; nothing below run imports
//! run. The source is read as tokens (comments and string literals
//! skipped), and `super::` is resolved from the file's module and the inline
//! modules (`mod tests { .. }`) it stands in.

use std::collections::BTreeSet;
use std::path::Path;

/// Top-level modules by floor, bottom first. A module may import its own
/// floor and those below.
const FLOORS: &[&[&str]] = &[
    &["kind", "event"],
    &["scenario"],
    &["driver"],
    &["broker", "agent"],
    &["env"],
    &["metrics"],
    &["results"],
    &["run"],
    &["report", "advisor"],
    &["cli"],
    &["commands", "fuzz"],
];

/// Items of the crate root that any module may use: the exit codes.
const ROOT_ITEMS: &[&str] = &["exit"];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

/// One import that points up.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    line: usize,
    from: String,
    to: String,
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Colons,
    Open,
    Close,
    Comma,
    Other,
}

/// The tokens of Rust source with their lines: identifiers, `::`, braces
/// and commas; comments, strings and characters are skipped.
fn tokens(text: &str) -> Vec<(usize, Token)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= chars.len() {
                    break;
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('a', '\n', '\u{..}'), or a lifetime.
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
            if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                // A raw string: r"..", r#".."#, br#".."#.
                let close: String = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                i += hashes + 1;
                let rest: String = chars[i..].iter().collect();
                let len = rest.find(&close).map_or(rest.len(), |n| n + close.len());
                line += rest[..len].matches('\n').count();
                i += rest[..len].chars().count();
            } else {
                out.push((line, Token::Ident(word)));
            }
        } else if c == ':' && at(i + 1) == ':' {
            out.push((line, Token::Colons));
            i += 2;
        } else {
            out.push((
                line,
                match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    ',' => Token::Comma,
                    _ => Token::Other,
                },
            ));
            i += 1;
        }
    }
    out
}

/// The first segment of each path in the use tree that starts at `at`:
/// `a::b` gives `a`, `{a::b, c}` gives `a` and `c`.
fn first_segments(toks: &[(usize, Token)], at: usize) -> Vec<(usize, String)> {
    match toks.get(at) {
        Some((line, Token::Ident(name))) => vec![(*line, name.clone())],
        Some((_, Token::Open)) => {
            let (mut depth, mut expect, mut found) = (0, true, Vec::new());
            for (line, t) in &toks[at..] {
                match t {
                    Token::Open => {
                        depth += 1;
                        expect = depth == 1;
                    }
                    Token::Close => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Token::Comma if depth == 1 => expect = true,
                    Token::Ident(name) if expect && depth == 1 => {
                        found.push((*line, name.clone()));
                        expect = false;
                    }
                    _ if depth == 1 => expect = false,
                    _ => {}
                }
            }
            found
        }
        _ => Vec::new(),
    }
}

/// The top-level modules (or root items) that the source of the module
/// `module` (its path under the crate root) names through `crate::` and
/// `super::`, with their lines.
fn imports(module: &[String], text: &str) -> Vec<(usize, String)> {
    let toks = tokens(text);
    let mut found = Vec::new();
    // Inline modules open at a brace depth: (name, depth).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        let (line, tok) = &toks[i];
        match tok {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some((_, Token::Ident(name))), Some((_, Token::Open))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline.push((name.clone(), depth));
                }
            }
            Token::Ident(word)
                if word == "crate" && toks.get(i + 1).map(|t| &t.1) == Some(&Token::Colons) =>
            {
                found.extend(first_segments(&toks, i + 2));
            }
            Token::Ident(word) if word == "super" => {
                // Only the first `super` of a chain starts a path.
                let after_colons = i >= 1 && toks[i - 1].1 == Token::Colons;
                if !after_colons {
                    let mut here: Vec<String> = module.to_vec();
                    here.extend(inline.iter().map(|(name, _)| name.clone()));
                    let mut j = i;
                    while matches!(&toks.get(j).map(|t| &t.1), Some(Token::Ident(w)) if w == "super")
                        && toks.get(j + 1).map(|t| &t.1) == Some(&Token::Colons)
                    {
                        here.pop();
                        j += 2;
                    }
                    match here.first() {
                        Some(top) => found.push((*line, top.clone())),
                        None => found.extend(first_segments(&toks, j)),
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The module path of a file under `src/`: `run/session.rs` is
/// `[run, session]`, `run/mod.rs` is `[run]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Every import of `file` (relative to `src/`) that breaks the floors.
fn violations(file: &Path, text: &str) -> Vec<Violation> {
    let module = module_path(file);
    let Some(from) = module
        .first()
        .filter(|m| !matches!(m.as_str(), "lib" | "main"))
    else {
        return Vec::new(); // The crate root may use everything.
    };
    let from_floor = floor(from).unwrap_or_else(|| {
        panic!(
            "src/{}: module '{from}' has no floor in FLOORS",
            file.display()
        )
    });
    imports(&module, text)
        .into_iter()
        .filter(|(_, to)| to != from && !ROOT_ITEMS.contains(&to.as_str()))
        .filter(|(_, to)| !matches!(to.as_str(), "self" | "super" | "*"))
        .filter(|(_, to)| floor(to).is_none_or(|f| f > from_floor))
        .map(|(line, to)| Violation {
            file: format!("src/{}", file.display()),
            line,
            from: from.clone(),
            to,
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_import_points_to_its_own_floor_or_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 50, "read {} files", files.len());
    let mut found = BTreeSet::new();
    let mut paths = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let relative = path.strip_prefix(&src).unwrap();
        paths += imports(&module_path(relative), &text).len();
        found.extend(violations(relative, &text));
    }
    assert!(paths > 300, "only {paths} crate:: and super:: paths read");
    let shown: Vec<String> = found
        .iter()
        .map(|v| format!("{}:{}: {} imports {}", v.file, v.line, v.from, v.to))
        .collect();
    assert!(
        shown.is_empty(),
        "imports that point up (floors, bottom first: {FLOORS:?}):\n{}",
        shown.join("\n")
    );
}

/// The checker itself: each form of path it must see, planted in a file.
#[test]
fn the_checker_finds_each_form_of_a_wrong_import() {
    let check = |file: &str, text: &str| -> Vec<String> {
        violations(Path::new(file), text)
            .into_iter()
            .map(|v| format!("{}:{}", v.line, v.to))
            .collect()
    };
    assert_eq!(
        check("scenario/mod.rs", "use crate::broker::Endpoint;"),
        ["1:broker"]
    );
    assert_eq!(
        check(
            "scenario/file.rs",
            "use crate::{kind::BrokerKind,\n env::Placed};"
        ),
        ["2:env"]
    );
    assert_eq!(
        check("broker/mod.rs", "pub use crate::env::local;"),
        ["1:env"]
    );
    assert_eq!(
        check(
            "run/session.rs",
            "fn f() { let x = crate::report::table::latency(1); }"
        ),
        ["1:report"]
    );
    assert_eq!(
        check("metrics/mod.rs", "use crate::run::Progress;"),
        ["1:run"]
    );
    // super:: from a top-level file reaches the root, then the module named.
    assert_eq!(check("results.rs", "use super::run::Progress;"), ["1:run"]);
    // Inside an inline module, super:: is the file's own module.
    assert!(check(
        "scenario/mod.rs",
        "mod tests { use super::*; use super::super::kind::X; }"
    )
    .is_empty());
    // Comments, strings and doc links are not imports.
    assert!(check(
        "scenario/mod.rs",
        "//! see [`crate::run`]\n/* crate::run */ const S: &str = \"crate::run\"; const R: &str = r#\"crate::report\"#; fn f<'a>(c: char) { let _ = '\"'; }"
    )
    .is_empty());
    // Down, and the root's exit codes, are fine.
    assert!(check(
        "run/mod.rs",
        "use crate::results::Results; use crate::exit;"
    )
    .is_empty());
}
