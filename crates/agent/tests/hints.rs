//! Root device hints: parsing and disk selection, checked against Ironic's
//! documented semantics.

use ferric_agent::hints::{select_root_device, BlockDevice, HintError, RootDeviceHints};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

fn disk(name: &str, size: u64) -> BlockDevice {
    BlockDevice {
        name: name.to_owned(),
        size,
        ..BlockDevice::default()
    }
}

/// Four disks, in "kernel" order:
/// sda 60 GiB HDD, sdb 120 GiB SSD, sdc 10.5 GiB SSD, nvme0n1 2 GiB.
fn devices() -> Vec<BlockDevice> {
    vec![
        BlockDevice {
            model: "OK Model".into(),
            vendor: "ATA".into(),
            serial: "FakeSerial".into(),
            wwn: "0x5000c500a1b2c3d4".into(),
            wwn_with_extension: "0x5000c500a1b2c3d4aa".into(),
            wwn_vendor_extension: "0xaa".into(),
            rotational: true,
            hctl: Some("0:0:0:0".into()),
            by_path: Some("/dev/disk/by-path/pci-0000:00:1f.2-ata-1".into()),
            ..disk("/dev/sda", 60 * GIB)
        },
        BlockDevice {
            model: "Big Model".into(),
            vendor: "Samsung".into(),
            serial: "VeryFakeSerial".into(),
            wwn: "0x6000c500a1b2c3d5".into(),
            wwn_with_extension: "0x6000c500a1b2c3d5bb".into(),
            wwn_vendor_extension: "0xbb".into(),
            rotational: false,
            hctl: Some("1:0:0:0".into()),
            by_path: Some("/dev/disk/by-path/pci-0000:00:1f.2-ata-2".into()),
            ..disk("/dev/sdb", 120 * GIB)
        },
        BlockDevice {
            model: "small model".into(),
            vendor: "WinSys".into(),
            serial: "VeryVeryFakeSerial".into(),
            rotational: false,
            hctl: Some("2:0:0:0".into()),
            ..disk("/dev/sdc", 10 * GIB + GIB / 2)
        },
        BlockDevice {
            model: "Tiny NVMe".into(),
            ..disk("/dev/nvme0n1", 2 * GIB)
        },
    ]
}

fn pick(hints: Value) -> Option<String> {
    let hints = RootDeviceHints::parse(&hints)
        .unwrap_or_else(|e| panic!("hints {hints} should parse: {e}"));
    let devices = devices();
    select_root_device(&devices, Some(&hints)).map(|d| d.name.clone())
}

