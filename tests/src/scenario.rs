//! A reusable, realistic scenario for the metadata checks: several users with handles, all
//! mutual contacts, overlapping groups, messages (some left queued), an update, a removal and a
//! leave. Returns everything a seized-disk search must NOT find on the hub.

use mimi_client_rm::{Client, ConnectionOptions, GroupHandle, Recorder, RegisterOptions};
use mimi_rm_protocol::credentials::PseudonymousCredential;
use mimi_rm_protocol::{DsMode, decode_exact, encode};
use std::path::Path;

/// The clients and groups after the scenario, plus what must stay secret.
pub struct Scenario {
    /// One client per user.
    pub clients: Vec<Client>,
    /// The groups created.
    pub groups: Vec<GroupHandle>,
    /// Every request body the clients sent after registration, with its path.
    pub wire: Recorder,
    /// Plaintexts of every application message.
    pub plaintexts: Vec<Vec<u8>>,
}

/// Named byte strings to search for.
pub type Needles = Vec<(String, Vec<u8>)>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs the scenario against the hub at `url` with `users` users (at least 5) and three
/// overlapping groups; client state lives under `dir`.
pub async fn run(url: &str, dir: &Path, users: usize) -> Result<Scenario, String> {
    run_in_mode(url, dir, users, DsMode::Rm).await
}

/// [`run`] with clients of a hub in `mode`, so both modes serve the same scenario.
pub async fn run_in_mode(
    url: &str,
    dir: &Path,
    users: usize,
    mode: DsMode,
) -> Result<Scenario, String> {
    run_with(url, dir, users, mode, &|_| ConnectionOptions::default()).await
}

