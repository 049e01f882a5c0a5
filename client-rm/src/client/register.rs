//! Registration: a handle at the AS, pseudonymous QS records, and our published AddPackages.

use super::requests::{anonymous_as, qs_encryption_key, signed_qs};
use super::{
    ADD_PACKAGE_DOMAIN, ADD_PACKAGES, CIPHERSUITE, CONNECTION_PACKAGES, Client, WALLET_FILE,
    encoded, now_ms, transport_for,
};
use crate::error::ClientError;
use crate::identity;
use crate::state::{ClientState, PendingKeyPackage, unhex};
use crate::tokens::RegistrationPayment;
use crate::transport::Transport;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_crypto::hpke_seal::HpkeKeyPair;
use mimi_rm_crypto::ratchet::{QueueRatchet, RatchetSecret};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::DsMode;
use mimi_rm_protocol::auth::*;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::tokens::PresentedToken;
use openmls::prelude::{tls_codec::Serialize as _, *};
use std::collections::BTreeMap;
use std::path::Path;

impl Client {
    /// Registers the handle `name` with a first client at the AS of the hub at `hub_url`,
    /// creates the pseudonymous QS records, and stores the state in `dir`.
    pub async fn register(dir: &Path, hub_url: &str, name: &str) -> Result<Self, ClientError> {
        Self::register_with_ca(dir, hub_url, name, None).await
    }

    /// Like [`Client::register`], additionally trusting the PEM root `ca_pem` for the hub's
    /// HTTPS certificate, for hubs certified by a private CA.
    pub async fn register_with_ca(
        dir: &Path,
        hub_url: &str,
        name: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        Self::register_in_mode(dir, hub_url, name, ca_pem, DsMode::Rm).await
    }

    /// Like [`Client::register_with_ca`] for a hub in `mode`. A `baseline` client behaves as a
    /// client of a conventional full-metadata DS (its real credential in every leaf, a plain
    /// queue id, no EAR key sent), so the same scenario runs against both modes.
    pub async fn register_in_mode(
        dir: &Path,
        hub_url: &str,
        name: &str,
        ca_pem: Option<&[u8]>,
        mode: DsMode,
    ) -> Result<Self, ClientError> {
        let options = super::RegisterOptions {
            ca_pem,
            mode,
            ..Default::default()
        };
        Self::register_with(dir, hub_url, name, &options).await
    }

    /// Like [`Client::register_with_ca`] at a provider that registers by invitation only
    /// (`registration = "invite"`), with a code its operator made with `ds-rm invite`. The
    /// code is used up by this registration.
    pub async fn register_invited(
        dir: &Path,
        hub_url: &str,
        name: &str,
        ca_pem: Option<&[u8]>,
        invite: &str,
    ) -> Result<Self, ClientError> {
        let options = super::RegisterOptions {
            ca_pem,
            invite: Some(invite),
            ..Default::default()
        };
        Self::register_with(dir, hub_url, name, &options).await
    }

    /// Registers as [`Client::register`] does, with every option: a private CA, the hub's mode,
    /// an invitation code, the store's passphrase. The directory must not hold a client yet; it
    /// is checked before anything is registered.
    pub async fn register_with(
        dir: &Path,
        hub_url: &str,
        name: &str,
        options: &super::RegisterOptions<'_>,
    ) -> Result<Self, ClientError> {
        let (ca_pem, mode) = (options.ca_pem, options.mode);
        let store = super::new_store(dir, &options.store)?;
        let mut transport = transport_for(hub_url, ca_pem)?.reconnected(&options.connections)?;
        let domain = transport.domain().await?;
        let payment = match (options.invite, options.registration_token) {
            (Some(code), _) => Payment::Invite(code),
            (None, Some(text)) => Payment::Token(decode_registration_token(text)?),
            (None, None) => Payment::IfAsked,
        };
        let certified = certify(&transport, &domain, name, payment).await?;
        // From here on, rate-limited requests (the QS records first) are paid with tokens that
        // this credential authorises us to obtain.
        transport.enable_tokens(crate::tokens::Wallet::new(
            domain.clone(),
            certified.credential.clone(),
            SigningKey::from_bytes(&certified.client_key.to_bytes())?,
            Some(store.token_store()),
            Some(dir.join(WALLET_FILE)),
        )?);
        let qs_public = qs_encryption_key(&transport).await?;
        let qs_user = create_qs_user(&transport, &certified.identity.device).await?;
        let state = initial_state(name, mode, domain, &certified, qs_public, qs_user)?;
        let mut client = Self::from_parts(transport, dir, state, store);
        client.publish_add_packages(ADD_PACKAGES).await?;
        client
            .publish_connection_packages(CONNECTION_PACKAGES)
            .await?;
        Ok(client)
    }

