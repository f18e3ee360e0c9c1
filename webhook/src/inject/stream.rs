//! Manifests as text: YAML streams (multi-document, `kind: List`) and JSON files. Documents
//! that are not changed are written back exactly as read; changed ones are re-emitted with their
//! keys in their original order (comments before the document are kept, those inside are not).

use std::collections::BTreeSet;

use serde_json::Value;

use super::object::{self, Edit, Problem, describe};

/// How a source is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// Per-object rewrite: [`object::inject`] or [`object::uninject`].
pub type Rewrite<'a> = dyn Fn(&mut Value) -> Result<Edit, Problem> + 'a;

/// Identities of the objects already in the input, so generated ones are emitted once.
pub type Seen = BTreeSet<(String, String, String, String)>;

/// One rewritten source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub text: String,
    pub changed: bool,
    pub warnings: Vec<String>,
}

/// Splits a YAML stream before each `---` line; the first piece may hold no document.
pub fn split_documents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_end_matches(['\n', '\r']);
        let marker = l == "---" || l.starts_with("--- ") || l.starts_with("---\t");
        if marker && pos > start {
            out.push(&text[start..pos]);
            start = pos;
        }
        pos += line.len();
    }
    if start < text.len() || out.is_empty() {
        out.push(&text[start..]);
    }
    out
}

/// The lines before a document's content that are kept when it is re-emitted: its `---` line,
/// blank lines and comments.
fn header(chunk: &str) -> &str {
    let mut end = 0;
    for line in chunk.split_inclusive('\n') {
        let t = line.trim();
        let marker = t == "---";
        if marker || t.is_empty() || t.starts_with('#') {
            end += line.len();
        } else {
            break;
        }
    }
    &chunk[..end]
}

/// Whether a document indents sequence items under their key (`key:\n  - a`) rather than at
/// its level (`key:\n- a`), so a re-emitted document keeps its style (and its diff small).
pub fn indents_sequences(chunk: &str) -> bool {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = chunk
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    lines.windows(2).any(|w| {
        w[0].trim_end().ends_with(':')
            && w[1].trim_start().starts_with("- ")
            && indent(w[1]) > indent(w[0])
    })
}