#[test]
fn every_hint_name_and_operator_selects_the_expected_disk() {
    let cases: Vec<(Value, Option<&str>)> = vec![
        // name, with and without /dev/, any case
        (json!({"name": "/dev/sdb"}), Some("/dev/sdb")),
        (json!({"name": "sdb"}), Some("/dev/sdb")),
        (json!({"name": "SDC"}), Some("/dev/sdc")),
        (json!({"name": "s== /dev/sdc"}), Some("/dev/sdc")),
        (json!({"name": "s!= /dev/sda"}), Some("/dev/sdb")),
        (json!({"name": "<or> sdx <or> /dev/sdc"}), Some("/dev/sdc")),
        (json!({"name": "<in> nvme"}), Some("/dev/nvme0n1")),
        (json!({"name": "sdz"}), None),
        // size in GiB: default ==, all numeric operators, legacy "="
        (json!({"size": 120}), Some("/dev/sdb")),
        (json!({"size": "120"}), Some("/dev/sdb")),
        (json!({"size": "== 60"}), Some("/dev/sda")),
        (json!({"size": "!= 60"}), Some("/dev/sdb")),
        (json!({"size": ">= 70"}), Some("/dev/sdb")),
        (json!({"size": "> 60"}), Some("/dev/sdb")),
        (json!({"size": "<= 60"}), Some("/dev/sda")),
        (json!({"size": "< 60"}), Some("/dev/sdc")),
        (json!({"size": "= 100"}), Some("/dev/sdb")),
        (json!({"size": ">=100"}), Some("/dev/sdb")),
        (json!({"size": "<or> 2 <or> 120"}), Some("/dev/sdb")),
        (json!({"size": "<or> 7 <or> 8"}), None),
        (json!({"size": "<range-in> [ 10 11 ]"}), Some("/dev/sdc")),
        (json!({"size": "<range-in> ( 60 120 ]"}), Some("/dev/sdb")),
        (json!({"size": "<range-in> (60 120)"}), None),
        (json!({"size": "<range-in> [60 120)"}), Some("/dev/sda")),
        // size is bytes / GiB, not rounded: 10.5 GiB is neither 10 nor 11
        (json!({"size": 10}), None),
        (json!({"size": 11}), None),
        (json!({"size": "> 10"}), Some("/dev/sda")),
        (json!({"size": "< 11"}), Some("/dev/sdc")),
        // model / vendor / serial: case-insensitive, spaces allowed
        (json!({"model": "big model"}), Some("/dev/sdb")),
        (json!({"model": "s==BIG MODEL"}), Some("/dev/sdb")),
        (json!({"model": "<in> small"}), Some("/dev/sdc")),
        (json!({"model": "<in> MODEL"}), Some("/dev/sda")),
        (
            json!({"model": "<or> model 5 <or> foomodel <or> small model <or>"}),
            Some("/dev/sdc"),
        ),
        (json!({"vendor": "samsung"}), Some("/dev/sdb")),
        (
            json!({"vendor": "<or> samsung <or> winsys"}),
            Some("/dev/sdb"),
        ),
        (json!({"vendor": "s!= ata"}), Some("/dev/sdb")),
        (json!({"serial": "veryveryfakeserial"}), Some("/dev/sdc")),
        (json!({"serial": "s> veryfakeserial"}), Some("/dev/sdc")),
        (json!({"serial": "s>= veryfakeserial"}), Some("/dev/sdb")),
        (json!({"serial": "s< g"}), Some("/dev/sda")),
        (json!({"serial": "s<= fakeserial"}), Some("/dev/sda")),
        // wwn and its parts
        (json!({"wwn": "0x6000C500A1B2C3D5"}), Some("/dev/sdb")),
        (
            json!({"wwn_with_extension": "0x5000c500a1b2c3d4aa"}),
            Some("/dev/sda"),
        ),
        (json!({"wwn_vendor_extension": "0xBB"}), Some("/dev/sdb")),
        // hctl and by_path (':' is URL-quoted on both sides)
        (json!({"hctl": "2:0:0:0"}), Some("/dev/sdc")),
        (json!({"hctl": "<in> 1:0"}), Some("/dev/sdb")),
        (
            json!({"by_path": "/dev/disk/by-path/pci-0000:00:1f.2-ata-2"}),
            Some("/dev/sdb"),
        ),
        (json!({"by_path": "<in> ata-1"}), Some("/dev/sda")),
        // rotational as bool, string and number
        (json!({"rotational": true}), Some("/dev/sda")),
        (json!({"rotational": false}), Some("/dev/sdb")),
        (json!({"rotational": "false"}), Some("/dev/sdb")),
        (json!({"rotational": "Yes"}), Some("/dev/sda")),
        (json!({"rotational": "0"}), Some("/dev/sdb")),
        (json!({"rotational": 1}), Some("/dev/sda")),
        // all hints must match
        (
            json!({"rotational": false, "size": "<= 20", "model": "<in> small"}),
            Some("/dev/sdc"),
        ),
        (json!({"size": ">= 50", "model": "s==foo"}), None),
        (
            json!({"size": ">= 50", "model": "big model", "serial": "veryfakeserial"}),
            Some("/dev/sdb"),
        ),
    ];
    for (hints, expected) in cases {
        assert_eq!(
            pick(hints.clone()).as_deref(),
            expected,
            "hints {hints} picked the wrong disk"
        );
    }
}

#[test]
fn a_device_missing_the_attribute_never_matches() {
    // nvme0n1 has no serial or hctl: even "not equal" must not pick it.
    assert_eq!(pick(json!({"serial": "s!= nothing", "size": "< 5"})), None);
    assert_eq!(pick(json!({"hctl": "<in> :", "size": "< 5"})), None);
    assert_eq!(pick(json!({"by_path": "<in> pci", "size": "< 15"})), None);
}

#[test]
fn first_matching_device_in_the_given_order_wins() {
    let hints = RootDeviceHints::parse(&json!({"rotational": false})).unwrap();
    let mut devices = devices();
    assert_eq!(
        select_root_device(&devices, Some(&hints)).unwrap().name,
        "/dev/sdb"
    );
    devices.swap(1, 2);
    assert_eq!(
        select_root_device(&devices, Some(&hints)).unwrap().name,
        "/dev/sdc"
    );
}