    /// A registration token for someone this device vouches for, as text to hand over
    /// (`register --registration-token`). Paid from this device's small registration
    /// allowance; the hub cannot tell which registration spends it.
    pub async fn vouch(&self) -> Result<String, ClientError> {
        let token = self.transport.vouch().await?;
        Ok(mimi_rm_protocol::tokens::encode_b64url(&token.encode()))
    }

    /// Our user's friendship credential key and wrapper key (in our contact card).
    fn friendship_keys(&self) -> Result<(EarKey, EarKey), ClientError> {
        Ok((
            EarKey::from_bytes(&unhex(&self.state.credential_key)?)?,
            EarKey::from_bytes(&unhex(&self.state.wrapper_key)?)?,
        ))
    }

    /// Replaces our published AddPackages with `count` one-time ones plus a last-resort one.
    pub async fn publish_add_packages(&mut self, count: usize) -> Result<(), ClientError> {
        let key = EarKey::from_bytes(&unhex(&self.state.add_package_key)?)?;
        let mut packages = Vec::with_capacity(count);
        let mut last_resort = Vec::new();
        let credential = self.client_credential()?;
        let (friend_ck, friend_wk) = self.friendship_keys()?;
        for i in 0..=count {
            let is_last_resort = i == count;
            let (signer, cwk, sek) = self.new_leaf_identity()?;
            let mut builder = KeyPackage::builder()
                .leaf_node_capabilities(leaf_capabilities())
                .leaf_node_extensions(
                    Extensions::single(self.sealed_queue_ref()?).map_err(ClientError::mls)?,
                );
            if is_last_resort {
                builder = builder.mark_as_last_resort();
            }
            let kpb = builder
                .build(CIPHERSUITE, &self.provider, &signer, cwk)
                .map_err(ClientError::mls)?;
            let kp_ref = kpb
                .key_package()
                .hash_ref(self.provider.crypto())
                .map_err(ClientError::mls)?;
            self.state.key_packages.insert(
                hex::encode(kp_ref.as_slice()),
                PendingKeyPackage {
                    init_private: hex::encode(&**kpb.init_private_key()),
                    signer_public: hex::encode(signer.public()),
                    signature_ear_key: hex::encode(sek.as_bytes()),
                    last_resort: is_last_resort,
                },
            );
            let info = identity::wrap(&credential, &sek, &friend_ck, &friend_wk)?;
            let package = AddPackage {
                key_package: kpb
                    .key_package()
                    .tls_serialize_detached()
                    .map_err(ClientError::mls)?
                    .into(),
                encrypted_client_credential: info.encrypted_client_credential,
                encrypted_signature_ear_key: info.encrypted_signature_ear_key,
            };
            let sealed = ear::seal(&key, ADD_PACKAGE_DOMAIN, b"", &encoded(&package)?)?;
            if is_last_resort {
                last_resort = sealed;
            } else {
                packages.push(sealed.into());
            }
        }
        let op = QsOperation::PublishAddPackages(PublishAddPackages {
            packages,
            last_resort: last_resort.into(),
        });
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            op,
        )?;
        self.transport.qs(&req).await?;
        self.persist()
    }
}

/// What the AS certified at registration: our client key and identity, the credential it
/// issued for them, and the AS credentials that credential verified against.
struct Certified {
    client_key: SigningKey,
    identity: ClientIdentity,
    credential: ClientCredential,
    anchors: AsCredentials,
}

