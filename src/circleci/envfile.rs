//! The runbook's config files: lines of `export KEY="value"` that CircleCI's containers
//! `source` with bash. Rendering quotes every value so bash gives it back byte for byte;
//! parsing reads what we render and the simple forms people write by hand.

use std::fmt;

/// How variables are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `export KEY="value"` (most files).
    Export,
    /// Each variable twice, `export KEY="value"` then `KEY="value"`, as the runbook
    /// writes /etc/circleconfig/slanger/customizations.
    Slanger,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError(pub String);

impl fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvFileError {}

/// True for a valid shell variable name.
pub fn is_var_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Quotes `v` for bash inside double quotes: `\`, `"`, `$` and backtick get a backslash;
/// everything else (newlines, spaces, UTF-8) stands as it is. `!` is left alone:
/// history expansion does not happen in a sourced file.
pub fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Renders variables in order. Fails on a bad name or a NUL byte (bash cannot hold one).
pub fn render(vars: &[(&str, &str)], style: Style) -> Result<String, EnvFileError> {
    let mut out = String::new();
    for (k, v) in vars {
        if !is_var_name(k) {
            return Err(EnvFileError(format!(
                "{k:?} is not a valid shell variable name"
            )));
        }
        if v.contains('\0') {
            return Err(EnvFileError(format!(
                "the value of {k} contains a NUL byte, which a shell variable cannot hold"
            )));
        }
        let q = quote(v);
        out.push_str(&format!("export {k}={q}\n"));
        if style == Style::Slanger {
            out.push_str(&format!("{k}={q}\n"));
        }
    }
    Ok(out)
}

/// One assignment read back from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: String,
    pub value: String,
    pub exported: bool,
}

/// Parses a file of assignments. Blank lines and `#` comments are skipped. Values may be
/// double-quoted (with the escapes [`quote`] writes, and literal newlines), single-quoted,
/// or bare words. Anything else (command substitution, several assignments on a line)
/// is an error naming the line: we will not guess what bash would do.
pub fn parse(text: &str) -> Result<Vec<Assignment>, EnvFileError> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut line_no = 1usize;
    while !rest.is_empty() {
        let start_line = line_no;
        let err = |m: &str| EnvFileError(format!("line {start_line}: {m}"));
        // Skip leading blanks on the line.
        let trimmed = rest.trim_start_matches([' ', '\t']);
        if let Some(r) = trimmed.strip_prefix('\n') {
            rest = r;
            line_no += 1;
            continue;
        }
        if trimmed.starts_with('#') {
            match trimmed.find('\n') {
                Some(i) => {
                    rest = &trimmed[i + 1..];
                    line_no += 1;
                }
                None => rest = "",
            }
            continue;
        }
        if trimmed.is_empty() {
            break;
        }
        let (exported, body) = match trimmed.strip_prefix("export") {
            Some(b) if b.starts_with([' ', '\t']) => (true, b.trim_start_matches([' ', '\t'])),
            _ => (false, trimmed),
        };
        let eq = body.find('=').ok_or_else(|| err("expected KEY=value"))?;
        let key = &body[..eq];
        if !is_var_name(key) {
            return Err(err(&format!("{key:?} is not a shell variable name")));
        }
        let vstart = &body[eq + 1..];
        let (value, consumed) = parse_value(vstart, key, &mut line_no).map_err(|m| err(&m))?;
        out.push(Assignment {
            key: key.to_string(),
            value,
            exported,
        });
        let after = &vstart[consumed.min(vstart.len())..];
        rest = match after.strip_prefix('\n') {
            Some(r) => {
                line_no += 1;
                r
            }
            None => after,
        };
    }
    Ok(out)
}

type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;

/// One value after `=`: the value and how many bytes of `vstart` it took (up to the
/// end of its line, a trailing comment included). Counts the newlines it crosses.
fn parse_value(vstart: &str, key: &str, line_no: &mut usize) -> Result<(String, usize), String> {
    let mut chars = vstart.char_indices().peekable();
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => double_quoted(&mut chars, &mut value, line_no)?,
            '\'' => single_quoted(&mut chars, &mut value, line_no)?,
            '\\' => match chars.next() {
                Some((_, '\n')) => *line_no += 1,
                Some((_, ch)) => value.push(ch),
                None => return Err("backslash at end of file".into()),
            },
            ' ' | '\t' => {
                // Only a comment may follow the value.
                let tail = vstart[i..].trim_start_matches([' ', '\t']);
                let tail_len = tail.find('\n').unwrap_or(tail.len());
                if !tail[..tail_len].is_empty() && !tail.starts_with('#') {
                    return Err("more than one word after =".into());
                }
                return Ok((value, vstart.len() - tail.len() + tail_len));
            }
            '\n' => return Ok((value, i)),
            '$' | '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                return Err(format!(
                    "unsupported shell syntax {c:?} in the value of {key}"
                ))
            }
            ch => value.push(ch),
        }
    }
    Ok((value, vstart.len()))
}

