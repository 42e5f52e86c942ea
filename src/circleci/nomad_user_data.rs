//! The runbook's "Nomad Clients" step as a pure function: find the Nomad servers list in
//! a Nomad client's user_data and rewrite only that list.
//!
//! CircleCI's enterprise-setup writes `/etc/nomad/config.hcl` from a heredoc in a bash
//! script. Older templates name the servers in `client { servers = [...] }`; newer ones
//! in `client { server_join { retry_join = [...] } }`. Both are found; everything else in
//! the script is left byte for byte as it was.

use std::fmt;
use std::ops::Range;

/// Where the servers list was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `client { servers = [...] }`
    Servers,
    /// `client { server_join { retry_join = [...] } }`
    RetryJoin,
}

impl Form {
    pub fn describe(self) -> &'static str {
        match self {
            Form::Servers => "client { servers = [...] }",
            Form::RetryJoin => "client { server_join { retry_join = [...] } }",
        }
    }
}

/// One servers list in the user_data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServersList {
    pub form: Form,
    /// Byte range of the list, brackets included.
    pub span: Range<usize>,
    /// 1-based line of the opening bracket.
    pub line: usize,
    /// The list's items: string literals unquoted, anything else as written.
    pub items: Vec<String>,
}

/// Why no servers list was found, and where the search looked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotFound {
    pub bytes: usize,
    pub lines: usize,
    /// 1-based lines of the `client {` blocks found (none: no client block at all).
    pub client_blocks: Vec<usize>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "looked in the decoded user_data ({} bytes, {} lines) for `{}` and for `{}`",
            self.bytes,
            self.lines,
            Form::Servers.describe(),
            Form::RetryJoin.describe()
        )?;
        if self.client_blocks.is_empty() {
            write!(f, "; there is no `client {{` block in it")
        } else {
            let lines: Vec<String> = self.client_blocks.iter().map(|l| l.to_string()).collect();
            write!(
                f,
                "; the `client {{` block at line {} has neither a servers list nor server_join.retry_join",
                lines.join(", ")
            )
        }
    }
}

/// Every servers list in the text, in order.
pub(crate) fn find(text: &str) -> Result<Vec<ServersList>, NotFound> {
    let mut found = Vec::new();
    let mut blocks = Vec::new();
    for open in client_blocks(text) {
        blocks.push(line_of(text, open));
        let Some(body) = block_body(text, open) else {
            continue;
        };
        for (name, value) in assignments(text, body.clone()) {
            if name == "servers" {
                if let Some(l) = list_at(text, value, Form::Servers) {
                    found.push(l);
                }
            }
        }
        for inner in nested_blocks(text, body, "server_join") {
            for (name, value) in assignments(text, inner) {
                if name == "retry_join" {
                    if let Some(l) = list_at(text, value, Form::RetryJoin) {
                        found.push(l);
                    }
                }
            }
        }
    }
    if found.is_empty() {
        return Err(NotFound {
            bytes: text.len(),
            lines: text.lines().count(),
            client_blocks: blocks,
        });
    }
    Ok(found)
}

/// The rewritten text and what the lists held before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub text: String,
    /// The items of the first list found.
    pub previous: Vec<String>,
    pub lists: Vec<ServersList>,
}

/// Replaces every servers list with `servers`; nothing else changes.
pub fn rewrite(text: &str, servers: &[String]) -> Result<Rewritten, NotFound> {
    let lists = find(text)?;
    let rendered = render_list(servers);
    let mut out = String::with_capacity(text.len() + rendered.len());
    let mut at = 0;
    for l in &lists {
        out.push_str(&text[at..l.span.start]);
        out.push_str(&rendered);
        at = l.span.end;
    }
    out.push_str(&text[at..]);
    Ok(Rewritten {
        text: out,
        previous: lists[0].items.clone(),
        lists,
    })
}

/// `["a:4647", "b:4647"]`
pub(crate) fn render_list(servers: &[String]) -> String {
    let items: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// Checks one entry of `nomad_servers`: `host` or `host:port`, with host a DNS name, an
/// IPv4 address or a bracketed IPv6 address. The entry lands inside a double-quoted HCL
/// string in a bash heredoc, so quotes, `$`, backslashes and spaces are refused.
pub(crate) fn check_server(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty server address".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return Err(format!("{s:?}: missing ']' after the IPv6 address"));
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{s:?}: {h:?} is not an IPv6 address"));
        }
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(format!("{s:?}: expected ':PORT' after ']'")),
            },
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if !s.starts_with('[') {
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok {
            let what = if host == s {
                format!("{s:?}")
            } else {
                format!("{s:?}: {host:?}")
            };
            return Err(format!(
                "{what} is not a host name or IPv4 address (expected e.g. nomad-1.internal:4647)"
            ));
        }
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("{s:?}: {p:?} is not a port number (1-65535)")),
        }
    }
    Ok(())
}

