//! One HTTP/1.1 exchange of the metrics endpoint, kept apart from its socket so that its
//! transitions are tested without one: a request head read whole within bounds of size and
//! time, one response, then the connection closes.
//!
//! Phases, each with its own deadline:
//! - **reading**: the request head (up to the blank line) must arrive within
//!   [`CLIENT_TIMEOUT`] of the accept, in at most [`MAX_REQUEST`] bytes;
//! - **writing**: the response must be taken within [`CLIENT_TIMEOUT`] of its making;
//! - **draining**: after the response, levee shuts its side and reads and drops what the client
//!   still sends (a body, say), at most [`DRAIN_MAX`] bytes for at most [`DRAIN_TIMEOUT`], so
//!   that closing with unread bytes does not reset the connection before the client has read
//!   the response;
//! - **done**: closed.

use std::time::{Duration, Instant};

/// Longest request head read; a longer one is answered 431 and closed.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has for its request head from the accept, and for taking the response from
/// its making.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes read and dropped after the response.
pub const DRAIN_MAX: usize = 64 * 1024;
/// Longest wait for the client to close after the response.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What a request asks for, as far as levee answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (with the body) or `HEAD /metrics` (without).
    Metrics { body: bool },
    /// Another path: 404.
    NotFound,
    /// `/metrics` with another method: 405.
    NotAllowed,
    /// Not an HTTP/1.x request line, or a head cut short: 400.
    BadRequest,
    /// A head longer than [`MAX_REQUEST`]: 431.
    TooLarge,
}

/// What the request line of `head` asks for. Query strings are ignored; headers are not read.
pub fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = text.lines().next().unwrap_or("");
    if line.chars().any(char::is_control) {
        return Route::BadRequest;
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { body: true },
        "HEAD" => Route::Metrics { body: false },
        _ => Route::NotAllowed,
    }
}

