//! The hub between providers: federation keys, forwarding a client's request to the hub of
//! its group, proxied lookups, accepting deliveries from peers and the durable outbox of
//! fan-out for other providers' members.

use super::*;
use mimi_rm_protocol::queue::HpkeCiphertextWire;

impl Hub {
    /// Puts a fan-out item for another provider's member into the outbox, sealed to that
    /// provider's QS key so that only it can read the item. Without the key (a peer this hub
    /// has not reached yet) the request is refused as `PeerUnavailable` — nothing is written in
    /// the clear — and the delivery worker is asked to fetch the key.
    pub(super) fn queue_for_peer(
        &self,
        txn: &mut Txn<'_>,
        queue_ref: &mimi_rm_protocol::queue::QueueRef,
        message: &QueueMessage,
        now_ms: u64,
    ) -> Result<(), HubError> {
        let peer = queue_ref.domain.as_slice();
        let domain = String::from_utf8_lossy(peer).into_owned();
        let Some(peer_key) = self
            .peer_key(&domain)
            .or_else(|| self.stored_peer_key(&domain))
        else {
            self.want_peer_key(&domain);
            return Err(HubError::Federation(FederationError::PeerUnavailable(
                format!("{domain}: its encryption key is not known yet; try again shortly"),
            )));
        };
        let item = DeliveryItem {
            id: self.ids.id(),
            created_ms: now_ms,
            queue_ref: queue_ref.clone(),
            message: message.clone(),
        };
        let sealed = federation::seal_item(&self.config.domain, peer, &peer_key, &item)?;
        // Numbers from one sequence for all processes on a shared store, so a peer's items
        // keep their order whichever process queued them.
        let seq = match &self.shared {
            Some(shared) => shared.next_outbox_seq()?,
            None => self.outbox_seq.fetch_add(1, Ordering::Relaxed),
        };
        federation::queue_for_peer(txn, seq, peer, &sealed)
    }

    /// The QS public key of `domain`, if this hub has fetched it.
    pub fn peer_key(&self, domain: &str) -> Option<HpkePublicKey> {
        self.peer_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
    }

