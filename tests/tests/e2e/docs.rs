//! The book (`docs/`) against what it documents: every chapter reachable and every internal link
//! landing on a file and heading that exist; the configuration reference naming every `HERALD_*`
//! variable the binaries take and no other; every route of the OpenAPI document in the API
//! reference; every metric family of the registry in the metrics reference. (`scripts/book.sh`,
//! run by `scripts/test.sh`, builds it with mdBook.)

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use herald_harness::{Stack, target_bin, workspace_root};
use reqwest::Method;

fn book() -> PathBuf {
    workspace_root().join("docs/src")
}

fn chapter(name: &str) -> String {
    std::fs::read_to_string(book().join(name)).unwrap_or_else(|e| panic!("docs/src/{name}: {e}"))
}

/// Markdown outside fenced code blocks, line by line with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((n + 1, line));
        }
    }
    out
}

/// The targets of `[text](target)` links on a line.
fn links(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        match after.find(')') {
            Some(end) => {
                out.push(after[..end].to_owned());
                rest = &after[end..];
            }
            None => break,
        }
    }
    out
}

/// The ids mdBook gives a chapter's headings: lower case, spaces as `-`, only alphanumerics,
/// `-` and `_` kept.
fn heading_ids(text: &str) -> BTreeSet<String> {
    prose(text)
        .into_iter()
        .filter_map(|(_, line)| line.strip_prefix('#').map(|h| h.trim_start_matches('#').trim()))
        .map(|heading| {
            heading
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// Every broken internal link in `file` (a path relative to `base`).
fn broken_links(file: &Path, base: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut broken = Vec::new();
    for (n, line) in prose(&text) {
        for target in links(line) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let landed = if path.is_empty() { file.to_path_buf() } else { base.join(path) };
            if !landed.exists() {
                broken.push(format!("{}:{n}: {target} (no such file)", file.display()));
            } else if !anchor.is_empty() {
                let ids = heading_ids(&std::fs::read_to_string(&landed).unwrap_or_default());
                if !ids.contains(anchor) {
                    broken.push(format!("{}:{n}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    broken
}

#[test]
fn every_chapter_is_in_the_summary_and_every_internal_link_lands() {
    let summary = chapter("SUMMARY.md");
    let listed: BTreeSet<String> = prose(&summary).into_iter().flat_map(|(_, l)| links(l)).collect();
    let mut chapters = BTreeSet::new();
    let mut broken = Vec::new();
    for entry in std::fs::read_dir(book()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name != "SUMMARY.md" {
                chapters.insert(name);
            }
            broken.extend(broken_links(&path, &book()));
        }
    }
    assert!(chapters.len() >= 30, "{} chapters", chapters.len());
    let unlisted: Vec<_> = chapters.difference(&listed).collect();
    assert!(unlisted.is_empty(), "chapters missing from SUMMARY.md: {unlisted:?}");
    let missing: Vec<_> = listed.difference(&chapters).collect();
    assert!(missing.is_empty(), "SUMMARY.md lists chapters that do not exist: {missing:?}");
    let root = workspace_root();
    broken.extend(broken_links(&root.join("README.md"), &root));
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.lines().count() <= 250, "the README has {} lines", readme.lines().count());
}

/// The `HERALD_*` variables `bin` takes, from `--help` of it and of each of its subcommands.
fn variables_of(bin: &Path, args: &mut Vec<String>, found: &mut BTreeSet<String>) {
    let out = Command::new(bin).args(args.iter()).arg("--help").output().expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut rest = help.as_str();
    while let Some(at) = rest.find("[env: ") {
        let name: String =
            rest[at + 6..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        found.insert(name);
        rest = &rest[at + 6..];
    }
    let mut commands = false;
    let mut subcommands = Vec::new();
    for line in help.lines() {
        if line.starts_with("Commands:") {
            commands = true;
        } else if commands && line.starts_with("  ") && !line.starts_with("   ") {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                subcommands.push(name.to_owned());
            }
        } else if commands && !line.starts_with(' ') {
            commands = false;
        }
    }
    for sub in subcommands {
        args.push(sub);
        variables_of(bin, args, found);
        args.pop();
    }
}

/// Variables read outside the command line parser: the log filter and format (each binary's
/// `tracing` set-up) and heraldctl's profiles file.
const READ_DIRECTLY: &[&str] = &["HERALD_LOG", "HERALD_LOG_FORMAT", "HERALD_PROFILES_FILE"];

#[test]
fn the_configuration_reference_names_every_variable_the_binaries_take_and_no_other() {
    let mut taken: BTreeSet<String> = READ_DIRECTLY.iter().map(|s| s.to_string()).collect();
    for bin in ["herald-gateway", "herald-dispatcher", "heraldctl"] {
        variables_of(&target_bin(bin), &mut Vec::new(), &mut taken);
    }
    assert!(taken.len() > 40, "{taken:?}");
    let reference = chapter("configuration.md");
    let mut documented = BTreeSet::new();
    let mut rest = reference.as_str();
    while let Some(at) = rest.find("HERALD_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect::<String>()
            .trim_end_matches('_')
            .to_owned();
        // `HERALD_*_MAX_AGE` stands for a family the table lists one by one.
        if name != "HERALD" {
            documented.insert(name);
        }
        rest = &rest[at + 7..];
    }
    let undocumented: Vec<_> = taken.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&taken).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/src/configuration.md lacks {undocumented:?} and names {stale:?}, which no binary takes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_openapi_document_is_in_the_api_reference() {
    let stack = Stack::gateway_only().await;
    let (status, _, doc) = stack.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    let reference = chapter("api.md");
    let mut missing = Vec::new();
    let mut routes = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            routes += 1;
            let method = method.to_uppercase();
            // The path in code, ending there (so `/v1/subscriptions` is not found in
            // `/v1/subscriptions/{id}`), on a line that names the method.
            let found = reference.lines().any(|line| {
                line.contains(&method)
                    && line
                        .match_indices(path.as_str())
                        .any(|(at, _)| matches!(line[at + path.len()..].chars().next(), Some('`' | ' ' | '?' | ',')))
            });
            if !found {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(routes > 30, "{routes} routes");
    assert!(missing.is_empty(), "routes missing from docs/src/api.md: {missing:?}");
}

#[test]
fn every_metric_family_is_in_the_metrics_reference_and_none_that_is_gone() {
    let families: HashMap<String, &str> =
        herald_core::metrics::families().into_iter().map(|(name, kind)| (name.to_owned(), kind)).collect();
    assert!(families.len() > 20, "{families:?}");
    let reference = chapter("metrics.md");
    let documented: BTreeSet<String> = reference
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    let names: BTreeSet<String> = families.keys().cloned().collect();
    let undocumented: Vec<_> = names.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&names).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/src/metrics.md lacks {undocumented:?} and lists {stale:?}, which the registry does not have"
    );
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_holds_more_than_700_lines() {
    let root = workspace_root();
    let mut files = Vec::new();
    sources(&root.join("crates"), &mut files);
    sources(&root.join("tests/src"), &mut files);
    assert!(files.len() > 100, "{} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > 700).then(|| format!("{} ({lines} lines)", f.strip_prefix(&root).unwrap().display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}

/// What a shell block of the book may be marked with instead of being run here (```` ```sh,ci ````):
/// `ci`, commands `scripts/test.sh` itself runs (the demo) or is; `synopsis`, a summary of a
/// command's forms, with placeholders; `long-running`, the benchmark; `needs-cluster`, commands
/// for Kubernetes or a NATS cluster.
const MARKS: &[&str] = &["ci", "synopsis", "long-running", "needs-cluster"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_shell_samples_run_against_a_running_herald() {
    let stack = Stack::start().await;
    let bin_dir = target_bin("heraldctl").parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let (mut ran, mut marked) = (0, 0);
    let mut names: Vec<_> = std::fs::read_dir(book()).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for file in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut block: Option<(String, Vec<&str>)> = None;
        for line in text.lines() {
            match (&mut block, line.strip_prefix("```")) {
                (None, Some(info)) if !info.is_empty() => {
                    let mut parts = info.split(',');
                    let language = parts.next().unwrap_or_default();
                    let marks: Vec<&str> = parts.collect();
                    for mark in &marks {
                        assert!(MARKS.contains(mark), "{}: unknown mark {mark:?}", file.display());
                    }
                    if matches!(language, "sh" | "bash") {
                        block = Some((String::new(), marks));
                    } else {
                        block = Some(("-".into(), vec!["not-shell"]));
                    }
                }
                (None, Some(_)) => block = Some(("-".into(), vec!["not-shell"])),
                (Some((code, marks)), Some("")) => {
                    if marks.contains(&"not-shell") {
                        // Not a shell sample: JSON, a request, code in another language.
                    } else if !marks.is_empty() {
                        marked += 1;
                    } else {
                        let out = tokio::process::Command::new("bash")
                            .args(["-euo", "pipefail", "-c", code.as_str()])
                            .current_dir(workspace_root())
                            .env("PATH", &path)
                            .env("HERALD_URL", &stack.gateway)
                            .env("HERALD_TOKEN", herald_harness::ADMIN_TOKEN)
                            .env("ACME_TOKEN", "test-acme-token-0123456789")
                            .output()
                            .await
                            .unwrap();
                        assert!(
                            out.status.success(),
                            "{}: this sample failed:\n{code}\nstdout: {}\nstderr: {}",
                            file.display(),
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        );
                        ran += 1;
                    }
                    block = None;
                }
                (Some((code, _)), None) => {
                    code.push_str(line);
                    code.push('\n');
                }
                (Some(_), Some(_)) => panic!("{}: a fence inside a code block: {line}", file.display()),
                (None, None) => {}
            }
        }
        assert!(block.is_none(), "{}: a code block is not closed", file.display());
    }
    assert!(ran >= 6 && marked >= 3, "{ran} samples ran, {marked} marked");
}
