//! Privacy Pass costs at the hub: issuance per token (blind RSA, amortized batches of 100) and
//! redemption with and without the synced RocksDB double-spend write.
//!
//! Run with `make bench` (dev profile: dependencies at opt-level 2, see BENCHMARKS.md).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mimi_ds_rm::core::tokens::{TokenPolicy, Tokens};
use mimi_ds_rm::store::{RocksStore, Txn};
use mimi_rm_protocol::tokens::{
    BATCH_REQUEST_CONTENT_TYPE, PresentedToken, TOKEN_REQUEST_CONTENT_TYPE, TYPE_AMORTIZED,
    TYPE_PUBLIC, challenge, decode_b64url,
};
use privacypass::amortized_tokens::{AmortizedBatchTokenRequest, AmortizedBatchTokenResponse};
use privacypass::public_tokens::{PublicKey, TokenRequest, TokenResponse};
use voprf::Ristretto255;

const DOMAIN: &str = "bench.example";
const DEVICE: [u8; 32] = [7; 32];

struct Fixture {
    _dir: tempfile::TempDir,
    store: RocksStore,
    tokens: Tokens,
    rsa: PublicKey,
    voprf: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path(), true).expect("store");
    let policy = TokenPolicy {
        allowance_per_epoch: u32::MAX,
        ..TokenPolicy::default()
    };
    let tokens = Tokens::open(&store, DOMAIN, policy, mimi_ds_rm::now_ms()).expect("tokens");
    let dir_json = tokens
        .directory(&store, mimi_ds_rm::now_ms())
        .expect("directory");
    let key = |t| {
        dir_json
            .token_keys
            .iter()
            .find(|k| k.token_type == t)
            .and_then(|k| decode_b64url(&k.token_key))
            .expect("key")
    };
    Fixture {
        rsa: PublicKey::from_spki(&key(TYPE_PUBLIC)).expect("spki"),
        voprf: key(TYPE_AMORTIZED),
        _dir: dir,
        store,
        tokens,
    }
}

fn rsa_request(f: &Fixture) -> (Vec<u8>, privacypass::public_tokens::TokenState) {
    let ch = challenge(DOMAIN, TYPE_PUBLIC).expect("challenge");
    let mut rng = blind_rsa_signatures::reexports::rand::rng();
    let (req, state) = TokenRequest::new(&mut rng, f.rsa.clone(), &ch).expect("request");
    (
        privacypass::Serialize::tls_serialize_detached(&req).expect("encode"),
        state,
    )
}

fn batch_request(
    f: &Fixture,
    n: u16,
) -> (
    Vec<u8>,
    privacypass::amortized_tokens::TokenState<Ristretto255>,
) {
    let ch = challenge(DOMAIN, TYPE_AMORTIZED).expect("challenge");
    let pk = privacypass::common::private::deserialize_public_key::<Ristretto255>(&f.voprf)
        .expect("key");
    let (req, state) =
        AmortizedBatchTokenRequest::<Ristretto255>::new(pk, &ch, n).expect("request");
    (
        privacypass::Serialize::tls_serialize_detached(&req).expect("encode"),
        state,
    )
}

fn issue(f: &Fixture, ct: &str, body: &[u8]) -> Vec<u8> {
    f.tokens
        .issue_to(&f.store, DEVICE, Some(ct), body, mimi_ds_rm::now_ms())
        .expect("issue")
        .body
}

fn encode_token<T: privacypass::Serialize>(t: &T) -> PresentedToken {
    PresentedToken::decode(&privacypass::Serialize::tls_serialize_detached(t).expect("encode"))
        .expect("decode")
}

fn rsa_tokens(f: &Fixture, n: usize) -> Vec<PresentedToken> {
    (0..n)
        .map(|_| {
            let (body, state) = rsa_request(f);
            let resp: TokenResponse =
                <TokenResponse as privacypass::Deserialize>::tls_deserialize_exact(issue(
                    f,
                    TOKEN_REQUEST_CONTENT_TYPE,
                    &body,
                ))
                .expect("response");
            encode_token(&resp.issue_token(&state).expect("finalize"))
        })
        .collect()
}

