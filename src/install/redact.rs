//! What install and uninstall print never holds a secret. A file they show has every
//! `X-Credgate-Secret` value replaced by a placeholder that says where the value comes from
//! (the endpoint's secret file) or tells values apart (`value 1`, `value 2`), so a diff still
//! shows the header and whether its value changes; and every line they print (diff, report,
//! warning, error) has each secret value they have seen replaced the same way.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Value};

use crate::containerd::files::{visit_secret_headers, SECRET_HEADER};

use super::{InstallError, Report};

/// Stands for a header value that is not a string, which no secret is.
const NOT_A_STRING: &str = "<redacted>";

/// The secrets seen so far and the placeholder for each.
#[derive(Debug, Default)]
pub(crate) struct Redactor {
    /// The endpoint's secret and the file it is read from.
    endpoint: Option<(String, PathBuf)>,
    /// Every other value seen in a secret header, in order of first sight.
    others: Vec<String>,
}

impl Redactor {
    /// The secret install writes into hosts.toml, shown as the contents of `file`.
    pub fn endpoint_secret(&mut self, secret: &str, file: &Path) {
        self.endpoint = Some((secret.to_string(), file.to_path_buf()));
    }

    /// The placeholder for `value`, remembering it.
    fn placeholder(&mut self, value: &str) -> String {
        if let Some(known) = self.known(value) {
            return known;
        }
        self.others.push(value.to_string());
        format!("<redacted: value {}>", self.others.len())
    }

    fn known(&self, value: &str) -> Option<String> {
        if let Some((secret, file)) = &self.endpoint {
            if value == secret {
                return Some(format!("<redacted: contents of {}>", file.display()));
            }
        }
        let index = self.others.iter().position(|other| other == value)?;
        Some(format!("<redacted: value {}>", index + 1))
    }

    /// Remembers the secret values a file holds, so no printed line shows them.
    pub fn learn(&mut self, bytes: &[u8]) {
        self.text(bytes);
    }

    /// `bytes` as text, every secret header value replaced. Text that is not TOML has each
    /// line naming the header cut after its `=`.
    pub fn text(&mut self, bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes);
        let redacted = match text.parse::<DocumentMut>() {
            Ok(mut doc) => {
                let mut found = false;
                visit_secret_headers(&mut doc, |item| {
                    found = true;
                    self.redact_item(item);
                });
                // Untouched text is shown exactly as it is.
                if found {
                    doc.to_string()
                } else {
                    text.into_owned()
                }
            }
            Err(_) => redact_header_lines(&text),
        };
        self.line(&redacted)
    }

    fn redact_item(&mut self, item: &mut Item) {
        match item {
            Item::Value(value) => self.redact_value(value),
            other => *other = Item::Value(Value::from(NOT_A_STRING)),
        }
    }

    /// Replaces each string in `value` (itself, or in an array or inline table) by its
    /// placeholder, keeping the layout around it.
    fn redact_value(&mut self, value: &mut Value) {
        let placeholder = match value {
            Value::Array(array) => {
                for element in array.iter_mut() {
                    self.redact_value(element);
                }
                return;
            }
            Value::InlineTable(table) => {
                for (_, element) in table.iter_mut() {
                    self.redact_value(element);
                }
                return;
            }
            Value::String(string) => self.placeholder(string.value()),
            _ => NOT_A_STRING.to_string(),
        };
        let decor = value.decor().clone();
        *value = Value::from(placeholder);
        *value.decor_mut() = decor;
    }

    /// A unified diff from `before` to `after` (`None` on either side is /dev/null), both
    /// redacted.
    pub fn diff(&mut self, path: &Path, before: Option<&[u8]>, after: Option<&[u8]>) -> String {
        let old = before.map(|bytes| self.text(bytes));
        let new = after.map(|bytes| self.text(bytes));
        let name = path.display().to_string();
        let label = |side: &Option<String>| {
            if side.is_some() {
                name.clone()
            } else {
                "/dev/null".to_string()
            }
        };
        similar::TextDiff::from_lines(
            old.as_deref().unwrap_or_default(),
            new.as_deref().unwrap_or_default(),
        )
        .unified_diff()
        .context_radius(3)
        .header(&label(&old), &label(&new))
        .to_string()
    }

    /// `line` with every secret value seen so far (as written, or escaped as in a TOML
    /// string) replaced by its placeholder.
    pub fn line(&self, line: &str) -> String {
        let mut needles: Vec<(String, String)> = Vec::new();
        let values = self
            .endpoint
            .iter()
            .map(|(secret, _)| secret)
            .chain(&self.others);
        for value in values.filter(|v| !v.is_empty()) {
            let Some(placeholder) = self.known(value) else {
                continue;
            };
            let escaped = toml_escaped(value);
            if escaped != *value {
                needles.push((escaped, placeholder.clone()));
            }
            needles.push((value.clone(), placeholder));
        }
        // Longest first, so a value that contains another is replaced whole.
        needles.sort_by_key(|(needle, _)| std::cmp::Reverse(needle.len()));
        replace_all(line, &needles)
    }

    /// Every line of a run's outcome redacted: the report's, or the error's message.
    pub fn outcome(&self, outcome: Result<Report, InstallError>) -> Result<Report, InstallError> {
        match outcome {
            Ok(report) => Ok(Report {
                stdout: report.stdout.iter().map(|l| self.line(l)).collect(),
                warnings: report.warnings.iter().map(|l| self.line(l)).collect(),
            }),
            Err(e) => {
                let message = e.to_string();
                let redacted = self.line(&message);
                if redacted == message {
                    Err(e)
                } else {
                    Err(InstallError::Redacted {
                        bad_input: e.is_bad_input(),
                        message: redacted,
                    })
                }
            }
        }
    }
}

