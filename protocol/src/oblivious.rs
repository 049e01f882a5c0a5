//! Oblivious HTTP (RFC 9458) framing of our requests: the Binary HTTP (RFC 9292) messages a
//! client encapsulates for the hub's gateway, and the gateway's answers.
//!
//! Only what our pseudonymous requests need crosses: `POST` to one path, `content-type` and
//! `authorization` (a Privacy Pass token), a body; back, a status, a content type and a body.
//! Everything else is dropped on both sides, so no header can carry an identifier through.

use bhttp::{Message, Mode, StatusCode};

/// Where the hub's gateway takes encapsulated requests (`message/ohttp-req`).
pub const GATEWAY_PATH: &str = "/ohttp";
/// Where the hub publishes its gateway key configuration (`application/ohttp-keys`).
pub const KEYS_PATH: &str = "/.well-known/ohttp-gateway";
/// Media type of an encapsulated request.
pub const REQUEST_TYPE: &str = "message/ohttp-req";
/// Media type of an encapsulated response.
pub const RESPONSE_TYPE: &str = "message/ohttp-res";
/// Media type of the key configuration list.
pub const KEYS_TYPE: &str = "application/ohttp-keys";
/// Headers an inner request may carry.
pub const INNER_HEADERS: [&str; 2] = ["content-type", "authorization"];

/// Why a Binary HTTP message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObliviousError {
    /// Not a Binary HTTP message of the expected kind.
    #[error("binary HTTP: {0}")]
    Malformed(String),
    /// A request other than `POST`.
    #[error("only POST is relayed")]
    Method,
}

/// A request inside an encapsulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerRequest {
    /// The path (e.g. `/qs/request`).
    pub path: String,
    /// Allowed headers only ([`INNER_HEADERS`]), lower-case names.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

/// A response inside an encapsulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerResponse {
    /// HTTP status.
    pub status: u16,
    /// The `content-type`, if any.
    pub content_type: Option<Vec<u8>>,
    /// The body.
    pub body: Vec<u8>,
}

fn malformed(e: impl std::fmt::Display) -> ObliviousError {
    ObliviousError::Malformed(e.to_string())
}

fn allowed(name: &[u8]) -> bool {
    INNER_HEADERS
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Encodes `req` as a known-length Binary HTTP `POST` for `authority`.
pub fn encode_request(authority: &str, req: &InnerRequest) -> Result<Vec<u8>, ObliviousError> {
    let mut m = Message::request(
        b"POST".to_vec(),
        b"https".to_vec(),
        authority.as_bytes().to_vec(),
        req.path.as_bytes().to_vec(),
    );
    for (name, value) in &req.headers {
        if allowed(name.as_bytes()) {
            m.put_header(name.to_ascii_lowercase().into_bytes(), value.clone());
        }
    }
    m.write_content(&req.body);
    let mut out = Vec::new();
    m.write_bhttp(Mode::KnownLength, &mut out)
        .map_err(malformed)?;
    Ok(out)
}

/// Decodes an inner request: only `POST`, only the allowed headers kept.
pub fn decode_request(bytes: &[u8]) -> Result<InnerRequest, ObliviousError> {
    let mut cursor = std::io::Cursor::new(bytes);
    let m = Message::read_bhttp::<_, std::io::Cursor<&[u8]>>(&mut cursor).map_err(malformed)?;
    if m.control().method() != Some(b"POST".as_slice()) {
        return Err(ObliviousError::Method);
    }
    let path = m
        .control()
        .path()
        .ok_or_else(|| malformed("no path"))
        .and_then(|p| String::from_utf8(p.to_vec()).map_err(malformed))?;
    let headers = m
        .header()
        .iter()
        .filter(|f| allowed(f.name()))
        .map(|f| {
            (
                String::from_utf8_lossy(f.name()).to_ascii_lowercase(),
                f.value().to_vec(),
            )
        })
        .collect();
    Ok(InnerRequest {
        path,
        headers,
        body: m.content().to_vec(),
    })
}

/// Encodes a response.
pub fn encode_response(resp: &InnerResponse) -> Result<Vec<u8>, ObliviousError> {
    let status = StatusCode::try_from(resp.status).map_err(malformed)?;
    let mut m = Message::response(status);
    if let Some(ct) = &resp.content_type {
        m.put_header(b"content-type".to_vec(), ct.clone());
    }
    m.write_content(&resp.body);
    let mut out = Vec::new();
    m.write_bhttp(Mode::KnownLength, &mut out)
        .map_err(malformed)?;
    Ok(out)
}

/// Decodes a response.
pub fn decode_response(bytes: &[u8]) -> Result<InnerResponse, ObliviousError> {
    let mut cursor = std::io::Cursor::new(bytes);
    let m = Message::read_bhttp::<_, std::io::Cursor<&[u8]>>(&mut cursor).map_err(malformed)?;
    let status = m
        .control()
        .status()
        .ok_or_else(|| malformed("not a response"))?
        .code();
    Ok(InnerResponse {
        status,
        content_type: m.header().get(b"content-type").map(<[u8]>::to_vec),
        body: m.content().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_and_keep_only_allowed_headers() {
        let req = InnerRequest {
            path: "/qs/request".into(),
            headers: vec![
                ("content-type".into(), b"application/octet-stream".to_vec()),
                ("authorization".into(), b"PrivateToken token=abc".to_vec()),
                ("x-forwarded-for".into(), b"192.0.2.1".to_vec()),
                ("cookie".into(), b"id=alice".to_vec()),
            ],
            body: vec![1, 2, 3],
        };
        let got = decode_request(&encode_request("hub.example", &req).unwrap()).unwrap();
        assert_eq!(got.path, req.path);
        assert_eq!(got.body, req.body);
        assert_eq!(got.headers, req.headers[..2].to_vec());
        let resp = InnerResponse {
            status: 409,
            content_type: Some(b"application/octet-stream".to_vec()),
            body: vec![9; 100],
        };
        assert_eq!(
            decode_response(&encode_response(&resp).unwrap()).unwrap(),
            resp
        );
    }

    #[test]
    fn garbage_truncation_and_other_methods_are_refused() {
        assert!(decode_request(&[]).is_err());
        assert!(decode_request(&[0xff; 40]).is_err());
        let good = encode_request(
            "h",
            &InnerRequest {
                path: "/x".into(),
                headers: vec![],
                body: vec![7; 50],
            },
        )
        .unwrap();
        assert!(decode_request(&good[..good.len() - 10]).is_err());
        let mut get = Message::request(
            b"GET".to_vec(),
            b"https".to_vec(),
            b"h".to_vec(),
            b"/".to_vec(),
        );
        get.write_content(b"");
        let mut bytes = Vec::new();
        get.write_bhttp(Mode::KnownLength, &mut bytes).unwrap();
        assert_eq!(decode_request(&bytes), Err(ObliviousError::Method));
        // A response is not a request, and a request is not a response.
        let resp = encode_response(&InnerResponse {
            status: 200,
            content_type: None,
            body: vec![],
        })
        .unwrap();
        assert!(decode_request(&resp).is_err());
        assert!(decode_response(&good).is_err());
    }
}
