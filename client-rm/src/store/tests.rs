//! The store's own tests: round trips, incremental writes, migration, passphrase, file modes.

use super::*;
use crate::client::GroupHandle;
use std::os::unix::fs::PermissionsExt as _;

/// Cheap argon2id for tests (the construction is what is tested, not the cost).
const FAST: KdfParams = KdfParams {
    m_kib: 64,
    t: 1,
    p: 1,
};

const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";

/// A state with `groups` groups; values are recognisable so a raw scan can look for them.
fn state(groups: usize) -> ClientState {
    let mut g = serde_json::Map::new();
    for i in 0..groups {
        g.insert(
            format!("{:032x}", 0xabc000 + i),
            serde_json::json!({
                "ear_key": SECRET, "signer_public": format!("{i:064x}"),
                "credential_key": SECRET, "wrapper_key": SECRET,
                "signature_ear_key": SECRET, "members": {},
            }),
        );
    }
    serde_json::from_value(serde_json::json!({
        "name": "alice", "device": "00", "client_key": SECRET, "client_credential": "00",
        "as_credentials": "00", "credential_key": SECRET, "wrapper_key": SECRET,
        "wai_key": SECRET, "contacts": {}, "user_id": "00", "client_id": "00",
        "client_auth_key": SECRET, "user_auth_key": SECRET, "friendship_token": SECRET,
        "add_package_key": SECRET, "queue_ratchet": SECRET, "qs_public_key": "00",
        "domain": "example.org", "groups": g,
        "key_packages": { "kp1": { "init_private": SECRET, "signer_public": "01",
                                   "signature_ear_key": SECRET } },
    }))
    .unwrap()
}

fn mls(groups: usize) -> MlsStore {
    (0..groups)
        .flat_map(|i| {
            [
                (format!("tree{i}").into_bytes(), vec![i as u8; 300]),
                (format!("secrets{i}").into_bytes(), vec![7; 120]),
            ]
        })
        .collect()
}

fn message(n: u8) -> Event {
    Event::Message {
        group: GroupHandle(vec![n; 16]),
        sender: 1,
        plaintext: format!("hello {n}").into_bytes(),
    }
}

fn same_state(a: &ClientState, b: &ClientState) {
    assert_eq!(
        serde_json::to_value(a).unwrap(),
        serde_json::to_value(b).unwrap()
    );
}

fn open(dir: &Path, options: &StoreOptions) -> (ClientStore, Option<Loaded>) {
    ClientStore::open(dir, options).unwrap()
}

#[test]
fn what_is_committed_is_what_is_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, loaded) = open(tmp.path(), &StoreOptions::default());
    assert!(loaded.is_none(), "a new store holds no client");
    let (mut st, m) = (state(3), mls(3));
    let ids = s.commit(&mut st, &m, &[message(1), message(2)]).unwrap();
    assert_eq!(ids, vec![1, 2]);
    drop(s);

    let (s, loaded) = open(tmp.path(), &StoreOptions::default());
    let loaded = loaded.unwrap();
    same_state(&loaded.state, &st);
    assert_eq!(loaded.state.groups.len(), 3);
    assert_eq!(loaded.mls, m);
    assert_eq!(s.events().unwrap(), vec![(1, message(1)), (2, message(2))]);
}

#[test]
fn a_commit_writes_only_what_changed_whatever_the_number_of_groups() {
    let mut per_message = Vec::new();
    for groups in [1, 100] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, _) = open(tmp.path(), &StoreOptions::default());
        let (mut st, mut m) = (state(groups), mls(groups));
        s.commit(&mut st, &m, &[]).unwrap();
        let before = s.stats();
        assert_eq!(before.rows_written as usize, 1 + groups + 1 + 2 * groups);

        // Nothing changed: nothing written, no transaction.
        s.commit(&mut st, &m, &[]).unwrap();
        assert_eq!(s.stats(), before);

        // A received message: the ratchet (core row), one group's secrets, the event.
        st.queue_ratchet = "11".repeat(40);
        m.insert(b"secrets0".to_vec(), vec![8; 120]);
        s.commit(&mut st, &m, &[message(9)]).unwrap();
        let after = s.stats();
        assert_eq!(after.transactions, before.transactions + 1);
        assert_eq!(after.rows_written - before.rows_written, 3);
        per_message.push(after.bytes_written - before.bytes_written);
    }
    assert_eq!(
        per_message[0], per_message[1],
        "bytes per message at 1 and 100 groups: {per_message:?}"
    );
}

