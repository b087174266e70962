//! The certificate authorities the agent trusts: the phone's own store when it has one, else the
//! Mozilla roots bundled into the binary. A static binary finds no `/etc/ssl` on Android, and
//! trusting what the phone trusts is what its owner expects (a private CA added to the image
//! works; a CA the user disabled stays disabled).
//!
//! Android keeps one PEM certificate per file, named `<subject hash>.<n>`, often followed by the
//! text dump `openssl x509 -text` prints: `/system/etc/security/cacerts`, and since Android 14
//! `/apex/com.android.conscrypt/cacerts` (updatable through the Conscrypt APEX; when it exists
//! Android uses it instead of the system directory). Certificates the user turned off in
//! Settings are listed by file name in `/data/misc/user/0/cacerts-removed`.
//!
//! Never reads the host's trust store: on a test machine the result is the same as on a phone.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The directories searched, most authoritative first, relative to the phone's `/`.
pub const ANDROID_DIRS: &[&str] = &["apex/com.android.conscrypt/cacerts", "system/etc/security/cacerts"];
/// Files named here (same names as in the cacerts directories) were disabled by the user.
pub const REMOVED_DIR: &str = "data/misc/user/0/cacerts-removed";

/// Where the roots came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An Android cacerts directory (the path as seen from the host, under `--root`).
    Android(PathBuf),
    /// `webpki-root-certs`, compiled in.
    Bundled,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Android(p) => write!(f, "{}", p.display()),
            Source::Bundled => f.write_str("bundled Mozilla roots"),
        }
    }
}

/// Trusted roots: DER certificates, each checked to be usable as a trust anchor (the HTTP
/// client panics on one that is not, so nothing unchecked may reach it).
#[derive(Clone)]
pub struct Roots {
    pub certs: Vec<CertificateDer<'static>>,
    pub source: Source,
    /// Files that were skipped as unreadable or not certificates (logged, never fatal).
    pub skipped: Vec<String>,
}

impl fmt::Debug for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roots({} from {}, {} skipped)", self.certs.len(), self.source, self.skipped.len())
    }
}

impl Roots {
    /// The phone's roots under `root` (the directory standing for `/`), or the bundled ones
    /// when no Android directory yields a single usable certificate.
    pub fn load(root: &Path) -> Roots {
        let removed: Vec<String> = std::fs::read_dir(root.join(REMOVED_DIR))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        for dir in ANDROID_DIRS {
            let dir = root.join(dir);
            if let Some(r) = Roots::from_dir(&dir, &removed) {
                if !r.certs.is_empty() {
                    return r;
                }
            }
        }
        Roots::bundled()
    }

    /// Mozilla's roots as shipped in the binary.
    pub fn bundled() -> Roots {
        Roots { certs: webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec(), source: Source::Bundled, skipped: Vec::new() }
    }

    /// Every usable certificate of one cacerts directory, in file-name order; `None` when the
    /// directory cannot be read.
    pub fn from_dir(dir: &Path, removed: &[String]) -> Option<Roots> {
        let mut names: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        names.sort();
        let mut certs = Vec::new();
        let mut skipped = Vec::new();
        for (name, path) in names {
            if removed.contains(&name) {
                continue;
            }
            match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| usable(&b)) {
                Ok(mut c) => certs.append(&mut c),
                Err(e) => {
                    tracing::debug!("cacerts: skipping {}: {e}", path.display());
                    skipped.push(name);
                }
            }
        }
        Some(Roots { certs, source: Source::Android(dir.to_path_buf()), skipped })
    }

    /// The roots as PEM, the form the HTTP client's trust store takes.
    pub fn pem(&self) -> Vec<Vec<u8>> {
        self.certs.iter().map(|c| to_pem(c)).collect()
    }
}

/// The certificates of one file that can serve as trust anchors.
fn usable(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(bytes).collect::<Result<_, _>>().map_err(|e| format!("not PEM: {e:?}"))?;
    if certs.is_empty() {
        return Err("no certificate".into());
    }
    for c in &certs {
        rustls::RootCertStore::empty().add(c.clone()).map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(certs)
}

fn to_pem(der: &CertificateDer<'_>) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut s = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    s.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_root_pem(i: usize) -> Vec<u8> {
        to_pem(&webpki_root_certs::TLS_SERVER_ROOT_CERTS[i])
    }

    #[test]
    fn android_dirs_win_in_order_and_bad_files_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        // No directory at all: bundled.
        assert_eq!(Roots::load(root.path()).source, Source::Bundled);
        let sys = root.path().join(ANDROID_DIRS[1]);
        std::fs::create_dir_all(&sys).unwrap();
        // An empty directory is no store: bundled.
        assert_eq!(Roots::load(root.path()).source, Source::Bundled);
        // Android's layout: PEM followed by the text dump.
        let mut with_text = some_root_pem(0);
        with_text.extend_from_slice(b"Certificate:\n    Data:\n        Version: 3 (0x2)\n");
        std::fs::write(sys.join("aaaa0000.0"), with_text).unwrap();
        std::fs::write(sys.join("bbbb0000.0"), some_root_pem(1)).unwrap();
        std::fs::write(
            sys.join("cccc0000.0"),
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(sys.join("dddd0000.0"), b"hello").unwrap();
        let r = Roots::load(root.path());
        assert_eq!(r.source, Source::Android(sys.clone()));
        assert_eq!(r.certs.len(), 2);
        assert_eq!(r.skipped, vec!["cccc0000.0".to_string(), "dddd0000.0".to_string()]);
        // The user disabled one.
        let removed = root.path().join(REMOVED_DIR);
        std::fs::create_dir_all(&removed).unwrap();
        std::fs::write(removed.join("bbbb0000.0"), some_root_pem(1)).unwrap();
        assert_eq!(Roots::load(root.path()).certs.len(), 1);
        // Android 14: the Conscrypt APEX's directory replaces the system one.
        let apex = root.path().join(ANDROID_DIRS[0]);
        std::fs::create_dir_all(&apex).unwrap();
        std::fs::write(apex.join("eeee0000.0"), some_root_pem(2)).unwrap();
        let r = Roots::load(root.path());
        assert_eq!((r.source, r.certs.len()), (Source::Android(apex), 1));
        // PEM round trip.
        assert_eq!(usable(&some_root_pem(3)).unwrap()[0], webpki_root_certs::TLS_SERVER_ROOT_CERTS[3]);
    }

    #[test]
    fn bundled_roots_are_all_usable() {
        let b = Roots::bundled();
        assert!(b.certs.len() > 100);
        for p in b.pem() {
            usable(&p).unwrap();
        }
    }
}
