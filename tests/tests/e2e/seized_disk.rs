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
    let hub = hub(dir.path());
    let s = scenario::run(&hub.url(), dir.path(), 5).await.unwrap();
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
    for cf in [
        Cf::DsGroups,
        Cf::DsRouting,
        Cf::QsQueues,
        Cf::QsAddPackages,
        Cf::ServerKeys,
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
        if matches!(cf, Cf::DsGroups | Cf::DsRouting | Cf::DsReservations) || is_as(cf) {
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
}
