//! What cpbackup reads inside an APK without installing it: the signing certificates (APK
//! Signature Scheme v3, then v2, then the v1 JAR signature's PKCS#7 block), which `_manifest`
//! records as `Signature.toCharsString()` does (lowercase hex of the DER certificate), and the
//! native-code ABIs (`lib/<abi>/`), which recover checks against the phone.
//!
//! It reads only the zip's end records, central directory, signing block and the few small
//! entries it needs, by offset: never the whole APK into memory. It never verifies signatures
//! (Android does that on install); a malformed APK gives an error, never a panic.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

const EOCD_SIG: u32 = 0x0605_4b50;
const CD_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const SIG_BLOCK_MAGIC: &[u8; 16] = b"APK Sig Block 42";
const V2_ID: u32 = 0x7109_871a;
const V3_ID: u32 = 0xf053_68c0;
const V31_ID: u32 = 0x1b93_ad61;
/// Caps on what is read from a possibly hostile APK.
const MAX_CD: u64 = 64 * 1024 * 1024;
const MAX_SIG_BLOCK: u64 = 64 * 1024 * 1024;
const MAX_SIG_FILE: u64 = 4 * 1024 * 1024;

/// One central-directory entry.
#[derive(Debug, Clone)]
struct ZipEntry {
    name: String,
    method: u16,
    compressed: u64,
    size: u64,
    local_offset: u64,
}

/// What cpbackup needs to know about an APK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApkInfo {
    /// DER certificates of the signers, one per signer, in the scheme's order.
    pub certificates: Vec<Vec<u8>>,
    /// Native ABIs this APK carries code for (`lib/<abi>/…`), sorted.
    pub abis: Vec<String>,
}

impl ApkInfo {
    /// The `_manifest` signature lines: `Signature.toCharsString()`, lowercase hex.
    pub fn signature_hex(&self) -> Vec<String> {
        self.certificates.iter().map(hex::encode).collect()
    }
}

/// Read an APK's certificates and ABIs.
pub fn inspect(path: &Path) -> Result<ApkInfo> {
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let len = file.metadata().ctx(|| format!("reading {}", path.display()))?.len();
    let bad = |why: String| Error::archive(format!("APK {}", path.display()), why);
    let (cd_offset, cd_size) = find_cd(&file, len).map_err(|e| bad(e))?;
    let cd = read_at(&file, cd_offset, cd_size).ctx(|| format!("reading {}", path.display()))?;
    let entries = parse_cd(&cd).map_err(|e| bad(e))?;
    let mut abis: Vec<String> = entries
        .iter()
        .filter_map(|e| e.name.strip_prefix("lib/")?.split_once('/').map(|(abi, rest)| (abi, rest)))
        .filter(|(abi, rest)| !abi.is_empty() && !rest.is_empty())
        .map(|(abi, _)| abi.to_string())
        .collect();
    abis.sort();
    abis.dedup();
    let mut certificates = match signing_block(&file, cd_offset).map_err(|e| bad(e))? {
        Some(block) => block_certificates(&block).map_err(|e| bad(e))?,
        None => Vec::new(),
    };
    if certificates.is_empty() {
        certificates = v1_certificates(&file, &entries).map_err(|e| bad(e))?;
    }
    Ok(ApkInfo { certificates, abis })
}

fn read_at(file: &File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The end-of-central-directory record: (offset, size) of the central directory.
fn find_cd(file: &File, len: u64) -> std::result::Result<(u64, u64), String> {
    let tail_len = len.min(65_535 + 22);
    let tail = read_at(file, len - tail_len, tail_len).map_err(|e| e.to_string())?;
    let pos = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| u32le(&tail, i) == Some(EOCD_SIG))
        .ok_or("is not a zip file (no end of central directory)")?;
    let size = u32le(&tail, pos + 12).ok_or("truncated end record")? as u64;
    let offset = u32le(&tail, pos + 16).ok_or("truncated end record")? as u64;
    if offset == 0xffff_ffff || size == 0xffff_ffff {
        return Err("is a zip64 archive, which APKs are not".into());
    }
    if offset + size > len || size > MAX_CD {
        return Err("has a central directory outside the file".into());
    }
    Ok((offset, size))
}

fn parse_cd(cd: &[u8]) -> std::result::Result<Vec<ZipEntry>, String> {
    let mut out = Vec::new();
    let mut p = 0usize;
    while p + 46 <= cd.len() {
        if u32le(cd, p) != Some(CD_SIG) {
            break;
        }
        let f = |at: usize| u32le(cd, p + at).ok_or("truncated central directory");
        let h = |at: usize| u16le(cd, p + at).ok_or("truncated central directory");
        let (n, x, c) = (h(28)? as usize, h(30)? as usize, h(32)? as usize);
        let name = cd.get(p + 46..p + 46 + n).ok_or("truncated central directory")?;
        out.push(ZipEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            method: h(10)?,
            compressed: f(20)? as u64,
            size: f(24)? as u64,
            local_offset: f(42)? as u64,
        });
        p += 46 + n + x + c;
    }
    Ok(out)
}

