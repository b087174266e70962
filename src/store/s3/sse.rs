//! Server-side encryption on the wire: which S3 request carries which `x-amz-server-side-
//! encryption*` header. The store's own keys (AES256, KMS and its key id) go on the requests
//! that create an object (CreateMultipartUpload, PutObject); a customer key (SSE-C) goes on
//! every request that writes or reads the archive's content (CreateMultipartUpload, every
//! UploadPart, PutObject of an archive, HeadObject, every ranged GetObject), never on a
//! manifest's, so that `list` needs no key. A refusal that a missing or wrong customer key
//! explains is said so, naming the flag.
//!
//! It must never put the customer key anywhere but the request's headers (which the SDK
//! redacts from its own logs).

use aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder;
use aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder;
use aws_sdk_s3::operation::head_object::builders::HeadObjectFluentBuilder;
use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::operation::upload_part::builders::UploadPartFluentBuilder;
use aws_sdk_s3::types::ServerSideEncryption;

use crate::error::Error;
use crate::store::sse::{CustomerKey, Sse, SseMode, KEY_FLAG};

/// The only algorithm SSE-C has.
const ALGORITHM: &str = "AES256";

/// A request that can carry a customer key.
pub(super) trait CustomerKeyed: Sized {
    fn customer_key(self, key: Option<&CustomerKey>) -> Self;
}

/// A request that creates an object, and so can ask for the store's own keys.
pub(super) trait AtRest: Sized {
    fn at_rest(self, sse: &Sse) -> Self;
}

macro_rules! customer_keyed {
    ($($builder:ty),+) => {$(
        impl CustomerKeyed for $builder {
            fn customer_key(self, key: Option<&CustomerKey>) -> Self {
                match key {
                    None => self,
                    Some(k) => {
                        self.sse_customer_algorithm(ALGORITHM).sse_customer_key(k.header()).sse_customer_key_md5(k.md5())
                    }
                }
            }
        }
    )+};
}

macro_rules! at_rest {
    ($($builder:ty),+) => {$(
        impl AtRest for $builder {
            fn at_rest(self, sse: &Sse) -> Self {
                let mode = sse.mode.map(|m| match m {
                    SseMode::Aes256 => ServerSideEncryption::Aes256,
                    SseMode::Kms => ServerSideEncryption::AwsKms,
                });
                let key_id = if sse.mode == Some(SseMode::Kms) { sse.kms_key_id.clone() } else { None };
                self.set_server_side_encryption(mode).set_ssekms_key_id(key_id)
            }
        }
    )+};
}

customer_keyed!(
    CreateMultipartUploadFluentBuilder,
    PutObjectFluentBuilder,
    UploadPartFluentBuilder,
    HeadObjectFluentBuilder,
    GetObjectFluentBuilder
);
at_rest!(CreateMultipartUploadFluentBuilder, PutObjectFluentBuilder);

