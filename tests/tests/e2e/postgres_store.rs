//! The PostgreSQL store against the RocksDB and in-memory stores: the same operations give the
//! same answers (a differential test of the `Store` contract, edge cases included), the
//! cross-process primitives do what the hub relies on, and a misconfigured hub refuses to
//! start with a clear message.

use mimi_ds_rm::store::{
    Batch, Cf, Coordinator, LockKind, MemStore, Op, PgStore, RocksStore, Store,
};
use mimi_rm_tests::common::hub_binary;
use mimi_rm_tests::postgres::fresh_database;

/// Keys chosen for the edges of prefix scans: empty-adjacent, 0xff runs, shared prefixes.
fn keys() -> Vec<Vec<u8>> {
    vec![
        vec![0],
        vec![1],
        vec![1, 0],
        vec![1, 0xff],
        vec![1, 0xff, 0xff],
        vec![2],
        vec![0xff],
        vec![0xff, 0],
        vec![0xff, 0xff],
        b"client-a\x00\x00\x00\x01".to_vec(),
        b"client-a\x00\x00\x00\x02".to_vec(),
        b"client-b\x00\x00\x00\x01".to_vec(),
    ]
}

fn apply(store: &dyn Store, ops: Vec<Op>) {
    store.write(Batch { ops }).unwrap();
}

/// Everything the core asks of a store, as one comparable transcript.
fn transcript(store: &dyn Store) -> Vec<String> {
    let mut out = Vec::new();
    // Round 1: puts in two families; a key written twice in one batch; a put then a delete.
    let mut ops = Vec::new();
    for (i, k) in keys().into_iter().enumerate() {
        ops.push(Op::Put(Cf::QsQueues, k.clone(), vec![i as u8; i + 1]));
        ops.push(Op::Put(Cf::DsGroups, k.clone(), k.clone()));
    }
    ops.push(Op::Put(
        Cf::QsQueues,
        vec![1],
        b"second write wins".to_vec(),
    ));
    ops.push(Op::Put(Cf::QsQueues, vec![2], b"gone".to_vec()));
    ops.push(Op::Delete(Cf::QsQueues, vec![2]));
    apply(store, ops);
    // Round 2: deletes, a re-put, a delete of a key that never existed.
    apply(
        store,
        vec![
            Op::Delete(Cf::DsGroups, vec![0xff]),
            Op::Delete(Cf::DsGroups, b"never".to_vec()),
            Op::Delete(Cf::QsQueues, vec![1, 0]),
            Op::Put(Cf::QsQueues, vec![1, 0], b"back".to_vec()),
        ],
    );
    for prefix in [
        &b""[..],
        &[1],
        &[1, 0xff],
        &[0xff],
        &[0xff, 0xff],
        b"client-a",
        b"client-",
        b"nothing",
    ] {
        for limit in [0, 1, 2, usize::MAX] {
            for cf in [Cf::QsQueues, Cf::DsGroups, Cf::QsClients] {
                out.push(format!(
                    "scan {cf:?} {prefix:?} {limit}: {:?}",
                    store.scan_prefix(cf, prefix, limit).unwrap()
                ));
            }
        }
    }
    let mut wanted = keys();
    wanted.push(b"missing".to_vec());
    wanted.reverse();
    out.push(format!(
        "get_many: {:?}",
        store.get_many(Cf::QsQueues, &wanted).unwrap()
    ));
    for k in &wanted {
        out.push(format!(
            "get {k:?}: {:?}",
            store.get(Cf::DsGroups, k).unwrap()
        ));
    }
    // A batch of the size a fan-out to a large group writes.
    let big: Vec<Op> = (0..3000u32)
        .map(|i| Op::Put(Cf::QsAddPackages, i.to_be_bytes().to_vec(), vec![7; 300]))
        .collect();
    apply(store, big);
    out.push(format!(
        "big: {}",
        store
            .scan_prefix(Cf::QsAddPackages, b"", usize::MAX)
            .unwrap()
            .len()
    ));
    let mut dump = store.dump().unwrap();
    dump.sort();
    out.push(format!("dump: {} entries, {:?}", dump.len(), &dump[..5]));
    out
}

