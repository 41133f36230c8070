//! The PROXY protocol reader on arbitrary bytes: it must answer (a header, more bytes needed,
//! or an error), never panic, never claim a header longer than the bytes, and agree with
//! itself on every prefix: a prefix of a whole header is incomplete or the same header.
#![no_main]

use levee::proxy_protocol::{Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let whole = parse(bytes);
    if let Ok(Parsed::Header { len, addresses }) = whole {
        assert!(len <= bytes.len());
        // The bytes after the header do not change it.
        assert_eq!(
            parse(&bytes[..len]),
            Ok(Parsed::Header { len, addresses })
        );
        for k in 0..len {
            assert!(
                matches!(parse(&bytes[..k]), Ok(Parsed::Incomplete)),
                "prefix {k} of a {len}-byte header"
            );
        }
    }
});
