//! The DS core's cost per operation and group size, in RM and baseline mode, next to the
//! primitive floor measured in the same run.
//!
//! Each measured request runs through `ds::process` against a real RocksDB store exactly as the
//! hub runs it (decrypt the state, authenticate, let OpenMLS validate, merge, re-encrypt, build
//! the fan-out), but its transaction is dropped instead of committed, so every iteration sees
//! the same state and the same prepared request stays valid. The synced write is measured
//! separately as part of the floor. Per-recipient enqueueing is not part of the DS core;
//! `application_message_enqueued` adds it (every recipient has a real queue), and with
//! `MIMI_BENCH_BYTES=1` `report_bytes` prints what a remove-1 commit writes with and without
//! storing it once.
//!
//! Groups are built by a real OpenMLS creator with one bulk add. `MIMI_BENCH_SIZES` (comma
//! separated, default `10,100,1000,10000`) picks the group sizes. Run with `make bench`.

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use mimi_ds_rm::core::ds::{self, DsContext};
use mimi_ds_rm::core::replay::ReplayGuard;
use mimi_ds_rm::store::{Cf, RocksStore, Store, Txn};
use mimi_rm_crypto::{ear, hpke_seal};
use mimi_rm_protocol::credentials::LeafCredentialInfo;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{DsMode, encode};
use openmls::prelude::{tls_codec::Serialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::signatures::Signer as _;
use std::time::Duration;

const DOMAIN: &str = "bench.example";
const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Size of a leaf credential: a pseudonymous credential (RM) or a client credential (baseline)
/// are both about this long in this implementation.
const CREDENTIAL_BYTES: usize = 160;
const WINDOW_MS: u64 = 60_000;
const TTL_MS: u64 = 3_600_000;

fn random(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// A benchmark group on the hub plus its creator's MLS state.
struct Fixture {
    _dir: tempfile::TempDir,
    store: RocksStore,
    mode: DsMode,
    qs: hpke_seal::HpkeKeyPair,
    provider: OpenMlsRustCrypto,
    gid: Vec<u8>,
    ear_key: Option<[u8; 32]>,
    creator: MlsGroup,
    signer: SignatureKeyPair,
    /// The hub's external-sender key.
    hub: SignatureKeyPair,
    now: u64,
    /// Opened queue refs, as the hub keeps them (a steady-state fan-out opens none).
    queue_refs: mimi_ds_rm::core::queue_cache::QueueRefCache,
}

impl Fixture {
    fn ctx<'a>(&'a self, replay: &'a ReplayGuard) -> DsContext<'a> {
        DsContext {
            domain: DOMAIN,
            now_ms: self.now,
            replay,
            max_group_size: 20_000,
            ids: &mimi_ds_rm::core::ids::OsIds,
            welcome_tree_ttl_ms: TTL_MS,
            mode: self.mode,
            identity_limit: None,
            removal: mimi_ds_rm::core::ds::removals::RemovalPolicy {
                signer: &self.hub,
                inactivity_limit_ms: u64::MAX / 2,
                activity_period_ms: 86_400_000,
            },
        }
    }

    fn queue_ref(&self) -> Extension {
        let plain = QueueRefPlain {
            client_id: rand::random(),
        };
        let address = match self.mode {
            DsMode::Baseline => QueueAddress::Plain(plain),
            DsMode::Rm => {
                let ct = hpke_seal::seal(
                    &self.qs.public,
                    QUEUE_REF_HPKE_LABEL,
                    DOMAIN.as_bytes(),
                    &encode(&plain).expect("encode"),
                )
                .expect("seal");
                QueueAddress::Sealed(HpkeCiphertextWire {
                    kem_output: ct.kem_output.into(),
                    ciphertext: ct.ciphertext.into(),
                })
            }
        };
        let qr = QueueRef {
            domain: DOMAIN.as_bytes().to_vec().into(),
            address,
        };
        Extension::Unknown(
            QUEUE_REF_EXTENSION_TYPE,
            UnknownExtension(encode(&qr).expect("encode")),
        )
    }

    /// The client a queue ref names, through the hub's cache of opened refs.
    fn client_cache(&self, queue_ref: &QueueRef) -> [u8; 16] {
        match &queue_ref.address {
            QueueAddress::Plain(p) => p.client_id,
            QueueAddress::Sealed(sealed) => {
                let key = mimi_ds_rm::core::queue_cache::sealed_key(sealed);
                self.queue_refs
                    .get_or_open(&key, || Ok::<_, ()>(client_of(self, queue_ref)))
                    .expect("opens")
            }
        }
    }

    fn identity(&self) -> (SignatureKeyPair, CredentialWithKey) {
        let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("keygen");
        let cwk = CredentialWithKey {
            credential: BasicCredential::new(random(CREDENTIAL_BYTES)).into(),
            signature_key: signer.to_public_vec().into(),
        };
        (signer, cwk)
    }

    /// The credential material a member stores per leaf: encrypted in RM mode, none in
    /// baseline mode (whose leaves carry the credential in the clear).
    fn leaf_info(&self) -> LeafCredentialInfo {
        match self.mode {
            DsMode::Rm => LeafCredentialInfo {
                encrypted_client_credential: random(256).into(),
                encrypted_signature_ear_key: random(60).into(),
            },
            DsMode::Baseline => LeafCredentialInfo {
                encrypted_client_credential: Vec::new().into(),
                encrypted_signature_ear_key: Vec::new().into(),
            },
        }
    }

    fn key_package(&self) -> (SignatureKeyPair, KeyPackage) {
        let (signer, cwk) = self.identity();
        let kpb = KeyPackage::builder()
            .leaf_node_capabilities(leaf_capabilities())
            .leaf_node_extensions(Extensions::single(self.queue_ref()).expect("extension"))
            .build(CS, &self.provider, &signer, cwk)
            .expect("key package");
        (signer, kpb.key_package().clone())
    }

    fn request(
        &self,
        sender: DsSender,
        operation: DsOperation,
        signer: Option<&SignatureKeyPair>,
    ) -> DsRequest {
        let tbs = DsRequestTbs {
            group_id: self.gid.clone().into(),
            ear_key: self.ear_key.map(|k| k.to_vec().into()),
            timestamp_ms: self.now,
            nonce: rand::random(),
            sender,
            operation,
        };
        let mut signed = DS_REQUEST_SIGNATURE_LABEL.to_vec();
        signed.extend(encode(&tbs).expect("encode"));
        let signature = signer
            .map(|s| s.sign(&signed).expect("sign"))
            .unwrap_or_default();
        DsRequest {
            tbs,
            signature: signature.into(),
        }
    }

    /// Runs `req` against the store; commits its writes only with `commit`.
    fn run(&self, req: DsRequest, commit: bool) -> ds::DsOutcome {
        let replay = ReplayGuard::new(WINDOW_MS, self.now.saturating_sub(1));
        let mut txn = Txn::new(&self.store);
        let out = ds::process(&self.ctx(&replay), &mut txn, req).expect("request accepted");
        if commit {
            txn.commit().expect("commit");
        }
        out
    }

    /// A commit by the creator for `proposals`, staged and then dropped at the creator so the
    /// group stays at its epoch.
    fn creator_commit(
        &mut self,
        kps: Vec<KeyPackage>,
        remove: Option<LeafNodeIndex>,
    ) -> CommitBundle {
        if !kps.is_empty() {
            // Every added client is a user of its own.
            let added = kps
                .iter()
                .enumerate()
                .map(|(user, kp)| AddedMember {
                    key_package_ref: kp
                        .hash_ref(self.provider.crypto())
                        .expect("ref")
                        .as_slice()
                        .to_vec()
                        .into(),
                    credential: self.leaf_info(),
                    attribution: random(300).into(),
                    user: user as u32,
                })
                .collect();
            let aad = CommitAad {
                added,
                user_auth_key: None,
                joiner: None,
                reinit: None,
            };
            self.creator.set_aad(encode(&aad).expect("encode"));
        }
        let builder = self.creator.commit_builder();
        let builder = match (kps.is_empty(), remove) {
            (false, _) => builder.propose_adds(kps),
            (true, Some(leaf)) => builder.propose_removals([leaf]),
            (true, None) => builder.force_self_update(true),
        };
        let bundle = builder
            .load_psks(self.provider.storage())
            .expect("psks")
            .create_group_info(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .expect("commit")
            .stage_commit(&self.provider)
            .expect("stage");
        let (commit, welcome, group_info) = bundle.into_messages();
        // A removal rotates the group keys: every remaining leaf's material, re-wrapped (random
        // bytes of the real size: the hub cannot tell).
        let rotation = remove
            .filter(|_| self.mode == DsMode::Rm)
            .map(|gone| KeyRotation {
                new_ear_key: random(32).into(),
                credentials: self
                    .creator
                    .members()
                    .map(|m| m.index)
                    .filter(|l| *l != gone)
                    .map(|leaf| LeafCredentialEntry {
                        leaf: leaf.u32(),
                        info: self.leaf_info(),
                    })
                    .collect(),
            });
        CommitBundle {
            commit: commit.to_bytes().expect("encode").into(),
            group_info: group_info
                .expect("group info")
                .to_bytes()
                .expect("encode")
                .into(),
            welcome: welcome.map(|w| w.to_bytes().expect("encode").into()),
            rotation,
        }
    }

    fn drop_pending(&mut self) {
        self.creator
            .clear_pending_commit(self.provider.storage())
            .expect("clear");
    }

    fn member_request(&self, op: DsOperation) -> DsRequest {
        let leaf = self.creator.own_leaf_index().u32();
        self.request(DsSender::Member(leaf), op, Some(&self.signer))
    }

    /// The encoded group row's size (the state blob the AEAD floor is measured on).
    fn row_len(&self) -> usize {
        self.store
            .get(Cf::DsGroups, &self.gid)
            .expect("get")
            .map(|r| r.len())
            .unwrap_or(0)
    }
}

/// Builds a group of `size` members on a fresh store: creation, one bulk add, and the expiry of
/// the bulk add's Welcome tree (the steady state once invitees have joined).
fn fixture(mode: DsMode, size: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path(), true).expect("store");
    let provider = OpenMlsRustCrypto::default();
    let now = mimi_ds_rm::now_ms();
    let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("keygen");
    let mut fx = Fixture {
        _dir: dir,
        store,
        mode,
        qs: hpke_seal::HpkeKeyPair::generate(),
        provider,
        gid: Vec::new(),
        ear_key: (mode == DsMode::Rm).then(rand::random),
        creator: placeholder_group(),
        signer,
        hub: SignatureKeyPair::new(CS.signature_algorithm()).expect("keygen"),
        now,
        queue_refs: mimi_ds_rm::core::queue_cache::QueueRefCache::new(1 << 20),
    };
    let DsResponse::GroupId(reserved) = fx
        .run(
            fx.request(DsSender::Anonymous, DsOperation::RequestGroupId, None),
            true,
        )
        .response
    else {
        panic!("expected a group id")
    };
    fx.gid = reserved.group_id.as_slice().to_vec();
    let hub_sender = ExternalSender::new(
        fx.hub.to_public_vec().into(),
        BasicCredential::new(external_sender_identity(DOMAIN)).into(),
    );
    let cfg = MlsGroupCreateConfig::builder()
        .ciphersuite(CS)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .capabilities(leaf_capabilities())
        .with_leaf_node_extensions(Extensions::single(fx.queue_ref()).expect("extension"))
        .expect("extensions")
        .with_group_context_extensions(
            Extensions::single(Extension::ExternalSenders(vec![hub_sender])).expect("extension"),
        )
        .build();
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(random(CREDENTIAL_BYTES)).into(),
        signature_key: fx.signer.to_public_vec().into(),
    };
    fx.creator = MlsGroup::new_with_group_id(
        &fx.provider,
        &fx.signer,
        &cfg,
        GroupId::from_slice(&fx.gid),
        cwk,
    )
    .expect("group");
    let create = CreateGroup {
        group_info: fx
            .creator
            .export_group_info(fx.provider.crypto(), &fx.signer, false)
            .expect("group info")
            .to_bytes()
            .expect("encode")
            .into(),
        ratchet_tree: fx
            .creator
            .export_ratchet_tree()
            .tls_serialize_detached()
            .expect("tree")
            .into(),
        creator: fx.leaf_info(),
        creator_user_auth_key: random(32).into(),
        kind: GroupKind::Regular,
    };
    fx.run(fx.member_request(DsOperation::CreateGroup(create)), true);
    if size > 1 {
        let kps: Vec<KeyPackage> = (1..size).map(|_| fx.key_package().1).collect();
        let bundle = fx.creator_commit(kps, None);
        // One run, not a criterion sample: the hub's side of a bulk add of size − 1 members.
        let started = std::time::Instant::now();
        fx.run(fx.member_request(DsOperation::AddMembers(bundle)), true);
        eprintln!(
            "  hub processed the bulk add of {} members in {:.1?}",
            size - 1,
            started.elapsed()
        );
        fx.creator
            .merge_pending_commit(&fx.provider)
            .expect("merge");
        // The invitees never join here; let their Welcome tree expire (any request to the
        // group prunes it), as it would once they had joined.
        fx.now += TTL_MS + 1;
        fx.run(
            fx.request(DsSender::Anonymous, DsOperation::ExternalCommitInfo, None),
            true,
        );
    }
    fx
}

/// An `MlsGroup` value to fill the fixture before the real creator group exists.
fn placeholder_group() -> MlsGroup {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("keygen");
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(vec![0]).into(),
        signature_key: signer.to_public_vec().into(),
    };
    MlsGroup::new(&provider, &signer, &MlsGroupCreateConfig::default(), cwk).expect("group")
}

