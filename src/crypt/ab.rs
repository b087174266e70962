//! Android's own encrypted backup, as `adb backup` writes it when given a password
//! (`ANDROID BACKUP\n5\n1\nAES-256\n` and five more header lines): the key material of those
//! lines, the PBKDF2-HMAC-SHA1 derivation of the user key and of the master key's checksum
//! (with Java's char conversion of the key bytes for versions 2 and up), and the AES-256-CBC
//! stream after the header. References: AOSP `PerformAdbBackupTask`, `PerformAdbRestoreTask`,
//! `PasswordUtils`; /work's `shared/reference/android-backup.md` §1.3.
//!
//! It must never let a wrong passphrase pass (the master key's checksum is checked before a byte
//! of payload is decrypted), never run a derivation a hostile header makes unbounded (rounds are
//! capped), and never show the passphrase or a key.

use std::io::{self, Read, Write};

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::secret::Secret;

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

/// PBKDF2 rounds Android writes.
pub const ROUNDS: u32 = 10_000;
/// The most rounds a header may ask for (each costs three derivations), lower under the fuzzer.
#[allow(unexpected_cfgs)]
const MAX_ROUNDS: u32 = if cfg!(fuzzing) { 64 } else { 1_000_000 };
const SALT_LEN: usize = 64;
const BLOCK: usize = 16;
/// The master-key blob: `[16][IV][32][key][32][checksum]`, padded to 96 bytes.
const BLOB_PLAIN: usize = 1 + 16 + 1 + 32 + 1 + 32;
/// The longest header line (the encrypted master key: 96 bytes in hex).
pub const MAX_LINE: usize = 256;

/// The key material of an encrypted `.ab` header (lines 5 to 9).
#[derive(Clone, PartialEq, Eq)]
pub struct Params {
    pub user_salt: Vec<u8>,
    pub checksum_salt: Vec<u8>,
    pub rounds: u32,
    pub user_iv: [u8; 16],
    pub master_key_blob: Vec<u8>,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Params {{ rounds: {} }}", self.rounds)
    }
}

impl Params {
    /// Parse the five lines that follow `AES-256`.
    pub fn parse(lines: [&str; 5]) -> Result<Params> {
        let bad = |what: &str, why: &str| Error::archive(".ab header", format!("{what} line {why}"));
        let hex_line = |i: usize, what: &str| {
            hex::decode(lines[i]).map_err(|_| bad(what, &format!("is not hex ({} characters)", lines[i].len())))
        };
        let user_salt = hex_line(0, "user-password salt")?;
        let checksum_salt = hex_line(1, "checksum salt")?;
        let rounds: u32 = lines[2].parse().map_err(|_| bad("PBKDF2 rounds", "is not a number"))?;
        let user_iv: [u8; 16] =
            hex_line(3, "user-key IV")?.try_into().map_err(|_| bad("user-key IV", "is not 16 bytes"))?;
        let master_key_blob = hex_line(4, "master-key blob")?;
        if user_salt.is_empty() || checksum_salt.is_empty() || user_salt.len() > 1024 || checksum_salt.len() > 1024 {
            return Err(bad("salt", "has a length Android never writes"));
        }
        if rounds == 0 || rounds > MAX_ROUNDS {
            return Err(bad("PBKDF2 rounds", &format!("says {rounds}; cpbackup accepts 1 to {MAX_ROUNDS}")));
        }
        if master_key_blob.is_empty() || master_key_blob.len() % BLOCK != 0 || master_key_blob.len() > 256 {
            return Err(bad("master-key blob", "is not a whole number of AES blocks"));
        }
        Ok(Params { user_salt, checksum_salt, rounds, user_iv, master_key_blob })
    }

    /// The five lines as Android writes them: upper-case hex, decimal rounds, each ending in `\n`.
    pub fn to_lines(&self) -> String {
        let up = |b: &[u8]| hex::encode_upper(b);
        format!(
            "{}\n{}\n{}\n{}\n{}\n",
            up(&self.user_salt),
            up(&self.checksum_salt),
            self.rounds,
            up(&self.user_iv),
            up(&self.master_key_blob)
        )
    }
}

