//! Fuzz target: what the phone's own tools print, as cpbackup parses it. Every parser in
//! `android::pm` (pm path / list packages / install sessions / packages.list / abilist, the
//! package-name rule, APK names), and `android::device::Device` over a command line that
//! answers every command with the fuzzer's text (getprop, sdk, abilist, lookups, uninstall,
//! an install session).
//!
//! Input: the first line is the package name asked about, the rest the tool's output (both
//! taken as lossy UTF-8).

#![no_main]

use std::io::Read;

use cpbackup::android::device::{CommandLine, Device};
use cpbackup::android::pm;
use libfuzzer_sys::fuzz_target;

/// Answers every command with the same text.
struct Canned<'a>(&'a str);

impl CommandLine for Canned<'_> {
    fn run(&self, _program: &str, _args: &[&str], stdin: Option<&mut dyn Read>) -> cpbackup::Result<String> {
        if let Some(s) = stdin {
            let _ = std::io::copy(s, &mut std::io::sink());
        }
        Ok(self.0.to_string())
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (package, out) = text.split_once('\n').unwrap_or((&text, ""));

    let named = pm::check_package_name(package).is_ok();
    if named {
        assert!(!package.is_empty() && package.len() <= 255);
        assert!(package.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'));
        assert!(package.split('.').all(|seg| seg.starts_with(|c: char| c.is_ascii_alphabetic())));
    }

    let paths = pm::parse_path(out);
    assert!(paths.iter().all(|p| !p.is_empty()));
    if paths.iter().any(|p| p.ends_with("/base.apk")) {
        assert!(paths[0].ends_with("/base.apk"));
    }
    for p in paths.iter().map(String::as_str).chain([out, package]) {
        let name = pm::apk_name(p);
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{name:?}");
        assert!(name == "base.apk" || name.starts_with("split_"), "{name:?}");
        assert!(!name.contains('/'));
    }

    if let Some(l) = pm::parse_list_packages(out, package) {
        assert_eq!(l.package, package);
    }
    let _ = pm::parse_installer(out, package);
    let session = pm::parse_session("pm install-create", out);
    let success = pm::check_success("pm install-commit 1", out);
    if session.is_ok() {
        assert!(success.is_ok());
    }
    if let Some(e) = pm::parse_packages_list(out, package) {
        assert!(!e.data_dir.is_empty());
    }
    for abi in pm::parse_abilist(out) {
        assert!(!abi.is_empty() && !abi.contains(',') && abi.trim() == abi);
    }

    // The device's operations over the same output.
    let cli = Canned(out);
    let d = Device::new(&cli);
    let _ = d.getprop("ro.build.version.sdk");
    let _ = d.sdk();
    let _ = d.abilist();
    let _ = d.installer(package);
    let looked_up = d.package(package);
    let apks = d.apk_paths(package);
    let removed = d.uninstall(package);
    if !named {
        assert!(looked_up.is_err() && apks.is_err() && removed.is_err(), "{package:?} reached a command line");
    }
    let mut apk: &[u8] = b"apk";
    let _ = d.install(&mut [("base.apk".to_string(), 3, &mut apk as &mut dyn Read)]);
});
