//! Connection hygiene on a real hub process (issue 19, part 2): silent, slow and idle
//! connections are closed after the header-read timeout, a flood of them from one address
//! cannot take the slots other clients need even under a 256-descriptor limit, and request
//! framing gets the right status at once.

use mimi_rm_tests::HubProcess;
use mimi_rm_tests::common::{self, group_of, hub_binary, messages};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A hub whose connections get `timeout_secs` for each request header.
fn hub_with_header_timeout(dir: &Path, timeout_secs: u64, extra: &str) -> HubProcess {
    common::hub_with_config(
        dir,
        &format!("header_read_timeout_secs = {timeout_secs}\n{extra}"),
    )
}

/// The hub's address, parsed from its URL.
fn addr(hub: &HubProcess) -> SocketAddr {
    hub.url().trim_start_matches("http://").parse().unwrap()
}

/// A raw TCP connection to the hub with a read timeout that only guards the test against
/// hanging: every assertion is about what arrives, not when.
fn raw(hub: &HubProcess) -> TcpStream {
    let s = TcpStream::connect(addr(hub)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Everything the hub sends until it closes the connection (or the guard timeout fires, which
/// `closed` then reports as not closed).
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

fn status_line(response: &[u8]) -> String {
    String::from_utf8_lossy(response)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn silent_slow_and_idle_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_header_timeout(dir.path(), 1, "");
    // Connects and sends nothing.
    let mut silent = raw(&hub);
    // Sends half a header and stops (slowloris).
    let mut slow = raw(&hub);
    slow.write_all(b"POST /qs/request HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
        .unwrap();
    // Sends one request, reads the answer, then stays idle on the kept-alive connection.
    let mut idle = raw(&hub);
    idle.write_all(b"GET /.well-known/mimi/ds-domain HTTP/1.1\r\nHost: hub\r\n\r\n")
        .unwrap();
    for (name, s) in [
        ("silent", &mut silent),
        ("slow", &mut slow),
        ("idle", &mut idle),
    ] {
        let (got, closed) = read_until_closed(s);
        assert!(closed, "{name} connection still open");
        if name == "idle" {
            assert_eq!(status_line(&got), "HTTP/1.1 200 OK");
        }
    }
}

#[test]
fn bodies_over_the_limit_and_broken_framing_get_their_status_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_header_timeout(dir.path(), 10, "request_timeout_secs = 60");
    // Declared far over the limit, with 100-continue: 413 without a 100 Continue first.
    let mut s = raw(&hub);
    s.write_all(
        b"POST /qs/request HTTP/1.1\r\nHost: hub\r\nContent-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let (got, closed) = read_until_closed(&mut s);
    assert_eq!(status_line(&got), "HTTP/1.1 413 Payload Too Large");
    assert!(
        closed,
        "the unread body must not be parsed as further requests"
    );
    // Declared over the limit with a short body: 413 now, not 408 after the upload timeout
    // (60 s here; the guard timeout would report that as no answer).
    let mut s = raw(&hub);
    s.write_all(b"POST /qs/request HTTP/1.1\r\nHost: hub\r\nContent-Length: 2000000\r\n\r\nshort")
        .unwrap();
    let (got, _) = read_until_closed(&mut s);
    assert_eq!(status_line(&got), "HTTP/1.1 413 Payload Too Large");
    // A chunked body over the limit, which declares no length: 413 once it passes the limit.
    let mut s = raw(&hub);
    let mut req =
        b"POST /qs/request HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        req.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
        req.extend_from_slice(&vec![b'a'; 100_000]);
        req.extend_from_slice(b"\r\n");
    }
    let _ = s.write_all(&req);
    let (got, _) = read_until_closed(&mut s);
    assert_eq!(status_line(&got), "HTTP/1.1 413 Payload Too Large");
    // Malformed chunked framing: 400, not 413.
    let mut s = raw(&hub);
    s.write_all(b"POST /qs/request HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    let (got, _) = read_until_closed(&mut s);
    assert_eq!(status_line(&got), "HTTP/1.1 400 Bad Request");
}

/// A hub under a 256-descriptor limit (as many hosts set it), flooded from 127.0.0.2 with
/// idle and slowloris connections, keeps serving a normal client on 127.0.0.1: every message
/// is acknowledged and delivered, and the flood's connections beyond its share are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_starve_a_client() {
    let dir = tempfile::tempdir().unwrap();
    // The hub process starts under `ulimit -n 256`.
    let wrapper = dir.path().join("hub-with-256-fds.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 256\nexec '{}' \"$@\"\n",
            hub_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let hub = HubProcess::start_with_config(
        &wrapper,
        dir.path(),
        common::DOMAIN,
        common::MAX_BODY,
        "header_read_timeout_secs = 30",
    );
    let mut alice = common::client(&hub, dir.path(), "alice").await;
    let mut bob = common::client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    // 300 connections from another loopback address: idle ones, and slowloris ones that have
    // started a header.
    let target = addr(&hub);
    let flood: Vec<tokio::net::TcpStream> = {
        let mut v = Vec::new();
        for i in 0..300 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut s = socket.connect(target).await.unwrap();
            if i % 2 == 0 {
                use tokio::io::AsyncWriteExt;
                let _ = s
                    .write_all(b"POST /qs/request HTTP/1.1\r\nHost: hub\r\n")
                    .await;
            }
            v.push(s);
        }
        v
    };
    // The flood holds at most half of the (256 - 64) slots; the hub closed the rest at once.
    let mut closed = 0;
    for s in &flood {
        let mut buf = [0u8; 1];
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(200), s.readable()).await
            && match s.try_read(&mut buf) {
                Ok(n) => n == 0,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 300 - (256 - 64) / 2,
        "only {closed} of 300 flood connections were closed"
    );
    for i in 0..10u8 {
        alice
            .send(&g, &[b'm', i])
            .await
            .expect("send during the flood");
    }
    let got = messages(&bob.receive().await.expect("receive during the flood"));
    assert_eq!(got.len(), 10, "bob got {got:?}");
    drop(flood);
}

/// A hub that accepts connections and never answers (frozen with SIGSTOP: the kernel still
/// accepts) must not hold a client's call forever: with a request timeout the call fails as a
/// transport error, and the client works again once the hub does. Positive control: with the
/// default 60 s timeout, the same call is still waiting after 4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_never_answers_fails_the_request_at_the_client_timeout() {
    use mimi_client_rm::{ClientError, ConnectionOptions};
    let dir = tempfile::tempdir().unwrap();
    let hub = common::hub(dir.path());
    let mut alice = common::client(&hub, dir.path(), "alice").await;
    let mut bob = common::client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice
        .set_connections(ConnectionOptions {
            request_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        })
        .unwrap();
    let signal = |s: &str| {
        std::process::Command::new("kill")
            .args([s, &hub.pid().expect("running").to_string()])
            .status()
            .unwrap()
            .success()
    };
    assert!(signal("-STOP"));
    let waited = tokio::time::timeout(Duration::from_secs(4), bob.receive()).await;
    assert!(waited.is_err(), "the default timeout is still waiting");
    // One fetch (a receive sends no retries): it ends at alice's timeout, not at the hub's.
    let fetched = tokio::time::timeout(Duration::from_secs(30), alice.receive()).await;
    assert!(signal("-CONT"));
    match fetched {
        Ok(Err(ClientError::Transport(_))) => {}
        other => panic!("expected a transport timeout, got {other:?}"),
    }
    alice.send(&g, b"thawed").await.unwrap();
    let got = messages(&bob.receive().await.unwrap());
    assert!(got.contains(&b"thawed".to_vec()), "{got:?}");
}