/// The payload's AES-256 key and IV.
pub struct PayloadKey {
    key: Zeroizing<[u8; 32]>,
    iv: [u8; 16],
}

fn pbkdf2(password: &[u8], salt: &[u8], rounds: u32) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, rounds, out.as_mut());
    out
}

/// The master key as Java's `PBKDF2WithHmacSHA1` sees it for versions 2 and up: each byte made
/// a (signed) char, then UTF-8; a byte from 0x80 becomes U+FF80..U+FFFF, three bytes.
fn java_chars_utf8(key: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(key.len() * 3));
    for &b in key {
        if b < 0x80 {
            out.push(b);
        } else {
            out.extend_from_slice(&[0xEF, if b < 0xC0 { 0xBE } else { 0xBF }, 0x80 | (b & 0x3F)]);
        }
    }
    out
}

/// The password as `…And8bit` sees it: the low byte of each UTF-16 char.
fn low_bytes(password: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(password.encode_utf16().map(|c| c as u8).collect())
}

fn checksum(master_key: &[u8], salt: &[u8], rounds: u32, utf8: bool) -> Zeroizing<[u8; 32]> {
    if utf8 {
        pbkdf2(&java_chars_utf8(master_key), salt, rounds)
    } else {
        pbkdf2(master_key, salt, rounds)
    }
}

/// Key material for a new backup sealed with `passphrase`, and the payload key.
pub fn new_key(passphrase: &Secret) -> Result<(Params, PayloadKey)> {
    let password = password(passphrase)?;
    let mut rng = rand::thread_rng();
    let mut user_salt = vec![0u8; SALT_LEN];
    let mut checksum_salt = vec![0u8; SALT_LEN];
    let mut user_iv = [0u8; 16];
    let mut iv = [0u8; 16];
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut user_salt);
    rng.fill_bytes(&mut checksum_salt);
    rng.fill_bytes(&mut user_iv);
    rng.fill_bytes(&mut iv);
    rng.fill_bytes(key.as_mut());
    let user_key = pbkdf2(password.as_bytes(), &user_salt, ROUNDS);
    let check = checksum(key.as_ref(), &checksum_salt, ROUNDS, true);
    let mut blob = Zeroizing::new(Vec::with_capacity(BLOB_PLAIN));
    blob.push(16);
    blob.extend_from_slice(&iv);
    blob.push(32);
    blob.extend_from_slice(key.as_ref());
    blob.push(32);
    blob.extend_from_slice(check.as_ref());
    let master_key_blob = Enc::new(user_key.as_ref().into(), &user_iv.into()).encrypt_padded_vec_mut::<Pkcs7>(&blob);
    let params = Params { user_salt, checksum_salt, rounds: ROUNDS, user_iv, master_key_blob };
    Ok((params, PayloadKey { key, iv }))
}

fn password(passphrase: &Secret) -> Result<&str> {
    std::str::from_utf8(passphrase.expose()).map_err(|_| Error::usage("the passphrase is not UTF-8 text"))
}

/// Unwrap the payload key with `passphrase`, as Android's restore does: the current derivation
/// first, and for version 1 the 8-bit one after it. A wrong passphrase fails the checksum.
pub fn open_key(params: &Params, passphrase: &Secret, version: u32, shown: &str) -> Result<PayloadKey> {
    let password = password(passphrase)?;
    let mut attempts = vec![(Zeroizing::new(password.as_bytes().to_vec()), version >= 2)];
    if version == 1 {
        attempts = vec![(low_bytes(password), false), (Zeroizing::new(password.as_bytes().to_vec()), true)];
    }
    for (pw, utf8) in attempts {
        let user_key = pbkdf2(&pw, &params.user_salt, params.rounds);
        let Ok(blob) = Dec::new(user_key.as_ref().into(), &params.user_iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&params.master_key_blob)
        else {
            continue;
        };
        let blob = Zeroizing::new(blob);
        let Some((iv, key, check)) = split_blob(&blob) else { continue };
        // The checksum's char conversion is the version's, the other one tried second.
        for conv in [utf8, !utf8] {
            let ours = checksum(key, &params.checksum_salt, params.rounds, conv);
            if subtle::ConstantTimeEq::ct_eq(&ours[..], check).into() {
                let mut k = Zeroizing::new([0u8; 32]);
                k.copy_from_slice(key);
                return Ok(PayloadKey { key: k, iv });
            }
        }
    }
    Err(Error::Key {
        what: shown.to_string(),
        reason: "is an encrypted Android backup that does not open with this passphrase (the master key's \
                 checksum does not match): check --passphrase-file"
            .into(),
    })
}