/// `value` as it appears inside a TOML basic string (`"..."`).
fn toml_escaped(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\t' => escaped.push_str("\\t"),
            '\r' => escaped.push_str("\\r"),
            c if c.is_control() => escaped.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Text that did not parse: each line naming the secret header keeps what comes before its
/// `=` only.
fn redact_header_lines(text: &str) -> String {
    let header = SECRET_HEADER.to_ascii_lowercase();
    text.split_inclusive('\n')
        .map(|line| {
            if !line.to_ascii_lowercase().contains(&header) {
                return line.to_string();
            }
            let end = if line.ends_with('\n') { "\n" } else { "" };
            match line.find('=') {
                Some(at) => format!("{} {NOT_A_STRING}{end}", &line[..=at]),
                None => format!("{NOT_A_STRING}{end}"),
            }
        })
        .collect()
}

/// `text` with each needle replaced by its placeholder, scanning once from the left.
fn replace_all(text: &str, needles: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while let Some(next) = rest.chars().next() {
        for (needle, placeholder) in needles {
            if let Some(after) = rest.strip_prefix(needle.as_str()) {
                out.push_str(placeholder);
                rest = after;
                continue 'scan;
            }
        }
        out.push(next);
        rest = &rest[next.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret-Zq9\"x";

    fn redactor() -> Redactor {
        let mut redactor = Redactor::default();
        redactor.endpoint_secret(SECRET, Path::new("/etc/credgate/mirror-secret"));
        redactor
    }

    #[test]
    fn the_header_line_stays_and_its_value_is_replaced_in_every_shape() {
        let mut redactor = redactor();
        let escaped = toml_escaped(SECRET);
        let text = format!(
            "[header]\n  x-credgate-secret = \"stale-1\"\n\
             [host.\"http://127.0.0.1:5008\"]\n  capabilities = [\"pull\"]\n  \
             [host.\"http://127.0.0.1:5008\".header]\n    X-Credgate-Secret = [\"{escaped}\"] # ours\n\
             [host.\"http://old:5008\"]\n  header = {{ X-CREDGATE-SECRET = [\"stale-2\", 7] }}\n\
             host.\"http://dotted:5008\".header.X-Credgate-Secret = \"stale-1\"\n"
        );
        let shown = redactor.text(text.as_bytes());
        assert_eq!(
            shown,
            "[header]\n  x-credgate-secret = \"<redacted: value 1>\"\n\
             [host.\"http://127.0.0.1:5008\"]\n  capabilities = [\"pull\"]\n  \
             [host.\"http://127.0.0.1:5008\".header]\n    \
             X-Credgate-Secret = [\"<redacted: contents of /etc/credgate/mirror-secret>\"] # ours\n\
             [host.\"http://old:5008\"]\n  header = { X-CREDGATE-SECRET = [\"<redacted: value 2>\", \"<redacted>\"] }\n\
             host.\"http://dotted:5008\".header.X-Credgate-Secret = \"<redacted: value 1>\"\n"
        );
    }

    #[test]
    fn a_file_without_the_header_is_shown_as_it_is() {
        let text = "server = \"https://r.test\"   # kept\n\n[host.\"https://m\"]\n";
        assert_eq!(redactor().text(text.as_bytes()), text);
    }

    #[test]
    fn text_that_is_not_toml_loses_what_follows_the_header() {
        let mut redactor = redactor();
        let shown = redactor.text(b"[host.\"x\"\n  X-Credgate-Secret = [\"leak-me\"]\nnext\n");
        assert_eq!(
            shown,
            "[host.\"x\"\n  X-Credgate-Secret = <redacted>\nnext\n"
        );
    }

    #[test]
    fn a_diff_shows_a_changed_value_as_a_changed_placeholder() {
        let mut redactor = redactor();
        let old = b"[host.\"h\".header]\n  X-Credgate-Secret = \"old-value\"\n";
        let new = format!(
            "[host.\"h\".header]\n  X-Credgate-Secret = \"{}\"\n",
            toml_escaped(SECRET)
        );
        let diff = redactor.diff(Path::new("/h/hosts.toml"), Some(old), Some(new.as_bytes()));
        assert!(
            diff.contains("-  X-Credgate-Secret = \"<redacted: value 1>\"\n"),
            "{diff}"
        );
        assert!(
            diff.contains(
                "+  X-Credgate-Secret = \"<redacted: contents of /etc/credgate/mirror-secret>\"\n"
            ),
            "{diff}"
        );
        assert!(
            !diff.contains("old-value") && !diff.contains("s3cret"),
            "{diff}"
        );
    }

    #[test]
    fn every_line_and_error_loses_the_values_seen_raw_or_escaped() {
        let mut redactor = redactor();
        redactor.learn(b"[header]\nX-Credgate-Secret = \"other-secret\"\n");
        let line = format!("a {SECRET} b {} c other-secret", toml_escaped(SECRET));
        assert_eq!(
            redactor.line(&line),
            "a <redacted: contents of /etc/credgate/mirror-secret> b \
             <redacted: contents of /etc/credgate/mirror-secret> c <redacted: value 1>"
        );
        let error = InstallError::State {
            path: "/h/.credgate-install.json".into(),
            message: "unknown field `other-secret`".to_string(),
        };
        let Err(redacted) = redactor.outcome(Err(error)) else {
            panic!("an error stays an error");
        };
        assert!(redacted.is_bad_input());
        assert_eq!(
            redacted.to_string(),
            "/h/.credgate-install.json: the install state is unreadable: \
             unknown field `<redacted: value 1>`"
        );
        let report = Report {
            stdout: vec![format!("x {SECRET}")],
            warnings: vec!["other-secret".to_string()],
        };
        let report = redactor.outcome(Ok(report)).unwrap();
        assert_eq!(
            report.stdout,
            ["x <redacted: contents of /etc/credgate/mirror-secret>"]
        );
        assert_eq!(report.warnings, ["<redacted: value 1>"]);
    }
}
