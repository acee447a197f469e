//! Bad input: property tests of the two places where outside text becomes behaviour (the
//! config parser and the file-name → Graph URL mapping), and a backfill over a tree of hostile
//! names. Nothing may panic, and no file name may steer a request to a URL other than its own
//! target's.
//!
//! The property tests run with a fixed seed so CI is repeatable; `PROPTEST_RNG_SEED=<n>` and
//! `PROPTEST_CASES=<n>` explore further.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use percent_encoding::percent_decode_str;
use photosync::config::{Config, ConfigError, KeyKind, SourceConfig, TargetKind};
use photosync::graph::paths::photo_path;
use photosync::mapping::{map_path, Mapped, Target};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError, TestRunner};
use unicode_normalization::UnicodeNormalization;

use crate::helpers::{text, unique_jpeg, upload_requests, Env};

fn runner(cases: u32) -> TestRunner {
    let defaults = ProptestConfig::default();
    TestRunner::new(ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            defaults.cases
        } else {
            cases
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            defaults.rng_seed
        } else {
            RngSeed::Fixed(0x70_68_6f_74_6f)
        },
        // A failure prints its shrunk input; add it to the named cases below.
        failure_persistence: None,
        ..defaults
    })
}

// ---------------------------------------------------------------------------------------------
// The config parser

/// A config that uses every table, close to what an operator writes.
const FULL_CONFIG: &str = r#"[auth]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "s3cr3t"

[cloud]
name = "global"
login_url = "http://127.0.0.1:8650"
graph_url = "http://127.0.0.1:8650"

[state]
database = "state/photosync.db"

[upload]
method = "PUT"
workers = 4
requests_per_second = 4.0
burst = 4
max_attempts = 8
request_timeout = "60s"
connect_timeout = "10s"
shutdown_grace = "30s"

[image]
mode = "normalize"
max_side = 648
square = false
jpeg_quality = 88
max_pixels = 120000000

[sync]
on_delete = "keep"
max_deletes_per_pass = 50
debounce = "3s"
rescan_interval = "6h"
watch = "auto"
poll_interval = "5m"
retry_failed_after = "24h"

[server]
listen = "127.0.0.1:9898"

[[source]]
root = "photos/users"
target = "user"
key = "upn"

[[source]]
root = "photos/groups"
target = "group"
key = "id"
"#;

const EXAMPLE_CONFIG: &str = include_str!("../../config.example.toml");

/// Values that have broken parsers before: overflows, non-finite floats, empty and huge
/// durations, wrong types, odd URLs and paths.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "65",
    "255",
    "256",
    "4294967296",
    "18446744073709551616",
    "-9223372036854775809",
    "1e400",
    "-1e400",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "0.0",
    "-0.0",
    "1e-320",
    "\"\"",
    "\" \"",
    "\"0s\"",
    "\"1ns\"",
    "\"999ms\"",
    "\"584942417355y\"",
    "\"99999999999999999999999s\"",
    "\"18446744073709551615s\"",
    "\"1h 1h 1h\"",
    "\"-1s\"",
    "\"5\"",
    "\"common\"",
    "\"Organizations\"",
    "\"http://graph.example.com\"",
    "\"http://127.0.0.1:0\"",
    "\"http://[::1]:1\"",
    "\"http://localhost\"",
    "\"https://\"",
    "\"file:///etc/passwd\"",
    "\"ftp://x\"",
    "\"${CREDENTIALS_DIRECTORY}/x\"",
    "\"${CREDENTIALS_DIRECTORY}\"",
    "\"/\"",
    "\"..\"",
    "\"../../..\"",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "\"0.0.0.0:0\"",
    "\"[::]:99999\"",
    "\"not an address\"",
    "true",
    "[]",
    "{}",
    "[[]]",
    "{ a = 1 }",
    "[1, \"a\"]",
    "'''\nmulti\n'''",
    "\"\"\"",
    "1979-05-27T07:32:00Z",
    "\"PUT\"",
    "\"patch\"",
    "\"DELETE\"",
    "\"passthrough\"",
    "\"delete\"",
    "\"poll\"",
    "\"user\"",
    "\"contact\"",
    "\"group\"",
    "\"id\"",
    "\"upn\"",
    "\"ps256\"",
    "\"usgov-dod\"",
];

/// Lines that change a config's shape: repeated, unknown or misplaced tables and keys.
const LINES: &[&str] = &[
    "[auth]",
    "[upload]",
    "[[source]]",
    "[source]",
    "[[upload]]",
    "[cloud.extra]",
    "[]",
    "[[",
    "workers = 4",
    "client_secret_file = \"secret\"",
    "certificate_file = \"cert.pem\"",
    "root = \"photos/users/sub\"",
    "root = \"photos\"",
    "target = \"group\"",
    "key = \"upn\"",
    "unknown = 1",
    "upload.workers = 9",
    "\"quoted key\" = 1",
    "= 1",
    "a.b.c.d.e.f = 1",
    "x = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "#",
    "\u{feff}",
    "\r",
    "\0",
];

