//! Structure facts of the crate, kept true by test: the top-level modules of
//! `src/` import each other without a cycle (the layering in `src/lib.rs`),
//! the binaries only parse arguments and print, and no function grows past
//! what one reader can hold.
//!
//! These read the source as rustfmt leaves it; they are a tripwire for
//! review, not a parser.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LONGEST_FUNCTION: usize = 120;
const LONGEST_BINARY: usize = 300;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules declared in `lib.rs`, with their files.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(name) = line
            .trim()
            .strip_prefix("pub mod ")
            .or_else(|| line.trim().strip_prefix("mod "))
            .and_then(|rest| rest.strip_suffix(';'))
        else {
            continue;
        };
        let mut files = Vec::new();
        let file = src().join(format!("{name}.rs"));
        if file.exists() {
            files.push(file);
        }
        let dir = src().join(name);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        assert!(!files.is_empty(), "module {name} has no file");
        out.insert(name.to_string(), files);
    }
    out
}

/// Which top-level modules `text` names through `crate::`.
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            // `crate::{a, b::c}` names every group member.
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap_or(""))
                    .collect()
            } else {
                vec![rest
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
                    .unwrap_or("")]
            };
            for n in names {
                if modules.contains(n) {
                    found.insert(n.to_string());
                }
            }
        }
    }
    found
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let modules = modules();
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    assert!(names.len() > 10, "lib.rs lists too few modules: {names:?}");
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (name, files) in &modules {
        let mut to = BTreeSet::new();
        for f in files {
            to.extend(imports(&std::fs::read_to_string(f).unwrap(), &names));
        }
        to.remove(name);
        edges.insert(name, to);
    }
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<&str, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        stack.push(n);
        for m in &edges[n] {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| *s == m).unwrap();
                    let mut cycle: Vec<String> =
                        stack[from..].iter().map(|s| s.to_string()).collect();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(n, &edges, &mut state, &mut Vec::new()) {
                panic!(
                    "import cycle between modules of src/: {}",
                    cycle.join(" -> ")
                );
            }
        }
    }
}

#[test]
fn the_import_scan_sees_grouped_and_nested_paths() {
    let names: BTreeSet<String> = ["pins", "alert", "verify"].map(String::from).into();
    let text = "use crate::{pins::PinSet, alert};\n// crate::verify in a comment\nlet x = crate::verify::f();\n";
    let found = imports(text, &names);
    assert_eq!(found, ["alert", "pins", "verify"].map(String::from).into());
    assert!(imports("// only crate::verify\n", &names).is_empty());
}

/// `(length, first line, name)` of every function body in `text`, as
/// rustfmt lays it out: from the `fn` line to the `}` at its indentation.
fn functions(text: &str) -> Vec<(usize, usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let header = [
            "pub fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) async fn ",
            "const fn ",
            "pub const fn ",
        ]
        .iter()
        .find_map(|p| trimmed.strip_prefix(p));
        let Some(rest) = header else { continue };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // Where the body opens; a declaration (trait method) has none.
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';') || l.ends_with('}')
        }) else {
            continue;
        };
        let opened = lines[open].trim_end();
        if opened.ends_with(';') {
            continue;
        }
        if opened.ends_with('}') {
            out.push((open - i + 1, i + 1, name));
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j] == close) {
            out.push((end - i + 1, i + 1, name));
        }
    }
    out
}

#[test]
fn no_function_in_src_is_longer_than_a_reader_can_hold() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut too_long = Vec::new();
    let mut counted = 0;
    for f in &files {
        for (len, line, name) in functions(&std::fs::read_to_string(f).unwrap()) {
            counted += 1;
            if len >= LONGEST_FUNCTION {
                too_long.push(format!("{}:{line} {name} ({len} lines)", f.display()));
            }
        }
    }
    assert!(counted > 500, "the scan found only {counted} functions");
    assert!(
        too_long.is_empty(),
        "functions of {LONGEST_FUNCTION} lines or more:\n{}",
        too_long.join("\n")
    );
}

#[test]
fn the_function_scan_measures_bodies() {
    let text = "fn one() {}\n\nimpl X {\n    pub fn two(\n        a: u8,\n    ) -> u8 {\n        a\n    }\n\n    fn decl(&self);\n}\n";
    let f = functions(text);
    assert_eq!(
        f,
        vec![(1, 1, "one".to_string()), (5, 4, "two".to_string())]
    );
}

#[test]
fn binaries_only_parse_call_and_print() {
    for entry in std::fs::read_dir(src().join("bin")).unwrap() {
        let path = entry.unwrap().path();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(
            lines < LONGEST_BINARY,
            "{} has {lines} lines: workflows belong in the library",
            path.display()
        );
    }
}
