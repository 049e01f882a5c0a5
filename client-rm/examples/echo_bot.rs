//! A bot that stays connected and echoes every message, the shape of a service built on the
//! client library: one [`Client`], its event stream, answers sent between events.
//!
//! ```sh
//! cargo run --example echo_bot -- --hub http://127.0.0.1:8080 --dir ./bot --name echo \
//!     --accept-from 'mimi-contact:…'
//! ```
//!
//! It prints its contact card on the first line, accepts invitations from the contacts given
//! with `--accept-from`, and answers each message `m` with `echo: m`. It runs until Ctrl-C, or
//! for `--for-secs`. Its store survives restarts: run it again with the same `--dir`.

use clap::Parser;
use mimi_client_rm::{Client, ContactCard, Event};
use std::path::PathBuf;
use std::time::Duration;

/// An echo bot for a mimi-ds-rm hub.
#[derive(Parser)]
struct Args {
    /// The hub's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// The bot's client directory (registered on first use).
    #[arg(long)]
    dir: PathBuf,
    /// The bot's handle, for its registration.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Contact cards whose invitations the bot accepts.
    #[arg(long)]
    accept_from: Vec<String>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    for_secs: Option<u64>,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut bot = if args.dir.join("client.db").exists() {
        Client::load(&args.dir, &args.hub)?
    } else {
        Client::register(&args.dir, &args.hub, &args.name).await?
    };
    for card in &args.accept_from {
        bot.add_contact(&ContactCard::from_text(card)?)?;
    }
    println!("{}", bot.contact_card()?.to_text()?);
    let until = args.for_secs.map(Duration::from_secs);
    let mut events = bot.into_events();
    let run = async {
        loop {
            match events.next().await? {
                (_, Event::Joined { group }) => println!("joined {group}"),
                (
                    _,
                    Event::Message {
                        group, plaintext, ..
                    },
                ) => {
                    let text = String::from_utf8_lossy(&plaintext).into_owned();
                    println!("[{group}] {text}");
                    let answer = format!("echo: {text}");
                    events.client().send(&group, answer.as_bytes()).await?;
                }
                (_, Event::UnverifiedMember { reason, .. }) => println!("warning: {reason}"),
                (_, Event::Removed { group }) => println!("removed from {group}"),
                _ => {}
            }
        }
    };
    tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = tokio::time::sleep(until.unwrap_or(Duration::MAX)), if until.is_some() => Ok(()),
    }
}