#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    SetValue { line: usize, value: String },
    InsertLine { line: usize, text: String },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    Truncate { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    let value = prop_oneof![
        4 => proptest::sample::select(VALUES).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => "[ -~]{0,12}",
    ];
    let line = prop_oneof![
        3 => proptest::sample::select(LINES).prop_map(str::to_owned),
        1 => "[ -~]{0,20}",
    ];
    prop_oneof![
        2 => (any::<usize>(), 0usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        2 => (any::<usize>(), prop_oneof!["[\\[\\]=\"'#.,{}\\n\\\\ a-z0-9]{1,6}", any::<String>()])
            .prop_map(|(at, text)| Edit::Insert { at, text }),
        5 => (any::<usize>(), value).prop_map(|(line, value)| Edit::SetValue { line, value }),
        2 => (any::<usize>(), line).prop_map(|(line, text)| Edit::InsertLine { line, text }),
        1 => any::<usize>().prop_map(|line| Edit::DuplicateLine { line }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines { a, b }),
        1 => any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

/// The char boundary at or before `at % (len + 1)`.
fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, e: &Edit) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let n = lines.len();
    match e {
        Edit::Delete { at, len } => {
            let start = boundary(text, *at);
            let end = boundary(text, start.saturating_add(*len).min(text.len()));
            let end = end.max(start);
            return format!("{}{}", &text[..start], &text[end..]);
        }
        Edit::Insert { at, text: t } => {
            let at = boundary(text, *at);
            return format!("{}{t}{}", &text[..at], &text[at..]);
        }
        Edit::Truncate { at } => return text[..boundary(text, *at)].to_owned(),
        Edit::SetValue { line, value } => {
            let l = &mut lines[line % n];
            *l = match l.split_once('=') {
                Some((k, _)) => format!("{k}= {value}"),
                None => value.clone(),
            };
        }
        Edit::InsertLine { line, text: t } => lines.insert(line % (n + 1), t.clone()),
        Edit::DuplicateLine { line } => {
            let l = lines[line % n].clone();
            lines.insert(line % n, l);
        }
        Edit::SwapLines { a, b } => lines.swap(a % n, b % n),
    }
    lines.join("\n")
}

/// What must hold for any text: no panic; an error that names a line names one in the text; a
/// config that parses has absolute paths and values within the documented ranges.
fn parse_checked(text: &str) -> Result<bool, TestCaseError> {
    check_parsed(
        text,
        &Config::parse(text, Path::new("/etc/photosync/config.toml")),
    )
}

fn check_parsed(text: &str, parsed: &Result<Config, ConfigError>) -> Result<bool, TestCaseError> {
    match parsed {
        Ok(cfg) => {
            prop_assert!(cfg.state.database.is_absolute());
            prop_assert!(!cfg.sources.is_empty());
            prop_assert!(cfg.sources.iter().all(|s| s.root.is_absolute()));
            prop_assert!((1..=64).contains(&cfg.upload.workers));
            prop_assert!(cfg.upload.requests_per_second.is_finite());
            prop_assert!(cfg.upload.requests_per_second > 0.0);
            prop_assert!(cfg.upload.burst >= 1 && cfg.upload.max_attempts >= 1);
            prop_assert!((1..=100).contains(&cfg.image.jpeg_quality));
            // What the engine builds from it at start must not panic either.
            let _ = photosync::engine::limiter::Limiter::new(
                cfg.upload.requests_per_second,
                cfg.upload.burst,
            );
            let _ = photosync::image::Pipeline::new(cfg.image.settings()).fingerprint();
            let _ = (cfg.cloud.login_url(), cfg.cloud.graph_url());
            Ok(true)
        }
        Err(ConfigError::Invalid {
            line: Some(l), key, ..
        }) => {
            // The line named is the key's own, or (for a key left at its default) its table's.
            let named = text.lines().nth(l.wrapping_sub(1));
            prop_assert!(
                named.is_some_and(|n| n.trim_start().starts_with('[') || key_of(n) == leaf_of(key)),
                "`{key}` located at line {l}: {named:?}"
            );
            Ok(false)
        }
        Err(_) => Ok(false),
    }
}

/// `workers` for `upload.workers`, `root` for `source[1].root`, `auth` for `auth`.
fn leaf_of(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// The key a TOML line sets, if it sets one.
fn key_of(line: &str) -> &str {
    match line.split_once('=') {
        Some((k, _)) if !line.trim_start().starts_with(['#', '[']) => k.trim(),
        _ => "",
    }
}

/// Every key of both base configs set to every odd value, in turn: the exhaustive part of the
/// search. An error about the key that was set must name the line that set it.
#[test]
fn every_key_set_to_every_odd_value() {
    let path = Path::new("/etc/photosync/config.toml");
    let mut parsed = 0;
    for base in [FULL_CONFIG, EXAMPLE_CONFIG] {
        let lines: Vec<&str> = base.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let key = key_of(line);
            if key.is_empty() {
                continue;
            }
            for value in VALUES {
                let text = apply(
                    base,
                    &Edit::SetValue {
                        line: i,
                        value: (*value).to_owned(),
                    },
                );
                let result = Config::parse(&text, path);
                if check_parsed(&text, &result).unwrap_or_else(|e| panic!("{key} = {value}: {e}")) {
                    parsed += 1;
                }
                if let Err(ConfigError::Invalid {
                    key: k, line: l, ..
                }) = &result
                {
                    if leaf_of(k) == key {
                        let named = l.and_then(|l| text.lines().nth(l - 1)).map(key_of);
                        assert_eq!(
                            named,
                            Some(key),
                            "`{k}` set to {value} on line {}: {l:?}",
                            i + 1
                        );
                    }
                }
            }
        }
    }
    assert!(parsed > 100, "{parsed}");
}

/// Found by the test above: a table header with a comment, as in config.example.toml, hid
/// the lines of every key below it.
#[test]
fn an_error_below_a_commented_table_header_names_its_line() {
    let text = EXAMPLE_CONFIG.replace("debounce = \"3s\"", "debounce = \"2h\"");
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("debounce"))
        .unwrap();
    assert!(text.lines().nth(line - 2).unwrap().starts_with("[sync] "));
    let e = Config::parse(&text, Path::new("/etc/photosync/config.toml")).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "/etc/photosync/config.toml:{line}: `sync.debounce`"
        )),
        "{e}"
    );
}