/// The pseudonymous QS user created at registration, with the secrets only we hold.
pub(super) struct QsUser {
    pub(super) client_auth: SigningKey,
    pub(super) user_auth: SigningKey,
    pub(super) token: [u8; 32],
    pub(super) add_package_key: EarKey,
    pub(super) secret: RatchetSecret,
    pub(super) ids: UserCreated,
    pub(super) device_tag_key: [u8; 32],
}

/// How a registration is paid for.
enum Payment<'a> {
    /// With a registration token bought with an invitation code.
    Invite(&'a str),
    /// With a registration token someone vouched with.
    Token(PresentedToken),
    /// With a registration token of the open allowance, if the hub asks for one.
    IfAsked,
}

/// A registration token as `mimi-rm vouch` prints it (base64url of the token).
fn decode_registration_token(text: &str) -> Result<PresentedToken, ClientError> {
    let bytes = mimi_rm_protocol::tokens::decode_b64url(text.trim())
        .ok_or_else(|| ClientError::InvalidInput("a registration token is base64url".into()))?;
    PresentedToken::decode(&bytes)
        .map_err(|e| ClientError::InvalidInput(format!("registration token: {e}")))
}

/// Has the AS certify a fresh client key for the handle `name`, and checks that the credential
/// verifies and is the one we asked for.
async fn certify(
    transport: &Transport,
    domain: &str,
    name: &str,
    payment: Payment<'_>,
) -> Result<Certified, ClientError> {
    // Identity at the AS: the only request that carries our handle.
    let client_key = SigningKey::generate();
    let identity = ClientIdentity {
        handle: name.as_bytes().to_vec().into(),
        device: mimi_rm_crypto::ids::random_id(),
    };
    let csr = ClientCredentialCsr::new(&client_key, identity.clone())
        .map_err(|e| ClientError::State(e.to_string()))?;
    let req = anonymous_as(AsOperation::RegisterUser(csr));
    // An invitation code or a vouched token is used up even when the registration is then
    // refused: make sure the handle is free before spending one.
    if !matches!(payment, Payment::IfAsked) {
        let lookup = anonymous_as(AsOperation::UserClients(name.as_bytes().to_vec().into()));
        match transport.auth(&lookup).await {
            Err(e) if e.code() == Some(mimi_rm_protocol::ErrorCode::UnknownUser) => {}
            Ok(_) => {
                return Err(ClientError::InvalidInput(format!(
                    "the handle {name} is taken; nothing was spent"
                )));
            }
            Err(e) => return Err(e),
        }
    }
    // The hub sees the invitation code (or the vouching device) when it signs the token
    // blindly, and the token only now: it cannot tell which code or device paid for this handle.
    let answer = match payment {
        Payment::Invite(code) => {
            let token = transport
                .registration_token(domain, RegistrationPayment::Invite(code))
                .await?;
            transport.auth_paid(&req, &token).await?
        }
        Payment::Token(token) => transport.auth_paid(&req, &token).await?,
        Payment::IfAsked => match transport.auth(&req).await {
            Err(e) if e.code() == Some(mimi_rm_protocol::ErrorCode::TokenRequired) => {
                let token = transport
                    .registration_token(domain, RegistrationPayment::Open)
                    .await?;
                transport.auth_paid(&req, &token).await?
            }
            other => other?,
        },
    };
    let AsResponse::ClientCredential(credential) = answer else {
        return Err(ClientError::Unexpected("expected a client credential"));
    };
    let AsResponse::AsCredentials(anchors) = transport
        .auth(&anonymous_as(AsOperation::AsCredentials))
        .await?
    else {
        return Err(ClientError::Unexpected("expected AS credentials"));
    };
    credential
        .verify_chain(&anchors, now_ms() / 1000)
        .map_err(identity::IdentityError::from)?;
    if credential.tbs.identity != identity
        || credential.tbs.public_key.as_slice() != client_key.verifying_key().as_bytes()
    {
        return Err(ClientError::Unexpected("the AS issued another credential"));
    }
    Ok(Certified {
        client_key,
        identity,
        credential,
        anchors,
    })
}

