//! The hub between providers: federation keys, forwarding a client's request to the hub of
//! its group, proxied lookups, accepting deliveries from peers and the durable outbox of
//! fan-out for other providers' members.

use super::*;

impl Hub {
    pub(super) fn queue_for_peer(
        &self,
        txn: &mut Txn<'_>,
        queue_ref: &mimi_rm_protocol::queue::QueueRef,
        message: &QueueMessage,
        now_ms: u64,
    ) -> Result<(), HubError> {
        let item = DeliveryItem {
            id: self.ids.id(),
            created_ms: now_ms,
            queue_ref: queue_ref.clone(),
            message: message.clone(),
        };
        let seq = self.outbox_seq.fetch_add(1, Ordering::Relaxed);
        federation::queue_for_peer(txn, seq, &item)
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
                let clients =
                    federation::resolve(&self.config.domain, items, |qr| self.resolve_queue(qr))?;
                let ids: Vec<qs::ClientId> = clients.iter().flatten().copied().collect();
                let mut locks = crate::store::LockSet::default();
                self.locks.lock_queues(&mut locks, &ids);
                let mut txn = Txn::new(self.store.as_ref());
                let accepted = federation::accept_delivery(
                    &mut txn,
                    env.tbs.sender_domain.as_slice(),
                    items,
                    &clients,
                    now_ms,
                    self.config.max_queue_length,
                )?;
                txn.commit()?;
                drop(locks);
                self.metrics
                    .received_from_peers
                    .fetch_add(accepted.enqueued, Ordering::Relaxed);
                tracing::debug!(?accepted, "delivery from a peer");
                Ok(Vec::new())
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
            S2sPayload::Deliver(batch.items.clone()),
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
    /// The items.
    pub items: Vec<DeliveryItem>,
}
