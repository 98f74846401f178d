//! Fuzzing config drive input: whatever a client sends as a gzip+base64
//! string or as a dict, the result is a value or a clean error, never a
//! panic or a huge allocation.

use std::sync::OnceLock;

use base64::Engine as _;
use ferric_image::configdrive::{self, ConfigDrive};
use ferric_image::Error;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Small, so that mutations that happen to decompress to much stay cheap.
const LIMIT: u64 = 1024 * 1024;

fn check_decode(text: &str) -> Result<(), TestCaseError> {
    match configdrive::decode(text, LIMIT) {
        Ok(image) => prop_assert!(image.len() as u64 <= LIMIT),
        Err(Error::Invalid(message)) | Err(Error::TooLarge(message)) => {
            prop_assert!(!message.is_empty())
        }
        Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
    }
    Ok(())
}

/// A real config drive ISO, its gzip bytes and its gzip+base64 text.
fn valid() -> &'static (Vec<u8>, Vec<u8>, String) {
    static VALID: OnceLock<(Vec<u8>, Vec<u8>, String)> = OnceLock::new();
    VALID.get_or_init(|| {
        let drive = ConfigDrive::from_ironic_dict(&serde_json::json!({
            "meta_data": {"hostname": "fuzz"},
            "user_data": "#cloud-config\n",
            "network_data": {"links": []},
        }))
        .unwrap()
        .with_node_defaults("00000000-0000-0000-0000-000000000000", Some("fuzz"));
        let mut iso = std::io::Cursor::new(Vec::new());
        drive.write_iso(&mut iso).unwrap();
        let image = iso.into_inner();
        let text = configdrive::encode(&image);
        let compressed = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .unwrap();
        (image, compressed, text)
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, u8),
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1..64usize).prop_map(|(at, len)| Mutation::Delete(at, len)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match mutation {
        Mutation::Replace(at, b) => bytes[at % len] = *b,
        Mutation::Flip(at, bits) => bytes[at % len] ^= bits,
        Mutation::Truncate(at) => bytes.truncate(at % len),
        Mutation::Insert(at, new) => {
            let at = at % len;
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Delete(at, n) => {
            let at = at % len;
            bytes.drain(at..(at + n).min(len));
        }
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Dicts that look like Ironic's: mostly the right keys, any values.
fn dict_like() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("meta_data".to_owned()),
        Just("network_data".to_owned()),
        Just("user_data".to_owned()),
        Just("vendor_data".to_owned()),
        "[a-z_]{0,12}",
    ];
    prop::collection::btree_map(key, json_value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

fn check_dict(dict: &Value) -> Result<(), TestCaseError> {
    match ConfigDrive::from_ironic_dict(dict) {
        Ok(drive) => {
            let drive = drive.with_node_defaults("uuid", Some("name"));
            let files = drive.files();
            let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
            let mut sorted = paths.clone();
            sorted.sort();
            prop_assert_eq!(&paths, &sorted);
            prop_assert!(paths.contains(&"openstack/latest/meta_data.json"));
            prop_assert!(paths.contains(&"openstack/2012-08-10/meta_data.json"));
        }
        Err(Error::Invalid(message)) => prop_assert!(message.contains("config drive")),
        Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn decode_of_any_string_is_clean(text in ".{0,200}") {
        check_decode(&text)?;
    }

    #[test]
    fn decode_of_base64_looking_text_is_clean(text in "[A-Za-z0-9+/=\n ]{0,300}") {
        check_decode(&text)?;
        check_decode(&format!("H4sI{text}"))?;
    }

    #[test]
    fn decode_of_a_mutated_text_is_clean(mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut text = valid().2.clone().into_bytes();
        for m in &mutations {
            apply(&mut text, m);
        }
        check_decode(&String::from_utf8_lossy(&text))?;
    }

    #[test]
    fn decode_of_mutated_gzip_is_clean(mutations in prop::collection::vec(mutation(), 1..4)) {
        let (image, compressed, _) = valid();
        let mut bytes = compressed.clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        check_decode(&text)?;
        // A mutation that still decodes must give the image back: the gzip
        // CRC catches changed data.
        if let Ok(decoded) = configdrive::decode(&text, LIMIT) {
            if bytes.len() >= compressed.len() && bytes[..compressed.len()] == compressed[..] {
                prop_assert!(decoded.starts_with(image));
            }
        }
    }

    #[test]
    fn from_ironic_dict_of_any_json_is_clean(value in json_value()) {
        check_dict(&value)?;
    }

    #[test]
    fn from_ironic_dict_of_dict_like_json_is_clean(value in dict_like()) {
        check_dict(&value)?;
    }
}
