//! Fuzz target: what contacts and inviters hand a client: AddPackages and the credential chain.
#![no_main]

use mimi_rm_fuzz::check_canonical;
use mimi_rm_protocol::credentials::{
    AsCredentials, ClientCredential, PseudonymousCredential, WelcomeAttributionInfo,
};
use mimi_rm_protocol::qs::AddPackage;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_canonical::<AddPackage>(data);
    check_canonical::<ClientCredential>(data);
    check_canonical::<PseudonymousCredential>(data);
    check_canonical::<AsCredentials>(data);
    check_canonical::<WelcomeAttributionInfo>(data);
});
