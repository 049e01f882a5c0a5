//! Limits that more than one service enforces, defined once so they cannot disagree.

/// Most clients (devices) one user may have: the AS refuses a further client credential and
/// the QS a further pseudonymous client record, both with `LimitExceeded`, so a user's records
/// stay bounded on both sides.
pub const MAX_CLIENTS_PER_USER: usize = 64;