fn amortized_tokens(f: &Fixture, batches: usize) -> Vec<PresentedToken> {
    let mut out = Vec::new();
    for _ in 0..batches {
        let (body, state) = batch_request(f, 100);
        let resp = AmortizedBatchTokenResponse::<Ristretto255>::try_from_bytes(&issue(
            f,
            BATCH_REQUEST_CONTENT_TYPE,
            &body,
        ))
        .expect("response");
        out.extend(
            resp.issue_tokens(&state)
                .expect("finalize")
                .iter()
                .map(encode_token),
        );
    }
    out
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("issuance");
    g.throughput(Throughput::Elements(1));
    g.bench_function("blind_rsa_per_token", |b| {
        b.iter_batched(
            || rsa_request(&f).0,
            |body| issue(&f, TOKEN_REQUEST_CONTENT_TYPE, &body),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(100));
    g.sample_size(20);
    g.bench_function("amortized_batch_of_100", |b| {
        b.iter_batched(
            || batch_request(&f, 100).0,
            |body| issue(&f, BATCH_REQUEST_CONTENT_TYPE, &body),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("redemption");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(std::time::Duration::from_secs(1));
    g.measurement_time(std::time::Duration::from_secs(3));
    g.sample_size(20);
    for (name, mut pool) in [
        ("blind_rsa", rsa_tokens(&f, 200)),
        ("amortized", amortized_tokens(&f, 2)),
    ] {
        let now = mimi_ds_rm::now_ms();
        let probe = pool[0].clone();
        g.bench_function(format!("{name}_verify_only"), |b| {
            b.iter(|| f.tokens.verify(&probe, now).expect("verify"))
        });
        // What a rate-limited request adds: the nonce rides in the request's own batch (and its
        // one fsync), so the marginal cost is the verification plus one buffered put.
        g.bench_function(format!("{name}_marginal_in_request_batch"), |b| {
            b.iter(|| {
                let v = f.tokens.verify(&probe, now).expect("verify");
                let mut txn = Txn::new(&f.store);
                Tokens::spend(&mut txn, &v).expect("unspent");
                txn
            })
        });
        g.bench_function(format!("{name}_verify_and_synced_spend"), |b| {
            // Each token spends once: mint what the iteration count needs outside the timer.
            b.iter_custom(|iters| {
                while (pool.len() as u64) < iters {
                    pool.extend(if name == "blind_rsa" {
                        rsa_tokens(&f, 200)
                    } else {
                        amortized_tokens(&f, 2)
                    });
                }
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    let t = pool.pop().expect("pool refilled above");
                    let v = f.tokens.verify(&t, now).expect("verify");
                    let mut txn = Txn::new(&f.store);
                    Tokens::spend(&mut txn, &v).expect("unspent");
                    txn.commit().expect("commit");
                }
                start.elapsed()
            })
        });
    }
    g.finish();

    // The floor: the bare primitives our verifier wraps, in the same build.
    let mut g = c.benchmark_group("floor");
    let rsa_token = rsa_tokens(&f, 1).remove(0);
    g.bench_function("rsa_pss_verify_raw", |b| {
        let sig = blind_rsa_signatures::Signature(rsa_token.authenticator.clone());
        let input = rsa_token.token_input();
        b.iter(|| f.rsa.verify(&sig, None, &input).expect("verifies"))
    });
    let server = privacypass::VoprfServer::<Ristretto255>::new_from_seed(&[1; 32], b"floor")
        .expect("server");
    let input = amortized_tokens(&f, 1).remove(0).token_input();
    g.bench_function("voprf_evaluate_raw", |b| {
        b.iter(|| server.evaluate(&input).expect("evaluates"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
