//! Notices: what a worker tells the forwarder that holds a queued connection, on the worker's
//! own SPSC ring to that forwarder. Each is 24 bytes: kind (u32), park entry (u32), generation
//! (u64), and when it happened (u64, `CLOCK_MONOTONIC` ns), little-endian.

/// What happened to a queued connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The worker holds the client's socket now: the forwarder closes its copy.
    Committed,
    /// The worker asks for the socket over its Unix socket (`SCM_RIGHTS` handoff).
    SendSocket,
    /// The worker set the entry to CLOSING: the forwarder closes the client now rather than at
    /// its next scan.
    Close,
}

impl NoticeKind {
    fn code(self) -> u32 {
        match self {
            Self::Committed => 1,
            Self::SendSocket => 2,
            Self::Close => 3,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Committed),
            2 => Some(Self::SendSocket),
            3 => Some(Self::Close),
            _ => None,
        }
    }
}

pub const NOTICE_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub entry: u32,
    pub generation: u64,
    /// `CLOCK_MONOTONIC` ns when the worker acted: a commit's time is the end of the wait.
    pub at_ns: u64,
}

impl Notice {
    pub fn encode(&self) -> [u8; NOTICE_LEN] {
        let mut b = [0u8; NOTICE_LEN];
        b[0..4].copy_from_slice(&self.kind.code().to_le_bytes());
        b[4..8].copy_from_slice(&self.entry.to_le_bytes());
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.at_ns.to_le_bytes());
        b
    }

    /// `None` for a record that is not a notice (a corrupt or hostile peer).
    pub fn decode(b: &[u8]) -> Option<Notice> {
        if b.len() != NOTICE_LEN {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        Some(Notice {
            kind: NoticeKind::from_code(u32_at(0))?,
            entry: u32_at(4),
            generation: u64_at(8),
            at_ns: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_garbage_is_refused() {
        for kind in [
            NoticeKind::Committed,
            NoticeKind::SendSocket,
            NoticeKind::Close,
        ] {
            let n = Notice {
                kind,
                entry: 9,
                generation: 1 << 40,
                at_ns: 123_456_789,
            };
            assert_eq!(Notice::decode(&n.encode()), Some(n));
        }
        assert_eq!(Notice::decode(&[0u8; 24]), None);
        assert_eq!(Notice::decode(&[1u8; 16]), None);
    }
}
