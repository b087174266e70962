//! Fuzz target: the backup-file record (`manifest::Manifest::from_json`), which import, verify
//! and the catalogue read from storage, with its status and time parsers. A record that
//! parses must come back equal from `to_json`; a time must survive formatting.

#![no_main]

use cpbackup::archive::Format;
use cpbackup::manifest::{self, Manifest, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_json("fuzz", data) {
        let json = m.to_json();
        let back = Manifest::from_json("round trip", &json).expect("to_json's output parses");
        assert_eq!(back, m);
        assert_eq!(back.to_json(), json);
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(s) = Status::parse(&text) {
        assert_eq!(s.as_str(), text);
    }
    if let Ok(t) = manifest::parse_time(&text) {
        let shown = manifest::format_time(t);
        assert_eq!(manifest::parse_time(&shown).ok(), Some(t), "{text:?} shown as {shown:?}");
    }
    if let Ok(f) = Format::parse(&text) {
        assert_eq!(Format::parse(f.name()).ok(), Some(f));
    }
    if let Some(f) = Format::from_name(&text) {
        assert!(text.to_ascii_lowercase().ends_with(f.extension()) || text.to_ascii_lowercase().ends_with(".tzst"));
    }
});