fn sizes() -> Vec<usize> {
    std::env::var("MIMI_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![10, 100, 1_000, 10_000])
}

fn bench_ops(c: &mut Criterion) {
    for size in sizes() {
        for mode in [DsMode::Rm, DsMode::Baseline] {
            eprintln!("building a {size}-member group ({mode} mode)");
            let mut fx = fixture(mode, size);
            eprintln!("  state row: {} bytes", fx.row_len());
            let mut g = c.benchmark_group(format!("ds_core/{mode}"));
            if size >= 1_000 {
                g.sample_size(10);
                g.measurement_time(Duration::from_secs(8));
            }
            let measure = |g: &mut criterion::BenchmarkGroup<'_, _>,
                           name: &str,
                           req: DsRequest,
                           fx: &Fixture| {
                g.bench_with_input(BenchmarkId::new(name, size), &req, |b, req| {
                    b.iter_batched(|| req.clone(), |r| fx.run(r, false), BatchSize::SmallInput)
                });
            };

            let message = fx
                .creator
                .create_message(&fx.provider, &fx.signer, &[b'x'; 100])
                .expect("message")
                .to_bytes()
                .expect("encode");
            let req = fx.member_request(DsOperation::SendMessage(message.into()));
            // The same message with its enqueue into every recipient's queue, as the hub runs
            // it (ratchet, queue entry, per-recipient records), committed to nothing.
            give_queues(&fx, &req);
            g.bench_with_input(
                BenchmarkId::new("application_message_enqueued", size),
                &req,
                |b, req| {
                    b.iter_batched(
                        || req.clone(),
                        |r| {
                            run_enqueued(
                                &fx,
                                r,
                                mimi_ds_rm::core::stored::StoreOncePolicy { min_bytes: 1024 },
                            )
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
            measure(&mut g, "application_message", req, &fx);

            let (_, kp) = fx.key_package();
            let bundle = fx.creator_commit(vec![kp], None);
            fx.drop_pending();
            let req = fx.member_request(DsOperation::AddMembers(bundle));
            measure(&mut g, "add_1", req, &fx);

            if size > 1 {
                let last = LeafNodeIndex::new((size - 1) as u32);
                let bundle = fx.creator_commit(Vec::new(), Some(last));
                fx.drop_pending();
                let req = fx.member_request(DsOperation::RemoveMembers(bundle));
                if fx.mode == DsMode::Rm && std::env::var_os("MIMI_BENCH_BYTES").is_some() {
                    report_bytes(&fx, "remove_1", &req, size);
                }
                measure(&mut g, "remove_1", req, &fx);
            }

            let bundle = fx.creator_commit(Vec::new(), None);
            fx.drop_pending();
            let req = fx.member_request(DsOperation::Update(bundle));
            measure(&mut g, "update", req, &fx);

            let req = fx.request(DsSender::Anonymous, DsOperation::ExternalCommitInfo, None);
            measure(&mut g, "external_commit_info", req, &fx);

            // One invitee whose Welcome is outstanding: commit an add for real.
            let (joiner, kp) = fx.key_package();
            let bundle = fx.creator_commit(vec![kp], None);
            fx.run(fx.member_request(DsOperation::AddMembers(bundle)), true);
            fx.creator
                .merge_pending_commit(&fx.provider)
                .expect("merge");
            let epoch = fx.creator.epoch().as_u64();
            let req = fx.request(
                DsSender::Joiner(joiner.to_public_vec().into()),
                DsOperation::WelcomeInfo(epoch),
                Some(&joiner),
            );
            measure(&mut g, "welcome_info", req, &fx);
            g.finish();

            bench_floor(c, &fx, size);
        }
    }
}

/// The client id a fan-out item's queue ref names.
fn client_of(fx: &Fixture, queue_ref: &QueueRef) -> [u8; 16] {
    match &queue_ref.address {
        QueueAddress::Plain(p) => p.client_id,
        QueueAddress::Sealed(sealed) => {
            let plain = hpke_seal::open(
                &fx.qs.private,
                QUEUE_REF_HPKE_LABEL,
                DOMAIN.as_bytes(),
                &sealed.to_ciphertext(),
            )
            .expect("queue ref opens");
            mimi_rm_protocol::decode_exact::<QueueRefPlain>(&plain, 64)
                .expect("queue ref")
                .client_id
        }
    }
}

/// Gives every recipient of `req`'s fan-out a queue (client record and ratchet), committed, so
/// the request's enqueue runs as on a hub; returns the fan-out's largest message length and
/// its number of recipients.
fn give_queues(fx: &Fixture, req: &DsRequest) -> (usize, usize) {
    use mimi_ds_rm::core::qs::{ClientRecord, RatchetRecord};
    let replay = ReplayGuard::new(WINDOW_MS, fx.now.saturating_sub(1));
    let probe = {
        let mut txn = Txn::new(&fx.store);
        ds::process(&fx.ctx(&replay), &mut txn, req.clone()).expect("request accepted")
    };
    let mut setup = Txn::new(&fx.store);
    for item in &probe.fanout {
        let client = client_of(fx, &item.queue_ref);
        if setup
            .get_record::<ClientRecord>(&client)
            .expect("read")
            .is_some()
        {
            continue;
        }
        setup
            .put_record(
                &client,
                &ClientRecord {
                    user_id: [0; 16],
                    auth_key: vec![0; 32].into(),
                    activity_month: 0,
                    acked_below: 0,
                    device_tag: vec![0; 32].into(),
                },
            )
            .expect("client record");
        setup
            .put_record(
                &client,
                &RatchetRecord::new(mimi_rm_crypto::ratchet::RatchetSecret::random()),
            )
            .expect("ratchet record");
    }
    setup.commit().expect("setup");
    let longest = probe
        .fanout
        .iter()
        .map(|f| tls_codec::Size::tls_serialized_len(f.message.as_ref()))
        .max()
        .unwrap_or(0);
    (longest, probe.fanout.len())
}

/// Runs `req` and enqueues its fan-out into the recipients' queues (see [`give_queues`]) as
/// the hub does, under `policy`; returns the uncommitted transaction.
fn run_enqueued<'s>(
    fx: &'s Fixture,
    req: DsRequest,
    policy: mimi_ds_rm::core::stored::StoreOncePolicy,
) -> Txn<'s> {
    let replay = ReplayGuard::new(WINDOW_MS, fx.now.saturating_sub(1));
    let mut txn = Txn::new(&fx.store);
    let out = ds::process(&fx.ctx(&replay), &mut txn, req).expect("request accepted");
    let targets: Vec<([u8; 16], &ds::Fanout)> = out
        .fanout
        .iter()
        .map(|f| (fx.client_cache(&f.queue_ref), f))
        .collect();
    mimi_ds_rm::core::stored::enqueue_local(&mut txn, &targets, policy, u64::MAX, fx.now)
        .expect("enqueue");
    txn
}

/// Prints the bytes `req` hands the store with its fan-out enqueued in every recipient's
/// queue, once copying the message into each queue and once storing it once (criterion
/// measures time only; these figures go to BENCHMARKS.md). Nothing is committed.
fn report_bytes(fx: &Fixture, name: &str, req: &DsRequest, size: usize) {
    use mimi_ds_rm::core::stored::StoreOncePolicy;
    let (message, recipients) = give_queues(fx, req);
    for (how, min_bytes) in [("copy per queue", usize::MAX), ("stored once", 1024)] {
        let txn = run_enqueued(fx, req.clone(), StoreOncePolicy { min_bytes });
        let bytes = txn.pending_bytes();
        let total: usize = bytes.values().sum();
        let per_family: Vec<String> = bytes.iter().map(|(cf, n)| format!("{cf} {n}")).collect();
        eprintln!(
            "bytes/{name}/{}/{size}: {how}: {total} B for a {message} B message to {} queues \
             ({:.1} B per member beyond 2x the message) [{}]",
            fx.mode,
            recipients,
            (total as f64 - 2.0 * message as f64) / size as f64,
            per_family.join(", ")
        );
    }
}

/// What the operations above cannot go below, measured in the same run: the state blob's AEAD,
/// one HPKE open (a sealed queue ref), one Ed25519 verify, one synced RocksDB batch.
fn bench_floor(c: &mut Criterion, fx: &Fixture, size: usize) {
    let mut g = c.benchmark_group(format!("floor/{}", fx.mode));
    let blob = random(fx.row_len());
    let key = ear::EarKey::random();
    g.bench_with_input(
        BenchmarkId::new("state_aead_seal", size),
        &blob,
        |b, blob| b.iter(|| ear::seal(&key, "bench", b"aad", blob).expect("seal")),
    );
    let sealed = ear::seal(&key, "bench", b"aad", &blob).expect("seal");
    g.bench_with_input(
        BenchmarkId::new("state_aead_open", size),
        &sealed,
        |b, ct| b.iter(|| ear::open(&key, "bench", b"aad", ct).expect("open")),
    );
    g.finish();
    if size != sizes()[0] || fx.mode != DsMode::Rm {
        return;
    }
    let mut g = c.benchmark_group("floor");
    let ct = hpke_seal::seal(
        &fx.qs.public,
        QUEUE_REF_HPKE_LABEL,
        DOMAIN.as_bytes(),
        &[1; 16],
    )
    .expect("seal");
    g.bench_function("hpke_open", |b| {
        b.iter(|| {
            hpke_seal::open(&fx.qs.private, QUEUE_REF_HPKE_LABEL, DOMAIN.as_bytes(), &ct)
                .expect("open")
        })
    });
    let sk = mimi_rm_crypto::sign::SigningKey::generate();
    let msg = random(1024);
    let sig = sk.sign("bench", &msg);
    let vk = sk.verifying_key();
    g.bench_function("ed25519_verify", |b| {
        b.iter(|| vk.verify("bench", &msg, &sig).expect("verifies"))
    });
    let value = random(1024);
    let mut n = 0u64;
    g.bench_function("rocksdb_synced_batch_1k", |b| {
        b.iter(|| {
            n += 1;
            let mut txn = Txn::new(&fx.store);
            txn.put(Cf::ServerKeys, n.to_be_bytes().to_vec(), value.clone());
            txn.commit().expect("write")
        })
    });
    // Group commit: writers that arrive while a synced write is in flight join the next WAL
    // write and share its fsync (RocksDB's write group), which is what concurrent requests do.
    for writers in [8u64, 32] {
        let name = format!("rocksdb_synced_batch_1k_{writers}_writers");
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(writers);
                let start = std::time::Instant::now();
                std::thread::scope(|scope| {
                    for w in 0..writers {
                        let (store, value) = (&fx.store, &value);
                        scope.spawn(move || {
                            for i in 0..per {
                                let mut txn = Txn::new(store);
                                let key = [w.to_be_bytes(), i.to_be_bytes()].concat();
                                txn.put(Cf::ServerKeys, key, value.clone());
                                txn.commit().expect("write");
                            }
                        });
                    }
                });
                // Time per write, as seen by the system (not per writer).
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per * writers) as f64)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_ops
}
criterion_main!(benches);
