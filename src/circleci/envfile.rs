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
pub(crate) fn is_var_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Quotes `v` for bash inside double quotes: `\`, `"`, `$` and backtick get a backslash;
/// everything else (newlines, spaces, UTF-8) stands as it is. `!` is left alone:
/// history expansion does not happen in a sourced file.
pub(crate) fn quote(v: &str) -> String {
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

/// Parses a file of assignments as bash `source` would read it. Blank lines and `#`
/// comments are skipped. Values may be double-quoted (with the escapes [`quote`] writes,
/// and literal newlines), single-quoted, or bare words, and may be several of these side
/// by side. `$NAME` and `${NAME}`, bare or inside double quotes, expand to a variable
/// assigned earlier in the same file (the runbook's MongoDB section builds its five URIs
/// from `MONGO_BASE_URI` this way). Anything else that needs a shell (command
/// substitution, backticks, arithmetic, special parameters, `${NAME:-...}` and the other
/// `${...}` forms, a variable the file does not assign, tilde expansion, several
/// assignments or a command on one line) is an error naming the line: we will not guess
/// what bash would do.
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
        let (value, consumed) =
            parse_value(vstart, key, &out, &mut line_no).map_err(|m| err(&m))?;
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
/// `vars` are the assignments before this one, for `$NAME` expansion.
fn parse_value(
    vstart: &str,
    key: &str,
    vars: &[Assignment],
    line_no: &mut usize,
) -> Result<(String, usize), String> {
    let mut chars = vstart.char_indices().peekable();
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => double_quoted(&mut chars, &mut value, key, vars, line_no)?,
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
            '$' => {
                if matches!(chars.peek(), Some((_, '\'' | '"'))) {
                    return Err(format!(
                        "unsupported shell syntax $' or $\" in the value of {key}"
                    ));
                }
                expand(&mut chars, &mut value, key, vars)?
            }
            // Bash expands a leading `~` (and one after `:`) in an assignment; a line
            // continuation before it joins the lines first.
            '~' if {
                let before = vstart[..i].replace("\\\n", "");
                before.is_empty() || before.ends_with(':')
            } =>
            {
                return Err(format!(
                    "unsupported shell syntax: tilde expansion in the value of {key}"
                ))
            }
            '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                return Err(format!(
                    "unsupported shell syntax {c:?} in the value of {key}"
                ))
            }
            ch => value.push(ch),
        }
    }
    Ok((value, vstart.len()))
}

/// Variables bash sets itself, whatever the file assigns (or refuses to assign).
const BASH_DYNAMIC: [&str; 14] = [
    "RANDOM",
    "SRANDOM",
    "SECONDS",
    "LINENO",
    "UID",
    "EUID",
    "PPID",
    "GROUPS",
    "FUNCNAME",
    "EPOCHSECONDS",
    "EPOCHREALTIME",
    "HISTCMD",
    "OPTIND",
    "SHLVL",
];

/// True when the next two characters are a backslash and a newline (a line
/// continuation, which bash removes before it reads a variable's name).
fn continues(chars: &Chars) -> bool {
    let mut look = chars.clone();
    matches!(
        (look.next(), look.next()),
        (Some((_, '\\')), Some((_, '\n')))
    )
}