/// [`run_in_mode`] with device `i` (the linked second device is number `users`) connecting as
/// `connections(i)` says: its connection policy and its own local address, as separate devices
/// have.
pub async fn run_with(
    url: &str,
    dir: &Path,
    users: usize,
    mode: DsMode,
    connections: &dyn Fn(usize) -> ConnectionOptions,
) -> Result<Scenario, String> {
    if users < 5 {
        return Err("the scenario needs at least 5 users".into());
    }
    let wire: Recorder = Default::default();
    let mut clients = Vec::with_capacity(users);
    for i in 0..users {
        // Random suffixes make the handles searchable without false positives.
        let handle = format!("user{i}-{}", hex::encode(rand::random::<[u8; 4]>()));
        let options = RegisterOptions {
            mode,
            connections: connections(i),
            ..Default::default()
        };
        let mut c = Client::register_with(&dir.join(&handle), url, &handle, &options)
            .await
            .map_err(err)?;
        c.set_recorder(wire.clone());
        clients.push(c);
    }
    let cards: Vec<_> = clients
        .iter()
        .map(|c| c.contact_card())
        .collect::<Result<_, _>>()
        .map_err(err)?;
    for (i, c) in clients.iter_mut().enumerate() {
        for (j, card) in cards.iter().enumerate() {
            if i != j {
                c.add_contact(card).map_err(err)?;
            }
        }
    }
    // Three groups with overlapping members: {0,1,2,3}, {1,2,4}, {3,0,4,2}.
    let layout: [(usize, &[usize]); 3] = [(0, &[1, 2, 3]), (1, &[2, 4]), (3, &[0, 4, 2])];
    let mut groups = Vec::new();
    for (creator, members) in layout {
        let g = clients[creator].create_group().await.map_err(err)?;
        for &m in members {
            clients[creator].invite(&g, &cards[m]).await.map_err(err)?;
        }
        groups.push(g);
        sync(&mut clients).await?;
    }
    let mut plaintexts = Vec::new();
    let mut say = |who: usize, g: usize| {
        let text = format!(
            "marker-{who}-{g}-{}",
            hex::encode(rand::random::<[u8; 8]>())
        );
        plaintexts.push(text.clone().into_bytes());
        (who, g, text)
    };
    let rounds = [say(0, 0), say(1, 1), say(3, 2), say(2, 0), say(4, 2)];
    for (who, g, text) in &rounds {
        clients[*who]
            .send(&groups[*g], text.as_bytes())
            .await
            .map_err(err)?;
    }
    sync(&mut clients).await?;
    clients[2].update(&groups[0]).await.map_err(err)?;
    sync(&mut clients).await?;
    let leaf3 = clients[3].own_leaf(&groups[0]).map_err(err)?;
    clients[0].remove(&groups[0], &[leaf3]).await.map_err(err)?;
    clients[4].leave(&groups[1]).await.map_err(err)?;
    sync(&mut clients).await?;
    clients[1].update(&groups[1]).await.map_err(err)?;
    sync(&mut clients).await?;
    // A consent-based connection: user 4 asks user 1, who accepts; one message each way.
    let (asked, domain) = (
        clients[1].name().to_owned(),
        clients[1].contact_card().map_err(err)?.domain_str(),
    );
    let conn = clients[4].connect(&asked, &domain).await.map_err(err)?;
    let requests = clients[1].fetch_connection_requests().await.map_err(err)?;
    let id = requests
        .first()
        .ok_or("the connection request did not arrive")?
        .id
        .clone();
    clients[1].accept_connection(&id).await.map_err(err)?;
    sync(&mut clients).await?;
    for who in [4usize, 1] {
        let text = format!("connected-{who}-{}", hex::encode(rand::random::<[u8; 8]>()));
        plaintexts.push(text.clone().into_bytes());
        clients[who]
            .send(&conn, text.as_bytes())
            .await
            .map_err(err)?;
    }
    groups.push(conn);
    // User 0 links a second device, which joins all of user 0's groups by external commit.
    let (mut pending, request) = mimi_client_rm::PendingDevice::request(
        &dir.join(format!("{}-2", clients[0].name())),
        url,
        clients[0].name(),
        None,
    )
    .map_err(err)?;
    pending.set_connections(connections(users));
    let grant = clients[0].approve_link(&request).await.map_err(err)?;
    let mut second = pending.complete(&grant).await.map_err(err)?;
    second.set_recorder(wire.clone());
    clients.push(second);
    sync(&mut clients).await?;
    // Leave a few messages queued.
    for (who, g) in [(0usize, 0usize), (2, 1), (4, 2)] {
        let text = format!(
            "queued-{who}-{g}-{}",
            hex::encode(rand::random::<[u8; 8]>())
        );
        plaintexts.push(text.clone().into_bytes());
        clients[who]
            .send(&groups[g], text.as_bytes())
            .await
            .map_err(err)?;
    }
    Ok(Scenario {
        clients,
        groups,
        wire,
        plaintexts,
    })
}

async fn sync(clients: &mut [Client]) -> Result<(), String> {
    for c in clients.iter_mut() {
        c.receive().await.map_err(err)?;
    }
    Ok(())
}

impl Scenario {
    /// Real identities: handles, client credentials, client public keys, device ids. Only the
    /// AS may hold these.
    pub fn identities(&self) -> Result<Needles, String> {
        let mut out = Vec::new();
        for c in &self.clients {
            let cred = c.client_credential().map_err(err)?;
            let handle = cred.tbs.identity.handle_str();
            out.push((format!("handle {handle}"), handle.clone().into_bytes()));
            out.push((
                format!("device of {handle}"),
                cred.tbs.identity.device.to_vec(),
            ));
            out.push((
                format!("client key of {handle}"),
                cred.tbs.public_key.as_slice().to_vec(),
            ));
            out.push((
                format!("client credential of {handle}"),
                encode(&cred).map_err(err)?,
            ));
        }
        Ok(out)
    }