#[test]
fn config_parser_never_panics_on_arbitrary_text() {
    let text = prop_oneof![
        any::<String>(),
        // TOML-shaped noise reaches deeper than random Unicode.
        vec(
            prop_oneof![
                proptest::sample::select(LINES).prop_map(str::to_owned),
                ("[a-z_.]{1,12}", proptest::sample::select(VALUES))
                    .prop_map(|(k, v)| format!("{k} = {v}")),
                "[ -~]{0,30}",
            ],
            0..30
        )
        .prop_map(|l| l.join("\n")),
    ];
    runner(2000)
        .run(&text, |t| parse_checked(&t).map(|_| ()))
        .unwrap();
}

#[test]
fn config_parser_never_panics_on_mutated_valid_configs() {
    for base in [FULL_CONFIG, EXAMPLE_CONFIG] {
        assert!(
            parse_checked(base).unwrap(),
            "the base config must be valid: {:?}",
            Config::parse(base, Path::new("/etc/photosync/config.toml")).err()
        );
    }
    let parsed = Cell::new(0u32);
    let cases = (
        proptest::sample::select(vec![FULL_CONFIG, EXAMPLE_CONFIG]),
        vec(edit(), 1..4),
    );
    runner(3000)
        .run(&cases, |(base, edits)| {
            let text = edits.iter().fold(base.to_owned(), |t, e| apply(&t, e));
            if parse_checked(&text)? {
                parsed.set(parsed.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!("config: {} of the mutated configs parsed", parsed.get());
    // Mutations that leave the config valid reach the validation and the engine's start-up
    // code; if none did, this test would check only the TOML parser.
    assert!(parsed.get() >= 100, "only {} mutants parsed", parsed.get());
}

// ---------------------------------------------------------------------------------------------
// File name → Graph target

/// Characters with a meaning in URLs, paths or Unicode normalisation.
const PUNCT: &[char] = &[
    '.', '.', '.', '/', '\\', '%', '%', '#', '?', '@', '@', '$', '\'', '~', '+', '=', ':', ';',
    '&', '(', ')', '[', ']', '{', '}', '|', '<', '>', '"', '`', '^', '*', '!', ',', '-', '_', '2',
    'e', 'E', 'F', '\u{e9}', '\u{c9}', '\u{301}', '\u{130}', '\u{df}', '\u{fb00}', '\u{212b}',
    '\u{1e9e}', '\u{ac00}',
];

/// Whitespace, controls and invisible characters.
const WEIRD: &[char] = &[
    ' ', '\t', '\n', '\r', '\0', '\u{1}', '\u{1b}', '\u{7f}', '\u{85}', '\u{a0}', '\u{200b}',
    '\u{200e}', '\u{2028}', '\u{202e}', '\u{3000}', '\u{feff}',
];

const PHOTO_EXTENSIONS: &[&str] = &[
    "jpg", "JPG", "jpeg", "png", "Png", "jfif", "gif", "webp", "tiff", "bmp",
];

const EXTENSIONS: &[&str] = &[
    "jpg", "JPG", "jpeg", "png", "Png", "jfif", "gif", "webp", "tiff", "bmp", "txt", "part",
    "jpg~", "", "jpg.tmp",
];

fn name_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        4 => proptest::sample::select(PUNCT),
        1 => proptest::sample::select(WEIRD),
        1 => any::<char>(),
    ]
}

fn word(max: usize) -> impl Strategy<Value = String> {
    vec(name_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

fn guid() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
}

/// A file stem: UPN-like, GUID-like, dotted, percent-laden, or anything.
fn stem() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => (word(12), word(12)).prop_map(|(l, d)| format!("{l}@{d}")),
        2 => guid(),
        1 => Just("..".to_owned()),
        1 => Just("%2e%2e".to_owned()),
        1 => Just("$x'y@contoso.com".to_owned()),
        1 => Just("a/../b@contoso.com".to_owned()),
        2 => word(20),
    ]
}

/// A folder in the tree: anything, including `..` and `.`.
fn folder() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => word(10),
        1 => Just("..".to_owned()),
        1 => Just(".".to_owned()),
        1 => Just("%2e%2e".to_owned()),
        1 => Just("owner@contoso.com".to_owned()),
        1 => guid(),
    ]
}

