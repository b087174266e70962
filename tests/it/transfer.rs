//! How archives travel to and from object storage, against a real Garage server: the records
//! of uploads in progress and their cleanup.

use std::fs;
use std::io::Write;
use std::path::Path;

use cpbackup::spec::StoreOptions;
use cpbackup::store::s3::{S3Store, MIN_PART_SIZE};
use cpbackup::store::{Scheme, Store};

use crate::support::garage::{self, Garage};
use crate::support::{json, run};

/// The upload records (`upload-*.json`) in a state directory, sorted by name.
fn upload_records(state: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(state)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("upload-")))
        .collect();
    v.sort();
    v
}

/// The library's store on `bucket`, keeping its records in `state`.
fn store_with_state(g: &Garage, bucket: &str, state: &Path) -> S3Store {
    g.store(bucket); // the test credentials, in this process's environment
    let opts = StoreOptions {
        endpoint: Some(g.endpoint()),
        region: Some(garage::REGION.into()),
        state_dir: Some(state.to_path_buf()),
        parts_in_flight: 1,
        ..Default::default()
    };
    S3Store::new(Scheme::S3, bucket, &opts).expect("open the test store")
}

/// An agent killed between its two records of one upload (the one written before
/// CreateMultipartUpload, naming only the key, and the one written once the store answered
/// with the id) leaves both: `cleanup` aborts that upload and reports it once, whichever
/// record it reads first.
#[test]
fn transfer_cleanup_aborts_and_reports_each_upload_once() {
    let g = garage::shared();
    let bucket = g.bucket("twice");
    let probe = g.store(&bucket);
    for (round, intent_first) in [(0, true), (1, false)] {
        let key = format!("twice-{round}.tar");
        let live = tempfile::tempdir().unwrap();
        let store = store_with_state(g, &bucket, live.path());
        let mut up = store.upload(&key, 0).unwrap();
        // A full part and one byte more: the multipart upload opens and its first part goes.
        up.write_all(&vec![7u8; MIN_PART_SIZE as usize + 1]).unwrap();
        let open = probe.open_uploads(&key).unwrap();
        assert_eq!(open.len(), 1, "{open:?}");
        let id = open[0].1.clone();
        let mine = upload_records(live.path());
        assert_eq!(mine.len(), 1, "one record while the upload runs: {mine:?}");
        let with_id: serde_json::Value = serde_json::from_slice(&fs::read(&mine[0]).unwrap()).unwrap();
        assert_eq!(with_id["upload_id"], id.as_str());
        let mut intent = with_id.clone();
        intent["upload_id"] = "".into();

        // What the kill left: both records, nobody holding them.
        let planted = tempfile::tempdir().unwrap();
        let (first, second) = if intent_first { (&intent, &with_id) } else { (&with_id, &intent) };
        fs::write(planted.path().join("upload-4242-a.json"), serde_json::to_vec(first).unwrap()).unwrap();
        fs::write(planted.path().join("upload-4242-b.json"), serde_json::to_vec(second).unwrap()).unwrap();
        let out = json(&run(g.cpbackup().env("CPBACKUP_STATE_DIR", planted.path()).arg("cleanup"), 0));
        assert_eq!(
            out["Aborted"],
            serde_json::json!([format!("s3://{bucket}/{key} (upload {id})")]),
            "intent record first: {intent_first}"
        );
        assert_eq!(out["Failed"], serde_json::json!([]));
        assert!(probe.open_uploads(&key).unwrap().is_empty(), "the upload is aborted");
        assert!(upload_records(planted.path()).is_empty(), "both records are gone");
        // The upload this process still holds finds it gone; nothing is left under the key.
        up.abort();
        assert!(probe.head(&key).unwrap().is_none());
        assert!(upload_records(live.path()).is_empty());
    }
}
