//! Where a byte offset is in a text file, as people count it: for errors that point at a
//! line and column.

/// 1-based line and column (in characters) of a byte offset; an offset past the end is the
/// end, and one inside a character counts as that character.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    // Slicing inside a multi-byte character would panic; parsers' spans are not trusted.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The lines of one text, found once: [`line_column`]'s line for many offsets, without
/// rescanning the text for each (a config with 10,000 entries names each one's line).
pub struct Lines {
    /// Byte offset of each line's first byte; the first line starts at 0.
    starts: Vec<usize>,
}

impl Lines {
    pub fn new(text: &str) -> Self {
        let newlines = text.match_indices('\n').map(|(i, _)| i + 1);
        Self {
            starts: std::iter::once(0).chain(newlines).collect(),
        }
    }

    /// The 1-based line of a byte offset, as [`line_column`] counts it.
    pub fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

#[cfg(test)]
mod tests {
    use super::{line_column, Lines};

    #[test]
    fn lines_agree_with_line_column_at_every_offset() {
        let text = "a = 1\nbé = x\n\n[[registry]]\nmatch = \"ü\"";
        let lines = Lines::new(text);
        for offset in 0..text.len() + 3 {
            assert_eq!(
                lines.line_of(offset),
                line_column(text, offset).0,
                "offset {offset}"
            );
        }
        assert_eq!(Lines::new("").line_of(0), 1);
    }

    #[test]
    fn lines_and_columns_count_from_one_in_characters() {
        let text = "a = 1\nbé = x\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 10), (2, 4));
        assert_eq!(line_column(text, 1000), (3, 1));
        // Inside `é`: the character itself.
        assert_eq!(line_column(text, 8), (2, 2));
    }
}