fn split_blob(b: &[u8]) -> Option<([u8; 16], &[u8], &[u8])> {
    let (&iv_len, rest) = b.split_first()?;
    let (iv, rest) = rest.split_at_checked(iv_len as usize)?;
    let (&key_len, rest) = rest.split_first()?;
    let (key, rest) = rest.split_at_checked(key_len as usize)?;
    let (&ck_len, rest) = rest.split_first()?;
    let (check, rest) = rest.split_at_checked(ck_len as usize)?;
    (rest.is_empty() && key.len() == 32 && check.len() == 32).then_some(())?;
    Some((iv.try_into().ok()?, key, check))
}

/// Encrypts what is written into it with AES-256-CBC; `finish` pads (PKCS#5) the last block.
pub struct CbcWriter<W: Write> {
    cipher: Enc,
    out: W,
    /// Plaintext not yet encrypted: always less than `BATCH` bytes.
    pending: Vec<u8>,
}

/// Bytes encrypted and written at a time.
const BATCH: usize = 64 * 1024;

impl<W: Write> CbcWriter<W> {
    pub fn new(key: &PayloadKey, out: W) -> CbcWriter<W> {
        CbcWriter { cipher: Enc::new(key.key.as_ref().into(), &key.iv.into()), out, pending: Vec::with_capacity(BATCH) }
    }

    fn encrypt_whole_blocks(&mut self) -> io::Result<()> {
        let whole = self.pending.len() / BLOCK * BLOCK;
        for block in self.pending[..whole].chunks_exact_mut(BLOCK) {
            self.cipher.encrypt_block_mut(block.into());
        }
        self.out.write_all(&self.pending[..whole])?;
        self.pending.drain(..whole);
        Ok(())
    }

    /// Pad and encrypt the last block, and hand the inner writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.encrypt_whole_blocks()?;
        let pad = BLOCK - self.pending.len();
        self.pending.resize(BLOCK, pad as u8);
        self.encrypt_whole_blocks()?;
        self.out.flush()?;
        Ok(self.out)
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

impl<W: Write> Write for CbcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BATCH - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == BATCH {
            self.encrypt_whole_blocks()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Decrypts an AES-256-CBC stream; the last block's padding is checked and removed at the end.
pub struct CbcReader<R: Read> {
    cipher: Dec,
    inner: R,
    /// Ciphertext read and not yet decrypted, then plaintext ready to hand out (`ready..`).
    buf: Vec<u8>,
    ready: std::ops::Range<usize>,
    /// The last whole block is held back until the stream ends: it carries the padding.
    ended: bool,
}

impl<R: Read> CbcReader<R> {
    pub fn new(key: &PayloadKey, inner: R) -> CbcReader<R> {
        CbcReader {
            cipher: Dec::new(key.key.as_ref().into(), &key.iv.into()),
            inner,
            buf: Vec::with_capacity(BATCH + BLOCK),
            ready: 0..0,
            ended: false,
        }
    }

