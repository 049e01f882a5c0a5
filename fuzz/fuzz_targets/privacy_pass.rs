//! Fuzz target: the Privacy Pass inputs an attacker controls — the `Authorization:
//! PrivateToken` header, the raw token inside it, the `WWW-Authenticate` challenges a client
//! reads, and the issuance authentication. Nothing may panic; every token that decodes must
//! re-encode to the same bytes.
#![no_main]

use mimi_rm_fuzz::check_canonical;
use mimi_rm_protocol::tokens::{IssuanceAuth, PresentedToken, parse_www_authenticate};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(token) = PresentedToken::decode(data) {
        assert_eq!(token.encode(), data);
        let again = PresentedToken::from_authorization(&token.to_authorization());
        assert_eq!(again.as_ref(), Ok(&token));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PresentedToken::from_authorization(text);
        let _ = parse_www_authenticate(text);
    }
    check_canonical::<IssuanceAuth>(data);
});