/// A whole response: status line, headers, and the body unless `with_body` is false (HEAD).
pub fn response(status: Status, content_type: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let (code, reason, allow) = match status {
        Status::Ok => (200, "OK", ""),
        Status::BadRequest => (400, "Bad Request", ""),
        Status::NotFound => (404, "Not Found", ""),
        Status::NotAllowed => (405, "Method Not Allowed", "Allow: GET, HEAD\r\n"),
        Status::TooLarge => (431, "Request Header Fields Too Large", ""),
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

/// The statuses the endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    NotAllowed,
    TooLarge,
}

/// The error response for a route other than [`Route::Metrics`].
pub fn refusal(route: Route) -> Vec<u8> {
    let (status, body) = match route {
        Route::NotFound => (Status::NotFound, "not found: levee serves GET /metrics\n"),
        Route::NotAllowed => (
            Status::NotAllowed,
            "method not allowed: /metrics takes GET or HEAD\n",
        ),
        Route::TooLarge => (
            Status::TooLarge,
            "request head longer than levee reads (8 KiB)\n",
        ),
        Route::BadRequest | Route::Metrics { .. } => (
            Status::BadRequest,
            "bad request: expected GET /metrics HTTP/1.1\n",
        ),
    };
    response(status, "text/plain; charset=utf-8", body.as_bytes(), true)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Reading,
    Writing,
    Draining,
    Done,
}

/// One connection's exchange.
#[derive(Debug)]
pub struct Exchange {
    phase: Phase,
    /// The request head received so far: at most `MAX_REQUEST + 1` bytes.
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// When the current phase began.
    since: Instant,
    /// Bytes dropped while draining.
    drained: usize,
}

impl Exchange {
    pub fn new(now: Instant) -> Self {
        Self {
            phase: Phase::Reading,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            since: now,
            drained: 0,
        }
    }

    /// Whether to read from the client now.
    pub fn wants_input(&self) -> bool {
        matches!(self.phase, Phase::Reading | Phase::Draining) && self.room() > 0
    }

    /// How many bytes may be read now without passing a bound.
    pub fn room(&self) -> usize {
        match self.phase {
            Phase::Reading => (MAX_REQUEST + 1).saturating_sub(self.input.len()),
            Phase::Draining => DRAIN_MAX.saturating_sub(self.drained),
            Phase::Writing | Phase::Done => 0,
        }
    }

    /// Takes bytes read from the client; returns the route once the request head is whole (or
    /// too long), for the caller to answer with [`Self::reply`].
    pub fn received(&mut self, bytes: &[u8]) -> Option<Route> {
        match self.phase {
            Phase::Reading => {
                // Only the new bytes and the three before them can complete the blank line.
                let from = self.input.len().saturating_sub(3);
                self.input.extend_from_slice(bytes);
                if let Some(end) = head_end(&self.input[from..]) {
                    let head = &self.input[..from + end];
                    return Some(match head.len() > MAX_REQUEST {
                        true => Route::TooLarge,
                        false => route(head),
                    });
                }
                (self.input.len() > MAX_REQUEST).then_some(Route::TooLarge)
            }
            Phase::Draining => {
                self.drained += bytes.len();
                if self.drained >= DRAIN_MAX {
                    self.phase = Phase::Done;
                }
                None
            }
            Phase::Writing | Phase::Done => None,
        }
    }

    /// The client closed its side. A head cut short is answered 400 (returned, as by
    /// [`Self::received`]); a client that sent nothing, or one being drained, is done.
    pub fn ended(&mut self) -> Option<Route> {
        match self.phase {
            Phase::Reading if !self.input.is_empty() => Some(Route::BadRequest),
            Phase::Reading | Phase::Draining => {
                self.phase = Phase::Done;
                None
            }
            Phase::Writing | Phase::Done => None,
        }
    }

    /// Starts sending `response`.
    pub fn reply(&mut self, response: Vec<u8>, now: Instant) {
        self.input = Vec::new();
        self.output = response;
        self.sent = 0;
        self.phase = Phase::Writing;
        self.since = now;
    }

    /// The part of the response not yet sent.
    pub fn pending(&self) -> &[u8] {
        match self.phase {
            Phase::Writing => &self.output[self.sent.min(self.output.len())..],
            _ => &[],
        }
    }

    /// `n` more bytes of the response went out. Returns true when that was the last of it:
    /// the caller then shuts down its side, and the exchange drains.
    pub fn sent(&mut self, n: usize, now: Instant) -> bool {
        if self.phase != Phase::Writing {
            return false;
        }
        self.sent = (self.sent + n).min(self.output.len());
        if self.sent < self.output.len() {
            return false;
        }
        self.output = Vec::new();
        self.phase = Phase::Draining;
        self.since = now;
        true
    }

    /// Whether the connection is to be closed now.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// When the current phase runs out.
    pub fn deadline(&self) -> Instant {
        match self.phase {
            Phase::Draining | Phase::Done => self.since + DRAIN_TIMEOUT,
            Phase::Reading | Phase::Writing => self.since + CLIENT_TIMEOUT,
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

/// Where a request head ends (just past its blank line), if it does in `bytes`.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_get_and_head_of_metrics() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n"),
            Route::Metrics { body: false }
        );
        assert_eq!(r("POST /metrics HTTP/1.1\r\n"), Route::NotAllowed);
        assert_eq!(r("DELETE /metrics HTTP/1.1\r\n"), Route::NotAllowed);
        assert_eq!(r("GET / HTTP/1.1\r\n"), Route::NotFound);
        assert_eq!(r("GET /metrics/ HTTP/1.1\r\n"), Route::NotFound);
        for bad in [
            "",
            "GET /metrics\r\n",
            "GET /metrics HTTP/2.0\r\n",
            "GET  /metrics HTTP/1.1\r\n",
            "GET metrics HTTP/1.1\r\n",
            "get /metrics HTTP/1.1\r\n",
            "GET /metrics HTTP/1.1 extra\r\n",
            "GET /met\0rics HTTP/1.1\r\n",
            "\u{1b}[2J",
        ] {
            assert_eq!(r(bad), Route::BadRequest, "{bad:?}");
        }
        assert_eq!(route(&[0xff, 0xfe, b'\n']), Route::BadRequest);
    }

    #[test]
    fn a_head_is_answered_once_whole_even_when_it_arrives_a_byte_at_a_time() {
        let t = Instant::now();
        let mut x = Exchange::new(t);
        let request = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
        let (last, rest) = request.split_last().expect("non-empty");
        for b in rest {
            assert_eq!(x.received(&[*b]), None);
        }
        assert_eq!(x.received(&[*last]), Some(Route::Metrics { body: true }));
        // Bare line feeds are accepted too.
        let mut x = Exchange::new(t);
        assert_eq!(x.received(b"GET /x HTTP/1.0\n\n"), Some(Route::NotFound));
    }

    #[test]
    fn a_head_past_the_bound_is_too_large_and_reading_stops_there() {
        let t = Instant::now();
        let mut x = Exchange::new(t);
        assert_eq!(x.received(b"GET /metrics HTTP/1.1\r\n"), None);
        let filler = vec![b'a'; x.room() - 1];
        assert_eq!(x.received(&filler), None);
        assert_eq!(x.room(), 1);
        assert_eq!(x.received(b"b"), Some(Route::TooLarge));
        // A head of exactly the bound is read.
        let mut x = Exchange::new(t);
        let mut head = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        head.resize(MAX_REQUEST - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(x.received(&head), Some(Route::Metrics { body: true }));
    }

    #[test]
    fn a_head_cut_short_is_a_bad_request_and_silence_just_closes() {
        let t = Instant::now();
        let mut x = Exchange::new(t);
        x.received(b"GET /met");
        assert_eq!(x.ended(), Some(Route::BadRequest));
        let mut x = Exchange::new(t);
        assert_eq!(x.ended(), None);
        assert!(x.done());
    }

    #[test]
    fn the_response_is_sent_then_the_rest_drained_within_bounds() {
        let t = Instant::now();
        let mut x = Exchange::new(t);
        x.received(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel");
        x.reply(b"HTTP/1.1 405 ...".to_vec(), t);
        assert!(!x.wants_input(), "no reading while a response is owed");
        assert!(!x.sent(4, t));
        assert_eq!(x.pending(), b"/1.1 405 ...");
        assert!(x.sent(x.pending().len(), t));
        assert!(x.wants_input());
        x.received(b"lo");
        assert!(!x.done());
        x.received(&vec![0; DRAIN_MAX]);
        assert!(x.done(), "draining is bounded in bytes");
        let mut x = Exchange::new(t);
        x.received(b"GET /metrics HTTP/1.1\r\n\r\n");
        x.reply(b"ok".to_vec(), t);
        x.sent(2, t + Duration::from_secs(1));
        assert_eq!(x.deadline(), t + Duration::from_secs(1) + DRAIN_TIMEOUT);
        assert_eq!(x.ended(), None);
        assert!(x.done());
    }

    #[test]
    fn each_phase_has_its_deadline_and_progress_does_not_extend_it() {
        let t = Instant::now();
        let mut x = Exchange::new(t);
        // A client trickling its head is still due CLIENT_TIMEOUT after the accept.
        for i in 1..5 {
            x.received(b"G");
            assert!(!x.expired(t + Duration::from_secs(i)));
        }
        assert!(x.expired(t + CLIENT_TIMEOUT));
        let made = t + Duration::from_secs(2);
        x.reply(vec![b'x'; 100], made);
        x.sent(1, made + Duration::from_secs(3));
        assert!(!x.expired(made + CLIENT_TIMEOUT - Duration::from_millis(1)));
        assert!(x.expired(made + CLIENT_TIMEOUT));
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let r = response(Status::Ok, "text/plain", b"abc", true);
        let text = String::from_utf8(r).expect("text");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nabc"));
        let head = response(Status::Ok, "text/plain", b"abc", false);
        assert!(
            String::from_utf8_lossy(&head)
                .ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n")
        );
        let r = String::from_utf8(refusal(Route::NotAllowed)).expect("text");
        assert!(r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"));
        for (route, code) in [
            (Route::NotFound, "404"),
            (Route::BadRequest, "400"),
            (Route::TooLarge, "431"),
        ] {
            let r = String::from_utf8(refusal(route)).expect("text");
            assert!(r.starts_with(&format!("HTTP/1.1 {code} ")), "{r}");
        }
    }
}
