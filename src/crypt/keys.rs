//! The keys a backup is sealed for and opened with, as a user gives them: age recipients
//! (`age1…` on the command line, in a recipients file, in `CPBACKUP_RECIPIENTS`, in a request
//! body), age identities (the `AGE-SECRET-KEY-1…` lines of an identity file, as `age-keygen`
//! writes it) and a passphrase (the first line of a file).
//!
//! It must never show a secret: errors name the file, the line and what was expected, never what
//! the line holds. Recipients are public and may be shown.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::secret::{self, Secret};

/// What a backup is sealed for. Only the public half serializes: a passphrase stays in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Sealing {
    /// age X25519 recipients (`age1…`), each checked, no duplicates.
    pub recipients: Vec<String>,
    /// A passphrase: age's scrypt for archives, PBKDF2 for Android's encrypted `.ab`.
    #[serde(skip)]
    pub passphrase: Option<Secret>,
}

impl Sealing {
    /// From what the command line (or a request) gives: recipients one by one, recipients
    /// files, a passphrase file. Recipients and a passphrase exclude each other (age seals a
    /// file for a passphrase alone).
    pub fn new(recipients: &[String], recipients_files: &[PathBuf], passphrase_file: Option<&Path>) -> Result<Sealing> {
        let mut sealing = Sealing::default();
        for (i, r) in recipients.iter().enumerate() {
            if r.trim().is_empty() {
                continue;
            }
            sealing.add(r, &format!("recipient {}", i + 1))?;
        }
        for file in recipients_files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::usage(format!("--recipients-file {}: cannot be read: {e}", file.display())))?;
            let before = sealing.recipients.len();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                sealing.add(line, &format!("--recipients-file {} line {}", file.display(), n + 1))?;
            }
            if sealing.recipients.len() == before && !text.lines().any(|l| l.trim().starts_with("age1")) {
                return Err(Error::usage(format!(
                    "--recipients-file {}: holds no recipient (one age1… public key a line, # comments)",
                    file.display()
                )));
            }
        }
        if let Some(p) = passphrase_file {
            sealing.passphrase = Some(read_passphrase(p)?);
        }
        sealing.check()?;
        Ok(sealing)
    }

    fn add(&mut self, text: &str, whence: &str) -> Result<()> {
        let r = parse_recipient(text, whence)?.to_string();
        if !self.recipients.contains(&r) {
            self.recipients.push(r);
        }
        Ok(())
    }

    /// Whether a backup is to be sealed at all.
    pub fn is_some(&self) -> bool {
        !self.recipients.is_empty() || self.passphrase.is_some()
    }

    /// Check what a request or the journal handed over: every recipient parses, and recipients
    /// and a passphrase are not both given.
    pub fn check(&self) -> Result<()> {
        for (i, r) in self.recipients.iter().enumerate() {
            parse_recipient(r, &format!("recipient {}", i + 1))?;
        }
        if !self.recipients.is_empty() && self.passphrase.is_some() {
            return Err(Error::usage(
                "give either recipients (--recipient, --recipients-file, CPBACKUP_RECIPIENTS) or --passphrase-file, \
                 not both: an age file is sealed for a passphrase alone",
            ));
        }
        Ok(())
    }

    /// The parsed recipients.
    pub(super) fn age_recipients(&self) -> Result<Vec<age::x25519::Recipient>> {
        self.recipients.iter().enumerate().map(|(i, r)| parse_recipient(r, &format!("recipient {}", i + 1))).collect()
    }
}

/// What may open an encrypted backup. Never serialized: it lives in memory for one run (a
/// daemon that restarts has forgotten it, on purpose).
#[derive(Clone, Default)]
pub struct Opening {
    identities: Vec<age::x25519::Identity>,
    passphrase: Option<Secret>,
}

impl fmt::Debug for Opening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opening")
            .field("identities", &self.identities.len())
            .field("passphrase", &self.passphrase.is_some())
            .finish()
    }
}

impl Opening {
    /// From identity files (`--identity`, repeatable) and a passphrase file.
    pub fn new(identity_files: &[PathBuf], passphrase_file: Option<&Path>) -> Result<Opening> {
        let mut opening = Opening::default();
        for file in identity_files {
            let what = format!("--identity {}", file.display());
            let text = secret::read_file(file, "--identity")?;
            opening.add_identities(&text, &what)?;
        }
        if let Some(p) = passphrase_file {
            opening.passphrase = Some(read_passphrase(p)?);
        }
        Ok(opening)
    }

    /// From identity text handed over in memory (a request body's `DecryptionIdentity`);
    /// `what` names where it came from in errors.
    pub fn from_text(text: &Secret, what: &str) -> Result<Opening> {
        let mut opening = Opening::default();
        opening.add_identities(text, what)?;
        Ok(opening)
    }

