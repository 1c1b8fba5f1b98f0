//! The store encrypted at rest (SQLCipher), on real files: what a lost phone's file shows.

use std::path::{Path, PathBuf};

use qiaomen_client_core::{Store, StoreError, StoreKey, StoreOptions};
use qiaomen_protocol::{doc::Author, ids::*, schema::*};

const NAME: &str = "欧阳秀英";
const ID_NUMBER: &str = "11010519491231002X";
const PHONE: &str = "13812345678";

fn author() -> Author {
    Author {
        user: UserId::new(),
        device: DeviceId::new(),
    }
}

fn key(byte: u8) -> StoreKey {
    StoreKey::new(&[byte; StoreKey::LEN]).unwrap()
}

fn with_key(key: Option<StoreKey>) -> StoreOptions {
    StoreOptions {
        key,
        ..StoreOptions::default()
    }
}

/// A household whose head has a name, an ID number and a phone number; then enough edits of
/// its door number that the store compacts it (a snapshot beside appended changes).
fn seed(store: &mut Store) -> HouseholdId {
    let mut h = Household::new(HouseholdId::new(), GridId::new("g1"), "东村三组", "3");
    let m = Member {
        id: MemberId::new(),
        relation: Relation::Head,
        name: NAME.into(),
        id_number: Some(Sensitive::new(ID_NUMBER)),
        birth_date: None,
        phone: Some(Sensitive::new(PHONE)),
        tags: vec![],
    };
    h.members.insert(m.id, m);
    let id = store.create_household(&h).unwrap();
    for i in 0..70 {
        store
            .edit_household(id, |h| {
                h.door_number = format!("{i}");
                Ok(())
            })
            .unwrap();
    }
    id
}

/// The store file and its journals, as a thief would copy them.
fn files(path: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|s| {
            let mut p = path.as_os_str().to_owned();
            p.push(s);
            PathBuf::from(p)
        })
        .filter(|p| p.exists())
        .collect()
}

/// Which of the resident's data the files show in the clear.
fn leaked(path: &Path) -> Vec<&'static str> {
    let bytes: Vec<u8> = files(path)
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    [NAME, ID_NUMBER, PHONE]
        .into_iter()
        .filter(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes()))
        .collect()
}

fn digest(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(path)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

#[test]
fn an_encrypted_store_shows_none_of_a_residents_data_and_reopens_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let me = author();

    // The scan finds what a plaintext store holds: it can fail.
    let plain = dir.path().join("plain.db");
    {
        let mut store = Store::open(&plain, me, with_key(None)).unwrap();
        seed(&mut store);
        assert!(
            !leaked(&plain).is_empty(),
            "the plaintext store shows the resident's data"
        );
    }

    let path = dir.path().join("phone.db");
    let id = {
        let mut store = Store::open(&path, me, with_key(Some(key(7)))).unwrap();
        let id = seed(&mut store);
        assert_eq!(leaked(&path), Vec::<&str>::new(), "while open (WAL)");
        id
    };
    assert_eq!(leaked(&path), Vec::<&str>::new(), "closed");

    let mut store = Store::open(&path, me, with_key(Some(key(7)))).unwrap();
    let h = store.household(id).unwrap();
    assert_eq!(h.door_number, "69");
    let head = h.members.values().next().unwrap();
    assert_eq!(head.name, NAME);
    assert_eq!(head.id_number.as_ref().map(|s| s.reveal()), Some(ID_NUMBER));
}

#[test]
fn a_wrong_key_or_no_key_is_a_clear_error_and_leaves_the_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let me = author();
    let id = {
        let mut store = Store::open(&path, me, with_key(Some(key(7)))).unwrap();
        seed(&mut store)
    };
    let before = digest(&path);

    let wrong = Store::open(&path, me, with_key(Some(key(8)))).map(|_| ());
    assert!(matches!(wrong, Err(StoreError::WrongKey)), "{wrong:?}");
    assert!(matches!(
        Store::open_enrolled(&path, with_key(Some(key(8)))).map(|_| ()),
        Err(StoreError::WrongKey)
    ));
    assert!(matches!(
        Store::install_id_at(&path, Some(&key(8))),
        Err(StoreError::WrongKey)
    ));
    let none = Store::open(&path, me, with_key(None)).map(|_| ());
    assert!(matches!(none, Err(StoreError::CorruptStore)), "{none:?}");
    assert_eq!(digest(&path), before, "the file is untouched");

    // The message says what to do and shows no key.
    let msg = StoreError::WrongKey.to_string();
    assert!(msg.contains("key") && !msg.contains("0707"), "{msg}");

    let mut store = Store::open(&path, me, with_key(Some(key(7)))).unwrap();
    assert_eq!(store.household(id).unwrap().door_number, "69");
}

#[test]
fn a_plaintext_store_is_encrypted_on_its_first_opening_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let me = author();
    let (id, pending) = {
        let mut store = Store::open(&path, me, with_key(None)).unwrap();
        let id = seed(&mut store);
        (id, store.pending_change_count().unwrap())
    };
    assert!(!leaked(&path).is_empty());

    {
        let mut store = Store::open(&path, me, with_key(Some(key(9)))).unwrap();
        assert_eq!(store.pending_change_count().unwrap(), pending);
        assert_eq!(store.household(id).unwrap().door_number, "69");
        store
            .edit_household(id, |h| {
                h.door_number = "after".into();
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(leaked(&path), Vec::<&str>::new());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("encrypting"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Now only the key opens it; the edit made after encrypting is there.
    assert!(matches!(
        Store::open(&path, me, with_key(None)).map(|_| ()),
        Err(StoreError::CorruptStore)
    ));
    let mut store = Store::open(&path, me, with_key(Some(key(9)))).unwrap();
    assert_eq!(store.household(id).unwrap().door_number, "after");
    assert_eq!(store.pending_change_count().unwrap(), pending + 1);
}

#[test]
fn a_copy_left_half_made_by_a_crash_is_thrown_away() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let me = author();
    let id = {
        let mut store = Store::open(&path, me, with_key(None)).unwrap();
        seed(&mut store)
    };
    // A crash while encrypting leaves the plaintext store and a partial copy beside it.
    let copy = dir.path().join("phone.db.encrypting");
    std::fs::write(&copy, vec![0x5a; 10_000]).unwrap();

    let mut store = Store::open(&path, me, with_key(Some(key(3)))).unwrap();
    assert_eq!(store.household(id).unwrap().door_number, "69");
    assert!(!copy.exists());
    drop(store);
    assert_eq!(leaked(&path), Vec::<&str>::new());
}

#[test]
fn a_plaintext_store_open_elsewhere_is_not_encrypted_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let me = author();
    let mut open = Store::open(&path, me, with_key(None)).unwrap();
    let id = seed(&mut open);

    let second = Store::open(&path, me, with_key(Some(key(4)))).map(|_| ());
    assert!(matches!(second, Err(StoreError::InUse)), "{second:?}");
    // The open store goes on working, and still reads as plaintext.
    open.edit_household(id, |h| {
        h.door_number = "still".into();
        Ok(())
    })
    .unwrap();
    drop(open);
    let mut store = Store::open(&path, me, with_key(None)).unwrap();
    assert_eq!(store.household(id).unwrap().door_number, "still");
}

#[test]
fn a_key_of_the_wrong_length_is_refused() {
    assert!(matches!(
        StoreKey::new(b"short"),
        Err(StoreError::BadKey { len: 5 })
    ));
}
