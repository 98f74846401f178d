//! Root device hints: which disk the image is written to.
//!
//! The operator sets `root_device` in a node's properties or instance_info,
//! e.g. `{"size": ">= 60", "rotational": false}`. The grammar and matching
//! follow Ironic's and IPA's `parse_root_device_hints` /
//! `match_root_device_hints` (oslo.utils' specs matcher):
//!
//! - String hints (`name`, `model`, `vendor`, `serial`, `wwn`,
//!   `wwn_with_extension`, `wwn_vendor_extension`, `hctl`, `by_path`) are
//!   trimmed, lower-cased and URL-quoted on both sides before comparing, so
//!   every string comparison is case-insensitive. Operators: `s==` (the
//!   default), `s!=`, `s<`, `s<=`, `s>`, `s>=`, `<in>` (substring) and
//!   `<or> a <or> b`.
//! - `size` is in GiB: a positive integer with `==` (the default), `!=`, `<`,
//!   `<=`, `>`, `>=`, `=` (legacy spelling of `>=`), `<or> 100 <or> 200`, or
//!   `<range-in> [ 10 100 )`. The device's size is `bytes / GiB` without
//!   rounding, as IPA computes it, so a 10.5 GiB disk matches `>= 10` but not
//!   `== 10`.
//! - `rotational` is a Boolean: `true`/`false` or one of oslo's strings
//!   (`1 t true on y yes`, `0 f false off n no`).
//!
//! Differences from IPA, all of them on purpose: `name` also matches without
//! the `/dev/` prefix (`sda` is `/dev/sda`); `<or>` on `size` compares numbers
//! (IPA compares a float with strings, so it never matched); operators that
//! IPA accepts but can only fail on at match time (numeric operators on string
//! hints, string operators on `size`, `<all-in>`) are rejected when parsing.
//! A device whose attribute is unknown (empty) never matches a hint on it.

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

/// IPA's default rule without hints: the smallest disk of at least 4 GiB.
pub const MIN_ROOT_DEVICE_SIZE: u64 = 4 * GIB;

const GIB: u64 = 1 << 30;

/// A disk as the hardware inventory reports it (IPA's `BlockDevice`).
/// Empty strings mean "unknown".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel device path, e.g. `/dev/sda`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    pub model: String,
    pub vendor: String,
    pub serial: String,
    pub wwn: String,
    pub wwn_with_extension: String,
    pub wwn_vendor_extension: String,
    pub rotational: bool,
    /// SCSI address `host:channel:target:lun`.
    pub hctl: Option<String>,
    /// `/dev/disk/by-path/...` link pointing at this device.
    pub by_path: Option<String>,
}

/// Why a `root_device` hint set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HintError {
    #[error("root device hints must be a JSON object of hint name to expression, got {0}")]
    NotAnObject(String),
    #[error("unknown root device hint(s) {}; valid hints are: {}", .names.join(", "), VALID_HINTS.join(", "))]
    UnknownHints { names: Vec<String> },
    #[error("root device hint \"{hint}\" is empty")]
    Empty { hint: String },
    #[error("root device hint \"{hint}\" must be a string, got {value}")]
    NotAString { hint: String, value: String },
    #[error("root device hint \"{hint}\" must be a positive integer number of GiB, got {value}")]
    NotAPositiveInteger { hint: String, value: String },
    #[error(
        "root device hint \"{hint}\" must be a Boolean (true/false, 1/0, yes/no, on/off, t/f, y/n), got {value}"
    )]
    NotABoolean { hint: String, value: String },
    #[error("root device hint \"{hint}\": operator \"{operator}\" needs a value")]
    MissingValue { hint: String, operator: String },
    #[error("root device hint \"{hint}\": operator \"{operator}\" cannot be used here; {allowed}")]
    UnsupportedOperator {
        hint: String,
        operator: String,
        allowed: &'static str,
    },
    #[error(
        "root device hint \"{hint}\": bad range \"{value}\"; expected e.g. \"<range-in> [ 10 100 )\" with '[' or '(' and ']' or ')' and lower <= upper"
    )]
    BadRange { hint: String, value: String },
}

/// Hint names Ironic accepts, in its documentation's order.
pub const VALID_HINTS: &[&str] = &[
    "model",
    "vendor",
    "serial",
    "size",
    "wwn",
    "wwn_with_extension",
    "wwn_vendor_extension",
    "rotational",
    "hctl",
    "by_path",
    "name",
];

const STRING_OPERATORS: &str = "string hints take s==, s!=, s<, s<=, s>, s>=, <in> or <or>";
const SIZE_OPERATORS: &str = "size takes ==, !=, <, <=, >, >=, =, <or> or <range-in>";

