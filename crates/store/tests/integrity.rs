//! The store file itself going wrong: removed, replaced, never created or
//! damaged. Each failure names the file and what to do.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{store_path, temp_store};
use serde_json::json;
use weft_store::{Store, StoreError};

fn assert_mentions(message: &str, words: &[&str]) {
    for word in words {
        assert!(message.contains(word), "{word:?} missing: {message}");
    }
}

/// The store file and SQLite's companions next to it.
fn store_files(path: &Path) -> Vec<String> {
    let dir = path.parent().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn open_existing_creates_nothing_when_the_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let error = Store::open_existing(&path).expect_err("no file");
    assert!(matches!(error, StoreError::Missing { .. }), "{error:?}");
    let message = error.to_string();
    assert_mentions(
        &message,
        &[
            &path.display().to_string(),
            "does not exist",
            "weft lab down",
            "weft lab up",
        ],
    );
    assert!(store_files(&path).is_empty(), "{:?}", store_files(&path));
}

#[test]
fn open_existing_refuses_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    std::fs::write(&path, b"").unwrap();
    let error = Store::open_existing(&path).expect_err("no tables");
    assert!(matches!(error, StoreError::Missing { .. }), "{error:?}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "tables were created"
    );
}

#[test]
fn open_existing_opens_what_open_created() {
    let (dir, store) = temp_store();
    store.put("Namespace", "", "a", &json!({})).unwrap();
    let again = Store::open_existing(&store_path(&dir)).expect("exists");
    assert!(again.get("Namespace", "", "a").unwrap().is_some());
}

#[test]
fn a_removed_or_replaced_file_is_noticed_by_the_handle() {
    let (dir, store) = temp_store();
    let path = store_path(&dir);
    store.check_file().expect("the file is the one opened");
    std::fs::remove_file(&path).unwrap();
    let error = store.check_file().expect_err("removed");
    assert!(matches!(error, StoreError::Removed { .. }), "{error:?}");
    assert_mentions(
        &error.to_string(),
        &[&path.display().to_string(), "removed"],
    );

    // Another file at the same path: a new store, or one moved over it.
    let _other = Store::open(&path).unwrap();
    let error = store.check_file().expect_err("replaced");
    assert!(matches!(error, StoreError::Replaced { .. }), "{error:?}");
    assert_mentions(
        &error.to_string(),
        &[&path.display().to_string(), "replaced"],
    );

    let moved = dir.path().join("other.db");
    Store::open(&moved).unwrap();
    let current = Store::open(&path).unwrap();
    current.check_file().unwrap();
    std::fs::rename(&moved, &path).unwrap();
    assert!(matches!(
        current.check_file(),
        Err(StoreError::Replaced { .. })
    ));
}

#[test]
fn a_file_that_is_not_a_store_is_reported_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    std::fs::write(
        &path,
        "this is not SQLite, just some text that is long enough",
    )
    .unwrap();
    for error in [
        Store::open(&path).expect_err("not a database"),
        Store::open_existing(&path).expect_err("not a database"),
    ] {
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
        corrupt_message_is_useful(&error.to_string(), &path);
    }
}

#[test]
fn a_damaged_store_names_the_file_and_what_to_do_instead_of_retrying() {
    let (dir, store) = temp_store();
    let path = store_path(&dir);
    for i in 0..200 {
        store
            .put(
                "ConfigMap",
                "default",
                &format!("map-{i}"),
                &json!({"data": "x".repeat(200)}),
            )
            .unwrap();
    }
    drop(store);
    // Keep SQLite's header (so it still opens) and scribble over every page
    // after the first.
    let length = std::fs::metadata(&path).unwrap().len();
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(4096)).unwrap();
    file.write_all(&vec![0xA5; (length - 4096) as usize])
        .unwrap();
    drop(file);

    // It opens (the header and schema page are intact); reading fails.
    let store = Store::open(&path).expect("the first page is intact");
    let error = store.list("ConfigMap").expect_err("damaged");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    corrupt_message_is_useful(&error.to_string(), &path);
}

fn corrupt_message_is_useful(message: &str, path: &Path) {
    assert_mentions(
        message,
        &[
            &path.display().to_string(),
            "damaged",
            "backup",
            "weft lab down",
        ],
    );
    assert!(!message.contains("retry"), "{message}");
}
