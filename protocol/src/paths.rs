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
/// Server to server: a provider forwards its client's request to the hub owning the group.
pub const FEDERATION_FORWARD: &str = "/federation/forward";
/// Server to server: a hub delivers fan-out into a follower's queues.
pub const DELIVER_MESSAGE: &str = "/deliver_message";
/// The provider's federation verification key (GET, TLS-encoded `VerificationKey`).
pub const VERIFICATION_KEY: &str = "/verification_key";
/// Client to own provider: pass an anonymous QS/AS request on to another provider.
pub const FEDERATION_PROXY: &str = "/federation/proxy";
/// Discovery: which domain this hub serves (GET, text).
pub const DS_DOMAIN: &str = "/.well-known/mimi/ds-domain";
/// Media type of every body.
pub const CONTENT_TYPE: &str = "application/octet-stream";
/// Live delivery: a client's WebSocket to its QS (GET with `Upgrade: websocket`; see
/// [`crate::live`]).
pub const QS_LIVE: &str = "/qs/live";
/// GET: the hub's VAPID public key (RFC 8292; uncompressed P-256 point), which a client hands
/// its push service as the application server key when it subscribes.
pub const QS_PUSH_KEY: &str = "/qs/push_key";