/// The rest of a double-quoted string, with the escapes [`quote`] writes.
fn double_quoted(chars: &mut Chars, value: &mut String, line_no: &mut usize) -> Result<(), String> {
    loop {
        match chars.next() {
            Some((_, '"')) => return Ok(()),
            Some((_, '\\')) => match chars.peek() {
                Some(&(_, n @ ('\\' | '"' | '$' | '`'))) => {
                    value.push(n);
                    chars.next();
                }
                Some(&(_, '\n')) => {
                    chars.next();
                    *line_no += 1;
                }
                _ => value.push('\\'),
            },
            Some((_, '$')) | Some((_, '`')) => {
                return Err("expansion ($ or `) inside a double-quoted value".into())
            }
            Some((_, ch)) => {
                if ch == '\n' {
                    *line_no += 1;
                }
                value.push(ch)
            }
            None => return Err("unterminated double quote".into()),
        }
    }
}

/// The rest of a single-quoted string: every character literal.
fn single_quoted(chars: &mut Chars, value: &mut String, line_no: &mut usize) -> Result<(), String> {
    loop {
        match chars.next() {
            Some((_, '\'')) => return Ok(()),
            Some((_, ch)) => {
                if ch == '\n' {
                    *line_no += 1;
                }
                value.push(ch)
            }
            None => return Err("unterminated single quote".into()),
        }
    }
}

/// The last value assigned to `key`, as bash would see it after sourcing.
pub fn lookup<'a>(assignments: &'a [Assignment], key: &str) -> Option<&'a str> {
    assignments
        .iter()
        .rev()
        .find(|a| a.key == key)
        .map(|a| a.value.as_str())
}

/// Which style a parsed file was written in: Slanger when every variable is assigned
/// both with and without `export`.
pub fn detect_style(assignments: &[Assignment]) -> Style {
    let all_twice = !assignments.is_empty()
        && assignments.iter().all(|a| {
            assignments
                .iter()
                .any(|b| b.key == a.key && b.exported != a.exported && b.value == a.value)
        });
    if all_twice {
        Style::Slanger
    } else {
        Style::Export
    }
}

// ------------------------------------------------------------------------ managed blocks

fn markers(id: &str) -> (String, String) {
    (
        format!("# BEGIN terraform-provider-circleci {id} (managed by Terraform; edit outside this block)"),
        format!("# END terraform-provider-circleci {id}"),
    )
}

/// Byte ranges of the block `id` in `file`: (start of BEGIN line, end of END line
/// including its newline).
fn find_block(file: &str, id: &str) -> Result<Option<(usize, usize)>, EnvFileError> {
    let (begin, end) = markers(id);
    let mut pos = 0;
    let mut found_begin = None;
    for line in file.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if bare == begin {
            if found_begin.is_some() {
                return Err(EnvFileError(format!(
                    "the file has two BEGIN markers for block {id:?}"
                )));
            }
            found_begin = Some(pos);
        } else if bare == end {
            return match found_begin {
                Some(b) => Ok(Some((b, pos + line.len()))),
                None => Err(EnvFileError(format!(
                    "the file has an END marker without BEGIN for block {id:?}"
                ))),
            };
        }
        pos += line.len();
    }
    match found_begin {
        Some(_) => Err(EnvFileError(format!(
            "the file has a BEGIN marker without END for block {id:?}"
        ))),
        None => Ok(None),
    }
}

/// The content between the markers of block `id`, if the block is there.
pub fn extract_block(file: &str, id: &str) -> Result<Option<String>, EnvFileError> {
    let Some((s, e)) = find_block(file, id)? else {
        return Ok(None);
    };
    let inner = &file[s..e];
    let first_nl = inner.find('\n').map(|i| i + 1).unwrap_or(inner.len());
    let body = &inner[first_nl..];
    let last = body
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    Ok(Some(body[..last].to_string()))
}

