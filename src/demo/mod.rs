//! Built-in HTTP backends for the no-argument default: small servers on loopback that answer
//! every request with their own name, so `curl` through levee shows the balancing at work.
//!
//! They are deliberately plain (a thread per connection, blocking I/O) and bounded: at most
//! [`MAX_CONNS`] connections each, a request head of at most [`MAX_HEAD`] bytes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use tracing::warn;

/// Connections one demo backend serves at once; more are closed at accept.
pub const MAX_CONNS: usize = 1024;
/// Largest request head accepted; a longer one gets 431 and a close.
pub const MAX_HEAD: usize = 16 * 1024;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// Each answer takes this long, as real work would: with the built-in default's small caps,
/// a burst of connections then has to queue, and the queue is there to be watched.
pub const THINK: Duration = Duration::from_millis(10);

/// A running demo backend.
#[derive(Debug, Clone)]
pub struct DemoBackend {
    pub name: String,
    pub addr: SocketAddr,
}

/// Starts `count` demo backends on ephemeral loopback ports, named `demo1`, `demo2`, ...
/// They run until the process exits.
pub fn start(count: usize) -> io::Result<Vec<DemoBackend>> {
    (1..=count)
        .map(|i| {
            let name = format!("demo{i}");
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let body = format!("hello from levee demo backend {name} ({addr})\n");
            let open = Arc::new(AtomicUsize::new(0));
            thread::Builder::new()
                .name(format!("levee-{name}"))
                .spawn(move || accept_loop(listener, Arc::from(body.into_boxed_str()), open))?;
            Ok(DemoBackend { name, addr })
        })
        .collect()
}

fn accept_loop(listener: TcpListener, body: Arc<str>, open: Arc<AtomicUsize>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "demo backend: accept failed");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNS {
            open.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let body = body.clone();
        let open2 = open.clone();
        let spawned = thread::Builder::new()
            .name("levee-demo-conn".into())
            .spawn(move || {
                let _ = serve(stream, &body);
                open2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Serves HTTP/1.x requests on one connection until the client closes or asks to.
fn serve(mut s: TcpStream, body: &str) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IDLE))?;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    loop {
        let head_end = loop {
            if let Some(end) = find_head_end(&buf[..filled]) {
                break end;
            }
            if filled == buf.len() {
                s.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")?;
                return Ok(());
            }
            let n = s.read(&mut buf[filled..])?;
            if n == 0 {
                return Ok(());
            }
            filled += n;
        };
        let head = Head::parse(&buf[..head_end]);
        let close = head.close;
        thread::sleep(THINK);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
            if head.is_head { "" } else { body }
        );
        s.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
        // Drop the request (head and any body) from the buffer, reading the body if needed.
        let mut consumed = head_end;
        let mut body_left = head.content_length;
        let in_buf = (filled - consumed).min(body_left);
        consumed += in_buf;
        body_left -= in_buf;
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        let mut sink = [0u8; 4096];
        while body_left > 0 {
            let n = s.read(&mut sink[..body_left.min(4096)])?;
            if n == 0 {
                return Ok(());
            }
            body_left -= n;
        }
    }
}

/// Index just past the blank line ending a request head.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// What the server needs from a request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    close: bool,
    is_head: bool,
    content_length: usize,
}

impl Head {
    fn parse(head: &[u8]) -> Self {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let is_head = request_line.starts_with("HEAD ");
        let mut close = request_line.ends_with("HTTP/1.0");
        let mut content_length = 0;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                if value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            }
        }
        Self {
            close,
            is_head,
            content_length,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_decide_keep_alive() {
        let h = Head::parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            h,
            Head {
                close: false,
                is_head: false,
                content_length: 0
            }
        );
        let h = Head::parse(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(h.close);
        let h = Head::parse(b"GET / HTTP/1.0\r\n\r\n");
        assert!(h.close);
        let h =
            Head::parse(b"POST / HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(
            h,
            Head {
                close: false,
                is_head: false,
                content_length: 12
            }
        );
        assert!(Head::parse(b"HEAD / HTTP/1.1\r\n\r\n").is_head);
    }

    #[test]
    fn demo_backends_answer_keep_alive_requests_with_their_name() {
        let backends = start(2).expect("start");
        for b in &backends {
            let mut s = TcpStream::connect(b.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            for _ in 0..2 {
                s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    .expect("write");
                let mut got = vec![0u8; 512];
                let n = s.read(&mut got).expect("read");
                let text = String::from_utf8_lossy(&got[..n]);
                assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
                assert!(text.contains(&b.name), "{text}");
            }
        }
    }
}
