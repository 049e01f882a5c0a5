//! The push shell: sends the wake-ups the core owes (`core::push`) as Web Push requests —
//! RFC 8030 delivery, the payload encrypted per RFC 8291, the hub identified by VAPID (RFC 8292).
//!
//! Each job carries the `PushTokenEarKey` of one client, taken from the queue ref being served;
//! the worker opens the client's stored subscription with it, sends one fixed-size wake-up, and
//! forgets both. A subscription the push service calls gone (404/410) is dropped.

use crate::config::PushConfig;
use crate::core::Hub;
use crate::core::push::{OpenedPush, PushJob};
use axum::http;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Pushes in flight at once; further jobs wait for a slot.
const MAX_IN_FLIGHT: usize = 64;
/// How long one push request may take (short: a stalling endpoint holds one of the worker's
/// slots this long).
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Lifetime of a VAPID token (RFC 8292 §2: at most 24 hours).
const VAPID_LIFETIME_SECS: u64 = 12 * 60 * 60;

/// Why a push was not sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    /// The endpoint is not an acceptable URL under the hub's `[push]` settings.
    #[error("push endpoint refused: {0}")]
    Endpoint(&'static str),
    /// The subscription's keys are not a P-256 point and a 16-byte secret.
    #[error("push subscription keys malformed")]
    Keys,
    /// RFC 8291 encryption failed.
    #[error("push encryption: {0}")]
    Encrypt(String),
}

/// Checks a client-chosen endpoint against the operator's rules, before the hub calls it. The
/// URL is parsed as the HTTP client will parse it (WHATWG rules: `127.1` and `0x7f.0.0.1` are
/// 127.0.0.1), so what is checked is what gets called; host names are checked again when they
/// resolve ([`PublicOnly`]).
pub fn check_endpoint(endpoint: &[u8], cfg: &PushConfig) -> Result<reqwest::Url, PushError> {
    let text = std::str::from_utf8(endpoint).map_err(|_| PushError::Endpoint("not UTF-8"))?;
    let url = reqwest::Url::parse(text).map_err(|_| PushError::Endpoint("not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if cfg.allow_insecure_endpoints => {}
        _ => return Err(PushError::Endpoint("not https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(PushError::Endpoint("credentials in the URL"));
    }
    let host = url
        .host_str()
        .ok_or(PushError::Endpoint("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if !cfg.allow_insecure_endpoints {
        if let Ok(ip) = host.parse::<IpAddr>()
            && !is_public(ip)
        {
            return Err(PushError::Endpoint("private address"));
        }
        if host == "localhost" || host.ends_with(".localhost") {
            return Err(PushError::Endpoint("private address"));
        }
    }
    if !cfg.endpoint_hosts.is_empty()
        && !cfg.endpoint_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            host == allowed || host.ends_with(&format!(".{allowed}"))
        })
    {
        return Err(PushError::Endpoint("host not allowed"));
    }
    Ok(url)
}

/// A resolver that returns only public addresses: a push endpoint's host name that resolves
/// to a loopback, private or link-local address is not called.
#[derive(Debug, Clone, Copy)]
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let public: Vec<std::net::SocketAddr> = found.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err("the push endpoint resolves to no public address".into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// Addresses a push endpoint may name without `allow_insecure_endpoints`.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || v4.octets()[0] == 0
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| !is_public(IpAddr::V4(v4))))
        }
    }
}

/// A VAPID `Authorization` header value (RFC 8292 §3) for `endpoint`, valid from `now_s`; its
/// audience is the endpoint's origin.
pub fn vapid_authorization(
    key: &p256::SecretKey,
    endpoint: &reqwest::Url,
    subject: &str,
    now_s: u64,
) -> String {
    let audience = endpoint.origin().ascii_serialization();
    let header = B64.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
    let claims = serde_json::json!({
        "aud": audience,
        "exp": now_s + VAPID_LIFETIME_SECS,
        "sub": subject,
    });
    let claims = B64.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let signer = p256::ecdsa::SigningKey::from(key);
    let signature: p256::ecdsa::Signature = signer.sign(signing_input.as_bytes());
    let public = key.public_key().to_encoded_point(false);
    format!(
        "vapid t={signing_input}.{}, k={}",
        B64.encode(signature.to_bytes()),
        B64.encode(public.as_bytes())
    )
}