/// The APK Signing Block just before the central directory, if there is one: its pairs.
fn signing_block(file: &File, cd_offset: u64) -> std::result::Result<Option<Vec<(u32, Vec<u8>)>>, String> {
    if cd_offset < 32 {
        return Ok(None);
    }
    let footer = read_at(file, cd_offset - 24, 24).map_err(|e| e.to_string())?;
    if &footer[8..24] != SIG_BLOCK_MAGIC {
        return Ok(None);
    }
    let size = u64le(&footer, 0).ok_or("bad signing block")?;
    if size < 24 || size > MAX_SIG_BLOCK || size + 8 > cd_offset {
        return Err("has a signing block with a bad size".into());
    }
    let start = cd_offset - size - 8;
    let block = read_at(file, start, size + 8).map_err(|e| e.to_string())?;
    if u64le(&block, 0) != Some(size) {
        return Err("has a signing block whose two sizes differ".into());
    }
    let pairs_end = block.len() - 24;
    let mut pairs = Vec::new();
    let mut p = 8usize;
    while p + 12 <= pairs_end {
        let len = u64le(&block, p).ok_or("bad signing block pair")?;
        // The length is the APK's to claim: anything up to 2^64 - 1, checked before any sum.
        let end = usize::try_from(len)
            .ok()
            .filter(|len| *len >= 4)
            .and_then(|len| (p + 8).checked_add(len))
            .filter(|end| *end <= pairs_end)
            .ok_or("has a signing block pair that overruns it")?;
        let id = u32le(&block, p + 8).ok_or("bad signing block pair")?;
        pairs.push((id, block[p + 12..end].to_vec()));
        p = end;
    }
    Ok(Some(pairs))
}

/// A u32-length-prefixed field at the start of `b`: (field, rest).
fn prefixed(b: &[u8]) -> std::result::Result<(&[u8], &[u8]), String> {
    let len = u32le(b, 0).ok_or("truncated length-prefixed field")? as usize;
    let field = b.get(4..4 + len).ok_or("length-prefixed field overruns its parent")?;
    Ok((field, &b[4 + len..]))
}

/// A sequence of u32-length-prefixed items.
fn items(mut b: &[u8]) -> std::result::Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (item, rest) = prefixed(b)?;
        out.push(item);
        b = rest;
    }
    Ok(out)
}

/// Certificates from the v3.1, v3 or v2 block (the first present): the first certificate of
/// each signer, as Android's `Signature[]` holds them.
fn block_certificates(pairs: &[(u32, Vec<u8>)]) -> std::result::Result<Vec<Vec<u8>>, String> {
    for id in [V31_ID, V3_ID, V2_ID] {
        let Some((_, value)) = pairs.iter().find(|(i, _)| *i == id) else { continue };
        let (signers, _) = prefixed(value)?;
        let mut certs = Vec::new();
        for signer in items(signers)? {
            let (signed_data, _) = prefixed(signer)?;
            let (_digests, rest) = prefixed(signed_data)?;
            let (cert_seq, _) = prefixed(rest)?;
            if let Some(first) = items(cert_seq)?.first() {
                certs.push(first.to_vec());
            }
        }
        if id == V31_ID && certs.len() > 1 {
            // v3.1 signers cover SDK ranges; the rotated (current) key is the last one.
            certs = certs.split_off(certs.len() - 1);
        }
        if !certs.is_empty() {
            return Ok(certs);
        }
    }
    Ok(Vec::new())
}

/// v1: the signer certificate of each `META-INF/*.RSA|DSA|EC` PKCS#7 block.
fn v1_certificates(file: &File, entries: &[ZipEntry]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut names: Vec<&ZipEntry> = entries
        .iter()
        .filter(|e| {
            let Some(leaf) = e.name.strip_prefix("META-INF/") else { return false };
            let upper = leaf.to_ascii_uppercase();
            !leaf.contains('/') && (upper.ends_with(".RSA") || upper.ends_with(".DSA") || upper.ends_with(".EC"))
        })
        .collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    let mut certs = Vec::new();
    for e in names {
        let data = entry_bytes(file, e)?;
        if let Some(c) = pkcs7_first_certificate(&data).map_err(|w| format!("{}: {w}", e.name))? {
            certs.push(c);
        }
    }
    Ok(certs)
}

