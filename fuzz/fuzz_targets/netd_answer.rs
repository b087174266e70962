//! Fuzz target: the answer of Android's netd to bionic's `getaddrinfo` command
//! (`net::netd::read_answer`) on arbitrary bytes. It must answer the same whatever the
//! buffering, give each address once and no more than netd's bound, and never read past the
//! answer's end mark (netd keeps the connection open, so a read too many would hang).

#![no_main]

use std::io::BufReader;

use cpbackup::net::netd;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let whole = netd::read_answer(&mut rest);
    if let Ok(ips) = &whole {
        assert!(ips.len() <= 256, "{} addresses", ips.len());
        for (i, ip) in ips.iter().enumerate() {
            assert!(!ips[..i].contains(ip), "{ip} twice");
        }
        // Nothing after the end mark was read.
        let used = &data[..data.len() - rest.len()];
        assert!(used.ends_with(&[0, 0, 0, 0]), "stopped before the end mark");
    }
    // Byte by byte through a one-byte buffer: the same answer.
    let mut tiny = BufReader::with_capacity(1, data);
    let bytewise = netd::read_answer(&mut tiny);
    assert_eq!(whole.as_ref().ok(), bytewise.as_ref().ok());
    assert_eq!(whole.is_err(), bytewise.is_err());
});