#[test]
fn postgres_answers_every_store_operation_as_rocksdb_and_memory_do() {
    let dir = tempfile::tempdir().unwrap();
    let mem = transcript(&MemStore::new());
    let rocks = transcript(&RocksStore::open(&dir.path().join("db"), false).unwrap());
    let pg = transcript(&PgStore::connect(&fresh_database(), 4).unwrap());
    assert_eq!(mem, rocks, "the reference stores disagree");
    for (i, (a, b)) in mem.iter().zip(&pg).enumerate() {
        assert_eq!(a, b, "line {i}");
    }
    assert_eq!(mem.len(), pg.len());
}

#[test]
fn the_schema_is_made_once_and_reopening_keeps_the_data() {
    let url = fresh_database();
    let first = PgStore::connect(&url, 2).unwrap();
    apply(
        &first,
        vec![Op::Put(Cf::AsUsers, b"alice".to_vec(), vec![1])],
    );
    // Several processes starting at once: every one connects, none fails on the migration.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::connect(&url, 1).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let again = PgStore::connect(&url, 2).unwrap();
    assert_eq!(again.get(Cf::AsUsers, b"alice").unwrap(), Some(vec![1]));
}

#[test]
fn locks_replay_digests_and_the_outbox_sequence_are_shared() {
    let url = fresh_database();
    let a = PgStore::connect(&url, 4).unwrap();
    let b = PgStore::connect(&url, 4).unwrap();
    // A stripe held through one store (process) is taken by no other until released.
    let mut held = a.hold().unwrap();
    held.take(LockKind::Group, &[7, 9]).unwrap();
    let mut other = b.hold().unwrap();
    assert!(
        !other.try_take(LockKind::Group, 7).unwrap(),
        "held elsewhere"
    );
    let mut free = b.hold().unwrap();
    assert!(
        free.try_take(LockKind::Group, 8).unwrap(),
        "another stripe is free"
    );
    assert!(
        free.try_take(LockKind::Queue, 7).unwrap(),
        "same stripe, other kind"
    );
    drop((held, other, free));
    let mut later = b.hold().unwrap();
    assert!(
        later.try_take(LockKind::Group, 7).unwrap(),
        "released with its holder"
    );
    // A waiting holder gets the stripe when the first lets go.
    let mut first = a.hold().unwrap();
    first.take(LockKind::Token, &[3]).unwrap();
    let waiter = std::thread::spawn(move || {
        let mut h = b.hold().unwrap();
        h.take(LockKind::Token, &[3])
            .map(|_| std::time::Instant::now())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let released = std::time::Instant::now();
    drop(first);
    let got = waiter.join().unwrap().unwrap();
    assert!(
        got >= released,
        "the waiter got the stripe before it was released"
    );
    // A stripe outside the table is an error, not a silent no-lock.
    let mut bad = a.hold().unwrap();
    assert!(bad.take(LockKind::Group, &[5000]).is_err());

    let digest = [42u8; 32];
    let c = PgStore::connect(&url, 1).unwrap();
    assert!(a.first_seen(&digest, u64::MAX / 2).unwrap());
    assert!(
        !c.first_seen(&digest, u64::MAX / 2).unwrap(),
        "seen by another process"
    );
    assert!(c.first_seen(&[43; 32], u64::MAX / 2).unwrap());

    let seqs: Vec<u64> = (0..5)
        .map(|i| if i % 2 == 0 { &a } else { &c }.next_outbox_seq().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn a_hub_without_a_database_or_with_an_unreachable_one_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for (config, expected) in [
        ("storage = \"postgres\"\n", "needs postgres_url"),
        (
            "storage = \"postgres\"\npostgres_url = \"not a url\"\n",
            "postgres",
        ),
        (
            // A closed loopback port: the connection is refused at once.
            "storage = \"postgres\"\npostgres_url = \"postgres://nobody@127.0.0.1:1/x\"\n",
            "postgres",
        ),
    ] {
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, format!("listen = \"127.0.0.1:0\"\n{config}")).unwrap();
        let out = std::process::Command::new(hub_binary())
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config} started a hub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{config}: {stderr}");
    }
}
