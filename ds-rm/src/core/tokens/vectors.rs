//! RFC 9578 Appendix A (token type 0x0002) test vectors through our issuer and verifier: the
//! vector key is installed as this epoch's key, our issuance path must reproduce the token
//! response byte for byte, and our verifier must accept the vector token (and refuse it with one
//! bit flipped).

use super::keys::{encode_secret, secret_key};
use super::{Purpose, TokenPolicy, Tokens};
use crate::core::HubError;
use crate::core::TokenError;
use crate::store::{Cf, RocksStore, Txn};
use blind_rsa_signatures::{Deterministic, PSS, SecretKey, Sha384};
use mimi_rm_protocol::tokens::{
    PresentedToken, TOKEN_REQUEST_CONTENT_TYPE, TYPE_PUBLIC, decode_b64url,
};
use sha2::{Digest, Sha256};

fn vectors() -> Vec<serde_json::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/rfc9578-type2.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).expect("json")
}

fn field(v: &serde_json::Value, name: &str) -> Vec<u8> {
    hex::decode(v[name].as_str().expect(name)).expect(name)
}

#[test]
fn rfc9578_type2_vectors_through_our_issuer_and_verifier() {
    let all = vectors();
    assert_eq!(all.len(), 5, "RFC 9578 gives five type 2 vectors");
    for v in all {
        let pem = String::from_utf8(field(&v, "skS")).unwrap();
        let sk = SecretKey::<Sha384, PSS, Deterministic>::from_pem(&pem).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        let now = crate::now_ms();
        let policy = TokenPolicy::default();
        let epoch = policy.schedule.epoch_at(now / 1000);
        let mut txn = Txn::new(&store);
        let record = encode_secret(&sk.to_der().unwrap(), &[1; 32]).unwrap();
        txn.put(Cf::PpKeys, secret_key(epoch), record);
        txn.commit().unwrap();
        let tokens = Tokens::open(&store, "issuer.example", policy, now).unwrap();

        // Our key encoding is the RFC's (SPKI with the RSASSA-PSS OID).
        let directory = tokens.directory(&store, now).unwrap();
        let published = directory
            .token_keys
            .iter()
            .find(|k| k.token_type == TYPE_PUBLIC)
            .and_then(|k| decode_b64url(&k.token_key))
            .unwrap();
        assert_eq!(published, field(&v, "pkS"));

        // Issuance is deterministic given the key and the blinded message.
        let issued = tokens
            .issue_to(
                &store,
                [0; 32],
                Some(TOKEN_REQUEST_CONTENT_TYPE),
                &field(&v, "token_request"),
                now,
            )
            .unwrap();
        assert_eq!(issued.body, field(&v, "token_response"));

        // The vector token decodes to the vector's fields and verifies under our key.
        let token = PresentedToken::decode(&field(&v, "token")).unwrap();
        assert_eq!(token.nonce.to_vec(), field(&v, "nonce"));
        let digest: [u8; 32] = Sha256::digest(field(&v, "token_challenge")).into();
        assert_eq!(token.challenge_digest, digest);
        assert_eq!(
            token.token_key_id,
            <[u8; 32]>::from(Sha256::digest(field(&v, "pkS")))
        );
        assert_eq!(token.encode(), field(&v, "token"));
        let verified = tokens
            .check_authenticator(&token, now, Purpose::Request)
            .unwrap();
        assert_eq!(verified.nonce, token.nonce);
        let mut bad = token.clone();
        bad.authenticator[17] ^= 0x40;
        assert!(matches!(
            tokens.check_authenticator(&bad, now, Purpose::Request),
            Err(HubError::Token(TokenError::Invalid(_)))
        ));
        // Its challenge (issuer.example with a redemption context) is not the one this hub
        // binds its own tokens to, so the full check refuses it.
        assert!(matches!(
            tokens.verify(&token, now),
            Err(HubError::Token(TokenError::Invalid(_)))
        ));
    }
}
