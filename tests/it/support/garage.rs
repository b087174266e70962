//! A real Garage S3 server for the tests: single node (shared by the whole test binary,
//! started lazily) or a cluster of three, on loopback, with its own temp directories and free
//! ports, a deterministic test key and a bucket per test.
//!
//! Garage must be installed (CI does it; see `.ci/run`). When it is missing the tests fail and
//! say how to install it: they never skip silently. Every Garage process is watched by a
//! small shell loop that kills it once the test process is gone, so no server outlives
//! `cargo test`, whatever way the test binary ends.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cpbackup::spec::StoreOptions;
use cpbackup::store::s3::S3Store;
use cpbackup::store::Scheme;

pub const REGION: &str = "garage";
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
/// Recognisable, so a test can grep logs and manifests for it.
pub const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e7abcd";
const RPC_SECRET: &str = "1799bccfd7411eddcf9ebd316bc1f5287ad12a68094e1c6ac6abde7e6feae1ec";
const INSTALL: &str =
    "cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,lmdb,sqlite";

/// The garage binary: on PATH, else in ~/.cargo/bin. Panics (failing the test) with the way
/// to install it.
pub fn garage_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("garage");
            if p.is_file() {
                return p;
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cargo/bin/garage");
        if p.is_file() {
            return p;
        }
    }
    panic!("the S3 tests need the Garage server (garage) on PATH or in ~/.cargo/bin; install it with:\n    {INSTALL}");
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// One Garage process.
pub struct Node {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub s3_port: u16,
    pub rpc_port: u16,
    child: Mutex<Option<Child>>,
}

