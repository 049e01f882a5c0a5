//! `mimi-rm`: use a reduced-metadata MIMI hub from the command line.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use mimi_client_rm::{
    Client, ContactCard, Event, GroupHandle, Listening, MemberIdentity, PendingDevice,
    RegisterOptions, StoreOptions,
};
use std::path::PathBuf;
use std::process::ExitCode;

/// A MIMI client for reduced-metadata hubs. Keys and group state live in --dir; the hub only
/// ever sees pseudonyms and ciphertexts.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Directory holding this client's keys and state.
    #[arg(long, default_value = "./mimi-client")]
    dir: PathBuf,
    /// Base URL of your hub.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// File whose first line is the passphrase of the client store: every key and message
    /// waiting in --dir is then sealed under it (argon2id, AES-256-GCM). Give it at `register`
    /// (or `device complete`) to create a protected store, and with every command after.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Send every request over one connection pool. Cheaper (fewer TLS handshakes), but the hub
    /// can then link your handle to your groups and queue by the connection they share. By
    /// default identity requests, your queue and each group use separate connections.
    #[arg(long)]
    shared_connections: bool,
    /// Send pseudonymous requests (your queue, your groups, lookups) through this Oblivious
    /// HTTP relay (e.g. `https://relay.example.net/`, run by someone other than your hub's
    /// operator): your hub then never sees your address on them. Requests that carry your
    /// identity still go direct.
    #[arg(long, value_name = "URL")]
    ohttp_relay: Option<String>,
    /// Give up on a request to the hub (or relay) after this many seconds, connecting
    /// included (default 60): a hub that accepts and never answers does not hang the command.
    #[arg(long, value_name = "SECONDS")]
    request_timeout_secs: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The connection options the flags ask for.
    fn connections(&self) -> mimi_client_rm::ConnectionOptions {
        mimi_client_rm::ConnectionOptions {
            policy: if self.shared_connections {
                mimi_client_rm::ConnectionPolicy::Shared
            } else {
                mimi_client_rm::ConnectionPolicy::Scoped
            },
            local_address: None,
            ohttp_relay: self.ohttp_relay.clone(),
            request_timeout: self
                .request_timeout_secs
                .map(std::time::Duration::from_secs),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Register a handle at your provider's AS, create pseudonymous queue records and publish
    /// AddPackages.
    Register {
        /// Your handle (`[a-z0-9._-]`, 1–64 characters); only the AS, your contacts and the
        /// members of your groups see it, never the DS or QS.
        #[arg(long)]
        name: String,
        /// The hub's mode: `rm` (default), or `baseline` for a hub run with `--mode baseline`
        /// (a full-metadata comparison DS: your handle will be visible in its group states).
        #[arg(long, default_value = "rm")]
        mode: mimi_rm_protocol::DsMode,
        /// An invitation code, for a provider that registers by invitation only (its operator
        /// makes codes with `ds-rm invite`).
        #[arg(long, conflicts_with = "registration_token")]
        invite: Option<String>,
        /// A registration token someone registered vouched with (`mimi-rm vouch`), instead of
        /// an invitation code.
        #[arg(long)]
        registration_token: Option<String>,
    },
    /// Print a registration token to hand to someone you vouch for (`register
    /// --registration-token`). Your device gets few per key epoch; the hub cannot tell which
    /// registration spends it.
    Vouch,
    /// Print the contact card others need to add you to groups.
    Contact,
    /// Accept someone's contact card: you may add them, and you accept their invitations.
    AddContact {
        /// Contact card (`mimi-contact:…`).
        #[arg(long)]
        card: String,
    },
    /// Stop accepting a contact and rotate the friendship token and keys its card held (one
    /// commit per group); the other contacts receive your new card.
    RemoveContact {
        /// The contact's handle.
        #[arg(long)]
        handle: String,
    },
    /// Fetch every provider's signed revocation list now and mark removed devices in all
    /// groups (receive also does this, at most once a minute).
    CheckRevocations,
    /// Show each member of a group with its verified handle (or why it did not verify).
    Members {
        /// Group id (hex).
        #[arg(long)]
        group: String,
    },
    /// Create a new group; prints its id.
    CreateGroup,
    /// Add the owner of a contact card to a group.
    Invite {
        /// Group id (hex).
        #[arg(long)]
        group: String,
        /// Contact card (`mimi-contact:…`).
        #[arg(long)]
        contact: String,
    },
    /// Send a message to a group.
    Send {
        /// Group id (hex).
        #[arg(long)]
        group: String,
        /// Text to send.
        #[arg(long)]
        message: String,
    },
    /// Fetch and show everything that arrived, and every event other commands found but did
    /// not show. An event is forgotten only after it was printed.
    Receive {
        /// Prefix each event with its number (`#N`): an event printed just before a crash is
        /// printed again with the same number.
        #[arg(long)]
        ids: bool,
    },
    /// Show what arrives, as it arrives, until interrupted (live socket to the hub; polling
    /// while it is down, or with --poll).
    Listen {
        /// Seconds between polls while the live socket is down (or always, with --poll).
        #[arg(long, default_value_t = 5)]
        interval: u64,
        /// Poll instead of keeping a live socket to the hub.
        #[arg(long)]
        poll: bool,
        /// Prefix each event with its number (`#N`), as `receive --ids` does.
        #[arg(long)]
        ids: bool,
    },
    /// Refresh your keys in a group (and commit pending proposals).
    Update {
        /// Group id (hex).
        #[arg(long)]
        group: String,
    },
    /// Remove a member by leaf index.
    Remove {
        /// Group id (hex).
        #[arg(long)]
        group: String,
        /// Leaf index of the member.
        #[arg(long)]
        leaf: u32,
    },
    /// Ask to leave a group (another member commits it).
    Leave {
        /// Group id (hex).
        #[arg(long)]
        group: String,
    },
    /// Remove everyone and delete the group.
    Delete {
        /// Group id (hex).
        #[arg(long)]
        group: String,
    },
    /// List your groups with your leaf index and the members' leaf indices.
    Groups,
    /// Re-enter a group by external commit (when your state no longer matches the hub's).
    Resync {
        /// Group id (hex).
        #[arg(long)]
        group: String,
    },
    /// Re-encrypt the group's state on the hub under a fresh key and hand it to the members.
    RotateKey {
        /// Group id (hex).
        #[arg(long)]
        group: String,
    },
    /// Show how often members reported each leaf's commits as unprocessable.
    Reports {
        /// Group id (hex).
        #[arg(long)]
        group: String,
    },
    /// Ask a user to connect (consent-based): they see who asks and accept or decline. Until
    /// they accept, nothing you send reaches them.
    Connect {
        /// Their handle.
        #[arg(long)]
        handle: String,
        /// Their provider's domain (default: yours).
        #[arg(long)]
        domain: Option<String>,
    },
    /// Fetch connection requests from your AS and list those waiting for your decision.
    Requests,
    /// Accept a connection request: join its group; the asker becomes a contact.
    Accept {
        /// Request id (from `requests`).
        #[arg(long)]
        id: String,
    },
    /// Decline a connection request: it is forgotten and the asker learns nothing.
    Decline {
        /// Request id (from `requests`).
        #[arg(long)]
        id: String,
    },
    /// Manage your devices (clients of your user).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Wake this device by Web Push while it is offline (RFC 8030/8291/8292): the hub stores
    /// the subscription sealed and learns its key only while it delivers to you.
    #[command(subcommand)]
    Push(PushCommand),
    /// Show a group's users: their devices and roles.
    Users {
        /// Group id (hex).
        #[arg(long)]
        group: String,
    },
    /// Make the user at a leaf an admin or a plain member (admins only).
    SetRole {
        /// Group id (hex).
        #[arg(long)]
        group: String,
        /// Any leaf of that user.
        #[arg(long)]
        leaf: u32,
        /// `admin` or `member`.
        #[arg(long)]
        role: String,
    },
    /// Re-initialise a group into a fresh one with the same contacts (admins only).
    Reinit {
        /// Group id (hex).
        #[arg(long)]
        group: String,
    },
    /// Re-enter every group whose local MLS state was lost (the key file survived).
    Recover,
}

#[derive(Subcommand)]
enum PushCommand {
    /// Print the hub's VAPID key (base64url): subscribe to your push service with it as the
    /// application server key.
    ServerKey,
    /// Register this device's push subscription (the values your push service or UnifiedPush
    /// distributor gave you; keys in base64url as browsers give them).
    Set {
        /// The subscription's endpoint URL.
        #[arg(long)]
        endpoint: String,
        /// The receiving side's P-256 public key (65 bytes, uncompressed).
        #[arg(long)]
        p256dh: String,
        /// The 16-byte authentication secret.
        #[arg(long)]
        auth: String,
    },
    /// Remove this device's push subscription.
    Clear,
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// On the NEW device: start linking (with --dir of the new device); prints a request.
    Request {
        /// Your handle.
        #[arg(long)]
        name: String,
    },
    /// On an EXISTING device: approve a request; prints the grant for the new device.
    Approve {
        /// The request text (`mimi-link-request:…`).
        #[arg(long)]
        request: String,
    },
    /// On the NEW device: finish linking with the grant; joins all your groups.
    Complete {
        /// The grant text (`mimi-link-grant:…`).
        #[arg(long)]
        grant: String,
    },
    /// List your user's devices known to this device.
    List,
    /// Remove a device from every group and rotate your user's keys.
    Remove {
        /// Device id (hex).
        #[arg(long)]
        device: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mimi-rm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_events(events: &[Event]) {
    for e in events {
        match e {
            Event::Joined { group } => println!("joined group {group}"),
            Event::Message {
                group,
                sender,
                plaintext,
            } => println!(
                "[{group}] leaf {sender}: {}",
                String::from_utf8_lossy(plaintext)
            ),
            Event::Commit { group, epoch } => println!("[{group}] now at epoch {epoch}"),
            Event::Proposal { group } => println!("[{group}] a member proposed a change"),
            Event::Removed { group } => println!("removed from group {group}"),
            Event::Resynced {
                group,
                reported,
                epoch,
            } => match reported {
                Some(r) => println!(
                    "[{group}] a commit at epoch {} failed our checks ({:?}); reported it and re-entered at epoch {epoch}",
                    r.epoch, r.reason
                ),
                None => println!("[{group}] we had fallen behind; re-entered at epoch {epoch}"),
            },
            Event::ReInitialised { group, new_group } => {
                println!("[{group}] was re-initialised; it continues in {new_group}")
            }
            Event::ContactUpdated { handle } => {
                println!("{handle} rotated its contact card; the new one replaced the old")
            }
            Event::ConnectionAccepted { group, handle } => {
                println!("{handle} accepted your connection request (group {group})")
            }
            Event::EarKeyRotated { group } => {
                println!("[{group}] a member rotated the group's state key")
            }
            Event::InviteRejected { inviter, reason } => println!(
                "refused an invitation from {}: {reason}",
                inviter.as_deref().unwrap_or("an unknown sender")
            ),
            Event::UnverifiedMember {
                group,
                leaf,
                reason,
            } => println!("[{group}] WARNING: leaf {leaf} does not verify ({reason})"),
            Event::Undecryptable { seq, reason } => {
                println!("could not process queue entry {seq}: {reason}")
            }
        }
    }
}

/// What a subcommand returns.
type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Runs one subcommand: the ones that set up a client directory first, then the others on the
/// client loaded from it.
async fn run(cli: Cli) -> CliResult {
    // Commands that create the client directory rather than load it.
    match &cli.command {
        Command::Register {
            name,
            mode,
            invite,
            registration_token,
        } => {
            let paid = (invite.as_deref(), registration_token.as_deref());
            return register(&cli, name, *mode, paid).await;
        }
        Command::Device(DeviceCommand::Request { name }) => return device_request(&cli, name),
        Command::Device(DeviceCommand::Complete { grant }) => {
            return device_complete(&cli, grant).await;
        }
        _ => {}
    }
    let mut client = Client::load_with(&cli.dir, &cli.hub, None, &store_options(&cli)?)?;
    if cli.shared_connections || cli.ohttp_relay.is_some() || cli.request_timeout_secs.is_some() {
        client.set_connections(cli.connections())?;
    }
    let client = &mut client;
    let shows_events = matches!(
        cli.command,
        Command::Receive { .. } | Command::Listen { .. }
    );
    let result = dispatch(cli, client).await;
    // A command that read the queue on the way (a send catching up, an update) stored what it
    // found; say so, so nothing waits unseen.
    if !shows_events && let Ok(n @ 1..) = client.waiting_events() {
        eprintln!("mimi-rm: {n} new events waiting; run `mimi-rm receive`");
    }
    result
}

/// The store options from `--passphrase-file`.
fn store_options(cli: &Cli) -> Result<StoreOptions, Box<dyn std::error::Error>> {
    let Some(path) = &cli.passphrase_file else {
        return Ok(StoreOptions::default());
    };
    Ok(StoreOptions::passphrase_file(path)?)
}

/// Runs a subcommand on a loaded client.
async fn dispatch(cli: Cli, client: &mut Client) -> CliResult {
    match cli.command {
        Command::Register { .. }
        | Command::Device(DeviceCommand::Request { .. } | DeviceCommand::Complete { .. }) => Ok(()),
        Command::Connect { handle, domain } => connect(client, &handle, domain).await,
        Command::Requests => requests(client).await,
        Command::Accept { id } => accept(client, &id).await,
        Command::Decline { id } => decline(client, &id),
        Command::Device(DeviceCommand::Approve { request }) => {
            device_approve(client, &request).await
        }
        Command::Device(DeviceCommand::List) => device_list(client),
        Command::Device(DeviceCommand::Remove { device }) => device_remove(client, &device).await,
        Command::Users { group } => users(client, &group).await,
        Command::SetRole { group, leaf, role } => set_role(client, &group, leaf, &role).await,
        Command::Reinit { group } => reinit(client, &group).await,
        Command::Recover => recover(client).await,
        Command::Contact => contact(client),
        Command::AddContact { card } => add_contact(client, &card),
        Command::RemoveContact { handle } => {
            client.remove_contact(&handle).await?;
            println!("{handle} is no longer a contact; your friendship keys were rotated");
            Ok(())
        }
        Command::Vouch => {
            println!("{}", client.vouch().await?);
            Ok(())
        }
        Command::CheckRevocations => {
            let marked = client.refresh_revocations().await?;
            println!("{} members marked as revoked", marked.len());
            Ok(())
        }
        Command::Members { group } => members(client, &group),
        Command::CreateGroup => create_group(client).await,
        Command::Invite { group, contact } => invite(client, &group, &contact).await,
        Command::Send { group, message } => send(client, &group, &message).await,
        Command::Receive { ids } => receive(client, ids).await,
        Command::Listen {
            interval,
            poll,
            ids,
        } => listen(client, interval, poll, ids).await,
        Command::Update { group } => update(client, &group).await,
        Command::Remove { group, leaf } => remove(client, &group, leaf).await,
        Command::Leave { group } => leave(client, &group).await,
        Command::Delete { group } => delete(client, &group).await,
        Command::Resync { group } => resync(client, &group).await,
        Command::RotateKey { group } => rotate_key(client, &group).await,
        Command::Reports { group } => reports(client, &group).await,
        Command::Groups => groups(client),
        Command::Push(cmd) => push(client, cmd).await,
    }
}

/// `push …`: the device's Web Push subscription.
async fn push(client: &mut Client, cmd: PushCommand) -> CliResult {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |what: &str, v: &str| {
        b64.decode(v.trim_end_matches('='))
            .map_err(|e| format!("--{what} is not base64url: {e}"))
    };
    match cmd {
        PushCommand::ServerKey => println!("{}", b64.encode(client.push_server_key().await?)),
        PushCommand::Set {
            endpoint,
            p256dh,
            auth,
        } => {
            let subscription = mimi_rm_protocol::push::PushSubscription {
                endpoint: endpoint.into_bytes().into(),
                p256dh: decode("p256dh", &p256dh)?.into(),
                auth: decode("auth", &auth)?.into(),
            };
            client.set_push_subscription(&subscription).await?;
            println!("push subscription registered");
        }
        PushCommand::Clear => {
            client.clear_push_subscription().await?;
            println!("push subscription removed");
        }
    }
    Ok(())
}

/// `register`: creates the client directory with a newly registered handle.
async fn register(
    cli: &Cli,
    name: &str,
    mode: mimi_rm_protocol::DsMode,
    (invite, registration_token): (Option<&str>, Option<&str>),
) -> CliResult {
    let options = RegisterOptions {
        mode,
        invite,
        registration_token,
        store: store_options(cli)?,
        connections: cli.connections(),
        ..Default::default()
    };
    let client = Client::register_with(&cli.dir, &cli.hub, name, &options).await?;
    println!("registered {} in {}", client.name(), cli.dir.display());
    println!("{}", client.contact_card()?.to_text()?);
    Ok(())
}

/// `device request`: starts linking this (new) device.
fn device_request(cli: &Cli, name: &str) -> CliResult {
    let (pending, text) = PendingDevice::request(&cli.dir, &cli.hub, name, None)?;
    pending.save()?;
    println!("show this on an existing device (mimi-rm device approve --request …):");
    println!("{text}");
    Ok(())
}

/// `device complete`: finishes linking this (new) device with the grant.
async fn device_complete(cli: &Cli, grant: &str) -> CliResult {
    let mut pending = PendingDevice::load(&cli.dir, &cli.hub, None)?;
    pending.set_connections(cli.connections());
    let client = pending.complete_with(grant, &store_options(cli)?).await?;
    println!(
        "linked device {} of {}; in {} groups",
        client
            .identity()?
            .device
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        client.name(),
        client.groups().len()
    );
    Ok(())
}

/// `connect`: asks a user to connect.
async fn connect(client: &mut Client, handle: &str, domain: Option<String>) -> CliResult {
    let domain = domain.unwrap_or_else(|| {
        client
            .contact_card()
            .map(|c| c.domain_str())
            .unwrap_or_default()
    });
    let group = client.connect(handle, &domain).await?;
    println!("asked {handle} to connect (group {group}); they see your handle and decide");
    Ok(())
}

/// `requests`: fetches connection requests and lists those waiting for a decision.
async fn requests(client: &mut Client) -> CliResult {
    for r in client.fetch_connection_requests().await? {
        if let Some(reason) = r.rejected {
            println!(
                "rejected a request claiming to be {}@{}: {reason}",
                r.handle, r.domain
            );
        }
    }
    for r in client.pending_connection_requests()? {
        println!("{}  {}@{} wants to connect", r.id, r.handle, r.domain);
    }
    Ok(())
}

/// `accept`: accepts a connection request.
async fn accept(client: &mut Client, id: &str) -> CliResult {
    let group = client.accept_connection(id).await?;
    println!("connected; conversation group {group}");
    Ok(())
}

/// `decline`: declines a connection request.
fn decline(client: &mut Client, id: &str) -> CliResult {
    client.decline_connection(id)?;
    println!("declined");
    Ok(())
}

/// `device approve`: approves a new device's link request.
async fn device_approve(client: &mut Client, request: &str) -> CliResult {
    println!("show this on the new device (mimi-rm device complete --grant …):");
    println!("{}", client.approve_link(request).await?);
    Ok(())
}

/// `device list`: lists our user's devices.
fn device_list(client: &Client) -> CliResult {
    for d in client.own_devices() {
        println!("{d}");
    }
    Ok(())
}

/// `device remove`: removes a device of our user everywhere.
async fn device_remove(client: &mut Client, device: &str) -> CliResult {
    client.remove_device(device).await?;
    println!("removed device {device} from every group; your user keys are rotated");
    Ok(())
}

/// `users`: shows a group's users with their devices and roles.
async fn users(client: &Client, group: &str) -> CliResult {
    let g = GroupHandle::from_hex(group)?;
    for (handle, devices) in client.user_devices(&g)? {
        println!("{handle}: devices {}", devices.join(", "));
    }
    for u in client.roles(&g).await? {
        println!("leaves {:?}: {:?}", u.leaves, u.role);
    }
    Ok(())
}

/// `set-role`: makes the user at a leaf an admin or a plain member.
async fn set_role(client: &mut Client, group: &str, leaf: u32, role: &str) -> CliResult {
    let role = match role {
        "admin" => mimi_rm_protocol::ds::Role::Admin,
        "member" => mimi_rm_protocol::ds::Role::Member,
        _ => return Err("role must be admin or member".into()),
    };
    client
        .set_role(&GroupHandle::from_hex(group)?, leaf, role)
        .await?;
    println!("role set");
    Ok(())
}

/// `reinit`: re-initialises a group into a fresh one.
async fn reinit(client: &mut Client, group: &str) -> CliResult {
    let new = client.reinit(&GroupHandle::from_hex(group)?).await?;
    println!("re-initialised into group {new}");
    Ok(())
}

/// `recover`: re-enters every group whose local state was lost.
async fn recover(client: &mut Client) -> CliResult {
    for g in client.recover_lost_groups().await? {
        println!("re-entered group {g}");
    }
    Ok(())
}

/// `contact`: prints our contact card.
fn contact(client: &Client) -> CliResult {
    println!("{}", client.contact_card()?.to_text()?);
    Ok(())
}

/// `add-contact`: accepts someone's contact card.
fn add_contact(client: &mut Client, card: &str) -> CliResult {
    let card = ContactCard::from_text(card)?;
    client.add_contact(&card)?;
    println!("{} is now a contact", card.handle_str());
    Ok(())
}

/// `members`: shows each member of a group with its verified handle.
fn members(client: &Client, group: &str) -> CliResult {
    for (leaf, id) in client.member_identities(&GroupHandle::from_hex(group)?)? {
        match id {
            MemberIdentity::Verified { handle, device } => {
                println!("leaf {leaf}: {handle} (device {})", hex::encode(device))
            }
            MemberIdentity::Unverified { reason } => {
                println!("leaf {leaf}: UNVERIFIED ({reason})")
            }
        }
    }
    Ok(())
}

/// `create-group`: creates a group and prints its id.
async fn create_group(client: &mut Client) -> CliResult {
    println!("{}", client.create_group().await?);
    Ok(())
}

/// `invite`: adds the owner of a contact card to a group.
async fn invite(client: &mut Client, group: &str, contact: &str) -> CliResult {
    let epoch = client
        .invite(
            &GroupHandle::from_hex(group)?,
            &ContactCard::from_text(contact)?,
        )
        .await?;
    println!("invited; group at epoch {epoch}");
    Ok(())
}

/// `send`: sends a message to a group.
async fn send(client: &mut Client, group: &str, message: &str) -> CliResult {
    client
        .send(&GroupHandle::from_hex(group)?, message.as_bytes())
        .await?;
    println!("sent");
    Ok(())
}

/// `receive`: fetches and shows everything that arrived.
async fn receive(client: &mut Client, ids: bool) -> CliResult {
    client.fetch().await?;
    show_stored(client, ids)
}

/// Prints the stored events, then forgets them: a crash in between shows them again rather
/// than losing them.
fn show_stored(client: &mut Client, ids: bool) -> CliResult {
    let events = client.stored_events()?;
    let Some((last, _)) = events.last() else {
        return Ok(());
    };
    let last = *last;
    for (n, e) in &events {
        if ids {
            print!("#{n} ");
        }
        print_events(std::slice::from_ref(e));
    }
    use std::io::Write as _;
    std::io::stdout().flush()?;
    client.events_shown(last)?;
    Ok(())
}

/// `listen`: shows events as they arrive until interrupted: woken by the hub over a live
/// socket (reconnecting with back-off, polling meanwhile), or by polling with `--poll`.
async fn listen(client: &mut Client, interval: u64, poll: bool, ids: bool) -> CliResult {
    let every = std::time::Duration::from_secs(interval.max(1));
    client.set_listening(if poll {
        Listening::Poll { every }
    } else {
        Listening::Live { fallback: every }
    });
    // Whatever waits already, first.
    show_stored(client, ids)?;
    loop {
        tokio::select! {
            r = client.next_events() => {
                r?;
                show_stored(client, ids)?;
            }
            _ = tokio::signal::ctrl_c() => {
                client.close_live().await;
                return Ok(());
            }
        }
    }
}

/// `update`: refreshes our keys in a group.
async fn update(client: &mut Client, group: &str) -> CliResult {
    let epoch = client.update(&GroupHandle::from_hex(group)?).await?;
    println!("updated; group at epoch {epoch}");
    Ok(())
}

/// `remove`: removes a member by leaf index.
async fn remove(client: &mut Client, group: &str, leaf: u32) -> CliResult {
    let epoch = client
        .remove(&GroupHandle::from_hex(group)?, &[leaf])
        .await?;
    println!("removed leaf {leaf}; group at epoch {epoch}");
    Ok(())
}

/// `leave`: asks to leave a group.
async fn leave(client: &mut Client, group: &str) -> CliResult {
    client.leave(&GroupHandle::from_hex(group)?).await?;
    println!("leave proposed; another member will commit it");
    Ok(())
}

/// `delete`: removes everyone and deletes the group.
async fn delete(client: &mut Client, group: &str) -> CliResult {
    client.delete_group(&GroupHandle::from_hex(group)?).await?;
    println!("group deleted");
    Ok(())
}

/// `resync`: re-enters a group by external commit.
async fn resync(client: &mut Client, group: &str) -> CliResult {
    let epoch = client.resync(&GroupHandle::from_hex(group)?).await?;
    println!("re-entered; group at epoch {epoch}");
    Ok(())
}

/// `rotate-key`: rotates the group's state key.
async fn rotate_key(client: &mut Client, group: &str) -> CliResult {
    client
        .rotate_ear_key(&GroupHandle::from_hex(group)?)
        .await?;
    println!("group state key rotated");
    Ok(())
}

/// `reports`: shows how often members reported each leaf's commits.
async fn reports(client: &Client, group: &str) -> CliResult {
    let reports = client
        .commit_reports(&GroupHandle::from_hex(group)?)
        .await?;
    if reports.is_empty() {
        println!("no reports");
    }
    for t in reports {
        println!(
            "leaf {}: {} reported commits, {} reports",
            t.leaf, t.reported_commits, t.reports
        );
    }
    Ok(())
}

/// `groups`: lists our groups with our leaf and the members' leaves.
fn groups(client: &Client) -> CliResult {
    for g in client.groups() {
        println!(
            "{g}  you: leaf {}  members: {:?}",
            client.own_leaf(&g)?,
            client.members(&g)?
        );
    }
    Ok(())
}