/// Pads (or cuts) `stem` so that `stem.ext` is exactly 255 bytes, the longest name Linux allows.
fn name_of_255_bytes(stem: &str, fill: char, ext: &str) -> String {
    let budget = 255 - ext.len() - 1;
    let mut s: String = String::new();
    for c in stem.chars().chain(std::iter::repeat(fill)) {
        if s.len() + c.len_utf8() > budget {
            break;
        }
        s.push(c);
    }
    while s.len() < budget {
        s.push('a');
    }
    format!("{s}.{ext}")
}

fn rel_path() -> impl Strategy<Value = String> {
    let file = prop_oneof![
        6 => (stem(), proptest::sample::select(EXTENSIONS))
            .prop_map(|(s, e)| if e.is_empty() { s } else { format!("{s}.{e}") }),
        1 => (stem(), name_char(), proptest::sample::select(PHOTO_EXTENSIONS))
            .prop_map(|(s, c, e)| name_of_255_bytes(&s, c, e)),
    ];
    (vec(folder(), 0..3), file).prop_map(|(mut dirs, file)| {
        dirs.push(file);
        dirs.join("/")
    })
}

fn sources() -> Vec<SourceConfig> {
    [
        (TargetKind::User, KeyKind::Upn),
        (TargetKind::User, KeyKind::Id),
        (TargetKind::Group, KeyKind::Id),
        (TargetKind::Contact, KeyKind::Id),
    ]
    .into_iter()
    .map(|(target, key)| SourceConfig::new(PathBuf::from("/srv/photos"), target, key))
    .collect()
}

fn decode(segment: &str) -> Result<String, TestCaseError> {
    percent_decode_str(segment)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| TestCaseError::fail(format!("`{segment}` does not decode: {e}")))
}

/// `/users/{x}` or `/users('{x}')`, decoded back to the user (or owner) it names.
fn user_of(segment: &str) -> Result<String, TestCaseError> {
    if let Some(quoted) = segment
        .strip_prefix("users('")
        .and_then(|s| s.strip_suffix("')"))
    {
        Ok(decode(quoted)?.replace("''", "'"))
    } else {
        let plain = segment.strip_prefix("users/").unwrap_or("\u{fffd}");
        prop_assert!(!plain.contains('/'), "{segment}");
        decode(plain)
    }
}