impl Node {
    fn new(dir: &Path, replication: u32) -> Node {
        std::fs::create_dir_all(dir).expect("node dir");
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let config = dir.join("garage.toml");
        let toml = format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{RPC_SECRET}"
bootstrap_peers = []

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "test-admin-token"
"#,
            d = dir.display()
        );
        std::fs::write(&config, toml).expect("write garage.toml");
        let node = Node { dir: dir.to_path_buf(), config, s3_port, rpc_port, child: Mutex::new(None) };
        node.start();
        node
    }

    /// Start (or restart) the server and wait until its S3 port answers.
    pub fn start(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("server log");
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start garage");
        watchdog(child.id());
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_err() {
            assert!(Instant::now() < deadline, "garage did not start; see {}", self.dir.join("server.log").display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill the server (SIGKILL: a crash, not a shutdown).
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run the garage CLI against this node; returns stdout, panics with stderr on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run garage");
        assert!(
            out.status.success(),
            "garage {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn node_id(&self) -> String {
        self.cli(&["node", "id", "-q"]).trim().to_string()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kill `pid` once this test process is gone (normal exit, panic=abort, SIGKILL alike).
fn watchdog(pid: u32) {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 0.5; done; kill -9 {pid} 2>/dev/null; exit 0"
    );
    detached(&script);
}

fn remove_when_gone(dir: &Path) {
    let me = std::process::id();
    detached(&format!("while kill -0 {me} 2>/dev/null; do sleep 0.5; done; sleep 1; rm -rf '{}'", dir.display()));
}

/// A shell script that outlives this process, with nothing attached.
fn detached(script: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// How long a starting Garage may take to create a bucket, then to accept a write.
const READY_WITHIN: Duration = Duration::from_secs(180);

/// A Garage cluster (one node, or three) with the test key and a layout applied.
pub struct Garage {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
    /// Where cpbackup processes run by these tests keep their upload records.
    pub state_dir: PathBuf,
}

impl Garage {
    pub fn start(nodes: usize) -> Garage {
        let dir = tempfile::Builder::new().prefix("cpbackup-garage-").tempdir().expect("tempdir");
        // The shared server lives in a static that is never dropped: its directory goes when
        // the test process does.
        remove_when_gone(dir.path());
        let replication = if nodes >= 3 { 3 } else { 1 };
        let ns: Vec<Node> = (0..nodes).map(|i| Node::new(&dir.path().join(format!("node{i}")), replication)).collect();
        let first = &ns[0];
        for n in &ns[1..] {
            let id = n.node_id();
            retry_cli(first, &["node", "connect", &id]);
        }
        for n in &ns {
            let id = n.node_id();
            let short = id.split('@').next().unwrap_or(&id).to_string();
            retry_cli(first, &["layout", "assign", "-z", "dc1", "-c", "20G", &short]);
        }
        retry_cli(first, &["layout", "apply", "--version", "1"]);
        retry_cli(first, &["key", "import", KEY_ID, SECRET, "-n", "cpbackup-test", "--yes"]);
        let state_dir = dir.path().join("state");
        let g = Garage { nodes: ns, _dir: dir, state_dir };
        g.wait_ready();
        g
    }

    /// Wait until the cluster answers S3 requests (the layout takes a moment to spread).
    fn wait_ready(&self) {
        let probe = format!("ready-{}", std::process::id());
        // Generous: the wait ends as soon as Garage answers, and on a machine whose cores are
        // all busy (the suite beside stress-ng, issue 19) its start took over a minute.
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let out = self.nodes[0].cli_raw(&["bucket", "create", &probe]);
            if out {
                break;
            }
            assert!(Instant::now() < deadline, "garage never became ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.allow(&probe);
        let store = self.store(&probe);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            use cpbackup::store::Store;
            match store.put("probe", b"x") {
                Ok(()) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "garage does not accept writes: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    pub fn endpoint(&self) -> String {
        self.nodes[0].endpoint()
    }

    fn allow(&self, bucket: &str) {
        retry_cli(&self.nodes[0], &["bucket", "allow", "--read", "--write", "--owner", bucket, "--key", KEY_ID]);
    }

    /// A new bucket for one test, named from `name` and a counter.
    pub fn bucket(&self, name: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let b = format!("t-{}-{}", name.replace('_', "-"), N.fetch_add(1, Ordering::SeqCst));
        retry_cli(&self.nodes[0], &["bucket", "create", &b]);
        self.allow(&b);
        b
    }

    /// A `cpbackup` command set up for this server: credentials, endpoint, region, state dir.
    pub fn cpbackup(&self) -> Command {
        let mut c = super::cpbackup();
        c.env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_REGION", REGION)
            .env("CPBACKUP_ENDPOINT", self.endpoint())
            .env("CPBACKUP_STATE_DIR", &self.state_dir);
        c
    }

    /// The library's store on `bucket`, for checks the CLI does not offer (HeadObject,
    /// ListMultipartUploads) and for writing fixtures quickly.
    pub fn store(&self, bucket: &str) -> S3Store {
        set_test_credentials();
        let opts = StoreOptions {
            endpoint: Some(self.endpoint()),
            region: Some(REGION.into()),
            state_dir: Some(self.state_dir.clone()),
            ..Default::default()
        };
        S3Store::new(Scheme::S3, bucket, &opts).expect("open the test store")
    }
}

impl Node {
    fn cli_raw(&self, args: &[&str]) -> bool {
        Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// The CLI right after start can race the node's own start-up: retry for a while.
fn retry_cli(node: &Node, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.cli_raw(args) {
        if Instant::now() > deadline {
            node.cli(args); // fails with the output
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The in-process store reads credentials from the environment, like the binary.
fn set_test_credentials() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY (of intent): set once, before any store is built, to the same values every time.
        std::env::set_var("AWS_ACCESS_KEY_ID", KEY_ID);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_CA_BUNDLE");
    });
}

/// The upload records (`upload-*.json`) in a state directory, sorted by name.
pub fn upload_records(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("upload-")))
        .collect();
    v.sort();
    v
}

/// The single-node server shared by every test of this binary.
pub fn shared() -> &'static Garage {
    static G: OnceLock<Garage> = OnceLock::new();
    G.get_or_init(|| Garage::start(1))
}
