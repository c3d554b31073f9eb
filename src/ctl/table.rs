//! Column output the way crictl prints it: left-aligned, padded to the widest cell.

use std::time::{SystemTime, UNIX_EPOCH};

/// Rows of text cells under a header.
pub struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    /// A table with `header` as its first row.
    pub fn new(header: [&str; N]) -> Self {
        Table {
            rows: vec![header.map(str::to_string)],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }

    /// The table as lines, columns three spaces apart.
    pub fn render(&self) -> String {
        let mut widths = [0usize; N];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < N {
                    let pad = widths[i] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Writes the table to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// The first 13 characters of an id, as crictl shows them.
pub fn short_id(id: &str) -> String {
    id.chars().take(13).collect()
}

/// How long ago `nanos` (since the epoch) was, roughly: "5 seconds ago".
pub fn ago(nanos: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let secs = (now - nanos).max(0) / 1_000_000_000;
    let (n, unit) = match secs {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86400 => (s / 3600, "hour"),
        s => (s / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// A byte count in the units crictl uses (`4.1MB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[unit]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(["A", "BB"]);
        t.row(["long".into(), "x".into()]);
        assert_eq!(t.render(), "A      BB\nlong   x\n");
    }

    #[test]
    fn sizes_read_like_crictl() {
        assert_eq!(bytes(999), "999B");
        assert_eq!(bytes(4_100_000), "4.1MB");
        assert_eq!(bytes(1_234_567_890), "1.235GB");
    }
}
