//! Tables or JSON on stdout.

use crate::Format;
use comfy_table::{presets::UTF8_FULL, Table};
use serde_json::Value;

pub struct Output {
    format: Format,
}

/// A cell: strings bare, null empty, everything else compact JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Output {
    pub fn new(format: Format) -> Output {
        Output { format }
    }

    fn json(&self, value: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    }

    /// One resource as Field/Value rows.
    pub fn record(&self, value: &Value) {
        if self.format == Format::Json {
            return self.json(value);
        }
        println!("{}", record_table(value));
    }

    /// A list with the given (header, field) columns.
    pub fn list(&self, items: &Value, columns: &[(&str, &str)]) {
        if self.format == Format::Json {
            return self.json(items);
        }
        println!("{}", list_table(items, columns));
    }

    /// A list with every field of its items as columns.
    pub fn full_list(&self, items: &Value) {
        if self.format == Format::Json {
            return self.json(items);
        }
        let mut keys: Vec<String> = Vec::new();
        for item in items.as_array().into_iter().flatten() {
            for k in item.as_object().into_iter().flat_map(|m| m.keys()) {
                if k != "links" && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        let columns: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), k.as_str())).collect();
        println!("{}", list_table(items, &columns));
    }

    pub fn validation(&self, value: &Value) {
        if self.format == Format::Json {
            return self.json(value);
        }
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL)
            .set_header(["Interface", "Result", "Reason"]);
        for (iface, r) in value.as_object().into_iter().flatten() {
            table.add_row([iface.clone(), cell(&r["result"]), cell(&r["reason"])]);
        }
        println!("{table}");
    }

    pub fn note(&self, text: &str) {
        if self.format == Format::Table {
            println!("{text}");
        }
    }
}

pub fn record_table(value: &Value) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL).set_header(["Field", "Value"]);
    for (k, v) in value.as_object().into_iter().flatten() {
        if k != "links" && !v.is_array() || k == "traits" {
            table.add_row([k.clone(), cell(v)]);
        }
    }
    table
}

pub fn list_table(items: &Value, columns: &[(&str, &str)]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL)
        .set_header(columns.iter().map(|(h, _)| *h));
    for item in items.as_array().into_iter().flatten() {
        table.add_row(columns.iter().map(|(_, f)| cell(&item[*f])));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_show_the_chosen_columns() {
        let nodes = json!([{"uuid": "u1", "name": null, "maintenance": false, "provision_state": "wait call-back"}]);
        let text = list_table(
            &nodes,
            &[
                ("UUID", "uuid"),
                ("Name", "name"),
                ("Provisioning State", "provision_state"),
                ("Maintenance", "maintenance"),
            ],
        )
        .to_string();
        assert!(
            text.contains("wait call-back") && text.contains("false") && text.contains("UUID"),
            "{text}"
        );
    }

    #[test]
    fn records_leave_out_links_and_show_nested_json_compactly() {
        let node = json!({"uuid": "u1", "driver_info": {"a": 1}, "links": [{"href": "x"}], "traits": ["CUSTOM_A"]});
        let text = record_table(&node).to_string();
        assert!(
            text.contains("{\"a\":1}") && text.contains("CUSTOM_A"),
            "{text}"
        );
        assert!(!text.contains("href"), "{text}");
    }
}