#[test]
fn removed_groups_and_entries_are_deleted_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &StoreOptions::default());
    let (mut st, mut m) = (state(3), mls(3));
    s.commit(&mut st, &m, &[]).unwrap();
    let gone = st.groups.keys().next().unwrap().clone();
    st.groups.remove(&gone);
    st.key_packages.clear();
    m.remove(&b"tree1"[..]);
    s.commit(&mut st, &m, &[]).unwrap();
    assert_eq!(s.stats().rows_deleted, 3);
    drop(s);
    let (_, loaded) = open(tmp.path(), &StoreOptions::default());
    let loaded = loaded.unwrap();
    assert!(!loaded.state.groups.contains_key(&gone));
    assert!(loaded.state.key_packages.is_empty());
    assert_eq!(loaded.mls, m);
}

#[test]
fn shown_events_go_and_their_numbers_are_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &StoreOptions::default());
    let mut st = state(1);
    s.commit(
        &mut st,
        &MlsStore::new(),
        &[message(1), message(2), message(3)],
    )
    .unwrap();
    s.events_shown(2).unwrap();
    assert_eq!(s.events().unwrap(), vec![(3, message(3))]);
    s.events_shown(3).unwrap();
    drop(s);
    let (mut s, _) = open(tmp.path(), &StoreOptions::default());
    assert_eq!(s.event_count().unwrap(), 0);
    let ids = s.commit(&mut st, &MlsStore::new(), &[message(4)]).unwrap();
    assert_eq!(ids, vec![4]);
}

#[test]
fn an_old_client_json_directory_is_migrated_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (st, m) = (state(2), mls(2));
    legacy::write(tmp.path(), &st, &m).unwrap();
    let (_, loaded) = open(tmp.path(), &StoreOptions::default());
    let loaded = loaded.expect("migrated");
    same_state(&loaded.state, &st);
    assert_eq!(loaded.mls, m);
    assert!(
        !tmp.path().join(legacy::FILE).exists(),
        "the old file is gone"
    );
    let (_, again) = open(tmp.path(), &StoreOptions::default());
    same_state(&again.unwrap().state, &st);
}

#[test]
fn a_migration_interrupted_before_the_file_was_removed_keeps_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut st, m) = (state(1), mls(1));
    legacy::write(tmp.path(), &st, &m).unwrap();
    let (s, _) = open(tmp.path(), &StoreOptions::default());
    drop(s);
    // As if the process had died after the commit, before the removal; the store moved on.
    let (mut s, _) = open(tmp.path(), &StoreOptions::default());
    st.queue_ratchet = "22".repeat(40);
    s.commit(&mut st, &m, &[]).unwrap();
    drop(s);
    legacy::write(tmp.path(), &state(1), &m).unwrap();
    let (_, loaded) = open(tmp.path(), &StoreOptions::default());
    assert_eq!(loaded.unwrap().state.queue_ratchet, st.queue_ratchet);
    assert!(!tmp.path().join(legacy::FILE).exists());
}

/// What a thief looks for: a secret, a group id (as the store keys it), a message, the handle,
/// an OpenMLS entry's key.
fn needles() -> Vec<Vec<u8>> {
    vec![
        SECRET.as_bytes().to_vec(),
        hex::decode(format!("{:032x}", 0xabc000)).unwrap(),
        // A message's text, as an unsealed event holds it.
        serde_json::to_vec(&b"hello 5".to_vec()).unwrap(),
        b"alice".to_vec(),
        b"tree1".to_vec(),
    ]
}

fn protected(p: &str) -> StoreOptions {
    StoreOptions {
        passphrase: Some(Zeroizing::new(p.as_bytes().to_vec())),
        kdf: Some(FAST),
    }
}