/// A parsed, validated set of root device hints; a device must match all.
#[derive(Debug, Clone, PartialEq)]
pub struct RootDeviceHints {
    hints: Vec<Hint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextField {
    Name,
    Model,
    Vendor,
    Serial,
    Wwn,
    WwnWithExtension,
    WwnVendorExtension,
    Hctl,
    ByPath,
}

impl TextField {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "name" => Self::Name,
            "model" => Self::Model,
            "vendor" => Self::Vendor,
            "serial" => Self::Serial,
            "wwn" => Self::Wwn,
            "wwn_with_extension" => Self::WwnWithExtension,
            "wwn_vendor_extension" => Self::WwnVendorExtension,
            "hctl" => Self::Hctl,
            "by_path" => Self::ByPath,
            _ => return None,
        })
    }

    fn value(self, device: &BlockDevice) -> &str {
        match self {
            Self::Name => &device.name,
            Self::Model => &device.model,
            Self::Vendor => &device.vendor,
            Self::Serial => &device.serial,
            Self::Wwn => &device.wwn,
            Self::WwnWithExtension => &device.wwn_with_extension,
            Self::WwnVendorExtension => &device.wwn_vendor_extension,
            Self::Hctl => device.hctl.as_deref().unwrap_or(""),
            Self::ByPath => device.by_path.as_deref().unwrap_or(""),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Compare {
    fn holds(self, ordering: Option<Ordering>) -> bool {
        let Some(ordering) = ordering else {
            return false;
        };
        match self {
            Self::Eq => ordering == Ordering::Equal,
            Self::Ne => ordering != Ordering::Equal,
            Self::Lt => ordering == Ordering::Less,
            Self::Le => ordering != Ordering::Greater,
            Self::Gt => ordering == Ordering::Greater,
            Self::Ge => ordering != Ordering::Less,
        }
    }
}

/// String values are kept normalised (lower-cased, URL-quoted).
#[derive(Debug, Clone, PartialEq)]
enum TextMatch {
    Compare(Compare, String),
    Contains(String),
    OneOf(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum SizeMatch {
    Compare(Compare, u64),
    OneOf(Vec<u64>),
    Range {
        lower: f64,
        lower_inclusive: bool,
        upper: f64,
        upper_inclusive: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Hint {
    Text(TextField, TextMatch),
    Size(SizeMatch),
    Rotational(bool),
}

/// Operators of oslo's specs matcher, longest spelling first so a prefix
/// (`<` of `<=`, `=` of `==`) never shadows a longer operator.
const OPERATORS: &[&str] = &[
    "<range-in>",
    "<all-in>",
    "<or>",
    "<in>",
    "s==",
    "s!=",
    "s<=",
    "s>=",
    "s<",
    "s>",
    "==",
    "!=",
    "<=",
    ">=",
    "<",
    ">",
    "=",
];

/// Splits a trimmed, lower-cased expression into its leading operator (if
/// any) and the rest.
fn split_operator(expression: &str) -> (Option<&'static str>, &str) {
    for op in OPERATORS {
        if let Some(rest) = expression.strip_prefix(op) {
            return (Some(op), rest.trim());
        }
    }
    (None, expression)
}

/// The `<or>` alternatives: `"<or> a <or> b c"` -> `["a", "b c"]`.
fn alternatives(rest: &str) -> Vec<&str> {
    rest.split("<or>")
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// Python's `urllib.parse.quote(value)`: everything but ASCII letters,
/// digits, `_.-~` and `/` becomes `%XX` (per UTF-8 byte).
fn url_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"_.-~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// How Ironic normalises both a hint value and a device attribute.
fn normalize(value: &str) -> String {
    url_quote(&value.trim().to_lowercase())
}

fn expression_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_text(field: TextField, hint: &str, value: &Value) -> Result<TextMatch, HintError> {
    let Value::String(raw) = value else {
        return Err(HintError::NotAString {
            hint: hint.to_owned(),
            value: value.to_string(),
        });
    };
    let expression = raw.trim().to_lowercase();
    if expression.is_empty() {
        return Err(HintError::Empty {
            hint: hint.to_owned(),
        });
    }
    let (op, rest) = split_operator(&expression);
    let missing = |op: &str| HintError::MissingValue {
        hint: hint.to_owned(),
        operator: op.to_owned(),
    };
    // `name` is matched with or without the /dev/ prefix.
    let value_of = |v: &str| {
        if field == TextField::Name && !v.starts_with('/') {
            normalize(&format!("/dev/{v}"))
        } else {
            normalize(v)
        }
    };
    let compare = match op {
        None => Compare::Eq,
        Some("s==") => Compare::Eq,
        Some("s!=") => Compare::Ne,
        Some("s<") => Compare::Lt,
        Some("s<=") => Compare::Le,
        Some("s>") => Compare::Gt,
        Some("s>=") => Compare::Ge,
        Some("<in>") => {
            if rest.is_empty() {
                return Err(missing("<in>"));
            }
            return Ok(TextMatch::Contains(normalize(rest)));
        }
        Some("<or>") => {
            let values = alternatives(rest);
            if values.is_empty() {
                return Err(missing("<or>"));
            }
            return Ok(TextMatch::OneOf(values.into_iter().map(value_of).collect()));
        }
        Some(other) => {
            return Err(HintError::UnsupportedOperator {
                hint: hint.to_owned(),
                operator: other.to_owned(),
                allowed: STRING_OPERATORS,
            })
        }
    };
    if rest.is_empty() {
        return Err(missing(op.unwrap_or("s==")));
    }
    Ok(TextMatch::Compare(compare, value_of(rest)))
}

fn parse_positive(hint: &str, expression: &str, text: &str) -> Result<u64, HintError> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(HintError::NotAPositiveInteger {
            hint: hint.to_owned(),
            value: expression.to_owned(),
        }),
    }
}

fn parse_range(hint: &str, expression: &str, rest: &str) -> Result<SizeMatch, HintError> {
    let bad = || HintError::BadRange {
        hint: hint.to_owned(),
        value: expression.to_owned(),
    };
    // oslo wants "( 10 100 ]" with spaces; accept "(10 100]" as well.
    let spaced = rest
        .replace('(', " ( ")
        .replace('[', " [ ")
        .replace(')', " ) ")
        .replace(']', " ] ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let [open, lower, upper, close] = tokens.as_slice() else {
        return Err(bad());
    };
    let lower_inclusive = match *open {
        "[" => true,
        "(" => false,
        _ => return Err(bad()),
    };
    let upper_inclusive = match *close {
        "]" => true,
        ")" => false,
        _ => return Err(bad()),
    };
    let number = |t: &str| t.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0);
    let (Some(lower), Some(upper)) = (number(lower), number(upper)) else {
        return Err(bad());
    };
    if lower > upper {
        return Err(bad());
    }
    Ok(SizeMatch::Range {
        lower,
        lower_inclusive,
        upper,
        upper_inclusive,
    })
}

fn parse_size(hint: &str, value: &Value) -> Result<SizeMatch, HintError> {
    if !matches!(value, Value::String(_) | Value::Number(_)) {
        return Err(HintError::NotAPositiveInteger {
            hint: hint.to_owned(),
            value: value.to_string(),
        });
    }
    let expression = expression_text(value).trim().to_lowercase();
    if expression.is_empty() {
        return Err(HintError::Empty {
            hint: hint.to_owned(),
        });
    }
    let (op, rest) = split_operator(&expression);
    if op.is_some() && rest.is_empty() {
        return Err(HintError::MissingValue {
            hint: hint.to_owned(),
            operator: op.unwrap_or_default().to_owned(),
        });
    }
    let compare = match op {
        None | Some("==") => Compare::Eq,
        Some("!=") => Compare::Ne,
        Some("<") => Compare::Lt,
        Some("<=") => Compare::Le,
        Some(">") => Compare::Gt,
        // "=" is oslo's legacy spelling of ">=".
        Some(">=") | Some("=") => Compare::Ge,
        Some("<or>") => {
            let values = alternatives(rest)
                .into_iter()
                .map(|v| parse_positive(hint, &expression, v))
                .collect::<Result<Vec<_>, _>>()?;
            if values.is_empty() {
                return Err(HintError::MissingValue {
                    hint: hint.to_owned(),
                    operator: "<or>".to_owned(),
                });
            }
            return Ok(SizeMatch::OneOf(values));
        }
        Some("<range-in>") => return parse_range(hint, &expression, rest),
        Some(other) => {
            return Err(HintError::UnsupportedOperator {
                hint: hint.to_owned(),
                operator: other.to_owned(),
                allowed: SIZE_OPERATORS,
            })
        }
    };
    Ok(SizeMatch::Compare(
        compare,
        parse_positive(hint, &expression, rest)?,
    ))
}

/// oslo's `bool_from_string(strict=True)`.
fn parse_bool(hint: &str, value: &Value) -> Result<bool, HintError> {
    let text = match value {
        Value::Bool(b) => return Ok(*b),
        Value::String(s) => s.trim().to_lowercase(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    match text.as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Ok(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Ok(false),
        _ => Err(HintError::NotABoolean {
            hint: hint.to_owned(),
            value: value.to_string(),
        }),
    }
}

impl RootDeviceHints {
    /// Parses and validates a node's `root_device` value. `null` and `{}`
    /// give an empty hint set (the default disk choice applies).
    pub fn parse(hints: &Value) -> Result<Self, HintError> {
        let object = match hints {
            Value::Null => return Ok(Self { hints: Vec::new() }),
            Value::Object(object) => object,
            other => return Err(HintError::NotAnObject(other.to_string())),
        };
        let mut unknown: Vec<String> = object
            .keys()
            .filter(|name| !VALID_HINTS.contains(&name.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(HintError::UnknownHints { names: unknown });
        }
        let mut parsed = Vec::with_capacity(object.len());
        for (name, value) in object {
            let hint = match name.as_str() {
                "size" => Hint::Size(parse_size(name, value)?),
                "rotational" => Hint::Rotational(parse_bool(name, value)?),
                other => {
                    let field = TextField::from_name(other)
                        .expect("hint names were checked against VALID_HINTS");
                    Hint::Text(field, parse_text(field, name, value)?)
                }
            };
            parsed.push(hint);
        }
        Ok(Self { hints: parsed })
    }

    /// True when no hint was given.
    pub fn is_empty(&self) -> bool {
        self.hints.is_empty()
    }

    /// Whether `device` satisfies every hint.
    pub fn matches(&self, device: &BlockDevice) -> bool {
        self.hints.iter().all(|hint| hint.matches(device))
    }
}

impl Hint {
    fn matches(&self, device: &BlockDevice) -> bool {
        match self {
            Self::Rotational(wanted) => device.rotational == *wanted,
            Self::Size(size) => size.matches(device.size as f64 / GIB as f64),
            Self::Text(field, text) => {
                let raw = field.value(device);
                let raw = if *field == TextField::Name && !raw.starts_with('/') {
                    format!("/dev/{raw}")
                } else {
                    raw.to_owned()
                };
                let actual = normalize(&raw);
                // Ironic skips a device whose attribute is empty.
                !actual.is_empty() && text.matches(&actual)
            }
        }
    }
}

impl TextMatch {
    fn matches(&self, actual: &str) -> bool {
        match self {
            Self::Compare(compare, wanted) => compare.holds(Some(actual.cmp(wanted.as_str()))),
            Self::Contains(wanted) => actual.contains(wanted.as_str()),
            Self::OneOf(wanted) => wanted.iter().any(|w| w == actual),
        }
    }
}

impl SizeMatch {
    fn matches(&self, gib: f64) -> bool {
        match self {
            Self::Compare(compare, wanted) => compare.holds(gib.partial_cmp(&(*wanted as f64))),
            Self::OneOf(wanted) => wanted.iter().any(|w| gib == *w as f64),
            Self::Range {
                lower,
                lower_inclusive,
                upper,
                upper_inclusive,
            } => {
                let above = if *lower_inclusive {
                    gib >= *lower
                } else {
                    gib > *lower
                };
                let below = if *upper_inclusive {
                    gib <= *upper
                } else {
                    gib < *upper
                };
                above && below
            }
        }
    }
}

impl fmt::Display for BlockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes", self.name, self.size)?;
        if !self.model.is_empty() {
            write!(f, ", model {}", self.model)?;
        }
        if !self.serial.is_empty() {
            write!(f, ", serial {}", self.serial)?;
        }
        write!(f, ")")
    }
}

/// The device to install on: the first (in the given order) that matches
/// all hints; without hints (or with an empty set), IPA's default: the
/// smallest device of at least 4 GiB, ties broken by name. `None` when
/// nothing qualifies.
pub fn select_root_device<'a>(
    devices: &'a [BlockDevice],
    hints: Option<&RootDeviceHints>,
) -> Option<&'a BlockDevice> {
    match hints {
        Some(hints) if !hints.is_empty() => devices.iter().find(|d| hints.matches(d)),
        _ => devices
            .iter()
            .filter(|d| d.size >= MIN_ROOT_DEVICE_SIZE)
            .min_by(|a, b| (a.size, &a.name).cmp(&(b.size, &b.name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_python() {
        assert_eq!(url_quote("foo bar"), "foo%20bar");
        assert_eq!(url_quote("1:0:0:0"), "1%3A0%3A0%3A0");
        assert_eq!(
            url_quote("/dev/disk/by-path/a_b.c~d"),
            "/dev/disk/by-path/a_b.c~d"
        );
        assert_eq!(url_quote("é"), "%C3%A9");
    }

    #[test]
    fn operators_prefer_the_longest_spelling() {
        assert_eq!(split_operator("<= 5"), (Some("<="), "5"));
        assert_eq!(split_operator("== 5"), (Some("=="), "5"));
        assert_eq!(split_operator("= 5"), (Some("="), "5"));
        assert_eq!(split_operator("s<=x"), (Some("s<="), "x"));
        assert_eq!(split_operator("<in> x"), (Some("<in>"), "x"));
        assert_eq!(split_operator("sda"), (None, "sda"));
    }
}