/// A HeadObject of an archive refused with `status`: when a customer key explains it (none
/// given and the store says 400, as it does for an SSE-C object read without its key; or one
/// given and the store says 400 or 403, as it does for the wrong key), bad input that names
/// the flag; otherwise the store's error as it was.
pub(super) fn explain_refusal(err: Error, status: Option<u16>, key_given: bool) -> Error {
    let hint = match (status, key_given) {
        (Some(400), false) => {
            format!("the object may be encrypted with a key of its owner's (SSE-C): give that key with {KEY_FLAG} FILE")
        }
        (Some(400 | 403), true) => format!(
            "the key given with {KEY_FLAG} may not be the one this object was stored with \
             (or the object is not encrypted with a key of its owner's)"
        ),
        _ => return err,
    };
    Error::usage(format!("{err}: {hint}"))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use base64::Engine;

    use super::super::fake::{self, Seen};
    use crate::spec::StoreOptions;
    use crate::store::Store;

    const ALG: &str = "x-amz-server-side-encryption-customer-algorithm";
    const KEY: &str = "x-amz-server-side-encryption-customer-key";
    const KEY_MD5: &str = "x-amz-server-side-encryption-customer-key-md5";
    const AT_REST: &str = "x-amz-server-side-encryption";
    const KMS_KEY: &str = "x-amz-server-side-encryption-aws-kms-key-id";

    /// Every kind of request the store makes, through the fake: a multipart upload of 6 MiB
    /// (create, two parts, complete), an archive of one PUT, a manifest PUT, a download of
    /// 3 MiB (HEAD, two ranges) and a manifest GET. What each request carried, in order.
    fn every_request(sse: crate::store::sse::Sse) -> Vec<Seen> {
        let state = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("r".into()),
            state_dir: Some(state.path().to_path_buf()),
            parts_in_flight: 1,
            sse,
            ..Default::default()
        };
        let (store, fake) = fake::store(&opts, 3 << 20);
        let mut up = store.upload("big.tar", 0).unwrap();
        up.write_all(&vec![1u8; 6 << 20]).unwrap();
        up.finish().unwrap();
        let mut up = store.upload("small.tar", 0).unwrap();
        up.write_all(b"small").unwrap();
        up.finish().unwrap();
        store.put("big.tar.manifest.json", b"{}").unwrap();
        let mut got = Vec::new();
        store.download("big.tar").unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 3 << 20);
        assert_eq!(store.get("big.tar.manifest.json").unwrap().unwrap(), b"{}");
        let seen = fake.seen();
        let ops: Vec<&str> = seen.iter().map(|s| s.op).collect();
        assert_eq!(
            ops,
            [
                "CreateMultipartUpload",
                "UploadPart",
                "UploadPart",
                "CompleteMultipartUpload",
                "PutObject",
                "PutObject",
                "HeadObject",
                "GetObject (range)",
                "GetObject (range)",
                "GetObject",
            ],
            "{seen:#?}"
        );
        let sizes: Vec<usize> = seen.iter().filter(|s| s.op != "GetObject (range)").map(|s| s.body_len).collect();
        assert_eq!(sizes, [0, 5 << 20, 1 << 20, sizes[3], 5, 2, 0, 0], "the bodies arrived whole");
        seen
    }

    fn is_manifest(s: &Seen) -> bool {
        s.target.split('?').next().is_some_and(|p| p.ends_with(".manifest.json"))
    }

    /// Garage implements SSE-C (tests/it/transfer.rs shows it end to end) but takes and ignores
    /// the headers of SSE-S3 and KMS, so which request carries which header is checked here,
    /// on the requests as the SDK sends them.
    #[test]
    fn each_request_carries_the_encryption_headers_it_needs() {
        use crate::store::sse::{Sse, SseMode};
        let dir = tempfile::tempdir().unwrap();
        let raw = [0x5au8; 32];
        let key_file = dir.path().join("k");
        std::fs::write(&key_file, raw).unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        use md5::Digest;
        let md5 = b64(&md5::Md5::digest(raw));

        // SSE-C: the key on every request that writes or reads the archive's content.
        for s in every_request(Sse::from_flags(None, None, Some(&key_file)).unwrap()) {
            let keyed = matches!(s.op, "CreateMultipartUpload" | "UploadPart" | "HeadObject" | "GetObject (range)")
                || (s.op == "PutObject" && !is_manifest(&s));
            if keyed {
                assert_eq!(s.header(ALG), Some("AES256"), "{s:?}");
                assert_eq!(s.header(KEY), Some(b64(&raw).as_str()), "{}", s.op);
                assert_eq!(s.header(KEY_MD5), Some(md5.as_str()), "{}", s.op);
            } else {
                assert!(s.header(KEY).is_none() && s.header(ALG).is_none(), "{} {}: no key", s.op, s.target);
            }
            assert!(s.header(AT_REST).is_none(), "{s:?}");
        }

        // The store's keys: asked for where an object is created, manifests included.
        for (sse, value, key_id) in [
            (Sse { mode: Some(SseMode::Aes256), ..Default::default() }, "AES256", None),
            (Sse::from_flags(Some("KMS"), Some("key-1"), None).unwrap(), "aws:kms", Some("key-1")),
            (Sse { mode: Some(SseMode::Kms), ..Default::default() }, "aws:kms", None),
        ] {
            for s in every_request(sse) {
                let creates = matches!(s.op, "CreateMultipartUpload" | "PutObject");
                assert_eq!(s.header(AT_REST), creates.then_some(value), "{s:?}");
                assert_eq!(s.header(KMS_KEY), if creates { key_id } else { None }, "{s:?}");
                assert!(s.header(KEY).is_none(), "{s:?}");
            }
        }

        // None asked for: no header at all.
        for s in every_request(Sse::default()) {
            assert!(s.headers.iter().all(|(k, _)| !k.starts_with(AT_REST)), "{s:?}");
        }
    }
}
