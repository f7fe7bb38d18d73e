//! The module graph holds to docs/ARCHITECTURE.md: every top-level library
//! module stands in the layer the document's `layers` block names, no import
//! points up a layer, and no two top-level modules import each other through
//! any path. Read from the sources (`crate::…` paths outside comments and
//! test-only modules), so the drawing and the code cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The layers, top first, as docs/ARCHITECTURE.md's `layers` block lists
/// them (the `cli` line names the binary, which the library cannot import).
fn layers() -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md");
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/ARCHITECTURE.md has a ```layers block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("cli:"))
        .map(|l| {
            let (name, modules) = l.split_once(':').expect("`layer: modules` lines");
            let modules = modules.split_whitespace().map(str::to_owned).collect();
            (name.trim().to_owned(), modules)
        })
        .collect()
}

/// The library's top-level modules, from `src/lib.rs`.
fn lib_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(Path::new(ROOT).join("src/lib.rs")).expect("src/lib.rs");
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// Every `.rs` file of a module, without those only tests compile
/// (`#[cfg(test)] mod x;` in the parent).
fn module_files(module: &str) -> Vec<PathBuf> {
    let src = Path::new(ROOT).join("src");
    let file = src.join(format!("{module}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let test_only = test_only_children(&dir);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            if test_only.contains(&stem) {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The child modules a directory's `mod.rs` declares under `#[cfg(test)]`.
fn test_only_children(dir: &Path) -> BTreeSet<String> {
    let Ok(text) = std::fs::read_to_string(dir.join("mod.rs")) else {
        return BTreeSet::new();
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| {
            let l = w[1].strip_prefix("pub ").unwrap_or(w[1]);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// The top-level modules a file names through `crate::`, outside comments
/// and an inline `#[cfg(test)] mod tests { … }` (which ends the file).
fn imports(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).expect("source file");
    let code = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    let code: String = code
        .lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::X, b, c::{…}}`: the first segment after each
            // top-level comma.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_lowercase() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn modules_stand_in_their_layers_and_import_downwards_without_cycles() {
    let layers = layers();
    let modules = lib_modules();
    let mut layer_of: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (name, members)) in layers.iter().enumerate() {
        for m in members {
            assert!(
                layer_of.insert(m.clone(), i).is_none(),
                "docs/ARCHITECTURE.md puts `{m}` in two layers (the second: {name})"
            );
        }
    }
    let named: BTreeSet<String> = layer_of.keys().cloned().collect();
    assert_eq!(
        named, modules,
        "the layers block of docs/ARCHITECTURE.md and the modules of src/lib.rs differ"
    );

    // Edges between top-level modules, with one file that makes each.
    let mut edges: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for module in &modules {
        for file in module_files(module) {
            for target in imports(&file) {
                if &target == module || !modules.contains(&target) {
                    continue;
                }
                if layer_of[&target] < layer_of[module] {
                    wrong.push(format!(
                        "{} ({module}, layer {}) imports `{target}` from the layer above ({})",
                        file.strip_prefix(ROOT).unwrap_or(&file).display(),
                        layers[layer_of[module]].0,
                        layers[layer_of[&target]].0,
                    ));
                }
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_insert(file.clone());
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
    // The graph must have edges at all, or the parsing above is broken and
    // the check could not fail.
    assert!(
        edges.get("restore").is_some_and(|e| e.contains_key("repo")),
        "no edge restore -> repo found: the import scan is broken"
    );

    // A cycle: depth-first search, reporting the path.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        if let Some(cycle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let file = &edges[&w[0]][&w[1]];
                    format!(
                        "{} -> {} ({})",
                        w[0],
                        w[1],
                        file.strip_prefix(ROOT).unwrap_or(file).display()
                    )
                })
                .collect();
            panic!("a cycle between top-level modules:\n{}", steps.join("\n"));
        }
    }
}

#[test]
fn the_import_scan_sees_grouped_and_plain_paths_but_not_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("x.rs");
    std::fs::write(
        &file,
        "use crate::{repo::{A, B}, ship, wal::Lsn};\n\
         // crate::sidecar is only mentioned\n\
         fn f() { crate::pg::find(); } // crate::alert too\n\
         #[cfg(test)]\nmod tests {\n    use crate::health;\n}\n",
    )
    .expect("write");
    let got: Vec<String> = imports(&file).into_iter().collect();
    assert_eq!(got, ["pg", "repo", "ship", "wal"]);
}
