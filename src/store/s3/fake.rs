//! Unit tests only: a stand-in for an S3 server at the SDK's HTTP client, for what a real
//! server cannot show (which headers go on which request, when the server ignores them, as
//! Garage does with SSE-S3 and KMS). It records each request's method, target and headers,
//! reads its body, and answers the few requests the store makes with the least the SDK
//! accepts. Behaviour against a real server is tested in tests/it, against Garage.

use std::sync::{Arc, Mutex};

use aws_credential_types::Credentials;
use aws_sdk_s3::config::SharedCredentialsProvider;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;

use super::client::Wiring;
use super::S3Store;
use crate::spec::StoreOptions;
use crate::store::Scheme;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The S3 operation, told from the method, the query and the Range header.
    pub op: &'static str,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct FakeS3 {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// What HEAD and ranged GETs say of every object.
    object_size: u64,
}

impl FakeS3 {
    /// The requests so far, in the order they arrived.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// A store on bucket `bkt` whose every request goes to a new fake, objects of `object_size`.
pub fn store(opts: &StoreOptions, object_size: u64) -> (S3Store, FakeS3) {
    let fake = FakeS3 { seen: Arc::default(), object_size };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let credentials = Credentials::new("AKIDFAKE", "fake-secret", None, None, "fake");
    let wiring =
        Wiring { http: SharedHttpClient::new(fake.clone()), credentials: SharedCredentialsProvider::new(credentials) };
    let store = S3Store::wired(Arc::new(rt), Scheme::S3, "bkt", opts, Some(wiring)).expect("fake store");
    (store, fake)
}

impl HttpClient for FakeS3 {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for FakeS3 {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let me = self.clone();
        HttpConnectorFuture::new(async move {
            let method = request.method().to_string();
            let target = request.uri().to_string();
            let headers: Vec<(String, String)> =
                request.headers().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let range = headers.iter().find(|(k, _)| k == "range").map(|(_, v)| v.clone());
            let body_len = match ByteStream::new(request.into_body()).collect().await {
                Ok(b) => b.into_bytes().len(),
                Err(_) => 0,
            };
            let op = operation(&method, &target, range.is_some());
            if let Ok(mut seen) = me.seen.lock() {
                seen.push(Seen { op, target, headers, body_len });
            }
            Ok(me.answer(op, range.as_deref()))
        })
    }
}

fn operation(method: &str, target: &str, ranged: bool) -> &'static str {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let has = |k: &str| query.split('&').any(|kv| kv == k || kv.starts_with(&format!("{k}=")));
    match method {
        "HEAD" => "HeadObject",
        "GET" if has("list-type") => "ListObjectsV2",
        "GET" if has("uploads") => "ListMultipartUploads",
        "GET" if ranged => "GetObject (range)",
        "GET" => "GetObject",
        "POST" if has("uploads") => "CreateMultipartUpload",
        "POST" => "CompleteMultipartUpload",
        "PUT" if has("partNumber") => "UploadPart",
        "PUT" => "PutObject",
        "DELETE" if has("uploadId") => "AbortMultipartUpload",
        "DELETE" => "DeleteObject",
        _ => "unknown",
    }
}

impl FakeS3 {
    fn answer(&self, op: &str, range: Option<&str>) -> HttpResponse {
        let size = self.object_size;
        let (status, body, headers): (u16, Vec<u8>, Vec<(&str, String)>) = match op {
            "HeadObject" => (200, Vec::new(), vec![("content-length", size.to_string()), ("etag", "\"e\"".into())]),
            "GetObject (range)" => {
                let (a, b) = range
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                    .unwrap_or((0, 0));
                let b = b.min(size.saturating_sub(1));
                let len = (b + 1).saturating_sub(a) as usize;
                (206, vec![0u8; len], vec![("content-range", format!("bytes {a}-{b}/{size}"))])
            }
            "GetObject" => (200, b"{}".to_vec(), Vec::new()),
            "CreateMultipartUpload" => (
                200,
                b"<InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>k</Key><UploadId>up-1</UploadId>\
                  </InitiateMultipartUploadResult>"
                    .to_vec(),
                Vec::new(),
            ),
            "CompleteMultipartUpload" => (
                200,
                b"<CompleteMultipartUploadResult><ETag>\"e-2\"</ETag></CompleteMultipartUploadResult>".to_vec(),
                Vec::new(),
            ),
            "UploadPart" | "PutObject" => (200, Vec::new(), vec![("etag", "\"p\"".into())]),
            "ListMultipartUploads" => {
                (200, b"<ListMultipartUploadsResult></ListMultipartUploadsResult>".to_vec(), Vec::new())
            }
            "ListObjectsV2" => {
                (200, b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>".to_vec(), Vec::new())
            }
            _ => (204, Vec::new(), Vec::new()),
        };
        let status = StatusCode::try_from(status).unwrap_or_else(|_| StatusCode::try_from(500).expect("500"));
        let mut resp = HttpResponse::new(status, SdkBody::from(body));
        for (k, v) in headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