/// What follows a `$` (already taken), as bash expands it in an assignment: `$NAME` and
/// `${NAME}` give the value of a variable assigned earlier in the file; a `$` before
/// anything that cannot start an expansion stands for itself; every other form is
/// refused.
fn expand(
    chars: &mut Chars,
    value: &mut String,
    key: &str,
    vars: &[Assignment],
) -> Result<(), String> {
    let refuse = |form: &str| {
        Err(format!(
            "unsupported shell expansion {form} in the value of {key}: only $NAME and \
             ${{NAME}} of a variable assigned earlier in the file are read"
        ))
    };
    let name = match chars.peek().map(|&(_, c)| c) {
        Some('{') => {
            chars.next();
            let mut inner = String::new();
            loop {
                match chars.next() {
                    Some((_, '}')) => break,
                    Some((_, '\n')) | None => return refuse(&format!("${{{inner}")),
                    Some((_, ch)) => inner.push(ch),
                }
            }
            if !is_var_name(&inner) {
                return refuse(&format!("${{{inner}}}"));
            }
            inner
        }
        Some(c) if c == '_' || c.is_ascii_alphabetic() => {
            let mut name = String::new();
            while let Some(&(_, ch)) = chars.peek() {
                if ch == '_' || ch.is_ascii_alphanumeric() {
                    name.push(ch);
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.peek().map(|&(_, c)| c) == Some('\\') && continues(chars) {
                return refuse(&format!("${name} before a line continuation"));
            }
            name
        }
        Some('(') => return refuse("$( )"),
        Some('[') => return refuse("$[ ]"),
        Some('\\') if continues(chars) => return refuse("$ before a line continuation"),
        Some(c) if c.is_ascii_digit() || "@*#?-$!".contains(c) => return refuse(&format!("${c}")),
        _ => {
            value.push('$');
            return Ok(());
        }
    };
    if BASH_DYNAMIC.contains(&name.as_str()) || name.starts_with("BASH") {
        return refuse(&format!(
            "${name} (bash gives its own value for it, not the file's)"
        ));
    }
    match lookup(vars, &name) {
        Some(v) => {
            value.push_str(v);
            Ok(())
        }
        None => Err(format!(
            "the value of {key} uses ${name}, which is not assigned earlier in the file \
             (bash would take it from its environment)"
        )),
    }
}

/// The rest of a double-quoted string, with the escapes [`quote`] writes and `$NAME`
/// expansion.
fn double_quoted(
    chars: &mut Chars,
    value: &mut String,
    key: &str,
    vars: &[Assignment],
    line_no: &mut usize,
) -> Result<(), String> {
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
            Some((_, '$')) => expand(chars, value, key, vars)?,
            Some((_, '`')) => {
                return Err(format!(
                    "unsupported shell syntax: backtick inside the value of {key}"
                ))
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
pub(crate) fn detect_style(assignments: &[Assignment]) -> Style {
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
pub(crate) fn extract_block(file: &str, id: &str) -> Result<Option<String>, EnvFileError> {
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
pub(crate) fn upsert_block(file: &str, id: &str, content: &str) -> Result<String, EnvFileError> {
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
pub(crate) fn remove_block(file: &str, id: &str) -> Result<String, EnvFileError> {
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

    /// The runbook's MongoDB section, as an operator pastes it (replica-set form).
    const RUNBOOK_MONGO: &str = "# Configure the single endpoint
# OR for a replica set
MONGO_BASE_URI='mongodb://circle:s3cr3t-p4ss@mongo-1.internal:27017,mongo-2.internal:27017,mongo-3.internal:27017'
# When using replica sets, add query parameter '&replicaSet=name' to each URI
export CIRCLE_SECRETS_MONGODB_MAIN_URI=\"$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
export CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI=\"$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
export CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI=\"$MONGO_BASE_URI/build_state_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
export CIRCLE_SECRETS_MONGODB_CONTAINERS_URI=\"$MONGO_BASE_URI/containers_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
export CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI=\"$MONGO_BASE_URI/remote_containers_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
";

    #[test]
    fn expands_variables_assigned_earlier_as_the_runbook_does() {
        let a = parse(RUNBOOK_MONGO).unwrap();
        assert_eq!(
            lookup(&a, "CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI"),
            Some(
                "mongodb://circle:s3cr3t-p4ss@mongo-1.internal:27017,mongo-2.internal:27017,\
                 mongo-3.internal:27017/build_state_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0"
            )
        );
        let a = parse("B=x\nA=${B}y$B\"$B\"'$B'\\$B\nC=\"a$ b$/$\"\nB=z\nD=$B\n").unwrap();
        assert_eq!(lookup(&a, "A"), Some("xyxx$B$B"));
        assert_eq!(lookup(&a, "C"), Some("a$ b$/$"));
        assert_eq!(lookup(&a, "D"), Some("z"));
    }

    #[test]
    fn refuses_expansions_that_need_a_shell_naming_the_line() {
        for (text, what) in [
            ("A=1\nB=\"$UNSET\"\n", "not assigned earlier"),
            ("A=1\nB=$(id)\n", "$( )"),
            ("A=1\nB=\"$(id)\"\n", "$( )"),
            ("A=1\nB=\"$((1+2))\"\n", "$( )"),
            ("A=1\nB=\"`id`\"\n", "backtick"),
            ("A=1\nB=\"${A:-x}\"\n", "${A:-x}"),
            ("A=1\nB=${#A}\n", "${#A}"),
            ("A=1\nB=\"${A\n", "${A"),
            ("A=1\nB=\"$1\"\n", "$1"),
            ("A=1\nB=$$\n", "$$"),
            ("A=1\nB=$'x'\n", "$'"),
            ("A=1\nB=~/x\n", "tilde"),
            ("A=1\nB=\\\n~\n", "tilde"),
            ("A=1\nB=\"$B\"\n", "not assigned earlier"),
            ("A=1\nB=$A\\\nB\n", "line continuation"),
            ("A=1\nB=\"$\\\nA\"\n", "line continuation"),
            ("A=1\nB=$[1+2]\n", "$[ ]"),
            ("RANDOM=5\nB=$RANDOM\n", "bash gives its own value"),
            ("BASHPID=5\nB=${BASHPID}\n", "bash gives its own value"),
        ] {
            let e = parse(text).unwrap_err().0;
            assert!(e.starts_with("line 2: "), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
        }
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
