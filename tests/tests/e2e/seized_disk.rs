//! What a seized disk shows, after a realistic scenario (five users with handles, three
//! overlapping groups, messages, an update, a removal, a leave, a consent-based connection and a
//! linked second device): a raw dump of every RocksDB key
//! and value — including every key the server holds — searched for identities, pseudonyms,
//! client-held secrets and plaintext.

use mimi_ds_rm::store::Cf;
use mimi_rm_tests::common::*;
use mimi_rm_tests::{contains, scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_dump_links_no_identity_to_any_group_or_pseudonym() {
    let dir = tempfile::tempdir().unwrap();
    // Every shared message stored once (large commits in production; here all of them), so
    // the search covers stored messages and their tickets too.
    let hub = hub_with_config(dir.path(), "store_once_min_bytes = 0\n");
    let s = scenario::run(&hub.url(), dir.path(), 5).await.unwrap();
    assert!(metric(&hub, "mimi_messages_stored_once").await > 0);
    let identities = s.identities().unwrap();
    let pseudonyms = s.pseudonyms().unwrap();
    let secrets = s.client_secrets().unwrap();
    let queue_ids = s.queue_ids().unwrap();
    // 4 + 3 + 4 memberships, minus one removal and one leave, plus both ends of a 1:1
    // connection and user 0's second device in user 0's two groups.
    assert_eq!(
        pseudonyms.len(),
        3 * 13,
        "three needles per current membership"
    );

    let dump = hub.dump();
    eprintln!(
        "stored messages left unread at the seizure: {}",
        dump.iter().filter(|(c, _, _)| *c == Cf::QsStored).count()
    );
    for cf in [
        Cf::DsGroups,
        Cf::DsRouting,
        Cf::QsQueues,
        Cf::QsAddPackages,
        Cf::ServerKeys,
        // Commits that members had not read yet at the seizure.
        Cf::QsStored,
        Cf::QsStoredTickets,
    ] {
        assert!(dump.iter().any(|(c, _, _)| *c == cf), "{cf:?} is populated");
    }
    let is_as = |cf: &Cf| cf.name().starts_with("as_");
    assert!(dump.iter().any(|(c, _, _)| is_as(c)), "the AS stored users");
    let mut findings = Vec::new();
    for (cf, k, v) in &dump {
        let found = |needle: &[u8]| contains(k, needle) || contains(v, needle);
        // Identities live only in the AS; the AS knows nothing else.
        if !is_as(cf) {
            for (what, n) in &identities {
                if found(n) {
                    findings.push(format!("{what} in {cf:?}"));
                }
            }
        }
        for (what, n) in pseudonyms.iter().chain(&secrets) {
            if found(n) {
                findings.push(format!("{what} in {cf:?}"));
            }
        }
        if matches!(
            cf,
            Cf::DsGroups | Cf::DsRouting | Cf::DsReservations | Cf::QsStored | Cf::QsStoredTickets
        ) || is_as(cf)
        {
            for (what, n) in &queue_ids {
                if found(n) {
                    findings.push(format!("{what} in {cf:?}"));
                }
            }
        }
        if is_as(cf) {
            for g in &s.groups {
                if found(&g.0) {
                    findings.push(format!("group id in {cf:?}"));
                }
            }
        }
    }
    assert!(findings.is_empty(), "a seized disk reveals: {findings:#?}");
    // The shared counter (used for the RM-vs-baseline table in BENCHMARKS.md) agrees.
    let leak = s.leakage(&dump).unwrap();
    eprintln!(
        "RM seized disk: {} identity, {} leaf-identity, {} queue-id, {} secret findings in {} records",
        leak.identities,
        leak.leaf_identities,
        leak.queue_ids_in_ds,
        leak.secrets,
        dump.len()
    );
    assert_eq!(
        (
            leak.identities,
            leak.leaf_identities,
            leak.queue_ids_in_ds,
            leak.secrets
        ),
        (0, 0, 0, 0)
    );
    // Positive control: the search does find identities where they belong.
    let (_, handle) = &identities[0];
    assert!(
        dump.iter()
            .any(|(cf, k, v)| is_as(cf) && (contains(k, handle) || contains(v, handle))),
        "the AS stores the handle, so the search works"
    );
    if let Some(url) = &hub.postgres {
        pg_dump_shows_nothing_more(url, &dump, &identities, &pseudonyms, &secrets);
    }
}

/// On PostgreSQL, the database as `pg_dump` writes it (a backup, or a seized copy): every
/// record table holds exactly the records searched above, and the tables that are not records
/// (locks, replay digests, the migration history) hold none of the needles, raw or hex.
fn pg_dump_shows_nothing_more(
    url: &str,
    dump: &[(Cf, Vec<u8>, Vec<u8>)],
    identities: &[(String, Vec<u8>)],
    pseudonyms: &[(String, Vec<u8>)],
    secrets: &[(String, Vec<u8>)],
) {
    use mimi_rm_tests::postgres::{bytea, dumped_tables, pg_dump};
    let text = pg_dump(url);
    let tables = dumped_tables(&text);
    let mut records = 0;
    for cf in Cf::ALL {
        let rows = tables.get(cf.name()).cloned().unwrap_or_default();
        let mut dumped: Vec<(Vec<u8>, Vec<u8>)> = rows
            .iter()
            .map(|r| {
                (
                    bytea(&r[0]).expect("bytea key"),
                    bytea(&r[1]).expect("bytea value"),
                )
            })
            .collect();
        dumped.sort();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = dump
            .iter()
            .filter(|(c, _, _)| *c == cf)
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            dumped,
            expected,
            "pg_dump's {} differs from the store",
            cf.name()
        );
        records += dumped.len();
    }
    assert_eq!(records, dump.len());
    let others: Vec<&String> = tables
        .keys()
        .filter(|t| Cf::ALL.iter().all(|cf| cf.name() != t.as_str()))
        .collect();
    assert!(
        others.iter().any(|t| t.as_str() == "replay_seen"),
        "the dump has the other tables: {others:?}"
    );
    let mut findings = Vec::new();
    for table in others {
        let rows = tables[table]
            .iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("\t");
        for (what, needle) in identities.iter().chain(pseudonyms).chain(secrets) {
            if contains(rows.as_bytes(), needle) || rows.contains(&hex::encode(needle)) {
                findings.push(format!("{what} in {table}"));
            }
        }
    }
    assert!(findings.is_empty(), "pg_dump reveals: {findings:#?}");
    eprintln!("pg_dump: {records} records as in the store, nothing in the other tables");
}
