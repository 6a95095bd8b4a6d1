//! The client commands' two outputs: tables for people, the server's JSON
//! (`--json`) for scripts.

use comfy_table::{Table, presets};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::CliError;

/// Reads one wire type out of a response, for the tables.
pub fn parse<T: DeserializeOwned>(value: &Value) -> Result<T, CliError> {
    T::deserialize(value).map_err(|err| CliError::Transport {
        url: "Herald".to_owned(),
        message: format!("unexpected answer ({err}); is the CLI as new as the server?"),
    })
}

/// Prints JSON for scripts: pretty, one document per command.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("a JSON value always serialises")
    );
}

/// A table without borders (one row a line, columns aligned): easy to read
/// and to grep.
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_header(header.to_vec());
    table
}

/// Prints a list of `field  value` lines.
pub fn print_fields(fields: &[(&str, String)]) {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    for (name, value) in fields {
        table.add_row(vec![(*name).to_owned(), value.clone()]);
    }
    print_table(&table);
}

pub fn print_table(table: &Table) {
    println!("{}", render(table));
}

/// Columns flush left, two spaces apart, no trailing blanks.
fn render(table: &Table) -> String {
    let mut table = table.clone();
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.trim_fmt()
}

/// `-` for an absent value.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// At most `max` characters (on one line), with an ellipsis when cut.
pub fn clip(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max && line.len() == text.len() {
        return line.to_owned();
    }
    let kept: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}
