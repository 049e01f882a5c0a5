//! The PostgreSQL store against the RocksDB and in-memory stores: the same operations give the
//! same answers (a differential test of the `Store` contract, edge cases included), the
//! cross-process primitives do what the hub relies on, and a misconfigured hub refuses to
//! start with a clear message.

use mimi_ds_rm::store::{
    Batch, Cf, Coordinator, LockKind, MemStore, Op, PgStore, RocksStore, Store,
};
use mimi_rm_tests::common::hub_binary;
use mimi_rm_tests::postgres::{fresh_database, terminate_idle_transactions};

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
    // A key asked for twice (a fan-out to two leaves that name one queue) is found twice.
    wanted.push(vec![1]);
    wanted.push(b"missing".to_vec());
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
fn the_schema_is_made_once_by_processes_starting_together_and_reopening_keeps_the_data() {
    let url = fresh_database();
    // Several processes starting at once on an empty database: every one connects, none fails
    // on the migration (the losers of its race roll back and find it applied).
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&url, 1)
            })
        })
        .collect();
    let stores: Vec<PgStore> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    apply(
        &stores[0],
        vec![Op::Put(Cf::AsUsers, b"alice".to_vec(), vec![1])],
    );
    assert_eq!(stores[3].get(Cf::AsUsers, b"alice").unwrap(), Some(vec![1]));
    drop(stores);
    let again = PgStore::connect(&url, 2).unwrap();
    assert_eq!(again.get(Cf::AsUsers, b"alice").unwrap(), Some(vec![1]));
}

#[test]
fn a_batch_commits_only_while_its_locks_are_held() {
    let url = fresh_database();
    let a = PgStore::connect(&url, 2).unwrap();
    let mut held = a.hold().unwrap();
    held.take(LockKind::Group, &[1]).unwrap();
    let write = |k: &[u8]| Batch {
        ops: vec![Op::Put(Cf::DsGroups, k.to_vec(), vec![1])],
    };
    held.commit(write(b"under the lock")).unwrap();
    assert_eq!(
        a.get(Cf::DsGroups, b"under the lock").unwrap(),
        Some(vec![1])
    );
    // The commit ended the locks: another holder takes the stripe at once.
    let mut next = a.hold().unwrap();
    assert!(next.try_take(LockKind::Group, 1).unwrap());
    drop(next);
    // A lock transaction the database ended (an administrator here; a dropped connection or
    // an idle-transaction timeout alike) commits nothing: the batch is refused, not written
    // after its locks were gone.
    let mut lost = a.hold().unwrap();
    lost.take(LockKind::Queue, &[2]).unwrap();
    assert_eq!(
        terminate_idle_transactions(&url),
        1,
        "the lock transaction was found"
    );
    assert!(lost.commit(write(b"after the locks were lost")).is_err());
    assert_eq!(
        a.get(Cf::DsGroups, b"after the locks were lost").unwrap(),
        None
    );
    // A stripe outside the table is an error, not a silent no-lock.
    let mut bad = a.hold().unwrap();
    assert!(bad.take(LockKind::Group, &[99_999]).is_err());
    assert!(
        held.take(LockKind::Group, &[3]).is_err(),
        "nothing after a commit"
    );
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
        let mut child = std::process::Command::new(hub_binary())
            .args(["serve", "--config"])
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                panic!("{config}: the hub started (or hung) instead of refusing");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{config} started a hub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{config}: {stderr}");
    }
}