    /// Leaf pseudonyms and leaf signature keys of every current membership: finding any of these
    /// next to an identity, or twice for one user, would link pseudonyms.
    pub fn pseudonyms(&self) -> Result<Needles, String> {
        let mut out = Vec::new();
        for c in &self.clients {
            for id in c.leaf_identities().map_err(err)? {
                if c.mode() == DsMode::Baseline {
                    // Baseline leaves are the client credential itself.
                    out.push((format!("leaf credential of {}", c.name()), id));
                    continue;
                }
                let p: PseudonymousCredential = decode_exact(&id, 1 << 16).map_err(err)?;
                out.push((
                    format!("pseudonym of {}", c.name()),
                    p.tbs.pseudonym.to_vec(),
                ));
                out.push((
                    format!("leaf key of {}", c.name()),
                    p.tbs.signature_key.as_slice().to_vec(),
                ));
                out.push((format!("leaf credential of {}", c.name()), id));
            }
        }
        Ok(out)
    }

    /// Keys and tokens only clients hold, and every plaintext.
    pub fn client_secrets(&self) -> Result<Needles, String> {
        let mut out = Vec::new();
        for c in &self.clients {
            let card = c.contact_card().map_err(err)?;
            for (what, k) in [
                ("friendship token", card.friendship_token),
                ("AddPackage key", card.add_package_key),
                ("friendship credential key", card.credential_key),
                ("friendship wrapper key", card.wrapper_key),
                ("attribution key", card.wai_key),
            ] {
                out.push((format!("{what} of {}", c.name()), k.to_vec()));
            }
            for g in c.groups() {
                out.push((
                    format!("EAR key of {}", c.name()),
                    c.group_ear_key(&g).map_err(err)?.to_vec(),
                ));
            }
        }
        for p in &self.plaintexts {
            out.push(("plaintext".into(), p.clone()));
        }
        Ok(out)
    }

    /// Pseudonymous QS client (queue) ids: the DS must never see them.
    pub fn queue_ids(&self) -> Result<Needles, String> {
        self.clients
            .iter()
            .map(|c| {
                Ok((
                    format!("queue id of {}", c.name()),
                    c.client_id_bytes().map_err(err)?.to_vec(),
                ))
            })
            .collect()
    }
}

/// How many needles of each kind a seized disk shows, by column family.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Leakage {
    /// Identity needles (handles, devices, client keys, credentials) found outside the AS.
    pub identities: usize,
    /// Leaf pseudonyms, leaf keys and leaf credentials found anywhere.
    pub leaf_identities: usize,
    /// Queue ids found in DS records (where they would link memberships to queues).
    pub queue_ids_in_ds: usize,
    /// Client-held keys or plaintexts found anywhere.
    pub secrets: usize,
    /// Each finding as "what in column family".
    pub findings: Vec<String>,
}

impl Scenario {
    /// Searches a raw dump of every record (and server key) for everything that must stay off
    /// the hub's disk in RM mode, and counts what was found.
    pub fn leakage(
        &self,
        dump: &[(mimi_ds_rm::store::Cf, Vec<u8>, Vec<u8>)],
    ) -> Result<Leakage, String> {
        use mimi_ds_rm::store::Cf;
        let identities = self.identities()?;
        let pseudonyms = self.pseudonyms()?;
        let secrets = self.client_secrets()?;
        let queue_ids = self.queue_ids()?;
        let mut out = Leakage::default();
        let is_as = |cf: &Cf| cf.name().starts_with("as_");
        for (cf, k, v) in dump {
            let found = |needle: &[u8]| crate::contains(k, needle) || crate::contains(v, needle);
            let mut note = |what: &str, counter: &mut usize| {
                *counter += 1;
                out.findings.push(format!("{what} in {cf:?}"));
            };
            if !is_as(cf) {
                for (what, n) in &identities {
                    if found(n) {
                        note(what, &mut out.identities);
                    }
                }
            }
            for (what, n) in &pseudonyms {
                if found(n) {
                    note(what, &mut out.leaf_identities);
                }
            }
            for (what, n) in &secrets {
                if found(n) {
                    note(what, &mut out.secrets);
                }
            }
            if matches!(cf, Cf::DsGroups | Cf::DsRouting | Cf::DsReservations) || is_as(cf) {
                for (what, n) in &queue_ids {
                    if found(n) {
                        note(what, &mut out.queue_ids_in_ds);
                    }
                }
            }
        }
        Ok(out)
    }
}