    /// `domain`'s QS key as another process sharing the store recorded it, remembered here.
    fn stored_peer_key(&self, domain: &str) -> Option<HpkePublicKey> {
        self.shared.as_ref()?;
        let value = self.store.get(Cf::FedPeerKeys, domain.as_bytes()).ok()??;
        let record: federation::PeerKeyRecord = crate::store::record::decode(&value).ok()?;
        let key = HpkePublicKey::from_bytes(record.key.as_slice()).ok()?;
        self.peer_keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_owned(), key.clone());
        Some(key)
    }

    /// Records `domain`'s QS public key (fetched by the delivery worker over TLS from the
    /// peer's configured URL), durably, so outbox items for it can be sealed even while it is
    /// down.
    pub fn set_peer_key(&self, domain: &str, key: &[u8]) -> Result<(), HubError> {
        let pk = HpkePublicKey::from_bytes(key).map_err(|_| {
            HubError::Federation(FederationError::PeerUnavailable(format!(
                "{domain}: its QS key is not an X25519 key"
            )))
        })?;
        let mut txn = Txn::new(self.store.as_ref());
        txn.put_record(
            domain.as_bytes(),
            &federation::PeerKeyRecord {
                key: key.to_vec().into(),
            },
        )?;
        txn.commit()?;
        self.peer_keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_owned(), pk);
        self.wanted_peer_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(domain);
        Ok(())
    }

    /// Domains whose QS key a request needed and this hub does not have yet.
    pub fn wanted_peer_keys(&self) -> Vec<String> {
        self.wanted_peer_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn want_peer_key(&self, domain: &str) {
        self.wanted_peer_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_owned());
        self.outbox_signal.notify_one();
    }

    /// Enqueues a verified delivery's items (each at most once); `dropped` items of it did not
    /// open and count as undeliverable.
    fn accept_items(
        &self,
        sender: &[u8],
        items: &[DeliveryItem],
        dropped: u64,
        now_ms: u64,
    ) -> Result<Vec<u8>, HubError> {
        let clients = federation::resolve(&self.config.domain, items, |qr| self.resolve_queue(qr))?;
        let ids: Vec<qs::ClientId> = clients.iter().flatten().copied().collect();
        let mut locks = crate::store::LockSet::default();
        self.locks.lock_queues(&mut locks, &ids)?;
        let mut txn = Txn::new(self.store.as_ref());
        let mut accepted = federation::accept_delivery(
            &mut txn,
            sender,
            items,
            &clients,
            now_ms,
            self.config.max_queue_length,
        )?;
        txn.commit_under(&mut locks)?;
        // Under the queue locks, as for local fan-out: a fetch cannot slip in between.
        for &i in &accepted.delivered {
            if let (Some(item), Some(Some(client))) = (items.get(i), clients.get(i)) {
                self.push_if_offline(client, &item.queue_ref, now_ms);
            }
        }
        drop(locks);
        accepted.undeliverable += dropped;
        self.metrics
            .received_from_peers
            .fetch_add(accepted.enqueued, Ordering::Relaxed);
        tracing::debug!(?accepted, "delivery from a peer");
        Ok(Vec::new())
    }

    /// This provider's federation key, as served at `/verification_key`.
    pub fn verification_key(&self) -> VerificationKey {
        VerificationKey {
            domain: self.config.domain.as_bytes().to_vec().into(),
            key: self.s2s_key.verifying_key().as_bytes().to_vec().into(),
        }
    }

    /// Where a decoded client request belongs (see [`ClientRequest::route`]).
    pub fn route(&self, request: &ClientRequest) -> Route {
        request.route(&self.config.domain)
    }

    /// Wraps a client's request for `domain` in a signed server-to-server envelope.
    pub fn forward_envelope(
        &self,
        domain: &str,
        transaction_type: TransactionType,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, HubError> {
        let payload = S2sPayload::Forward(ForwardedRequest {
            transaction_type,
            envelope: body.to_vec().into(),
        });
        self.s2s_envelope(domain, payload, now_ms)
    }

    fn s2s_envelope(
        &self,
        domain: &str,
        payload: S2sPayload,
        now_ms: u64,
    ) -> Result<Vec<u8>, HubError> {
        let env = federation::sign(
            &self.s2s_key,
            S2sEnvelopeTbs {
                sender_domain: self.config.domain.as_bytes().to_vec().into(),
                recipient_domain: domain.as_bytes().to_vec().into(),
                id: self.ids.id(),
                timestamp_ms: now_ms,
                payload,
            },
        )?;
        let payload = encode(&env).map_err(|e| HubError::Bug(e.to_string()))?;
        encode(&Envelope::new(TransactionType::Federation, payload))
            .map_err(|e| HubError::Bug(e.to_string()))
    }

    /// Decodes an incoming server-to-server body far enough to learn who claims to send it
    /// (the shell then fetches that domain's key).
    pub fn s2s_decode(&self, body: &[u8]) -> Result<S2sEnvelope, HubError> {
        let env = self.open_envelope(body, TransactionType::Federation)?;
        decode_exact(env.payload.as_slice(), self.config.max_body)
            .map_err(|e| HubError::malformed("s2s envelope", e))
    }

    /// Size limit, exact decode, version and transaction type of a request body.
    fn open_envelope(&self, body: &[u8], expected: TransactionType) -> Result<Envelope, HubError> {
        request::open_envelope(body, expected, self.config.max_body)
    }

    /// Handles a verified-to-be server-to-server message posted to `/federation/forward`
    /// (`deliver == false`) or `/deliver_message` (`deliver == true`), given the claimed
    /// sender's key. A forwarded request is processed as if its client had posted it here; it
    /// must concern this hub (no forwarding chains).
    pub fn handle_s2s(
        &self,
        deliver: bool,
        env: &S2sEnvelope,
        sender_key: &VerifyingKey,
        now_ms: u64,
    ) -> Result<Vec<u8>, HubError> {
        federation::verify(env, &self.config.domain, sender_key, &self.replay, now_ms)?;
        match (&env.tbs.payload, deliver) {
            (S2sPayload::Forward(fwd), false) => {
                // Only client requests are forwarded; anything else is refused before decoding.
                if !matches!(
                    fwd.transaction_type,
                    TransactionType::GroupOperation
                        | TransactionType::WelcomeInformation
                        | TransactionType::ExternalCommitInformation
                        | TransactionType::QueueService
                        | TransactionType::AuthService
                ) {
                    return Err(HubError::Request(RequestError::NotAuthorized(
                        "not forwardable",
                    )));
                }
                let request = self.decode_request(fwd.transaction_type, fwd.envelope.as_slice())?;
                request.check_forwardable(&self.config.domain)?;
                self.handle_request(request, now_ms, &tokens::Admission::Peer)
            }
            (S2sPayload::Deliver(items), true) => {
                self.accept_items(env.tbs.sender_domain.as_slice(), items, 0, now_ms)
            }
            (S2sPayload::DeliverSealed(sealed), true) => {
                let sender = env.tbs.sender_domain.as_slice();
                let (items, dropped) = federation::open_items(
                    &self.config.domain,
                    sender,
                    &self.qs_keys.hpke.private,
                    sealed,
                    self.config.max_body,
                );
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "items of a peer's delivery do not open with our QS key"
                    );
                }
                self.accept_items(sender, &items, dropped, now_ms)
            }
            _ => Err(HubError::Request(RequestError::WrongEndpoint)),
        }
    }

    /// Checks a client's proxy request (an anonymous lookup at another provider) and returns
    /// the target domain and the envelope to forward there.
    pub fn proxy_target(&self, body: &[u8], now_ms: u64) -> Result<ProxyTarget, HubError> {
        let env = self.open_envelope(body, TransactionType::Proxy)?;
        let req: ProxyRequest = decode_exact(env.payload.as_slice(), self.config.max_body)
            .map_err(|e| HubError::malformed("proxy request", e))?;
        if !matches!(
            req.request.transaction_type,
            TransactionType::QueueService | TransactionType::AuthService
        ) {
            return Err(HubError::Request(RequestError::NotAuthorized(
                "only QS and AS lookups are proxied",
            )));
        }
        let request = ClientRequest::decode(
            req.request.transaction_type,
            req.request.envelope.as_slice(),
            self.config.max_body,
        )?;
        request.check_forwardable(&self.config.domain)?;
        let domain = String::from_utf8(req.domain.as_slice().to_vec())
            .map_err(|_| HubError::Request(RequestError::Invalid("domain is not UTF-8")))?;
        if domain == self.config.domain {
            return Err(HubError::Request(RequestError::Invalid(
                "proxy to ourselves",
            )));
        }

        let envelope = self.forward_envelope(
            &domain,
            req.request.transaction_type,
            req.request.envelope.as_slice(),
            now_ms,
        )?;
        Ok(ProxyTarget {
            domain,
            envelope,
            request,
        })
    }

    /// Peer domains with pending outbox items. (A full key scan: the outbox is empty unless a
    /// peer is slow or down.)
    pub fn outbox_domains(&self) -> Result<Vec<String>, HubError> {
        let mut out: Vec<String> = Vec::new();
        for (k, _) in self.store.scan_prefix(Cf::FedOutbox, b"", usize::MAX)? {
            if let Some(d) = federation::outbox_domain(&k)
                && out.last().map(String::as_bytes) != Some(d)
                && let Ok(d) = String::from_utf8(d.to_vec())
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The right to deliver `domain`'s outbox now: always granted to a hub alone on its
    /// store; among processes sharing one, to one at a time (`None`: another one delivers).
    pub fn claim_outbox(&self, domain: &str) -> Result<Option<OutboxClaim>, HubError> {
        let Some(shared) = &self.shared else {
            return Ok(Some(OutboxClaim { _held: None }));
        };
        let mut held = shared.hold()?;
        let stripe = crate::store::shared::stripe(domain.as_bytes());
        Ok(held
            .try_take(crate::store::LockKind::Outbox, stripe)?
            .then_some(OutboxClaim { _held: Some(held) }))
    }

    /// Up to `max` pending outbox items for `domain`, oldest first, with their keys.
    pub fn outbox_batch(&self, domain: &str, max: usize) -> Result<OutboxBatch, HubError> {
        let mut prefix = domain.as_bytes().to_vec();
        prefix.push(0);
        let rows = self.store.scan_prefix(Cf::FedOutbox, &prefix, max)?;
        let mut keys = Vec::with_capacity(rows.len());
        let mut items = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            items.push(federation::decode_item(&v)?);
            keys.push(k);
        }
        Ok(OutboxBatch {
            domain: domain.to_owned(),
            keys,
            items,
        })
    }

    /// The signed delivery request for a batch.
    pub fn delivery_envelope(&self, batch: &OutboxBatch, now_ms: u64) -> Result<Vec<u8>, HubError> {
        self.s2s_envelope(
            &batch.domain,
            S2sPayload::DeliverSealed(batch.items.clone()),
            now_ms,
        )
    }

    /// Removes a delivered batch from the outbox.
    pub fn outbox_delivered(&self, batch: &OutboxBatch) -> Result<(), HubError> {
        let mut txn = Txn::new(self.store.as_ref());
        for k in &batch.keys {
            txn.delete(Cf::FedOutbox, k.clone());
        }
        txn.commit()?;
        self.metrics
            .delivered_to_peers
            .fetch_add(batch.items.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// A checked proxy request: where it goes, the signed envelope to send, and the client's own
/// request inside, decoded (the shell spends its token before relaying).
#[derive(Debug)]
pub struct ProxyTarget {
    /// The other provider.
    pub domain: String,
    /// Our signed server-to-server envelope.
    pub envelope: Vec<u8>,
    /// The client's own request, decoded (its token is spent before relaying).
    pub request: ClientRequest,
}

/// Outbox items for one peer, oldest first.
#[derive(Debug)]
pub struct OutboxBatch {
    /// The peer.
    pub domain: String,
    /// Their outbox keys.
    pub keys: Vec<Vec<u8>>,
    /// The items, sealed to the peer's QS key.
    pub items: Vec<HpkeCiphertextWire>,
}

/// A claim on one peer's outbox (see [`Hub::claim_outbox`]); dropping it lets another process
/// deliver.
pub struct OutboxClaim {
    _held: Option<Box<dyn crate::store::HeldLocks>>,
}