fn to_yaml(v: &Value, indent_sequences: bool) -> Result<String, String> {
    let mut opts = serde_saphyr::SerializerOptions::default();
    opts.compact_list_indent = !indent_sequences;
    let mut s = serde_saphyr::to_string_with_options(v, opts)
        .map_err(|e| format!("cannot write YAML: {e}"))?;
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// Rewrites every object of a document (the items of a `List`).
fn rewrite_document(
    doc: &mut Value,
    rewrite: &Rewrite<'_>,
    seen: &mut Seen,
    at: &str,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Edit {
    let located = |obj: &Value, p: &Problem, prefix: &str| {
        let what = describe(obj);
        match p.field.as_str() {
            "" => format!("{at}{prefix} ({what}): {}", p.message),
            f => format!("{at}{prefix} ({what}): {f}: {}", p.message),
        }
    };
    let is_list = doc.get("kind").and_then(Value::as_str) == Some("List")
        && doc.get("items").is_some_and(Value::is_array);
    let mut total = Edit::default();
    if is_list {
        let items = doc["items"]
            .as_array_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(items.len());
        for (i, mut item) in items.into_iter().enumerate() {
            let prefix = format!(" items[{i}]");
            match rewrite(&mut item) {
                Err(p) => errors.push(located(&item, &p, &prefix)),
                Ok(e) => {
                    warnings.extend(e.warnings.iter().map(|w| located(&item, w, &prefix)));
                    total.changed |= e.changed;
                    if !e.dropped {
                        out.push(item);
                    }
                    for x in e.extra {
                        if seen.insert(object::identity(&x)) {
                            total.changed = true;
                            out.push(x);
                        }
                    }
                }
            }
        }
        doc["items"] = Value::Array(out);
        return total;
    }
    match rewrite(doc) {
        Err(p) => {
            errors.push(located(doc, &p, ""));
            total
        }
        Ok(mut e) => {
            warnings.extend(e.warnings.iter().map(|w| located(doc, w, "")));
            e.extra.retain(|x| seen.insert(object::identity(x)));
            e
        }
    }
}

/// Identities of every object in a source (and in its Lists).
pub fn collect_identities(text: &str, format: Format, seen: &mut Seen) {
    let mut add = |v: &Value| {
        if let Some(items) = v.get("items").and_then(Value::as_array) {
            items.iter().for_each(|i| {
                seen.insert(object::identity(i));
            });
        }
        seen.insert(object::identity(v));
    };
    match format {
        Format::Json => {
            if let Ok(v) = serde_json::from_str::<Value>(text) {
                add(&v);
            }
        }
        Format::Yaml => {
            for chunk in split_documents(text) {
                if let Ok(v) = serde_saphyr::from_str::<Value>(chunk) {
                    add(&v);
                }
            }
        }
    }
}

/// Rewrites one source. `name` prefixes every message; all problems are reported, and no
/// output is produced when there is any.
pub fn rewrite(
    name: &str,
    text: &str,
    format: Format,
    rewrite: &Rewrite<'_>,
    seen: &mut Seen,
) -> Result<Output, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut out = String::with_capacity(text.len() + 1024);
    let mut changed = false;
    match format {
        Format::Json => {
            let mut doc: Value = serde_json::from_str(text)
                .map_err(|e| vec![format!("{name}: not valid JSON: {e}")])?;
            let at = format!("{name}: document 1");
            let e = rewrite_document(&mut doc, rewrite, seen, &at, &mut errors, &mut warnings);
            if !e.extra.is_empty() {
                errors.push(format!(
                    "{at} ({}): --with-rbac adds objects, which a JSON file holds only in a \
                     List (kind: List, items: [...]); convert it, or use YAML",
                    describe(&doc)
                ));
            }
            if e.changed && errors.is_empty() {
                changed = true;
                let mut s = serde_json::to_string_pretty(&doc)
                    .map_err(|e| vec![format!("{at}: cannot write JSON: {e}")])?;
                s.push('\n');
                out = s;
            } else {
                out.push_str(text);
            }
        }
        Format::Yaml => {
            let mut index = 0;
            for chunk in split_documents(text) {
                let parsed = serde_saphyr::from_str::<Value>(chunk);
                let mut doc = match parsed {
                    Ok(Value::Null) => {
                        out.push_str(chunk);
                        continue;
                    }
                    Ok(v) => {
                        index += 1;
                        v
                    }
                    Err(e) => {
                        index += 1;
                        errors.push(format!("{name}: document {index}: not valid YAML: {e}"));
                        continue;
                    }
                };
                let at = format!("{name}: document {index}");
                let e = rewrite_document(&mut doc, rewrite, seen, &at, &mut errors, &mut warnings);
                if !errors.is_empty() {
                    continue;
                }
                if e.dropped {
                    changed = true;
                    continue;
                }
                let emitted = if e.changed {
                    changed = true;
                    to_yaml(&doc, indents_sequences(chunk))
                        .map(|body| format!("{}{body}", header(chunk)))
                } else {
                    Ok(chunk.to_string())
                };
                match emitted {
                    Ok(s) => out.push_str(&s),
                    Err(m) => errors.push(format!("{at}: {m}")),
                }
                for x in &e.extra {
                    changed = true;
                    if !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                    match to_yaml(x, indents_sequences(chunk)) {
                        Ok(s) => {
                            out.push_str("---\n");
                            out.push_str(&s);
                        }
                        Err(m) => errors.push(format!("{at}: {m}")),
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(Output {
            text: out,
            changed,
            warnings,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte() {
        let cases = [
            "",
            "a: 1\n",
            "---\na: 1\n---\nb: 2\n",
            "# c\na: 1\n--- # x\nb: 2\n---\n",
            "a: |\n  ---\n  x\n---\nb: 1",
        ];
        for text in cases {
            let parts = split_documents(text);
            assert_eq!(parts.concat(), text, "{text:?}");
        }
        assert_eq!(split_documents("---\na: 1\n---\nb: 2\n").len(), 2);
        // An indented `---` inside a block scalar is content.
        assert_eq!(split_documents("a: |\n  ---\n  x\n---\nb: 1").len(), 2);
    }

    #[test]
    fn sequence_style() {
        assert!(indents_sequences("a:\n  - x\n"));
        assert!(!indents_sequences("a:\n- x\n"));
        assert!(!indents_sequences("a: [x]\n"));
    }

    #[test]
    fn header_is_marker_and_comments() {
        assert_eq!(header("---\n# hi\n\na: 1\n# x\n"), "---\n# hi\n\n");
        assert_eq!(header("a: 1\n"), "");
    }
}