/// Replaces block `id` with `content` (which should end in a newline), or appends it.
/// Every byte outside the block is kept.
pub fn upsert_block(file: &str, id: &str, content: &str) -> Result<String, EnvFileError> {
    let (begin, end) = markers(id);
    let mut block = format!("{begin}\n{content}");
    if !block.ends_with('\n') {
        block.push('\n');
    }
    block.push_str(&end);
    block.push('\n');
    Ok(match find_block(file, id)? {
        Some((s, e)) => format!("{}{}{}", &file[..s], block, &file[e..]),
        None if file.is_empty() || file.ends_with('\n') => format!("{file}{block}"),
        None => format!("{file}\n{block}"),
    })
}

/// Removes block `id`; every other byte is kept.
pub fn remove_block(file: &str, id: &str) -> Result<String, EnvFileError> {
    Ok(match find_block(file, id)? {
        Some((s, e)) => format!("{}{}", &file[..s], &file[e..]),
        None => file.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_runbook_form() {
        let s = render(
            &[("REDIS_HOST", "redis.internal"), ("REDIS_PORT", "6379")],
            Style::Export,
        )
        .unwrap();
        assert_eq!(
            s,
            "export REDIS_HOST=\"redis.internal\"\nexport REDIS_PORT=\"6379\"\n"
        );
    }

    #[test]
    fn renders_slanger_form() {
        let s = render(&[("REDIS_HOST", "r")], Style::Slanger).unwrap();
        assert_eq!(s, "export REDIS_HOST=\"r\"\nREDIS_HOST=\"r\"\n");
        assert_eq!(detect_style(&parse(&s).unwrap()), Style::Slanger);
    }

    #[test]
    fn rejects_nul_and_bad_names() {
        assert!(render(&[("A", "x\0y")], Style::Export).is_err());
        assert!(render(&[("1A", "x")], Style::Export).is_err());
        assert!(render(&[("A B", "x")], Style::Export).is_err());
    }

    #[test]
    fn parses_hand_written_forms() {
        let a =
            parse("# comment\n\nexport REDIS_HOST=\"h\"\nexport REDIS_PORT=6379\nX='a b' # note\n")
                .unwrap();
        assert_eq!(lookup(&a, "REDIS_HOST"), Some("h"));
        assert_eq!(lookup(&a, "REDIS_PORT"), Some("6379"));
        assert_eq!(lookup(&a, "X"), Some("a b"));
        assert!(a[0].exported && !a[2].exported);
    }

    #[test]
    fn refuses_what_it_cannot_evaluate() {
        assert!(parse("A=$(whoami)\n").is_err());
        assert!(parse("A=\"$HOME\"\n").is_err());
        assert!(parse("A=b c\n").is_err());
        assert!(parse("A=\"open\n").is_err());
        let e = parse("OK=1\nnot an assignment\n").unwrap_err();
        assert!(e.0.starts_with("line 2"), "{e}");
    }

    #[test]
    fn render_parse_round_trip_tricky() {
        let v = "a \"q\" $x `y` \\z\nline2 ünï 'single'";
        let s = render(&[("V", v)], Style::Export).unwrap();
        assert_eq!(lookup(&parse(&s).unwrap(), "V"), Some(v));
    }

    #[test]
    fn managed_block_keeps_user_lines() {
        let user = "# mine\nexport FOO=1\n";
        let f1 = upsert_block(user, "mongo", "export A=\"1\"\n").unwrap();
        assert!(f1.starts_with(user));
        assert_eq!(
            extract_block(&f1, "mongo").unwrap().as_deref(),
            Some("export A=\"1\"\n")
        );
        let f2 = upsert_block(&f1, "mongo", "export A=\"2\"\n").unwrap();
        assert_eq!(
            extract_block(&f2, "mongo").unwrap().as_deref(),
            Some("export A=\"2\"\n")
        );
        let f3 = format!("{f2}export BAR=2\n");
        let f4 = upsert_block(&f3, "mongo", "export A=\"3\"\n").unwrap();
        assert!(f4.ends_with("export BAR=2\n"));
        assert_eq!(
            remove_block(&f4, "mongo").unwrap(),
            "# mine\nexport FOO=1\nexport BAR=2\n"
        );
        // no trailing newline in the user's file
        let f5 = upsert_block("X=1", "m", "A=1\n").unwrap();
        assert!(f5.starts_with("X=1\n# BEGIN"));
        assert!(extract_block("x", "m").unwrap().is_none());
        let broken = format!("{}\n", markers("m").0);
        assert!(extract_block(&broken, "m").is_err());
    }
}
