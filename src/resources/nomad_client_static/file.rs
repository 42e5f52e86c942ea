//! A client's configuration file as bytes: its servers lists found and replaced without
//! decoding the file (every other byte, UTF-8 or not, stays exactly as it was), and where
//! the file's original is kept on the client.

use std::ops::Range;

use crate::circleci::nomad_user_data as ud;

/// Added to the configuration file's path: the copy of the file as it was before this
/// resource first touched it, next to it on the client (mode 0600). Not `*.hcl`, so an
/// agent started with `-config DIR` does not load it.
pub(super) const KEPT_SUFFIX: &str = ".circleci-original";

pub(super) fn kept_path(config: &str) -> String {
    format!("{config}{KEPT_SUFFIX}")
}

/// One servers list in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct List {
    /// Byte range of the list, brackets included.
    pub span: Range<usize>,
    /// Its items, as `ud::find` reads them.
    pub items: Vec<String>,
}

/// Every servers list in `bytes`, in file order. The parser reads text: it is given
/// `bytes` with each non-ASCII byte replaced by one ASCII control character (SUB) that
/// means nothing in HCL, so that its offsets are offsets into `bytes`. HCL's syntax is
/// ASCII; other bytes can only be inside strings and comments, whatever the encoding.
pub(super) fn lists(bytes: &[u8]) -> Result<Vec<List>, ud::NotFound> {
    let masked: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii() {
                char::from(b)
            } else {
                '\u{1a}'
            }
        })
        .collect();
    let mut found: Vec<List> = ud::find(&masked)?
        .into_iter()
        .map(|l| {
            let raw = &bytes[l.span.clone()];
            let items = if raw.is_ascii() {
                l.items
            } else {
                items_of(raw)
            };
            List {
                span: l.span,
                items,
            }
        })
        .collect();
    // In file order, each list once (a `client {` nested in another is found twice).
    found.sort_by_key(|l| l.span.start);
    let mut out: Vec<List> = Vec::with_capacity(found.len());
    for l in found {
        if out.last().is_none_or(|p| l.span.start >= p.span.end) {
            out.push(l);
        }
    }
    Ok(out)
}

/// The items of a list holding non-ASCII bytes: the list alone, decoded (invalid UTF-8
/// as U+FFFD: only what the state records, never what is written), read as a servers list.
fn items_of(raw: &[u8]) -> Vec<String> {
    let text = format!(
        "client {{\nservers = {}\n}}\n",
        String::from_utf8_lossy(raw)
    );
    ud::find(&text)
        .ok()
        .and_then(|l| l.into_iter().next())
        .map(|l| l.items)
        .unwrap_or_default()
}

/// `bytes` with the `i`-th of `lists` (from [`lists`] on these bytes) replaced by
/// `with(i)`; every other byte kept.
pub(super) fn splice(bytes: &[u8], lists: &[List], with: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    for (i, l) in lists.iter().enumerate() {
        out.extend_from_slice(&bytes[at..l.span.start]);
        out.extend(with(i));
        at = l.span.end;
    }
    out.extend_from_slice(&bytes[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &[u8] = b"# \xe9t\xe9 \xff\nclient {\n  server_join {\n    retry_join = [ \"b:4647\" ] # caf\xe9\n  }\n  servers = [\"a:4647\"]\n}\n";

    #[test]
    fn lists_are_found_in_bytes_in_file_order() {
        let l = lists(FILE).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(&FILE[l[0].span.clone()], b"[ \"b:4647\" ]");
        assert_eq!(l[0].items, ["b:4647"]);
        assert_eq!(&FILE[l[1].span.clone()], b"[\"a:4647\"]");
        assert_eq!(l[1].items, ["a:4647"]);
    }

    #[test]
    fn splicing_keeps_every_other_byte() {
        let l = lists(FILE).unwrap();
        let new = splice(FILE, &l, |_| b"[\"n:4647\"]".to_vec());
        assert_eq!(
            new,
            b"# \xe9t\xe9 \xff\nclient {\n  server_join {\n    retry_join = [\"n:4647\"] # caf\xe9\n  }\n  servers = [\"n:4647\"]\n}\n"
        );
        // Each list back to its own original.
        let nl = lists(&new).unwrap();
        assert_eq!(
            splice(&new, &nl, |i| FILE[l[i].span.clone()].to_vec()),
            FILE
        );
    }

    #[test]
    fn items_with_other_bytes_are_read_as_text() {
        let f = "client {\n  servers = [\"n\u{e9}:4647\", # \u{e9}\n  ]\n}\n";
        assert_eq!(lists(f.as_bytes()).unwrap()[0].items, ["n\u{e9}:4647"]);
        assert!(lists(b"client {\n  enabled = true\n}\n").is_err());
    }
}
