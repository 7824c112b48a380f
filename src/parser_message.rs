//! What a parser's error message may repeat: its own words and the schema's, never a value
//! from the input. serde, toml, serde_json and serde_yaml quote the offending value
//! (``invalid type: integer `31415926`, expected a string``), and a value written in the wrong
//! place can be a password. Positions are reported separately, so nothing is lost in finding it.

/// What stands in for a quoted value.
const HIDDEN: &str = "`…`";

/// `message` with every quoted piece (backticks or double quotes) before the first
/// `expected` outside quotes replaced by `` `…` ``; what follows `expected` comes from the
/// schema (``expected one of `match`, `username` ``, `expected a string`) and is kept. An
/// unterminated quote hides the rest of that part, so a value can't escape by holding a
/// quote character.
pub fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("expected") {
            out.push_str(rest);
            return out;
        }
        match c {
            '`' | '"' => {
                out.push_str(HIDDEN);
                match closing(&rest[1..], c) {
                    Some(end) => rest = &rest[1 + end + 1..],
                    None => {
                        out.push_str(" (value not shown)");
                        return out;
                    }
                }
            }
            _ => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// The byte offset of the quote closing one opened by `quote`; a backslash escapes the next
/// character inside double quotes (Rust's `{:?}` of a string, which serde uses).
fn closing(text: &str, quote: char) -> Option<usize> {
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Some(i);
        }
        if c == '\\' && quote == '"' {
            chars.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::without_values;

    #[test]
    fn quoted_values_are_hidden_and_the_schema_is_kept() {
        assert_eq!(
            without_values("invalid type: integer `31415926`, expected a string"),
            "invalid type: integer `…`, expected a string"
        );
        assert_eq!(
            without_values(
                "invalid type: string \"hunter2\", expected a sequence at line 2 column 11"
            ),
            "invalid type: string `…`, expected a sequence at line 2 column 11"
        );
        assert_eq!(
            without_values("unknown field `s3cret`, expected one of `match`, `username`"),
            "unknown field `…`, expected one of `match`, `username`"
        );
        assert_eq!(
            without_values("registry[0].uids[0]: invalid type: integer `-7`, expected u32"),
            "registry[0].uids[0]: invalid type: integer `…`, expected u32"
        );
        assert_eq!(
            without_values("invalid string\nexpected `\"`, `'`"),
            "invalid string\nexpected `\"`, `'`"
        );
        assert_eq!(
            without_values("invalid socket address syntax"),
            "invalid socket address syntax"
        );
    }

    #[test]
    fn a_value_cannot_smuggle_itself_past_the_quotes() {
        for message in [
            "invalid type: string \"a \\\"expected\\\" s3cret\", expected a sequence",
            "invalid type: string \"s3cret expected x\", expected a map",
            "invalid type: character ```, expected s3cret",
            "invalid type: string \"s3cret",
            "invalid value: `s3cret",
        ] {
            let shown = without_values(message);
            assert!(!shown.contains("s3cret"), "{message} -> {shown}");
        }
    }
}
