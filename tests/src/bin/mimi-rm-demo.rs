//! `make demo`: a real conversation through an embedded hub, then what the server stored next to
//! what the clients read.
#![forbid(unsafe_code)]

use mimi_client_rm::{Client, Event, Tamper};
use mimi_ds_rm::config::Config;
use mimi_ds_rm::core::Hub;
use mimi_ds_rm::store::{Cf, RocksStore, Store};
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn show(who: &str, events: &[Event]) {
    for e in events {
        match e {
            Event::Message {
                sender, plaintext, ..
            } => {
                println!(
                    "  {who:<6} reads  leaf {sender}: {:?}",
                    String::from_utf8_lossy(plaintext)
                )
            }
            Event::Joined { .. } => println!("  {who:<6} joined the group"),
            Event::Commit { epoch, .. } => println!("  {who:<6} applied a commit -> epoch {epoch}"),
            Event::Proposal { .. } => println!("  {who:<6} saw a proposal"),
            Event::Removed { .. } => println!("  {who:<6} was removed"),
            Event::Resynced {
                reported, epoch, ..
            } => match reported {
                Some(r) => println!(
                    "  {who:<6} rejected the commit of epoch {} ({:?}), reported it, re-entered -> epoch {epoch}",
                    r.epoch, r.reason
                ),
                None => println!("  {who:<6} had fallen behind, re-entered -> epoch {epoch}"),
            },
            Event::EarKeyRotated { .. } => println!("  {who:<6} switched to the rotated group key"),
            Event::ReInitialised { .. } => println!("  {who:<6} saw the group re-initialised"),
            Event::ConnectionAccepted { handle, .. } => {
                println!("  {who:<6} is now connected with {handle}")
            }
            Event::ContactUpdated { handle } => {
                println!("  {who:<6} received {handle}'s rotated contact card")
            }
            Event::InviteRejected { inviter, reason } => println!(
                "  {who:<6} refused an invitation from {}: {reason}",
                inviter.as_deref().unwrap_or("an unknown sender")
            ),
            Event::UnverifiedMember { leaf, reason, .. } => {
                println!("  {who:<6} WARNING: leaf {leaf} does not verify ({reason})")
            }
            Event::Undecryptable { seq, reason } => {
                println!("  {who:<6} could not read #{seq}: {reason}")
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = tempfile::tempdir()?;
    let cfg = Config {
        domain: "demo.hub".into(),
        data_dir: dir.path().join("hub-data"),
        ..Config::default()
    };
    let store = Arc::new(RocksStore::open(&cfg.data_dir, true)?);
    let hub = Arc::new(Hub::new(
        store.clone(),
        cfg.hub_config(),
        mimi_ds_rm::now_ms(),
    )?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, mimi_ds_rm::http::router(hub)).await;
    });
    println!(
        "embedded hub for domain demo.hub at {url}, data in {}\n",
        cfg.data_dir.display()
    );

    let mut alice = Client::register(&dir.path().join("alice"), &url, "alice").await?;
    let mut bob = Client::register(&dir.path().join("bob"), &url, "bob").await?;
    let mut carol = Client::register(&dir.path().join("carol"), &url, "carol").await?;
    println!(
        "registered alice, bob, carol at the AS (handles + client credentials), with pseudonymous QS records and 5 AddPackages each"
    );
    // Contacts exchange cards out of band; an invitation from a non-contact is refused.
    bob.add_contact(&alice.contact_card()?)?;
    carol.add_contact(&alice.contact_card()?)?;
    println!("bob and carol accepted alice's contact card");

    let g = alice.create_group().await?;
    println!("alice created group {g}");
    alice.invite(&g, &bob.contact_card()?).await?;
    show("bob", &bob.receive().await?);
    alice.invite(&g, &carol.contact_card()?).await?;
    show("bob", &bob.receive().await?);
    show("carol", &carol.receive().await?);

    println!("\nconversation:");
    alice.send(&g, b"Hi both, lunch at noon?").await?;
    bob.send(&g, b"Sure!").await?;
    carol.send(&g, b"Count me in.").await?;
    show("alice", &alice.receive().await?);
    show("bob", &bob.receive().await?);
    show("carol", &carol.receive().await?);
    bob.update(&g).await?;
    println!("  bob    refreshed his keys (update commit)");
    let row = store.get(Cf::DsGroups, &g.0)?.map(|v| v.len()).unwrap_or(0);
    println!("  (hub)  encrypted state row of this 3-member group: {row} bytes");
    show("alice", &alice.receive().await?);
    show("carol", &carol.receive().await?);
    carol.leave(&g).await?;
    println!("  carol  asked to leave");
    show("alice", &alice.receive().await?);
    alice.update(&g).await?;
    println!("  alice  committed carol's leave");
    show("bob", &bob.receive().await?);
    show("carol", &carol.receive().await?);

    println!("\na commit the hub cannot judge:");
    bob.update_tampered(&g, Tamper::MembershipTag).await?;
    println!("  bob    sends an update with a corrupted membership tag; the hub cannot check it");
    show("alice", &alice.receive().await?);
    for t in alice.commit_reports(&g).await? {
        println!(
            "  (hub)  reports against leaf {}: {} commit(s), {} report(s) (inside the encrypted state)",
            t.leaf, t.reported_commits, t.reports
        );
    }
    show("bob", &bob.receive().await?);
    alice
        .send(&g, b"Carol is gone; see you at noon, Bob.")
        .await?;
    bob.send(&g, b"(this one stays queued on the hub)").await?;
    show("bob", &bob.receive().await?);

    println!("\nrate limits without identities (Privacy Pass):");
    let spent = store
        .dump()?
        .iter()
        .filter(|(c, _, _)| *c == Cf::PpSpent)
        .count();
    println!(
        "  every rate-limited request above carried one blindly issued token; the hub holds {spent} spent-token nonces"
    );
    println!(
        "  tokens left in the wallets: alice {}, bob {}, carol {} (refilled in batches of 32, unlinkable to the batch)",
        wallet_len(&alice).await,
        wallet_len(&bob).await,
        wallet_len(&carol).await
    );

    println!("\nwhat the hub stored (every record, as a seized disk shows it):");
    let dump = store.dump()?;
    for cf in Cf::ALL {
        let rows: Vec<_> = dump.iter().filter(|(c, _, _)| *c == cf).collect();
        let bytes: usize = rows.iter().map(|(_, k, v)| k.len() + v.len()).sum();
        println!(
            "  {:<16} {:>3} records {:>7} bytes",
            cf.name(),
            rows.len(),
            bytes
        );
        for (_, k, v) in rows.iter().take(3) {
            println!(
                "      key {}…  value {}… ({} B)",
                hex::encode(&k[..k.len().min(12)]),
                hex::encode(&v[..v.len().min(12)]),
                v.len()
            );
        }
    }
    let secret_words: [&[u8]; 4] = [b"lunch", b"noon", b"alice", b"carol"];
    // The AS holds handles by design (and nothing about groups or queues); search the rest.
    let found = dump.iter().any(|(cf, k, v)| {
        !cf.name().starts_with("as_")
            && secret_words
                .iter()
                .any(|w| k.windows(w.len()).any(|x| x == *w) || v.windows(w.len()).any(|x| x == *w))
    });
    println!(
        "\nsearching the DS and QS records for 'lunch', 'noon', 'alice', 'carol': {}",
        if found {
            "FOUND (this is a bug)"
        } else {
            "nothing found"
        }
    );
    println!(
        "(the as_* records hold handles and client credentials, and nothing about groups or queues)"
    );
    println!("group state is one padded AES-256-GCM ciphertext under a key only members hold;");
    println!("queues are ratchet ciphertexts whose earlier keys the hub has already deleted.");
    if found {
        return Err("a plaintext word reached the DS or QS records".into());
    }
    federation_scene(dir.path()).await
}

/// Unspent Privacy Pass tokens a client holds.
async fn wallet_len(c: &Client) -> usize {
    match c.wallet() {
        Some(w) => w.len().await,
        None => 0,
    }
}

/// Starts an embedded hub for `domain` on `listener`, federating with `peers`.
async fn provider(
    dir: &std::path::Path,
    domain: &str,
    listener: tokio::net::TcpListener,
    peers: std::collections::BTreeMap<String, String>,
) -> Result<Arc<Hub>, BoxError> {
    let cfg = Config {
        domain: domain.into(),
        data_dir: dir.join(domain),
        peers,
        ..Config::default()
    };
    let store = Arc::new(RocksStore::open(&cfg.data_dir, true)?);
    let hub = Arc::new(Hub::new(store, cfg.hub_config(), mimi_ds_rm::now_ms())?);
    let peers = Arc::new(mimi_ds_rm::federation::Peers::new(&cfg)?);
    tokio::spawn(mimi_ds_rm::federation::run_outbox(
        hub.clone(),
        peers.clone(),
    ));
    let router = mimi_ds_rm::http::router_with_peers(hub.clone(), peers);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(hub)
}

/// Two providers share a group: the group lives on A; bob's provider B forwards his requests
/// to A, and A delivers fan-out for bob into B from its durable outbox.
async fn federation_scene(dir: &std::path::Path) -> Result<(), BoxError> {
    println!("\ntwo federated providers (a.demo hosts the group, bob lives on b.demo):");
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (url_a, url_b) = (
        format!("http://{}", la.local_addr()?),
        format!("http://{}", lb.local_addr()?),
    );
    let hub_a = provider(
        dir,
        "a.demo",
        la,
        [("b.demo".to_string(), url_b.clone())].into(),
    )
    .await?;
    let hub_b = provider(
        dir,
        "b.demo",
        lb,
        [("a.demo".to_string(), url_a.clone())].into(),
    )
    .await?;
    let mut alice = Client::register(&dir.join("fed-alice"), &url_a, "alice").await?;
    let mut bob = Client::register(&dir.join("fed-bob"), &url_b, "bob").await?;
    alice.add_contact(&bob.contact_card()?)?;
    bob.add_contact(&alice.contact_card()?)?;
    let g = alice.create_group().await?;
    alice.invite(&g, &bob.contact_card()?).await?;
    println!("  alice  (a.demo) created a group and added bob (b.demo) via b.demo's QS and AS");
    let settle = |n: usize| async move {
        tokio::time::sleep(std::time::Duration::from_millis(n as u64)).await
    };
    settle(300).await;
    show("bob", &bob.receive().await?);
    bob.send(&g, b"Hi Alice, from the other provider").await?;
    alice
        .send(&g, b"Hi Bob, delivered through your provider")
        .await?;
    settle(300).await;
    show("alice", &alice.receive().await?);
    show("bob", &bob.receive().await?);
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "  (hubs) a.demo delivered {} items to b.demo; b.demo forwarded bob's requests to a.demo",
        hub_a.metrics.delivered_to_peers.load(Relaxed)
    );
    println!(
        "  (hubs) b.demo enqueued {} items from a.demo; it stores no group state for the group",
        hub_b.metrics.received_from_peers.load(Relaxed)
    );
    Ok(())
}