/// Builds the push request for one opened subscription: the encrypted wake-up with its RFC 8030
/// and RFC 8291 headers, VAPID-signed.
pub fn build_request(
    opened: &OpenedPush,
    cfg: &PushConfig,
    vapid: &p256::SecretKey,
    subject: &str,
    now_s: u64,
) -> Result<http::Request<Vec<u8>>, PushError> {
    let sub = &opened.subscription;
    let endpoint = check_endpoint(sub.endpoint.as_slice(), cfg)?;
    let uri: http::Uri = endpoint
        .as_str()
        .parse()
        .map_err(|_| PushError::Endpoint("not a URL"))?;
    let ua_public =
        p256::PublicKey::from_sec1_bytes(sub.p256dh.as_slice()).map_err(|_| PushError::Keys)?;
    let auth: [u8; 16] = sub
        .auth
        .as_slice()
        .try_into()
        .map_err(|_| PushError::Keys)?;
    let auth = web_push_native::Auth::clone_from_slice(&auth);
    let mut request = web_push_native::WebPushBuilder::new(uri, ua_public, auth)
        .with_valid_duration(Duration::from_secs(cfg.ttl_secs))
        .build(mimi_rm_protocol::push::wake_payload())
        .map_err(|e| PushError::Encrypt(e.to_string()))?;
    let authorization = vapid_authorization(vapid, &endpoint, subject, now_s);
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&authorization)
            .map_err(|_| PushError::Encrypt("VAPID header".into()))?,
    );
    // RFC 8030 §5.3: a wake-up is worth delivering promptly, but it is only a hint; §5.4: one
    // topic, so a push service holding an undelivered wake-up replaces it instead of queueing
    // another.
    request
        .headers_mut()
        .insert("urgency", http::HeaderValue::from_static("normal"));
    request
        .headers_mut()
        .insert("topic", http::HeaderValue::from_static("mimiwake"));
    Ok(request)
}

/// Runs the push worker until the process ends: takes jobs from the hub, sends each.
pub async fn run(hub: Arc<Hub>, cfg: PushConfig) {
    let subject = cfg
        .vapid_subject
        .clone()
        .unwrap_or_else(|| format!("mailto:postmaster@{}", hub.config().domain));
    let mut builder = reqwest::Client::builder()
        .timeout(PUSH_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        // A push service answers; it never sends the hub elsewhere.
        .redirect(reqwest::redirect::Policy::none());
    if !cfg.allow_insecure_endpoints {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    let http = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "push worker not started: HTTP client");
            return;
        }
    };
    let mut jobs = hub.push.attach();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    tracing::info!("push worker started (Web Push, VAPID)");
    let ctx = Arc::new(Worker {
        hub,
        cfg,
        subject,
        http,
    });
    while let Some(job) = jobs.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.push(job).await;
            drop(slot);
        });
    }
}

/// What each push task shares.
struct Worker {
    hub: Arc<Hub>,
    cfg: PushConfig,
    subject: String,
    http: reqwest::Client,
}

