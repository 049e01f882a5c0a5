//! HTTP paths (MIMI over HTTPS naming; all POST with `application/octet-stream`).

/// Every group operation (create, commit, send, self-remove, delete, request id).
pub const GROUP_OPERATION: &str = "/group_operation";
/// Ratchet tree of a joiner's epoch.
pub const WELCOME_INFORMATION: &str = "/welcome_information";
/// GroupInfo + ratchet tree for an external commit.
pub const EXTERNAL_COMMIT_INFORMATION: &str = "/external_commit_information";
/// All queueing-service operations.
pub const QS: &str = "/qs/request";
/// All authentication-service operations.
pub const AS: &str = "/as/request";
/// Discovery: which domain this hub serves (GET, text).
pub const DS_DOMAIN: &str = "/.well-known/mimi/ds-domain";
/// Media type of every body.
pub const CONTENT_TYPE: &str = "application/octet-stream";