/// What must hold for every photo path a file name can produce.
fn check_photo_path(t: &Target) -> Result<(), TestCaseError> {
    let p = photo_path(t);
    prop_assert!(
        p.starts_with("/users/") || p.starts_with("/users('") || p.starts_with("/groups/"),
        "{p}"
    );
    prop_assert!(
        p.chars().all(|c| c.is_ascii_graphic()),
        "whitespace, control or non-ASCII character in {p:?}"
    );
    prop_assert!(!p.contains(['#', '?', '\\']), "raw #, ? or \\ in {p}");
    let bytes = p.as_bytes();
    for (at, _) in p.match_indices('%') {
        prop_assert!(
            bytes.len() > at + 2
                && bytes[at + 1].is_ascii_hexdigit()
                && bytes[at + 2].is_ascii_hexdigit(),
            "% not followed by two hex digits in {p}"
        );
    }
    for seg in p.split('/') {
        let lower = seg.to_ascii_lowercase().replace("%2e", ".");
        prop_assert!(lower != "." && lower != "..", "dot segment in {p}");
    }
    // A URL parser must leave the path exactly as built: nothing resolved, nothing re-encoded,
    // no query or fragment split off.
    let url = url::Url::parse(&format!("https://graph.microsoft.com/v1.0{p}/$value"))
        .map_err(|e| TestCaseError::fail(format!("{p}: {e}")))?;
    prop_assert_eq!(url.path(), format!("/v1.0{p}/$value"));
    prop_assert!(url.query().is_none() && url.fragment().is_none());

    // And it decodes back to exactly the target's fields.
    let rest = p.strip_prefix('/').unwrap_or(&p);
    match t.kind {
        TargetKind::User => {
            let seg = rest.strip_suffix("/photo").unwrap_or("\u{fffd}");
            prop_assert_eq!(user_of(seg)?, t.id.clone(), "{}", p);
        }
        TargetKind::Group => {
            let seg = rest
                .strip_prefix("groups/")
                .and_then(|s| s.strip_suffix("/photo"))
                .unwrap_or("\u{fffd}");
            prop_assert!(!seg.contains('/'), "{p}");
            prop_assert_eq!(decode(seg)?, t.id.clone());
        }
        TargetKind::Contact => {
            let body = rest.strip_suffix("/photo").unwrap_or("\u{fffd}");
            let (head, id) = body.rsplit_once("/contacts/").unwrap_or(("", "\u{fffd}"));
            prop_assert!(!id.contains('/'), "{p}");
            prop_assert_eq!(decode(id)?, t.id.clone());
            let (owner, folder) = match head.split_once("/contactFolders/") {
                Some((o, f)) => (o, Some(f)),
                None => (head, None),
            };
            prop_assert_eq!(Some(user_of(owner)?), t.owner.clone(), "{}", p);
            match (folder, &t.folder) {
                (Some(f), Some(want)) => {
                    prop_assert!(!f.contains('/'), "{p}");
                    prop_assert_eq!(&decode(f)?, want);
                }
                (None, None) => {}
                _ => prop_assert!(false, "folder mismatch in {p} for {t:?}"),
            }
        }
    }
    Ok(())
}

#[test]
fn every_file_name_maps_to_a_safe_url_of_its_own_target() {
    let sources = sources();
    let photos = Cell::new(0u32);
    let long = Cell::new(0u32);
    runner(4000)
        .run(&rel_path(), |rel| {
            for s in &sources {
                // NFC and NFD spellings of one name are one target (or equally refused).
                let nfc: String = rel.nfc().collect();
                let nfd: String = rel.nfd().collect();
                let mapped = map_path(s, Path::new(&nfc));
                prop_assert_eq!(&mapped, &map_path(s, Path::new(&nfd)), "{:?}", rel);
                prop_assert_eq!(&mapped, &map_path(s, Path::new(&rel)), "{:?}", rel);
                if let Mapped::Photo(t) = mapped {
                    photos.set(photos.get() + 1);
                    if rel.rsplit('/').next().is_some_and(|f| f.len() == 255) {
                        long.set(long.get() + 1);
                    }
                    check_photo_path(&t)?;
                    prop_assert_eq!(Target::from_key(&t.key()).map(|k| k.key()), Some(t.key()));
                }
            }
            Ok(())
        })
        .unwrap();
    // The generator must reach the interesting branch, long names included.
    eprintln!(
        "mapping: {} photos, {} of them 255-byte names",
        photos.get(),
        long.get()
    );
    assert!(photos.get() >= 800, "only {} photos mapped", photos.get());
    assert!(
        long.get() >= 20,
        "only {} 255-byte names mapped",
        long.get()
    );
}

