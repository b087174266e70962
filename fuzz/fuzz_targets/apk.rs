//! Fuzz target: what cpbackup reads inside an APK it did not make (`android::apk`): the zip's
//! end record and central directory, the APK Signing Block (v2, v3, v3.1), the v1 PKCS#7
//! signature files, the native ABIs. `inspect` reads a file, so the input is written to one
//! scratch file first; `pkcs7_first_certificate` also gets the bytes directly.

#![no_main]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use cpbackup::android::apk;
use libfuzzer_sys::fuzz_target;

/// One scratch file per fuzzing process, rewritten for every input: created and unlinked at
/// once, and named through `/proc/self/fd`, so that nothing is left behind however the process
/// ends.
fn scratch() -> Option<&'static (File, PathBuf)> {
    static SCRATCH: OnceLock<Option<(File, PathBuf)>> = OnceLock::new();
    SCRATCH
        .get_or_init(|| {
            let path = std::env::temp_dir().join(format!("cpbackup-fuzz-apk-{}.apk", std::process::id()));
            let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).ok()?;
            std::fs::remove_file(&path).ok()?;
            let named = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            Some((file, named))
        })
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(cert)) = apk::pkcs7_first_certificate(data) {
        assert!(cert.len() <= data.len());
    }
    let Some((file, path)) = scratch() else { return };
    if file.set_len(0).and_then(|()| file.write_all_at(data, 0)).is_err() {
        return;
    }
    if let Ok(info) = apk::inspect(path) {
        let total: usize = info.certificates.iter().map(Vec::len).sum();
        assert!(total <= 4 * (data.len() + (4 << 20)), "{total} bytes of certificates from {} bytes", data.len());
        assert!(info.abis.windows(2).all(|w| w[0] < w[1]), "ABIs sorted and unique: {:?}", info.abis);
        assert!(info.abis.iter().all(|a| !a.is_empty() && !a.contains('/')));
    }
});