    fn add_identities(&mut self, text: &Secret, what: &str) -> Result<()> {
        let text = std::str::from_utf8(text.expose()).map_err(|_| {
            Error::usage(format!("{what}: is not text; an identity file holds AGE-SECRET-KEY-1… lines"))
        })?;
        let before = self.identities.len();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line).map_err(|_| {
                Error::usage(format!(
                    "{what} line {}: is not an age identity (AGE-SECRET-KEY-1…, as age-keygen writes it)",
                    n + 1
                ))
            })?;
            self.identities.push(id);
        }
        if self.identities.len() == before {
            return Err(Error::usage(format!(
                "{what}: holds no identity (AGE-SECRET-KEY-1… lines, as age-keygen writes)"
            )));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.passphrase.is_none()
    }

    /// The passphrase, for the one cipher that uses it.
    pub fn passphrase(&self) -> Option<&Secret> {
        self.passphrase.as_ref()
    }

    pub(super) fn identities(&self) -> &[age::x25519::Identity] {
        &self.identities
    }

    /// The public keys of the identities held: what they open.
    pub fn recipients(&self) -> Vec<String> {
        self.identities.iter().map(|i| i.to_public().to_string()).collect()
    }
}

/// One recipient; `whence` says where it was given, for the error.
fn parse_recipient(text: &str, whence: &str) -> Result<age::x25519::Recipient> {
    let text = text.trim();
    if text.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        // Never echo it: it is a secret given where a public key belongs.
        return Err(Error::usage(format!(
            "{whence}: is a secret key (an identity), not a recipient: keep it off the phone and give its \
             public key instead (`age-keygen -y KEYFILE` prints it)"
        )));
    }
    age::x25519::Recipient::from_str(text).map_err(|_| {
        let shown: String = text.chars().take(80).collect();
        Error::usage(format!(
            "{whence}: {shown:?} is not an age recipient (an X25519 public key, age1…, as age-keygen prints it)"
        ))
    })
}

/// The first line of a passphrase file; a file others can read is warned about.
fn read_passphrase(path: &Path) -> Result<Secret> {
    let raw = secret::read_file(path, "--passphrase-file")?;
    let first = raw.expose().split(|b| *b == b'\n').next().unwrap_or_default();
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    if first.is_empty() {
        return Err(Error::usage(format!(
            "--passphrase-file {}: its first line is empty; the first line is the passphrase",
            path.display()
        )));
    }
    if std::str::from_utf8(first).is_err() {
        return Err(Error::usage(format!("--passphrase-file {}: the passphrase is not UTF-8 text", path.display())));
    }
    Ok(Secret::new(first.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AGE-SECRET-KEY-1M5800SENXVTK825ZET3DJWDQC5Z7ZQLY240Q08EETZ6GNH63CE7Q57JZDU";
    const PUB: &str = "age1np2t8ry33yr6na87ac5j76rhphyz57mc7dx04ka2jrt6vwpaf9ssk0v29a";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn recipients_from_flags_and_files_are_checked_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "r.txt", &format!("# fleet owner\n\n{PUB}\n"));
        let s = Sealing::new(&[PUB.to_string()], &[f], None).unwrap();
        assert_eq!(s.recipients, vec![PUB.to_string()]);
        assert!(s.is_some());

        let e = Sealing::new(&["age1nope".into()], &[], None).unwrap_err().to_string();
        assert!(e.contains("age1nope") && e.contains("not an age recipient"), "{e}");
        // A secret key given as a recipient is refused without being echoed.
        let e = Sealing::new(&[ID.into()], &[], None).unwrap_err().to_string();
        assert!(e.contains("secret key") && !e.contains("M5800SEN"), "{e}");
        let bad = write(dir.path(), "bad.txt", "# none here\nssh-ed25519 AAAA\n");
        let e = Sealing::new(&[], &[bad], None).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_passphrase_is_the_first_line_and_excludes_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "pass", "correct horse\r\nignored\n");
        let s = Sealing::new(&[], &[], Some(&p)).unwrap();
        assert_eq!(s.passphrase.as_ref().unwrap().expose(), b"correct horse");
        assert!(!format!("{s:?}").contains("horse"));
        assert!(serde_json::to_string(&s).unwrap() == r#"{"Recipients":[]}"#);
        let e = Sealing::new(&[PUB.into()], &[], Some(&p)).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let empty = write(dir.path(), "empty", "\nsecond\n");
        assert!(Sealing::new(&[], &[], Some(&empty)).unwrap_err().to_string().contains("first line is empty"));
    }

    #[test]
    fn identities_parse_without_echoing_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "key.txt", &format!("# created: today\n# public key: {PUB}\n{ID}\n"));
        let o = Opening::new(&[f], None).unwrap();
        assert_eq!(o.recipients(), vec![PUB.to_string()]);
        assert!(!format!("{o:?}").contains("AGE-SECRET"));
        let bad = write(dir.path(), "bad.txt", "AGE-SECRET-KEY-1NOTAKEYXXXXXXXXXXXXXXXXXXXXX\n");
        let e = Opening::new(&[bad], None).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("NOTAKEY"), "{e}");
        let none = write(dir.path(), "none.txt", "# nothing\n");
        assert!(Opening::new(&[none], None).unwrap_err().to_string().contains("holds no identity"));
    }
}