/// Creates our pseudonymous user and its first client (our queue) at the QS.
pub(super) async fn create_qs_user(
    transport: &Transport,
    device: &[u8; 16],
) -> Result<QsUser, ClientError> {
    let device_tag_key: [u8; 32] = mimi_rm_crypto::ids::random_bytes();
    let client_auth = SigningKey::generate();
    let user_auth = SigningKey::generate();
    let token: [u8; 32] = mimi_rm_crypto::ids::random_bytes();
    let add_package_key = EarKey::random();
    let secret = RatchetSecret::random();
    let create = CreateUser {
        user_auth_key: user_auth.verifying_key().as_bytes().to_vec().into(),
        client_auth_key: client_auth.verifying_key().as_bytes().to_vec().into(),
        friendship_token: token.to_vec().into(),
        initial_ratchet_secret: secret.as_bytes().to_vec().into(),
        device_tag: super::devices::device_tag(&device_tag_key, device)?
            .to_vec()
            .into(),
    };
    let req = signed_qs(
        &client_auth,
        QsSender::NewClient,
        QsOperation::CreateUser(create),
    )?;
    let QsResponse::UserCreated(ids) = transport.qs(&req).await? else {
        return Err(ClientError::Unexpected("expected UserCreated"));
    };
    Ok(QsUser {
        client_auth,
        user_auth,
        token,
        add_package_key,
        secret,
        ids,
        device_tag_key,
    })
}

/// The state of a freshly registered client: its credential, its QS user, fresh group-level
/// keys for its contacts, and no groups yet.
fn initial_state(
    name: &str,
    mode: DsMode,
    domain: String,
    certified: &Certified,
    qs_public: Vec<u8>,
    qs_user: QsUser,
) -> Result<ClientState, ClientError> {
    let Certified {
        client_key,
        identity,
        credential,
        anchors,
    } = certified;
    let QsUser {
        client_auth,
        user_auth,
        token,
        add_package_key,
        secret,
        ids,
        device_tag_key,
    } = qs_user;
    let link = HpkeKeyPair::generate();
    let user_secret: [u8; 32] = mimi_rm_crypto::ids::random_bytes();
    Ok(ClientState {
        name: name.to_owned(),
        device: hex::encode(identity.device),
        client_key: hex::encode(client_key.to_bytes()),
        client_credential: hex::encode(encoded(credential)?),
        as_credentials: hex::encode(encoded(anchors)?),
        credential_key: hex::encode(EarKey::random().as_bytes()),
        wrapper_key: hex::encode(EarKey::random().as_bytes()),
        wai_key: hex::encode(EarKey::random().as_bytes()),
        contacts: BTreeMap::new(),
        peer_anchors: BTreeMap::new(),
        revocation_lists: BTreeMap::new(),
        republish_pending: false,
        cards_pending: false,
        qs_rotation_pending: false,
        in_flight_rekey: None,
        pending_mixes: Vec::new(),
        received_since_rekey: 0,
        pending_releases: Vec::new(),
        committed_since_receive: false,
        mode,
        user_id: hex::encode(ids.user_id),
        client_id: hex::encode(ids.client_id),
        client_auth_key: hex::encode(client_auth.to_bytes()),
        user_auth_key: hex::encode(user_auth.to_bytes()),
        friendship_token: hex::encode(token),
        add_package_key: hex::encode(add_package_key.as_bytes()),
        queue_ratchet: hex::encode(QueueRatchet::new(secret).to_bytes()),
        qs_public_key: hex::encode(qs_public),
        domain,
        groups: BTreeMap::new(),
        key_packages: BTreeMap::new(),
        user_secret: hex::encode(user_secret),
        device_tag_key: hex::encode(device_tag_key),
        push_key: hex::encode(mimi_rm_crypto::ids::random_bytes::<32>()),
        user_secret_generation: 0,
        link_private: hex::encode(link.private.as_bytes()),
        devices: BTreeMap::from([(
            hex::encode(identity.device),
            hex::encode(link.public.as_bytes()),
        )]),
        connection_keys: BTreeMap::new(),
        connection_key_order: Vec::new(),
        pending_user_secret: None,
        pending_connections: BTreeMap::new(),
        connection_requests: BTreeMap::new(),
    })
}
