//! The I/O around [`super::stream`]: files, directories (recursively: `*.yaml`, `*.yml`,
//! `*.json`) and standard input in; standard output or the files themselves out. Everything is
//! read and rewritten before anything is written: one bad document writes nothing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::object::{Edit, Problem};
use super::stream::{self, Format, Seen};
use crate::error::{Error, Result};

/// One input.
#[derive(Debug, Clone)]
pub struct Source {
    /// `None`: standard input.
    pub path: Option<PathBuf>,
    pub text: String,
    pub format: Format,
}

impl Source {
    pub fn name(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "<stdin>".to_string(), |p| p.display().to_string())
    }
}

fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
        _ => Format::Yaml,
    }
}

fn is_manifest(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["yaml", "yml", "json"]
            .iter()
            .any(|m| e.eq_ignore_ascii_case(m))
    })
}

/// Manifest files under `dir`, in name order.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(dir, e))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_manifest(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Reads the inputs: no path or `-` is standard input.
pub fn read(paths: &[PathBuf], stdin: &mut dyn Read) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    let stdin_only = [PathBuf::from("-")];
    let paths = if paths.is_empty() {
        &stdin_only[..]
    } else {
        paths
    };
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|e| Error::io("<stdin>", e))?;
            let format = if text.trim_start().starts_with('{') {
                Format::Json
            } else {
                Format::Yaml
            };
            sources.push(Source {
                path: None,
                text,
                format,
            });
            continue;
        }
        let mut files = Vec::new();
        if p.is_dir() {
            walk(p, &mut files)?;
        } else {
            files.push(p.clone());
        }
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
            sources.push(Source {
                format: format_of(&f),
                path: Some(f),
                text,
            });
        }
    }
    Ok(sources)
}

/// Rewrites every source; `Err` lists every problem found, one per line.
pub fn rewrite_all<'s>(
    sources: &'s [Source],
    rewrite: &dyn Fn(&mut Value) -> std::result::Result<Edit, Problem>,
) -> Result<Vec<(stream::Output, &'s Source)>> {
    let mut seen = Seen::new();
    for s in sources {
        stream::collect_identities(&s.text, s.format, &mut seen);
    }
    let mut outputs = Vec::new();
    let mut errors = Vec::new();
    for s in sources {
        match stream::rewrite(&s.name(), &s.text, s.format, rewrite, &mut seen) {
            Ok(o) => outputs.push((o, s)),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(outputs)
    } else {
        Err(Error::Manifests(errors.join("\n")))
    }
}

/// Writes the results: to `stdout` (sources joined as one YAML stream), or each changed file in
/// place (through a temporary file renamed over it).
pub fn write(
    outputs: &[(stream::Output, &Source)],
    in_place: bool,
    stdout: &mut dyn Write,
) -> Result<()> {
    for (o, _) in outputs {
        for w in &o.warnings {
            eprintln!("warning: {w}");
        }
    }
    if in_place {
        for (o, s) in outputs {
            let Some(path) = &s.path else {
                return Err(Error::Config(
                    "--in-place needs file or directory paths, not standard input".into(),
                ));
            };
            if !o.changed {
                continue;
            }
            let mut tmp = path.clone().into_os_string();
            tmp.push(".inject-tmp");
            let tmp = PathBuf::from(tmp);
            std::fs::write(&tmp, &o.text).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        }
        return Ok(());
    }
    let mut all = String::new();
    for (o, _) in outputs {
        if !all.is_empty() {
            if !all.ends_with('\n') {
                all.push('\n');
            }
            if !o.text.trim_start().starts_with("---") {
                all.push_str("---\n");
            }
        }
        all.push_str(&o.text);
    }
    stdout
        .write_all(all.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("<stdout>", e))
}