fn entry_bytes(file: &File, e: &ZipEntry) -> std::result::Result<Vec<u8>, String> {
    if e.compressed > MAX_SIG_FILE || e.size > MAX_SIG_FILE {
        return Err(format!("{} is too large for a signature file", e.name));
    }
    let local = read_at(file, e.local_offset, 30).map_err(|err| err.to_string())?;
    if u32le(&local, 0) != Some(LOCAL_SIG) {
        return Err(format!("{}: bad local header", e.name));
    }
    let skip = 30 + u16le(&local, 26).unwrap_or(0) as u64 + u16le(&local, 28).unwrap_or(0) as u64;
    let raw = read_at(file, e.local_offset + skip, e.compressed).map_err(|err| err.to_string())?;
    match e.method {
        0 => Ok(raw),
        8 => {
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(&raw[..])
                .take(MAX_SIG_FILE)
                .read_to_end(&mut out)
                .map_err(|err| format!("{}: {err}", e.name))?;
            Ok(out)
        }
        m => Err(format!("{}: unsupported compression method {m}", e.name)),
    }
}

/// One DER TLV at the start of `b`: (tag, whole TLV, content, rest).
fn tlv(b: &[u8]) -> std::result::Result<(u8, &[u8], &[u8], &[u8]), String> {
    let tag = *b.first().ok_or("truncated DER")?;
    let l0 = *b.get(1).ok_or("truncated DER")?;
    let (len, hdr) = if l0 < 0x80 {
        (l0 as usize, 2)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 {
            return Err("indefinite or oversized DER length".into());
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i).ok_or("truncated DER")? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len).filter(|e| *e <= b.len()).ok_or("DER value overruns its parent")?;
    Ok((tag, &b[..end], &b[hdr..end], &b[end..]))
}

