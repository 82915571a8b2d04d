//! Markdown tables: a header, an alignment rule and rows, each line
//! `| a | b |`.
//!
//! Invariant: every row has as many cells as the table has columns (missing
//! cells are written empty, extra ones dropped), so a reader splitting a line on
//! ` | ` always finds the columns in place. Cells are written as given; text that
//! may hold `|` or line breaks goes through [`cell`] first.

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// `---`
    Left,
    /// `---:` (numbers)
    Right,
    /// `:---:`
    Center,
}

impl Align {
    fn rule(self) -> &'static str {
        match self {
            Align::Left => "---",
            Align::Right => "---:",
            Align::Center => ":---:",
        }
    }
}

/// A markdown table being built.
#[derive(Debug, Clone, Default)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table without columns yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a column titled `title` (written as given).
    pub fn column(mut self, title: impl Into<String>, align: Align) -> Self {
        self.columns.push((title.into(), align));
        self
    }

    /// Adds a row; see the module doc for rows of the wrong length.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.columns.len())
            .map(Into::into)
            .collect();
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
        self
    }

    /// Rows added so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Appends the table to `out`, each line ending in a line break.
    pub fn write_to(&self, out: &mut String) {
        line(out, self.columns.iter().map(|(t, _)| t.as_str()));
        out.push('|');
        for (_, align) in &self.columns {
            out.push_str(align.rule());
            out.push('|');
        }
        out.push('\n');
        for row in &self.rows {
            line(out, row.iter().map(String::as_str));
        }
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write_to(&mut out);
        out
    }
}

fn line<'a>(out: &mut String, cells: impl Iterator<Item = &'a str>) {
    out.push('|');
    for c in cells {
        out.push(' ');
        out.push_str(c);
        out.push_str(" |");
    }
    out.push('\n');
}

/// Text for a markdown table cell: pipes escaped, line breaks flattened.
pub fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rule_and_rows() {
        let mut t = Table::new()
            .column("name", Align::Left)
            .column("n", Align::Right)
            .column("ok", Align::Center);
        assert!(t.is_empty());
        t.row(["a", "1", "yes"])
            .row(vec!["b".to_owned(), "22".to_owned()]);
        t.row(["c", "3", "no", "dropped"]);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.render(),
            "| name | n | ok |\n|---|---:|:---:|\n| a | 1 | yes |\n| b | 22 |  |\n| c | 3 | no |\n"
        );
    }

    #[test]
    fn cells_escape_pipes_and_line_breaks() {
        assert_eq!(cell("a|b\nc\r\nd"), "a\\|b c  d");
        assert_eq!(cell("plain"), "plain");
    }
}
