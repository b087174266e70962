//! Fuzz target: the `.ab` container's header reader (`archive::ab::read_header`) on arbitrary
//! bytes. It must answer the same whatever the buffering, accept only versions 1 to 5, and
//! never read past its capped lines (four, and five longer key lines when encrypted).

#![no_main]

use std::io::BufReader;

use cpbackup::archive::ab;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let whole = ab::read_header(&mut rest);
    if let Ok(h) = &whole {
        assert!((1..=5).contains(&h.version), "{h:?}");
        let cap = 4 * 64 + if h.encrypted.is_some() { 5 * cpbackup::crypt::ab::MAX_LINE } else { 0 };
        assert!(data.len() - rest.len() <= cap, "read {} bytes of header", data.len() - rest.len());
    }
    // Byte by byte through a one-byte buffer: the same answer.
    let mut tiny = BufReader::with_capacity(1, data);
    let bytewise = ab::read_header(&mut tiny);
    assert_eq!(whole.as_ref().ok(), bytewise.as_ref().ok());
    assert_eq!(whole.is_err(), bytewise.is_err());
});