#[test]
fn arbitrary_bytes_as_a_path_never_panic() {
    let sources = sources();
    runner(3000)
        .run(&vec(any::<u8>(), 0..300), |bytes| {
            let rel = Path::new(std::ffi::OsStr::from_bytes(&bytes));
            for s in &sources {
                if let Mapped::Photo(t) = map_path(s, rel) {
                    check_photo_path(&t)?;
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn named_hostile_names() {
    let [user, _, group, contact] = <[SourceConfig; 4]>::try_from(sources()).unwrap();
    let path_of = |s: &SourceConfig, rel: &str| match map_path(s, Path::new(rel)) {
        Mapped::Photo(t) => {
            check_photo_path(&t).unwrap();
            Some(photo_path(&t))
        }
        _ => None,
    };
    for (rel, want) in [
        (
            "ren\u{e9}@contoso.com.jpg",
            Some("/users/ren%C3%A9@contoso.com/photo"),
        ),
        (
            "rene\u{301}@contoso.com.jpg",
            Some("/users/ren%C3%A9@contoso.com/photo"),
        ),
        (
            "pct%41@contoso.com.jpg",
            Some("/users/pct%2541@contoso.com/photo"),
        ),
        (
            "q?x@contoso.com.jpg",
            Some("/users/q%3Fx@contoso.com/photo"),
        ),
        (
            "back\\slash@contoso.com.jpg",
            Some("/users/back%5Cslash@contoso.com/photo"),
        ),
        (
            "g#EXT#@contoso.com.jpg",
            Some("/users/g%23EXT%23@contoso.com/photo"),
        ),
        (
            "$adm'in@contoso.com.jpg",
            Some("/users('$adm%27%27in@contoso.com')/photo"),
        ),
        (
            "a..b@contoso.com.jpg",
            Some("/users/a..b@contoso.com/photo"),
        ),
        ("../x@contoso.com.jpg", None),
        ("..@contoso.com.jpg", None),
        ("nul\0@contoso.com.jpg", None),
        ("tab\t@contoso.com.jpg", None),
        ("ls\u{2028}@contoso.com.jpg", None),
    ] {
        assert_eq!(path_of(&user, rel).as_deref(), want, "{rel:?}");
    }
    assert_eq!(
        path_of(&group, "../0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee.jpg"),
        None
    );
    assert_eq!(
        path_of(&contact, "owner@contoso.com/%2e%2e/c%2F1.jpg").as_deref(),
        Some("/users/owner@contoso.com/contactFolders/%252e%252e/contacts/c%252F1/photo")
    );
    assert_eq!(
        path_of(&contact, "owner@contoso.com/a b/c?d.jpg").as_deref(),
        Some("/users/owner@contoso.com/contactFolders/a%20b/contacts/c%3Fd/photo")
    );
}

// ---------------------------------------------------------------------------------------------
// End to end

use std::os::unix::ffi::OsStrExt;

fn set_mtime(path: &Path, t: SystemTime) {
    let f = std::fs::File::options().append(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_of_hostile_names_syncs_only_what_it_should_where_it_should() {
    let env = Env::new().await;
    let long_local: String = "\u{e9}".repeat(119) + "x";
    let long_upn = format!("{long_local}@contoso.com");
    assert_eq!(format!("{long_upn}.jpg").len(), 255);
    let owner = "owner@contoso.com";

    // (file under the tree, the UPN or contact it is the photo of, the raw path it must go to)
    let good: Vec<(String, String, String)> =
        vec![
        (
            format!("users/{long_upn}.jpg"),
            long_upn.clone(),
            format!("/v1.0/users/{}x@contoso.com/photo/$value", "%C3%A9".repeat(119)),
        ),
        (
            "users/nfd/rene\u{301}@contoso.com.jpg".into(),
            "ren\u{e9}@contoso.com".into(),
            "/v1.0/users/ren%C3%A9@contoso.com/photo/$value".into(),
        ),
        (
            "users/guest_fabrikam.com#EXT#@contoso.com.jpg".into(),
            "guest_fabrikam.com#EXT#@contoso.com".into(),
            "/v1.0/users/guest_fabrikam.com%23EXT%23@contoso.com/photo/$value".into(),
        ),
        (
            "users/q?x@contoso.com.jpg".into(),
            "q?x@contoso.com".into(),
            "/v1.0/users/q%3Fx@contoso.com/photo/$value".into(),
        ),
        (
            "users/pct%41@contoso.com.jpg".into(),
            "pct%41@contoso.com".into(),
            "/v1.0/users/pct%2541@contoso.com/photo/$value".into(),
        ),
        (
            "users/%2e%2e/back\\slash@contoso.com.jpg".into(),
            "back\\slash@contoso.com".into(),
            "/v1.0/users/back%5Cslash@contoso.com/photo/$value".into(),
        ),
        (
            "users/$adm'in@contoso.com.jpg".into(),
            "$adm'in@contoso.com".into(),
            "/v1.0/users('$adm%27%27in@contoso.com')/photo/$value".into(),
        ),
        (
            "users/a..b@contoso.com.jpg".into(),
            "a..b@contoso.com".into(),
            "/v1.0/users/a..b@contoso.com/photo/$value".into(),
        ),
        (
            format!("contacts/{owner}/%2e%2e/c%2F1.jpg"),
            "c%2F1".into(),
            "/v1.0/users/owner@contoso.com/contactFolders/%252e%252e/contacts/c%252F1/photo/$value"
                .into(),
        ),
    ];
    let owner_id = env.add_user(owner);
    env.emu.add_contact(&owner_id, Some("%2e%2e"), "c%2F1");
    for (n, (rel, who, _)) in good.iter().enumerate() {
        if rel.starts_with("users/") {
            env.add_user(who);
        }
        env.put(rel, &unique_jpeg(n as u32));
    }
    // The NFC spelling of the NFD name above, older: a conflict the NFD file wins.
    let nfc = env.put("users/ren\u{e9}@contoso.com.png", &unique_jpeg(100));
    set_mtime(&nfc, SystemTime::now() - Duration::from_secs(3600));

    // Names that must not reach Graph at all.
    for (n, rel) in [
        "users/ctl\u{1}x@contoso.com.jpg",
        "users/new\nline@contoso.com.jpg",
        "users/esc\u{1b}[31m@contoso.com.jpg",
        "users/del\u{7f}@contoso.com.jpg",
        "users/nel\u{85}@contoso.com.jpg",
        "users/ls\u{2028}@contoso.com.jpg",
        "users/ends with space@contoso.com.jpg",
        "groups/not-a-guid.jpg",
        "contacts/c-without-owner.jpg",
    ]
    .into_iter()
    .enumerate()
    {
        env.put(rel, &unique_jpeg(200 + n as u32));
    }
    let not_utf8 = std::ffi::OsStr::from_bytes(b"latin1-\xe9@contoso.com.jpg");
    std::fs::write(env.path("users").join(not_utf8), unique_jpeg(210)).unwrap();
    // Links: a folder loop, a link to itself, links out of the root to a file and a folder.
    let outside = env.put("outside/victim@contoso.com.jpg", &unique_jpeg(300));
    env.add_user("victim@contoso.com");
    env.add_user("mallory@contoso.com");
    std::os::unix::fs::symlink(env.path("users"), env.path("users/loop")).unwrap();
    std::os::unix::fs::symlink(
        env.path("users/self@contoso.com.jpg"),
        env.path("users/self@contoso.com.jpg"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, env.path("users/mallory@contoso.com.jpg")).unwrap();
    std::os::unix::fs::symlink(env.path("outside"), env.path("users/outdir")).unwrap();

    let out = env.run(&["backfill"]).await;
    let all = text(&out);
    assert!(!all.contains("panicked"), "{all}");
    // The refused names are failures to report (exit 1), not a crash (101) or a fatal error (3).
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("conflict 1"), "{all}");
    assert!(
        all.contains("symlink leads out of the source root"),
        "{all}"
    );
    assert!(all.contains("symlink loop"), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches(": bad_name: ").count(),
        10,
        "every refused name is listed:\n{stdout}"
    );

    // Every request went where it should, and every intended target got exactly one upload.
    let expected: BTreeSet<&str> = good.iter().map(|(_, _, p)| p.as_str()).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in env.emu.requests() {
        if r.kind == graph_emulator::RequestKind::Token {
            assert_eq!(
                r.raw_path,
                format!("/{}/oauth2/v2.0/token", crate::helpers::TENANT)
            );
            continue;
        }
        if r.kind == graph_emulator::RequestKind::PhotoMeta {
            // The etag read after an upload: the same photo's metadata, nothing else.
            assert!(
                expected
                    .iter()
                    .any(|e| e.strip_suffix("/$value") == Some(r.raw_path.as_str())),
                "unintended metadata read {}",
                r.raw_path
            );
            continue;
        }
        assert!(
            expected.contains(r.raw_path.as_str()),
            "unintended request {} {} ({})",
            r.method,
            r.raw_path,
            r.status
        );
        assert_eq!(r.status, 200, "{} {}", r.method, r.raw_path);
        *seen.entry(r.raw_path.clone()).or_default() += 1;
    }
    assert_eq!(
        seen.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        expected
    );
    // One upload each. The exception is a limitation, not a goal: the first pass that meets
    // two files of one target queues whichever it meets first, and when a worker takes that
    // one before the other is met (a loaded machine), the losing photo goes out before the
    // winner replaces it. The winner is always sent last, and later passes never send the loser.
    let nfc_nfd = good[1].2.as_str();
    for (path, n) in &seen {
        let allowed = if path == nfc_nfd { 1..=2 } else { 1..=1 };
        assert!(allowed.contains(n), "{n} uploads to {path}: {seen:?}");
    }
    let last = upload_requests(&env.emu)
        .into_iter()
        .rfind(|r| r.raw_path == nfc_nfd)
        .unwrap();
    assert_eq!(last.body_len, unique_jpeg(1).len());

    // With the right bytes: NFC and NFD were one target, and the newer file won.
    for (n, (rel, who, _)) in good.iter().enumerate() {
        let photo = if rel.starts_with("contacts/") {
            env.emu.contact_photo(&owner_id, Some("%2e%2e"), who)
        } else {
            env.emu.user_photo(who)
        };
        assert!(
            photo.is_some_and(|p| p.bytes == unique_jpeg(n as u32)),
            "{rel}"
        );
    }
    assert!(env.emu.user_photo("victim@contoso.com").is_none());
    assert!(env.emu.user_photo("mallory@contoso.com").is_none());
}

/// The mapping-file reader (HR's CSV exports) on arbitrary rows: it never panics, every
/// non-blank data row either applies or is reported with its own line number, and what applies
/// is exactly the valid rows whose file name no other row gives a different target.
#[test]
fn mapping_file_reader_accounts_for_every_row() {
    use photosync::mapping::file::MapTable;
    let cell = prop_oneof![
        Just(String::new()),
        "[0-9]{1,6}",
        "[a-z]{1,5}@contoso\\.com",
        "[ -~]{0,12}",
        "\\PC{0,8}",
        Just("\"quoted, with; both\"".to_owned()),
        Just("\"unterminated".to_owned()),
    ];
    let row = vec(cell, 0..4);
    let rows = vec(row, 0..30);
    let sep = prop_oneof![Just(','), Just(';')];
    runner(300)
        .run(&(rows, sep, any::<bool>()), |(rows, sep, bom)| {
            let mut text = String::new();
            if bom {
                text.push('\u{feff}');
            }
            text.push_str(&["file", "upn", "note\n"].join(&sep.to_string()));
            for r in &rows {
                text.push_str(&r.join(&sep.to_string()));
                text.push('\n');
            }
            let parsed = MapTable::parse(
                text.as_bytes(),
                Path::new("hr.csv"),
                "file",
                "upn",
                KeyKind::Upn,
            );
            let Ok((table, problems)) = parsed else {
                return Ok(());
            };
            let data_lines = text.lines().count() as u64;
            for p in &problems {
                prop_assert!(
                    (2..=data_lines.max(2)).contains(&p.line),
                    "problem on line {} of {data_lines}: {}",
                    p.line,
                    p.message
                );
            }
            prop_assert!(table.len() + problems.len() <= rows.len() + 1);
            // Plain ASCII cells without quotes or separators: the outcome of every row is known.
            let plain = rows.iter().flatten().all(|c| {
                c.chars()
                    .all(|ch| (' '..='~').contains(&ch) && !"\",;".contains(ch))
            });
            if !plain {
                return Ok(());
            }
            let key = |f: &str| {
                let f = f.trim().to_lowercase();
                match f.rsplit_once('.') {
                    Some((stem, ext))
                        if !stem.is_empty()
                            && [
                                "jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "tif", "tiff",
                                "bmp",
                            ]
                            .contains(&ext) =>
                    {
                        stem.to_owned()
                    }
                    _ => f,
                }
            };
            let mut bad_lines = Vec::new();
            let mut wanted: BTreeMap<String, Option<String>> = BTreeMap::new();
            let mut first_line: BTreeMap<String, u64> = BTreeMap::new();
            for (i, r) in rows.iter().enumerate() {
                let line = i as u64 + 2;
                if r.iter().all(|c| c.trim().is_empty()) {
                    continue;
                }
                let (Some(file), Some(upn)) = (r.first(), r.get(1)) else {
                    bad_lines.push(line);
                    continue;
                };
                let Ok(upn) = photosync::mapping::normalise_key(upn.trim(), KeyKind::Upn) else {
                    bad_lines.push(line);
                    continue;
                };
                if file.trim().is_empty() {
                    bad_lines.push(line);
                    continue;
                }
                let k = key(file);
                match wanted.get_mut(&k) {
                    None => {
                        wanted.insert(k.clone(), Some(upn));
                        first_line.insert(k, line);
                    }
                    Some(v) => {
                        bad_lines.push(line);
                        if v.as_deref() != Some(upn.as_str()) {
                            *v = None;
                        }
                    }
                }
            }
            let got: Vec<u64> = problems.iter().map(|p| p.line).collect();
            prop_assert_eq!(got, bad_lines, "{:?}", problems);
            for (k, v) in &wanted {
                prop_assert_eq!(table.get(k), v.as_deref(), "file {}", k);
            }
            prop_assert_eq!(table.len(), wanted.values().filter(|v| v.is_some()).count());
            Ok(())
        })
        .unwrap();
}
