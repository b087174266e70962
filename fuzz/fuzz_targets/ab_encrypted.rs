//! Fuzz target: an encrypted `.ab` (`AES-256` in its header) from arbitrary bytes: the key
//! lines (`crypt::ab::Params::parse`, through `archive::ab::read_header`), the unwrapping of the
//! master key with a passphrase (`crypt::ab::open_key`: PBKDF2 rounds capped under the fuzzer),
//! and the AES-256-CBC reader over the rest. None may panic, loop or allocate without bound; a
//! key that opens must open the same way twice.

#![no_main]

use std::io::Read;

use cpbackup::archive::ab;
use cpbackup::crypt::ab::{open_key, CbcReader};
use cpbackup::secret::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let Ok(header) = ab::read_header(&mut rest) else { return };
    let Some(params) = header.encrypted else { return };
    // The seeds are sealed with this passphrase (tests/fixtures/ab_crypt.py, 16 rounds).
    let pass = Secret::new(b"fuzz".to_vec());
    let Ok(key) = open_key(&params, &pass, header.version, "fuzz") else { return };
    assert!(open_key(&params, &pass, header.version, "fuzz").is_ok());
    let mut out = Vec::new();
    let _ = CbcReader::new(&key, rest).take(1 << 20).read_to_end(&mut out);
    assert!(out.len() <= rest.len(), "decrypted more than was there");
});