impl Worker {
    async fn push(&self, job: PushJob) {
        let dropped = || self.hub.metrics.pushes_dropped.fetch_add(1, Relaxed);
        let hub = self.hub.clone();
        let client = job.client;
        let opened = match tokio::task::spawn_blocking(move || hub.open_push(&job)).await {
            Ok(Ok(Some(opened))) => opened,
            Ok(Ok(None)) => {
                // No subscription (never set, or removed): nothing to wake.
                dropped();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "push subscription does not open");
                dropped();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "push task failed");
                dropped();
                return;
            }
        };
        let request = match build_request(
            &opened,
            &self.cfg,
            self.hub.vapid_key(),
            &self.subject,
            crate::now_ms() / 1000,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "push not sent");
                dropped();
                return;
            }
        };
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let sent = self
            .http
            .post(url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                self.hub.metrics.pushes_sent.fetch_add(1, Relaxed);
            }
            Ok(resp) if matches!(resp.status().as_u16(), 404 | 410) => {
                // RFC 8030 §7.3: the subscription expired or was withdrawn; it never comes back.
                dropped();
                let hub = self.hub.clone();
                let sealed = opened.sealed;
                match tokio::task::spawn_blocking(move || hub.drop_push(&client, &sealed)).await {
                    Ok(Ok(_)) => tracing::debug!("expired push subscription dropped"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "expired push subscription kept"),
                    Err(e) => tracing::error!(error = %e, "push task failed"),
                }
            }
            Ok(resp) => {
                tracing::debug!(status = resp.status().as_u16(), "push service refused");
                dropped();
                if resp.status().is_server_error() || resp.status().as_u16() == 429 {
                    self.hub.push.retry_soon(&client, crate::now_ms());
                }
            }
            Err(e) => {
                // Without the URL: the endpoint is the client's secret, even in debug logs.
                tracing::debug!(error = %e.without_url(), "push service unreachable");
                dropped();
                self.hub.push.retry_soon(&client, crate::now_ms());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(insecure: bool, hosts: &[&str]) -> PushConfig {
        PushConfig {
            allow_insecure_endpoints: insecure,
            endpoint_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..PushConfig::default()
        }
    }

    #[test]
    fn endpoints_are_https_public_and_allowed() {
        let strict = cfg(false, &[]);
        assert!(check_endpoint(b"https://push.example.net/s/abc", &strict).is_ok());
        for bad in [
            &b"http://push.example.net/s"[..],
            b"https://127.0.0.1/s",
            b"https://10.1.2.3/s",
            b"https://[::1]/s",
            b"https://[fd00::1]/s",
            b"https://169.254.169.254/latest",
            b"https://localhost/s",
            b"https://127.1/s",
            b"https://2130706433/s",
            b"https://0x7f.0.0.1/s",
            b"https://[::ffff:127.0.0.1]/s",
            b"https://0.0.0.0/s",
            b"https://user:pw@push.example.net/s",
            b"ftp://push.example.net/",
            b"not a url",
            b"\xff\xfe",
        ] {
            assert!(check_endpoint(bad, &strict).is_err(), "{bad:?} accepted");
        }
        let dev = cfg(true, &[]);
        assert!(check_endpoint(b"http://127.0.0.1:9000/s", &dev).is_ok());
        let listed = cfg(false, &["push.example.net"]);
        assert!(check_endpoint(b"https://eu.push.example.net/x", &listed).is_ok());
        assert!(check_endpoint(b"https://push.example.net/x", &listed).is_ok());
        assert_eq!(
            check_endpoint(b"https://evilpush.example.net/x", &listed),
            Err(PushError::Endpoint("host not allowed"))
        );
    }

    #[test]
    fn vapid_token_verifies_under_the_published_key() {
        use p256::ecdsa::signature::Verifier as _;
        let key = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let uri = reqwest::Url::parse("https://push.example.net:443/s/1").unwrap();
        let value = vapid_authorization(&key, &uri, "mailto:ops@example.org", 1_000);
        let rest = value.strip_prefix("vapid t=").unwrap();
        let (jwt, k) = rest.split_once(", k=").unwrap();
        let (signing_input, sig) = jwt.rsplit_once('.').unwrap();
        let public = p256::PublicKey::from_sec1_bytes(&B64.decode(k).unwrap()).unwrap();
        assert_eq!(public, key.public_key());
        let sig = p256::ecdsa::Signature::from_slice(&B64.decode(sig).unwrap()).unwrap();
        let verifier = p256::ecdsa::VerifyingKey::from(&public);
        verifier.verify(signing_input.as_bytes(), &sig).unwrap();
        let claims = signing_input.split_once('.').unwrap().1;
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["sub"], "mailto:ops@example.org");
        assert_eq!(claims["exp"], 1_000 + VAPID_LIFETIME_SECS);
        let mut tampered = signing_input.to_string();
        tampered.push('x');
        assert!(verifier.verify(tampered.as_bytes(), &sig).is_err());
    }
}