#[test]
fn a_passphrase_store_opens_only_with_its_passphrase_and_shows_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &protected("pw one"));
    let (mut st, m) = (state(2), mls(2));
    s.commit(&mut st, &m, &[message(5)]).unwrap();
    drop(s);

    for (options, wanted) in [
        (StoreOptions::default(), "passphrase-protected"),
        (protected("pw two"), "wrong passphrase"),
    ] {
        match ClientStore::open(tmp.path(), &options) {
            Err(ClientError::Passphrase(why)) => assert!(why.contains(wanted), "{why}"),
            other => panic!("opened with {options:?}: {:?}", other.map(|_| ())),
        }
    }
    let (s, loaded) = open(tmp.path(), &protected("pw one"));
    same_state(&loaded.unwrap().state, &st);
    assert_eq!(s.events().unwrap(), vec![(1, message(5))]);
    drop(s);

    // The files, as a thief reads them: no secret, no group id, no message, no handle.
    let mut bytes = Vec::new();
    for f in std::fs::read_dir(tmp.path()).unwrap() {
        bytes.extend(std::fs::read(f.unwrap().path()).unwrap());
    }
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!bytes.is_empty());
    for needle in needles() {
        assert!(
            !find(&needle),
            "{:?} is readable",
            String::from_utf8_lossy(&needle)
        );
    }
}

#[test]
fn the_same_scan_finds_everything_in_a_store_without_passphrase() {
    // Positive control for the scan above.
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &StoreOptions::default());
    s.commit(&mut state(2), &mls(2), &[message(5)]).unwrap();
    drop(s);
    let bytes = std::fs::read(tmp.path().join(DB_FILE)).unwrap();
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for needle in needles() {
        assert!(
            find(&needle),
            "{:?} not found",
            String::from_utf8_lossy(&needle)
        );
    }
}

#[test]
fn a_passphrase_is_refused_for_a_store_created_without() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &StoreOptions::default());
    s.commit(&mut state(1), &mls(1), &[]).unwrap();
    drop(s);
    assert!(matches!(
        ClientStore::open(tmp.path(), &protected("pw")),
        Err(ClientError::Passphrase(_))
    ));
}

#[test]
fn files_are_private_and_a_second_process_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (mut s, _) = open(&dir, &StoreOptions::default());
    s.commit(&mut state(1), &mls(1), &[]).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with("-wal")),
        "{files:?}"
    );
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // Another connection (as another process would open it) cannot take the store.
    let other = Connection::open(dir.join(DB_FILE)).unwrap();
    other.busy_timeout(std::time::Duration::ZERO).unwrap();
    assert!(
        other
            .query_row("SELECT count(*) FROM rows", [], |r| r.get::<_, i64>(0))
            .is_err()
    );
}

#[test]
fn a_damaged_row_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _) = open(tmp.path(), &protected("pw"));
    s.commit(&mut state(1), &mls(1), &[]).unwrap();
    drop(s);
    let db = Connection::open(tmp.path().join(DB_FILE)).unwrap();
    db.execute(
        "UPDATE rows SET value = CAST(substr(value, 1, length(value) - 1) ||
           CASE WHEN substr(value, -1) = x'00' THEN x'01' ELSE x'00' END AS BLOB)",
        [],
    )
    .unwrap();
    drop(db);
    match ClientStore::open(tmp.path(), &protected("pw")) {
        Err(ClientError::State(why)) => assert!(why.contains("damaged"), "{why}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn sealed_tokens_show_nothing_on_disk_and_open_only_in_their_row() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), &protected("pw"));
    let tokens = s.token_store();
    let secret = vec![0x5a; 100];
    tokens
        .add(&[(1, secret.clone()), (2, vec![0x6b; 100])])
        .unwrap();
    tokens.remove(&[1]).unwrap();
    let loaded = tokens.load().unwrap().tokens;
    assert_eq!(loaded, vec![(2, vec![0x6b; 100])]);
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(8).any(|w| w == [0x6b; 8]),
            "a token readable on disk"
        );
    }
    // A sealed token moved to another row does not open.
    s.conn()
        .execute("UPDATE tokens SET id = 7 WHERE id = 2", [])
        .unwrap();
    assert!(tokens.load().is_err());
    // Positive control: without a passphrase the same bytes are on disk.
    let plain_dir = tempfile::tempdir().unwrap();
    let (p, _) = open(plain_dir.path(), &StoreOptions::default());
    p.token_store().add(&[(1, vec![0x6b; 100])]).unwrap();
    let found = std::fs::read_dir(plain_dir.path()).unwrap().any(|e| {
        std::fs::read(e.unwrap().path())
            .unwrap()
            .windows(8)
            .any(|w| w == [0x6b; 8])
    });
    assert!(found, "the scan finds an unsealed token");
}
