//! Two users chatting in one process, each a [`Client`] with its own store, driven from tokio.
//!
//! ```sh
//! ./target/debug/ds-rm serve --domain chat.example --listen 127.0.0.1:8080 --data /tmp/hub &
//! cargo run --example chat -- --hub http://127.0.0.1:8080
//! ```
//!
//! Alice creates a group and invites bob; they exchange a few lines. Each side waits for the
//! other's message on its event stream (the hub wakes it over the live socket), so nothing here
//! polls.

use clap::Parser;
use mimi_client_rm::{Client, Event, Events};
use std::path::PathBuf;

/// Two users chatting through a hub.
#[derive(Parser)]
struct Args {
    /// The hub's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// Where the two client stores go (a fresh temporary directory if absent).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Lines each side sends.
    #[arg(long, default_value_t = 3)]
    lines: usize,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Waits for the next application message on `events` and returns its text.
async fn next_message(events: &mut Events) -> Result<String> {
    loop {
        if let (_, Event::Message { plaintext, .. }) = events.next().await? {
            return Ok(String::from_utf8_lossy(&plaintext).into_owned());
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let temporary = args.dir.is_none();
    let dir = args
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("mimi-chat-{}", std::process::id())));
    // Handles are unique per provider: a suffix lets the example run again on the same hub.
    let tag: u32 = rand::random();
    let mut alice =
        Client::register(&dir.join("alice"), &args.hub, &format!("alice-{tag:08x}")).await?;
    let mut bob = Client::register(&dir.join("bob"), &args.hub, &format!("bob-{tag:08x}")).await?;
    bob.add_contact(&alice.contact_card()?)?;
    alice.add_contact(&bob.contact_card()?)?;

    let group = alice.create_group().await?;
    alice.invite(&group, &bob.contact_card()?).await?;
    let mut alice = alice.into_events();
    let mut bob = bob.into_events();
    // Bob's first event is the join.
    match bob.next().await? {
        (_, Event::Joined { .. }) => println!("{} joined the group", bob.client().name()),
        (_, other) => return Err(format!("expected a join, got {other:?}").into()),
    }
    for i in 1..=args.lines {
        let line = format!("line {i} from alice");
        alice.client().send(&group, line.as_bytes()).await?;
        println!("bob got: {}", next_message(&mut bob).await?);
        let reply = format!("reply {i} from bob");
        bob.client().send(&group, reply.as_bytes()).await?;
        println!("alice got: {}", next_message(&mut alice).await?);
    }
    drop((alice.into_client()?, bob.into_client()?));
    if temporary {
        std::fs::remove_dir_all(&dir)?;
    }
    println!("done");
    Ok(())
}