fn line_of(text: &str, pos: usize) -> usize {
    text[..pos].bytes().filter(|b| *b == b'\n').count() + 1
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// True when `pos` sits after a `#` or `//` comment marker on its line (outside quotes).
fn in_line_comment(text: &str, pos: usize) -> bool {
    let start = text[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let mut in_str = false;
    let b = text.as_bytes();
    let mut i = start;
    while i < pos {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'#' if !in_str => return true,
            b'/' if !in_str && b.get(i + 1) == Some(&b'/') => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Positions of the `{` of every `client {` block outside comments.
fn client_blocks(text: &str) -> Vec<usize> {
    keyword_blocks(text, 0..text.len(), "client")
}

/// Positions of `{` of `<word> {` occurrences in `range`.
fn keyword_blocks(text: &str, range: Range<usize>, word: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut from = range.start;
    while let Some(i) = text[from..range.end].find(word).map(|i| i + from) {
        from = i + word.len();
        let before_ok = i == 0 || !is_ident(b[i - 1]);
        let after = i + word.len();
        if !before_ok || after >= range.end || is_ident(b[after]) {
            continue;
        }
        let mut j = after;
        while j < range.end && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < range.end && b[j] == b'{' && !in_line_comment(text, i) {
            out.push(j);
        }
    }
    out
}

/// Scans HCL from `from` (just after an opening bracket) to its matching closer, minding
/// strings and comments. Returns the closer's position.
fn matching(text: &str, from: usize, open: u8, close: u8) -> Option<usize> {
    let b = text.as_bytes();
    let mut depth = 1usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'"' => i = skip_string(b, i)?,
            b'#' => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'/') => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..].find("*/").map(|e| i + 2 + e + 1)?;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// From an opening quote, the position of the closing quote.
fn skip_string(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'"' => return Some(i),
            b'\n' => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

fn skip_line(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() && b[i] != b'\n' {
        i += 1;
    }
    i
}

/// The byte range inside the braces of the block whose `{` is at `open`.
fn block_body(text: &str, open: usize) -> Option<Range<usize>> {
    matching(text, open + 1, b'{', b'}').map(|close| open + 1..close)
}

/// Bodies of `<word> { ... }` blocks directly inside `body`.
fn nested_blocks(text: &str, body: Range<usize>, word: &str) -> Vec<Range<usize>> {
    keyword_blocks(text, body.clone(), word)
        .into_iter()
        .filter(|open| depth_at(text, body.start, *open) == 0)
        .filter_map(|open| block_body(text, open))
        .collect()
}

/// Bracket depth at `pos`, counting from `start` (strings and comments skipped).
fn depth_at(text: &str, start: usize, pos: usize) -> usize {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = start;
    while i < pos {
        match b[i] {
            b'"' => match skip_string(b, i) {
                Some(e) => i = e,
                None => return usize::MAX,
            },
            b'#' => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'/') => i = skip_line(b, i),
            b'{' | b'[' | b'(' => depth += 1,
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    depth
}

/// `name = <value start>` pairs directly inside `body` (not in nested blocks).
fn assignments(text: &str, body: Range<usize>) -> Vec<(String, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut i = body.start;
    while i < body.end {
        match b[i] {
            b'"' => match skip_string(b, i) {
                Some(e) => i = e,
                None => return out,
            },
            b'#' => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'/') => i = skip_line(b, i),
            b'{' | b'[' | b'(' => depth += 1,
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            c if depth == 0 && is_ident(c) && (i == body.start || !is_ident(b[i - 1])) => {
                let start = i;
                while i < body.end && is_ident(b[i]) {
                    i += 1;
                }
                let name = &text[start..i];
                let mut j = i;
                while j < body.end && (b[j] == b' ' || b[j] == b'\t') {
                    j += 1;
                }
                if j < body.end && b[j] == b'=' && b.get(j + 1) != Some(&b'=') {
                    j += 1;
                    while j < body.end && (b[j] == b' ' || b[j] == b'\t') {
                        j += 1;
                    }
                    out.push((name.to_string(), j));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The list starting at `pos`, if a `[` is there.
fn list_at(text: &str, pos: usize, form: Form) -> Option<ServersList> {
    let b = text.as_bytes();
    if b.get(pos) != Some(&b'[') {
        return None;
    }
    let close = matching(text, pos + 1, b'[', b']')?;
    Some(ServersList {
        form,
        span: pos..close + 1,
        line: line_of(text, pos),
        items: list_items(&text[pos + 1..close]),
    })
}

fn list_items(inner: &str) -> Vec<String> {
    let b = inner.as_bytes();
    let mut items = Vec::new();
    let mut i = 0;
    let mut current = String::new();
    let flush = |current: &mut String, items: &mut Vec<String>| {
        let t = current.trim();
        if !t.is_empty() {
            items.push(t.to_string());
        }
        current.clear();
    };
    while i < b.len() {
        match b[i] {
            b'"' => {
                // An unterminated string runs to the end (never into half a character).
                let end = skip_string(b, i).unwrap_or(b.len());
                current.push_str(&unescape(&inner[i + 1..end.max(i + 1)]));
                i = end;
            }
            b'#' => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'/') => i = skip_line(b, i),
            // A block comment, as `matching` skips it.
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = inner[i + 2..]
                    .find("*/")
                    .map(|e| i + 2 + e + 1)
                    .unwrap_or(b.len());
            }
            b',' => flush(&mut current, &mut items),
            _ => {
                let ch = inner[i..].chars().next().unwrap_or(' ');
                current.push(ch);
                i += ch.len_utf8();
                continue;
            }
        }
        i += 1;
    }
    flush(&mut current, &mut items);
    items
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like enterprise-setup's nomad_user_data.tpl once rendered; the e2e tests'
    /// launch configurations carry the same file.
    pub(super) const ENTERPRISE_SETUP: &str =
        include_str!("../../dev/fixtures/nomad_client_user_data.sh");

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn rewrites_only_the_servers_list() {
        let servers = s(&["nomad-1.internal:4647", "nomad-2.internal:4647"]);
        let r = rewrite(ENTERPRISE_SETUP, &servers).unwrap();
        assert_eq!(r.previous, s(&["10.0.1.150:4647"]));
        assert_eq!(r.lists.len(), 1);
        assert_eq!(r.lists[0].line, 51);
        let changed: Vec<(&str, &str)> = ENTERPRISE_SETUP
            .lines()
            .zip(r.text.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            vec![(
                "    servers = [\"10.0.1.150:4647\"]",
                "    servers = [\"nomad-1.internal:4647\", \"nomad-2.internal:4647\"]"
            )]
        );
        assert_eq!(ENTERPRISE_SETUP.lines().count(), r.text.lines().count());
        // Rewriting again is stable and reports the new list.
        let again = rewrite(&r.text, &servers).unwrap();
        assert_eq!(again.text, r.text);
        assert_eq!(again.previous, servers);
    }

    #[test]
    fn one_line_client_block() {
        let t = "cat <<EOT > /etc/nomad/config.hcl\nclient { enabled = true  servers = [\"10.0.1.150:4647\"]  node_class = \"linux-64bit\"  options = {\"driver.raw_exec.enable\" = \"1\"} }\nEOT\n";
        let r = rewrite(t, &s(&["a:1", "b:2"])).unwrap();
        assert_eq!(r.previous, s(&["10.0.1.150:4647"]));
        assert!(r.text.contains("servers = [\"a:1\", \"b:2\"]  node_class"));
    }

    #[test]
    fn server_join_retry_join() {
        let t = "client {\n  enabled = true\n  server_join {\n    retry_join = [ \"10.0.0.1\", \"10.0.0.2:4647\" ]\n    retry_max = 3\n  }\n}\n";
        let r = rewrite(t, &s(&["n1:4647"])).unwrap();
        assert_eq!(r.lists[0].form, Form::RetryJoin);
        assert_eq!(r.previous, s(&["10.0.0.1", "10.0.0.2:4647"]));
        assert_eq!(
            r.text,
            t.replace("[ \"10.0.0.1\", \"10.0.0.2:4647\" ]", "[\"n1:4647\"]")
        );
    }

    #[test]
    fn multiline_list_with_comments() {
        let t = "client {\n  servers = [\n    \"a:4647\", # first\n    \"b:4647\",\n  ]\n}\n";
        let r = find(t).unwrap();
        assert_eq!(r[0].items, s(&["a:4647", "b:4647"]));
    }

    /// A quote inside a block comment, and a multi-byte character at the end of the
    /// list: the list parser must not cut that character in two.
    #[test]
    fn block_comment_with_a_quote_before_a_multibyte_character() {
        let t = "client { servers = [ /* \"a */ \u{e9}] }";
        let _ = rewrite(t, &["x.internal:4647".to_string()]);
    }

    #[test]
    fn ignores_servers_outside_client_blocks_and_in_comments() {
        let t = "server {\n  servers = [\"x\"]\n}\n# client { servers = [\"y\"] }\nclient {\n  meta {\n    servers = [\"z\"]\n  }\n}\n";
        let e = find(t).unwrap_err();
        assert_eq!(e.client_blocks, vec![5]);
        let msg = e.to_string();
        assert!(msg.contains("client { servers = [...] }"), "{msg}");
        assert!(msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn no_client_block_says_so() {
        let e = find("#!/bin/bash\necho hello\n").unwrap_err();
        assert!(e.client_blocks.is_empty());
        assert!(e.to_string().contains("no `client {` block"));
        assert!(e.to_string().contains("2 lines"));
    }

    #[test]
    fn words_containing_client_do_not_count() {
        assert!(find("nomad_client { servers = [\"a\"] }").is_err());
        assert!(find("clients { servers = [\"a\"] }").is_err());
    }

    #[test]
    fn server_addresses() {
        for ok in [
            "nomad-1.internal:4647",
            "10.0.1.150:4647",
            "nomad",
            "[fd00::1]:4647",
            "[::1]",
        ] {
            assert!(check_server(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b:4647",
            "a\":4647",
            "$(id):4647",
            "a:0",
            "a:99999",
            "a:",
            "[fd00::1",
            "[zz]:1",
            "-a:1",
            "a\\b",
        ] {
            assert!(check_server(bad).is_err(), "{bad}");
        }
    }
}