    /// Read more ciphertext and decrypt what can be: all whole blocks but the last until the end.
    fn refill(&mut self) -> io::Result<()> {
        // What is left in `buf` past `ready` is ciphertext (less than two blocks).
        self.buf.drain(..self.ready.end);
        self.ready = 0..0;
        while !self.ended && self.buf.len() < BATCH + BLOCK {
            let have = self.buf.len();
            self.buf.resize(BATCH + BLOCK, 0);
            match self.inner.read(&mut self.buf[have..]) {
                Ok(0) => {
                    self.buf.truncate(have);
                    self.ended = true;
                }
                Ok(n) => self.buf.truncate(have + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(have),
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            }
        }
        let whole = self.buf.len() / BLOCK * BLOCK;
        let take = if self.ended { whole } else { whole.saturating_sub(BLOCK) };
        for block in self.buf[..take].chunks_exact_mut(BLOCK) {
            self.cipher.decrypt_block_mut(block.into());
        }
        self.ready = 0..take;
        if self.ended {
            if whole != self.buf.len() || whole == 0 {
                return Err(damaged("ends inside an AES block"));
            }
            let pad = self.buf[take - 1] as usize;
            if pad == 0 || pad > BLOCK || !self.buf[take - pad..take].iter().all(|&b| b as usize == pad) {
                return Err(damaged("ends with bad padding"));
            }
            self.ready = 0..take - pad;
        }
        Ok(())
    }
}

fn damaged(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the encrypted stream {why}: it is damaged or truncated"))
}

impl<R: Read> Read for CbcReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.ready.is_empty() {
            if self.ended {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = out.len().min(self.ready.len());
        out[..n].copy_from_slice(&self.buf[self.ready.start..self.ready.start + n]);
        self.ready.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }

    #[test]
    fn java_char_conversion_matches_the_reference() {
        assert_eq!(
            &java_chars_utf8(&[0x41, 0x80, 0xBF, 0xC0, 0xFF])[..],
            &[0x41, 0xEF, 0xBE, 0x80, 0xEF, 0xBE, 0xBF, 0xEF, 0xBF, 0x80, 0xEF, 0xBF, 0xBF]
        );
    }

    #[test]
    fn key_round_trip_and_a_wrong_passphrase_fails_the_checksum() {
        let (params, key) = new_key(&pass("android")).unwrap();
        let lines = params.to_lines();
        let l: Vec<&str> = lines.lines().collect();
        assert_eq!((l[0].len(), l[1].len(), l[2], l[3].len(), l[4].len()), (128, 128, "10000", 32, 192));
        assert!(l[0].chars().all(|c| !c.is_ascii_lowercase()));
        let back = Params::parse([l[0], l[1], l[2], l[3], l[4]]).unwrap();
        assert!(back == params);
        let opened = open_key(&back, &pass("android"), 5, "x.ab").unwrap();
        assert!(opened.key == key.key && opened.iv == key.iv);
        let e = open_key(&back, &pass("androiD"), 5, "x.ab").err().unwrap();
        assert!(matches!(e, Error::Key { .. }) && e.to_string().contains("--passphrase-file"), "{e}");
        assert!(!e.to_string().contains("androiD"));
    }

    #[test]
    fn hostile_params_are_refused() {
        let salt = "AB".repeat(64);
        let iv = "00".repeat(16);
        let blob = "00".repeat(96);
        assert!(Params::parse([&salt, &salt, "4000000000", &iv, &blob]).unwrap_err().to_string().contains("rounds"));
        assert!(Params::parse([&salt, &salt, "10000", &iv, &"00".repeat(95)]).is_err());
        assert!(Params::parse([&salt, "zz", "10000", &iv, &blob]).is_err());
        assert!(Params::parse([&salt, &salt, "10000", "00", &blob]).is_err());
    }

    #[test]
    fn the_stream_round_trips_at_every_length_and_damage_is_refused() {
        let (_, key) = new_key(&pass("p")).unwrap();
        for len in [0usize, 1, 15, 16, 17, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let mut w = CbcWriter::new(&key, Vec::new());
            for c in data.chunks(7000) {
                w.write_all(c).unwrap();
            }
            let sealed = w.finish().unwrap();
            assert_eq!(sealed.len(), (len / BLOCK + 1) * BLOCK);
            let mut back = Vec::new();
            CbcReader::new(&key, &sealed[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "length {len}");
            let e = CbcReader::new(&key, &sealed[..sealed.len() - 1]).read_to_end(&mut Vec::new()).unwrap_err();
            assert!(e.to_string().contains("damaged"), "{e}");
        }
    }
}