/// PKCS#7 ContentInfo → SignedData → `certificates [0] IMPLICIT`: the first certificate.
pub fn pkcs7_first_certificate(der: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
    let (tag, _, content_info, _) = tlv(der)?;
    if tag != 0x30 {
        return Err("not a PKCS#7 ContentInfo".into());
    }
    let (_oid_tag, _, _, rest) = tlv(content_info)?;
    let (tag, _, explicit, _) = tlv(rest)?;
    if tag != 0xa0 {
        return Err("ContentInfo without content".into());
    }
    let (tag, _, signed_data, _) = tlv(explicit)?;
    if tag != 0x30 {
        return Err("not a SignedData".into());
    }
    let mut rest = signed_data;
    while !rest.is_empty() {
        let (tag, _, content, next) = tlv(rest)?;
        if tag == 0xa0 {
            let (_, cert, _, _) = tlv(content)?;
            return Ok(Some(cert.to_vec()));
        }
        rest = next;
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A stored (uncompressed) zip of `files`, with `sig_block` (pairs) inserted before the
    /// central directory as an APK Signing Block.
    pub(crate) fn build_zip(files: &[(&str, &[u8])], sig_pairs: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cd = Vec::new();
        for (name, data) in files {
            let off = out.len() as u32;
            let crc = 0u32; // never checked by the reader
            out.extend(LOCAL_SIG.to_le_bytes());
            out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend(crc.to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((name.len() as u16).to_le_bytes());
            out.extend(0u16.to_le_bytes());
            out.extend(name.as_bytes());
            out.extend(*data);
            cd.extend(CD_SIG.to_le_bytes());
            cd.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            cd.extend(crc.to_le_bytes());
            cd.extend((data.len() as u32).to_le_bytes());
            cd.extend((data.len() as u32).to_le_bytes());
            cd.extend((name.len() as u16).to_le_bytes());
            cd.extend([0u8; 12]);
            cd.extend(off.to_le_bytes());
            cd.extend(name.as_bytes());
        }
        if !sig_pairs.is_empty() {
            let mut pairs = Vec::new();
            for (id, v) in sig_pairs {
                pairs.extend(((v.len() + 4) as u64).to_le_bytes());
                pairs.extend(id.to_le_bytes());
                pairs.extend(v);
            }
            let size = (pairs.len() + 24) as u64;
            out.extend(size.to_le_bytes());
            out.extend(pairs);
            out.extend(size.to_le_bytes());
            out.extend(SIG_BLOCK_MAGIC);
        }
        let cd_off = out.len() as u32;
        out.extend(&cd);
        out.extend(EOCD_SIG.to_le_bytes());
        out.extend([0u8; 4]);
        out.extend((files.len() as u16).to_le_bytes());
        out.extend((files.len() as u16).to_le_bytes());
        out.extend((cd.len() as u32).to_le_bytes());
        out.extend(cd_off.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out
    }

    fn lp(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend((p.len() as u32).to_le_bytes());
            v.extend(*p);
        }
        v
    }

    /// A v2/v3 block value with one signer per entry of `signers` (each a certificate chain).
    pub(crate) fn scheme_value(signers: &[&[&[u8]]]) -> Vec<u8> {
        let mut signer_items = Vec::new();
        for chain in signers {
            let certs: Vec<u8> = lp(chain);
            let digests = lp(&[&lp(&[&[1, 2, 3, 4][..], b"digest"])]);
            let signed_data = [lp(&[&digests[..]]), lp(&[&certs[..]]), lp(&[b"attrs"])].concat();
            let signer = [lp(&[&signed_data[..]]), lp(&[b"sigs"]), lp(&[b"pubkey"])].concat();
            signer_items.extend(lp(&[&signer[..]]));
        }
        lp(&[&signer_items[..]])
    }

    fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn v2_block_certificates_and_abis() {
        let cert_a: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0xaa];
        let cert_ca: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0xcc];
        let cert_b: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0xbb];
        let v2 = scheme_value(&[&[cert_a, cert_ca], &[cert_b]]);
        let zip = build_zip(
            &[
                ("AndroidManifest.xml", b"x"),
                ("lib/arm64-v8a/libx.so", b"elf"),
                ("lib/x86_64/libx.so", b"elf"),
                ("lib/README", b""),
            ],
            &[(0x4272_7265, vec![0; 16]), (V2_ID, v2)],
        );
        let f = write_tmp(&zip);
        let info = inspect(f.path()).unwrap();
        assert_eq!(info.certificates, vec![cert_a.to_vec(), cert_b.to_vec()]);
        assert_eq!(info.signature_hex(), vec!["30030201aa", "30030201bb"]);
        assert_eq!(info.abis, vec!["arm64-v8a", "x86_64"]);
    }

    #[test]
    fn v3_wins_over_v2() {
        let v2 = scheme_value(&[&[&[0x30, 0x01, 0x01]]]);
        let v3 = scheme_value(&[&[&[0x30, 0x01, 0x03]]]);
        let zip = build_zip(&[("a", b"1")], &[(V2_ID, v2), (V3_ID, v3)]);
        let f = write_tmp(&zip);
        assert_eq!(inspect(f.path()).unwrap().signature_hex(), vec!["300103"]);
    }

    #[test]
    fn v1_pkcs7_in_meta_inf() {
        // ContentInfo { OID signedData, [0] { SignedData { INTEGER 1, SET {}, SEQ { OID data }, [0] { cert } , SET {} } } }
        let cert: &[u8] = &[0x30, 0x04, 0x02, 0x02, 0x12, 0x34];
        let mut certs = vec![0xa0, cert.len() as u8];
        certs.extend(cert);
        let mut sd_body = vec![
            0x02, 0x01, 0x01, 0x31, 0x00, 0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
        ];
        sd_body.extend(&certs);
        sd_body.extend([0x31, 0x00]);
        let mut sd = vec![0x30, sd_body.len() as u8];
        sd.extend(sd_body);
        let mut explicit = vec![0xa0, sd.len() as u8];
        explicit.extend(sd);
        let mut ci_body = vec![0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
        ci_body.extend(explicit);
        let mut ci = vec![0x30, ci_body.len() as u8];
        ci.extend(ci_body);
        let zip = build_zip(&[("META-INF/MANIFEST.MF", b"m"), ("META-INF/CERT.RSA", &ci)], &[]);
        let f = write_tmp(&zip);
        let info = inspect(f.path()).unwrap();
        assert_eq!(info.signature_hex(), vec!["300402021234"]);
        assert!(info.abis.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let f = write_tmp(b"not a zip at all");
        assert!(inspect(f.path()).is_err());
        let mut zip = build_zip(&[("a", b"1")], &[(V2_ID, vec![0xff, 0xff, 0xff, 0x7f])]);
        let f = write_tmp(&zip);
        assert!(inspect(f.path()).is_err());
        zip.truncate(zip.len() - 5);
        let f = write_tmp(&zip);
        assert!(inspect(f.path()).is_err());
    }

    /// A signing block pair whose length is near 2^64 used to overflow the bounds check and
    /// panic on the slice (with `panic = "abort"`, the whole agent).
    #[test]
    fn huge_signing_block_pair_length_is_an_error() {
        let mut zip = build_zip(&[("a", b"1")], &[(V2_ID, vec![0; 8])]);
        // The first pair's length field sits 8 bytes into the block, which starts right after
        // the one stored file (30-byte local header, 1-byte name, 1 byte of data).
        let at = 30 + 1 + 1 + 8;
        assert_eq!(u64le(&zip, at), Some(12));
        for len in [u64::MAX, u64::MAX - 3, u64::MAX - 11, 3] {
            zip[at..at + 8].copy_from_slice(&len.to_le_bytes());
            let f = write_tmp(&zip);
            let e = inspect(f.path()).unwrap_err().to_string();
            assert!(e.contains("overruns"), "{len}: {e}");
        }
    }
}