#[test]
fn without_hints_the_smallest_disk_of_at_least_4_gib_is_chosen() {
    let devices = devices();
    assert_eq!(select_root_device(&devices, None).unwrap().name, "/dev/sdc");
    // null and {} mean "no hints"
    for empty in [json!(null), json!({})] {
        let hints = RootDeviceHints::parse(&empty).unwrap();
        assert!(hints.is_empty());
        assert_eq!(
            select_root_device(&devices, Some(&hints)).unwrap().name,
            "/dev/sdc"
        );
    }
    // exactly 4 GiB qualifies; ties go to the lower name
    let devices = vec![
        disk("/dev/sdb", 4 * GIB),
        disk("/dev/sda", 4 * GIB),
        disk("/dev/sdc", 4 * GIB - 1),
    ];
    assert_eq!(select_root_device(&devices, None).unwrap().name, "/dev/sda");
    // nothing large enough
    let devices = vec![disk("/dev/sda", GIB), disk("/dev/loop0", 4 * GIB - 512)];
    assert_eq!(select_root_device(&devices, None), None);
    assert_eq!(select_root_device(&[], None), None);
}

#[test]
fn hints_that_match_nothing_select_nothing() {
    let hints = RootDeviceHints::parse(&json!({"size": ">= 1000"})).unwrap();
    assert_eq!(select_root_device(&devices(), Some(&hints)), None);
    assert_eq!(select_root_device(&[], Some(&hints)), None);
}

fn parse_err(hints: Value) -> HintError {
    match RootDeviceHints::parse(&hints) {
        Ok(parsed) => panic!("hints {hints} should be refused, parsed as {parsed:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_hints_are_refused_with_an_actionable_message() {
    let e = parse_err(json!({"size": 10, "colour": "red", "disk": "x"}));
    assert_eq!(
        e,
        HintError::UnknownHints {
            names: vec!["colour".into(), "disk".into()]
        }
    );
    let message = e.to_string();
    assert!(message.contains("colour, disk"), "{message}");
    assert!(message.contains("wwn_vendor_extension"), "{message}");

    assert!(matches!(parse_err(json!("sda")), HintError::NotAnObject(_)));
    assert!(matches!(parse_err(json!([1])), HintError::NotAnObject(_)));

    for size in [
        json!("not-int"),
        json!(-123),
        json!(0),
        json!("0"),
        json!(12.5),
        json!(true),
        json!(null),
        json!(">= -1"),
        json!("<or> 123 <or> non-int <or> 789"),
    ] {
        assert!(
            matches!(
                parse_err(json!({ "size": size })),
                HintError::NotAPositiveInteger { .. }
            ),
            "size {size}"
        );
    }
    for field in [
        "model",
        "vendor",
        "serial",
        "wwn",
        "wwn_with_extension",
        "wwn_vendor_extension",
        "name",
        "hctl",
        "by_path",
    ] {
        assert!(
            matches!(
                parse_err(json!({ field: 123 })),
                HintError::NotAString { .. }
            ),
            "{field}"
        );
        assert!(
            matches!(parse_err(json!({ field: "  " })), HintError::Empty { .. }),
            "{field}"
        );
    }
    assert!(matches!(
        parse_err(json!({"size": " "})),
        HintError::Empty { .. }
    ));
    for rotational in [json!("not-bool"), json!(2), json!(null), json!("")] {
        assert!(
            matches!(
                parse_err(json!({ "rotational": rotational })),
                HintError::NotABoolean { .. }
            ),
            "rotational {rotational}"
        );
    }

    // operators that cannot work on the hint's type
    for (hint, operator) in [
        (json!({"model": ">= 5"}), ">="),
        (json!({"wwn": "== 0x1"}), "=="),
        (json!({"size": "s== 10"}), "s=="),
        (json!({"size": "<in> 1"}), "<in>"),
        (json!({"serial": "<all-in> a b"}), "<all-in>"),
        (json!({"model": "<range-in> [ 1 2 ]"}), "<range-in>"),
    ] {
        match parse_err(hint.clone()) {
            HintError::UnsupportedOperator { operator: op, .. } => {
                assert_eq!(op, operator, "{hint}")
            }
            other => panic!("{hint}: unexpected {other:?}"),
        }
    }

    // operators without values
    for hint in [
        json!({"model": "s=="}),
        json!({"model": "<in>"}),
        json!({"vendor": "<or> <or>"}),
        json!({"size": ">="}),
        json!({"size": "<or>"}),
    ] {
        assert!(
            matches!(parse_err(hint.clone()), HintError::MissingValue { .. }),
            "{hint}"
        );
    }

    // malformed ranges
    for range in [
        "<range-in> 10 20",
        "<range-in> [ 20 10 ]",
        "<range-in> { 10 20 ]",
        "<range-in> [ 10 20 30 ]",
        "<range-in> [ a 20 ]",
    ] {
        assert!(
            matches!(
                parse_err(json!({ "size": range })),
                HintError::BadRange { .. }
            ),
            "{range}"
        );
    }
}
