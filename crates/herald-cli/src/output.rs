//! How answers are printed: the API's JSON with `--json`, otherwise tables and `key value`
//! lines.

use serde_json::Value;

/// Prints API answers: JSON with `--json`, otherwise tables for lists and `key: value` lines
/// for single objects.
pub(crate) struct Output {
    pub(crate) json: bool,
}

impl Output {
    pub(crate) fn print(&self, value: &Value) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
            return Ok(());
        }
        match value.get("data").and_then(Value::as_array) {
            Some(rows) => {
                print_table(rows);
                if let Some(next) = value.get("next").filter(|n| !n.is_null()) {
                    println!("(more: pass {} to see the next page)", cell(next));
                }
            }
            None => match value.as_object() {
                Some(map) => {
                    let width = map.keys().map(String::len).max().unwrap_or(0);
                    for (k, v) in map {
                        println!("{k:width$}  {}", cell(v));
                    }
                }
                None => println!("{}", cell(value)),
            },
        }
        Ok(())
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn print_table(rows: &[Value]) {
    let Some(first) = rows.first().and_then(Value::as_object) else {
        println!("(none)");
        return;
    };
    let columns: &[&str] = if first.contains_key("provider") {
        &["id", "tenant", "provider", "event_type", "url"]
    } else if first.contains_key("event_types") {
        &["id", "tenant", "enabled", "event_types", "url"]
    } else if first.contains_key("outcome") {
        &["seq", "at", "event_id", "attempt", "status", "outcome", "error_class", "duration_ms"]
    } else if first.contains_key("reason") {
        &["id", "dead_at", "tenant", "subscription_id", "event_id", "attempts", "reason"]
    } else {
        &[]
    };
    let columns: Vec<&str> =
        if columns.is_empty() { first.keys().map(String::as_str).collect() } else { columns.to_vec() };
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| columns.iter().map(|c| cell(r.get(*c).unwrap_or(&Value::Null))).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max(c.len()))
        .collect();
    let line = |items: Vec<String>| {
        let padded: Vec<String> = items.iter().zip(&widths).map(|(s, w)| format!("{s:w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in cells {
        line(row);
    }
}
