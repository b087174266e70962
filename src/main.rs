//! The command line: parse, set up logging, run one operation, print its result, exit with
//! 0 (done), 1 (failed) or 2 (bad usage or input). The only place that uses `anyhow`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cpbackup::archive::Format;
use cpbackup::crypt::{Opening, Sealing};
use cpbackup::manifest::Identity;
use cpbackup::progress::Progress;
use cpbackup::spec::{BackupAppSpec, Destination, ExportSpec, ImportSpec, RecoverAppSpec, StoreOptions, VerifySpec};
use cpbackup::{backup, restore, version};

#[derive(Parser)]
#[command(name = "cpbackup", version = version::VERSION, about = "Backup agent for Android cloud phones")]
struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// DNS servers, IP or IP:PORT, comma-separated (default: the phone's netd, through
    /// /dev/socket/dnsproxyd under --root; else /etc/resolv.conf; else public resolvers).
    #[arg(long, global = true, env = "CPBACKUP_DNS", value_name = "SERVERS")]
    dns: Option<String>,
    #[command(flatten)]
    priority: PriorityArgs,
    #[command(subcommand)]
    command: Command,
}

/// How hard the work may press on the phone (the daemon takes these from its config).
#[derive(Args)]
struct PriorityArgs {
    /// CPU priority of the work's threads, -20 (first) to 19 (last).
    #[arg(long, global = true, default_value_t = 10, allow_negative_numbers = true)]
    nice: i32,
    /// I/O scheduling class: idle, best-effort or realtime.
    #[arg(long, global = true, default_value = "best-effort")]
    io_class: String,
    /// I/O level within the class, 0 (first) to 7 (last).
    #[arg(long, global = true, default_value_t = 7)]
    io_level: u32,
    /// Run at the priority the shell gave, flat out (a manual run someone waits for).
    #[arg(long, global = true)]
    foreground: bool,
}

impl PriorityArgs {
    /// Lower this thread, before any other starts, so every thread of the work inherits it.
    /// Set the priority on this thread (and the session it leads) for the command's work;
    /// the session's goes back when the guard is dropped.
    fn apply(&self) -> anyhow::Result<Option<cpbackup::priority::LoweredSession>> {
        let p = cpbackup::priority::Priority::new(
            self.nice,
            cpbackup::priority::IoClass::parse(&self.io_class)?,
            self.io_level,
        )?;
        if self.foreground {
            return Ok(None);
        }
        p.apply_to_this_thread();
        Ok(Some(p.lower_session()))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Archive data paths (CPH batch-storage, ECP BackupFile).
    Export(ExportArgs),
    /// Restore an archive into the phone's filesystem (CPH batch-restore, ECP RecoveryFile).
    Import(ImportArgs),
    /// Read an archive through and check it, writing nothing.
    Verify(VerifyArgs),
    /// Print the version, git commit, target and build profile, and the network settings.
    Version {
        /// The phone's `/` whose resolver (netd's socket) and CA store the settings come from.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Run export → verify → import on a built-in demo phone root, with a local folder as the store.
    Demo {
        /// Where the demo root, the store and the restored copy go.
        #[arg(long, default_value = "cpbackup-demo")]
        dir: PathBuf,
    },
    /// List the backup files under a bucket prefix or folder (ECP DescribeBackupFiles).
    List(ListArgs),
    /// Delete a backup file: its archive, then its manifest (ECP DeleteBackupFile).
    Delete(DeleteArgs),
    /// List the entries of a snapshot or an archive without restoring.
    Ls(LsArgs),
    /// Remove snapshot records by a keep policy (per instance id); `prune` removes the data.
    Forget(ForgetArgs),
    /// Delete the packs no snapshot reaches, in two phases with a grace period (safe while phones write).
    Prune(PruneArgs),
    /// Abort multipart uploads left open by an agent that was killed.
    Cleanup(CleanupArgs),
    /// Back up apps (APKs, data, cache) into one Android .ab (ECP BackupApp).
    BackupApp(BackupAppArgs),
    /// Reinstall apps and their data from an .ab, replacing installed copies (ECP RecoverApp).
    RecoverApp(RecoverAppArgs),
    /// Run as a service: the control plane pushes tasks over HTTP, status goes back by callbacks.
    Daemon {
        /// TOML configuration; every key can also be set as CPBACKUP_<KEY> in the environment.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct StoreArgs {
    /// Object storage endpoint (the control plane's UploadEndpoint).
    #[arg(long, env = "CPBACKUP_ENDPOINT")]
    endpoint: Option<String>,
    /// Region for object storage (default: AWS_REGION).
    #[arg(long)]
    region: Option<String>,
    /// Use path-style addressing even for a host name endpoint.
    #[arg(long)]
    path_style: bool,
    /// Concurrent part uploads.
    #[arg(long, default_value_t = 4)]
    parts_in_flight: usize,
    /// Where upload ids of multipart uploads in progress are recorded (default /data/cpbackup/state
    /// on a device, else a per-user directory).
    #[arg(long, env = "CPBACKUP_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Server-side encryption by the object store with its own keys: AES256 or KMS.
    #[arg(long, value_name = "AES256|KMS")]
    sse: Option<String>,
    /// The KMS key for --sse KMS (implies it); default: the store's default KMS key.
    #[arg(long, value_name = "ID")]
    sse_kms_key_id: Option<String>,
    /// SSE-C: the store encrypts with your key, 32 bytes in this file (raw or base64). The same
    /// file is needed to import or verify the archive.
    #[arg(long, value_name = "FILE")]
    sse_c_key_file: Option<PathBuf>,
    /// Bandwidth cap of the transfer to or from object storage, bytes per second, all parts in
    /// flight together: 20M, 500k, 1.5M (k, M, G: times 1024).
    #[arg(long, value_name = "RATE")]
    limit_rate: Option<String>,
}

impl StoreArgs {
    /// The options, checked against the location they are for (`None`: no one location).
    fn options(&self, location: Option<&str>) -> anyhow::Result<StoreOptions> {
        use cpbackup::store::{self, sse::Sse};
        let sse = Sse::from_flags(self.sse.as_deref(), self.sse_kms_key_id.as_deref(), self.sse_c_key_file.as_deref())?;
        let opts = StoreOptions {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            parts_in_flight: self.parts_in_flight,
            state_dir: self.state_dir.clone(),
            sse,
            limit_rate: self.limit_rate.as_deref().map(store::rate::parse).transpose()?,
        };
        if let Some(loc) = location {
            store::check_options(&store::Location::parse(loc)?, &opts)?;
        }
        Ok(opts)
    }
}

/// Who a backup is sealed for (issue: backups only their owner can read).
#[derive(Args)]
struct SealArgs {
    /// Seal the archive with age for this recipient (an X25519 public key, age1…; repeatable).
    /// The phone can then write the backup and cannot read it.
    #[arg(long = "recipient", value_name = "AGE1…", env = "CPBACKUP_RECIPIENTS", value_delimiter = ',')]
    recipients: Vec<String>,
    /// A file of recipients, one age1… a line, # comments (age's own format; repeatable).
    #[arg(long = "recipients-file", value_name = "FILE")]
    recipients_files: Vec<PathBuf>,
    /// Seal with a passphrase, the file's first line: age's scrypt, or for an .ab Android's own
    /// AES-256 encryption (which `adb restore` opens). For manual runs.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["recipients", "recipients_files"])]
    passphrase_file: Option<PathBuf>,
}

impl SealArgs {
    fn sealing(&self) -> cpbackup::Result<Sealing> {
        Sealing::new(&self.recipients, &self.recipients_files, self.passphrase_file.as_deref())
    }
}

/// What opens a sealed archive.
#[derive(Args)]
struct OpenArgs {
    /// An age identity file (AGE-SECRET-KEY-1… lines, as age-keygen writes; repeatable).
    #[arg(long = "identity", value_name = "FILE")]
    identities: Vec<PathBuf>,
    /// The passphrase it was sealed with: the file's first line.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

impl OpenArgs {
    fn opening(&self) -> cpbackup::Result<Opening> {
        Opening::new(&self.identities, self.passphrase_file.as_deref())
    }
}

#[derive(Args)]
struct IdentityArgs {
    /// This phone's instance id, recorded in the manifest.
    #[arg(long, env = "CPBACKUP_INSTANCE_ID", default_value = "")]
    instance_id: String,
    #[arg(long, env = "CPBACKUP_INSTANCE_NAME", default_value = "")]
    instance_name: String,
    #[arg(long, env = "CPBACKUP_INSTANCE_GROUP_ID", default_value = "")]
    instance_group_id: String,
    #[arg(long, env = "CPBACKUP_END_USER_ID", default_value = "")]
    end_user_id: String,
    #[arg(long, env = "CPBACKUP_REGION_ID", default_value = "")]
    region_id: String,
    #[arg(long, default_value = "")]
    task_id: String,
}

#[derive(Args)]
struct ExportArgs {
    /// A device path to take (absolute, under /data or a cache directory; `*` globs).
    #[arg(long = "include", value_name = "PATH")]
    includes: Vec<String>,
    /// A device path to leave out; wins over --include.
    #[arg(long = "exclude", value_name = "PATH")]
    excludes: Vec<String>,
    /// The whole of /data but the agent's own and transient files (ECP BackupAll).
    #[arg(long, conflicts_with = "includes")]
    all: bool,
    /// tar, tar.zst, ab, or repo (an incremental snapshot into the repository in the folder
    /// DEST); default from DEST's extension, else tar.zst.
    #[arg(long)]
    format: Option<String>,
    /// With --format repo: read every file, whatever the metadata cache says.
    #[arg(long)]
    rehash: bool,
    /// A sealed repository's id key (32 bytes, or 64 hex digits), shared by the fleet's phones:
    /// chunk ids are keyed by it, so they dedupe against each other and the store cannot
    /// confirm guesses of content.
    #[arg(long, value_name = "FILE", env = "CPBACKUP_ID_KEY_FILE")]
    id_key_file: Option<PathBuf>,
    #[command(flatten)]
    dest: DestArgs,
}

/// What every backup command takes: where the archive goes, what its record says, the phone.
#[derive(Args)]
struct DestArgs {
    /// Where the archive goes: a path, file://PATH, a folder ending in /, - for stdout, or
    /// oss://, obs://, s3://BUCKET/KEY.
    #[arg(long, value_name = "DEST")]
    to: String,
    /// Name of the archive when DEST is a folder (ECP BackupFileName).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "")]
    description: String,
    /// The directory that stands for the phone's /.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Print the manifest as JSON (on stderr when the archive goes to stdout).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    seal: SealArgs,
}

#[derive(Args)]
struct BackupAppArgs {
    /// A package to back up (repeat for more; ECP SourceAppList).
    #[arg(long = "app", value_name = "PKG", required = true)]
    apps: Vec<String>,
    /// Do not `am force-stop` the apps before reading their data.
    #[arg(long)]
    no_stop: bool,
    /// Leave the apps' cache directories out.
    #[arg(long)]
    no_cache: bool,
    /// The Android user whose apps to back up (their data in /data/user/N, /data/user_de/N,
    /// /data/media/N).
    #[arg(long, value_name = "N", default_value_t = 0)]
    user: u32,
    #[command(flatten)]
    dest: DestArgs,
}

#[derive(Args)]
struct RecoverAppArgs {
    /// The .ab: a path, file://PATH, or - for stdin.
    #[arg(long, value_name = "SRC")]
    from: String,
    /// Only this package (repeat for more); default: every app in the archive.
    #[arg(long = "app", value_name = "PKG")]
    apps: Vec<String>,
    /// Install even when the app is from a newer Android or lacks this phone's ABI.
    #[arg(long)]
    force: bool,
    /// The Android user to recover the apps into, whichever user they were backed up from.
    #[arg(long, value_name = "N", default_value_t = 0)]
    user: u32,
    #[arg(long, default_value = "/")]
    root: PathBuf,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    open: OpenArgs,
}

#[derive(Args)]
struct ImportArgs {
    /// The archive: a path, file://PATH, or - for stdin; or a snapshot's record, or the
    /// repository's folder with --backup-file-id.
    #[arg(long, value_name = "SRC")]
    from: String,
    /// The backup file (archive or snapshot) in the folder SRC.
    #[arg(long)]
    backup_file_id: Option<String>,
    /// Restore only this device path and what is under it (repeat for more).
    #[arg(long = "include", value_name = "PATH")]
    includes: Vec<String>,
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Apply archived extended attributes (SELinux labels among them).
    #[arg(long)]
    restore_xattrs: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    open: OpenArgs,
}

#[derive(Args)]
struct VerifyArgs {
    #[arg(long, value_name = "SRC")]
    from: String,
    #[arg(long)]
    backup_file_id: Option<String>,
    /// For a snapshot: download and hash every chunk (default: check each is indexed and its pack exists).
    #[arg(long)]
    read_data: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
    /// Without a key, a sealed archive's stored bytes are still checked against its manifest.
    #[command(flatten)]
    open: OpenArgs,
}

#[derive(Args)]
struct LsArgs {
    /// A snapshot's record or an archive, or the folder with --backup-file-id.
    #[arg(long, value_name = "SRC")]
    from: String,
    #[arg(long)]
    backup_file_id: Option<String>,
    /// Only this device path and what is under it (repeat for more).
    #[arg(long = "include", value_name = "PATH")]
    includes: Vec<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    open: OpenArgs,
}

#[derive(Args)]
struct ForgetArgs {
    /// The repository's folder.
    #[arg(long = "in", value_name = "URL_PREFIX")]
    location: String,
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
    /// Only this instance's snapshots (each instance is kept by the policy on its own).
    #[arg(long)]
    instance_id: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct PruneArgs {
    /// The repository's folder.
    #[arg(long = "in", value_name = "URL_PREFIX")]
    location: String,
    /// How long a pack stays marked before it is deleted: longer than any backup runs.
    #[arg(long, default_value = "24h")]
    grace: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    open: OpenArgs,
}

#[derive(Args)]
struct ListArgs {
    /// The prefix to look under: oss://, obs://, s3://BUCKET/PREFIX, or a local folder.
    #[arg(long = "in", value_name = "URL_PREFIX")]
    location: String,
    #[arg(long)]
    backup_file_id: Option<String>,
    /// Substring of the file name.
    #[arg(long)]
    backup_file_name: Option<String>,
    #[arg(long)]
    instance_id: Option<String>,
    /// Substring of the instance name.
    #[arg(long)]
    instance_name: Option<String>,
    #[arg(long)]
    instance_group_id: Option<String>,
    /// Substring of the description.
    #[arg(long)]
    description: Option<String>,
    /// AVAILABLE, BACKUPING, RECOVERING, DELETING, BACKUP_FAILED, RECOVERY_FAILED, PART_BACKUP_FINISHED.
    #[arg(long = "status", value_name = "S", num_args = 1.., value_delimiter = ',')]
    statuses: Vec<String>,
    /// Created at or after, YYYY-MM-DD HH:MM:SS (UTC).
    #[arg(long)]
    start_time: Option<String>,
    /// Created at or before, YYYY-MM-DD HH:MM:SS (UTC).
    #[arg(long)]
    end_time: Option<String>,
    #[arg(long)]
    end_user_id: Option<String>,
    #[arg(long)]
    backup_all: Option<bool>,
    /// 1 to 100 (default 10).
    #[arg(long, allow_negative_numbers = true)]
    max_results: Option<i64>,
    #[arg(long)]
    next_token: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct DeleteArgs {
    /// The prefix the backup file is under.
    #[arg(long = "in", value_name = "URL_PREFIX")]
    location: String,
    #[arg(long)]
    backup_file_id: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct CleanupArgs {
    /// Also settle imports and app recoveries that a killed agent left under this root (the
    /// daemon does it on every start): finished if they had reached their commit point,
    /// removed if not.
    #[arg(long)]
    root: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

/// The store and key prefix a `--in` names.
fn catalog_store(location: &str, opts: &StoreOptions) -> anyhow::Result<(Box<dyn cpbackup::store::Store>, String)> {
    let loc = cpbackup::store::Location::parse(location)?;
    let (store, prefix, _) = cpbackup::store::open(&loc, opts)?;
    Ok((store, prefix))
}

/// `println!` for the command's results, where a reader that closed the pipe early
/// (`cpbackup ls … | head`) ends the output quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        printed(writeln!(std::io::stdout().lock(), $($arg)*))
    };
}

/// A write to stdout whose reader has gone (`EPIPE`) has done its job; other errors are errors.
fn printed(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn main() -> ExitCode {
    cpbackup::sys::large_allocations_from_the_kernel();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(code) = install_network(cli.dns.as_deref(), &cli.command) {
        return code;
    }
    let work = !matches!(cli.command, Command::Daemon { .. } | Command::Version { .. });
    match (if work { cli.priority.apply() } else { Ok(None) }).and_then(|_session| run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let input = e.downcast_ref::<cpbackup::Error>().is_some_and(|e| e.is_input());
            let told = describe(&e);
            eprintln!("cpbackup: error: {told}");
            if let Some(hint) = cpbackup::net::hint(&told) {
                eprintln!("cpbackup: hint: {hint}");
            }
            ExitCode::from(if input { 2 } else { 1 })
        }
    }
}

/// An error and its causes on one line. The library's errors already tell their cause (an I/O
/// error's context is followed by the error): a cause the line ends with is not told twice.
fn describe(e: &anyhow::Error) -> String {
    let mut told = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if told.ends_with(&text) {
            continue;
        }
        if !told.is_empty() {
            told.push_str(": ");
        }
        told.push_str(&text);
    }
    told
}

/// DNS servers and CA roots for every connection of this process (see `cpbackup::net`): the CA
/// store is the one of the phone the command works on (`--root`), `/` for the others.
fn install_network(dns: Option<&str>, cmd: &Command) -> Result<(), ExitCode> {
    let servers = match dns.map(cpbackup::net::dns::parse_servers).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            eprintln!("cpbackup: error: --dns: {e}");
            return Err(ExitCode::from(2));
        }
    };
    let root = match cmd {
        Command::Export(a) => a.dest.root.as_path(),
        Command::Import(a) => a.root.as_path(),
        Command::BackupApp(a) => a.dest.root.as_path(),
        Command::RecoverApp(a) => a.root.as_path(),
        Command::Version { root } => root.as_path(),
        _ => std::path::Path::new("/"),
    };
    cpbackup::net::Network::new(servers, root).install();
    Ok(())
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // aws-sigv4 traces every request it signs with its headers as they are (an SSE-C key, an
    // STS session token): never below debug there, whatever RUST_LOG asks.
    if let Ok(cap) = "aws_sigv4::http_request::sign=debug".parse() {
        filter = filter.add_directive(cap);
    }
    // Colours only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Export(a) => {
            let format = a.format.as_deref().map(Format::parse).transpose()?;
            let json = a.dest.json;
            let spec = ExportSpec {
                format,
                rehash: a.rehash,
                id_key: a.id_key_file.as_deref().map(cpbackup::repo::seal::IdKey::read_file).transpose()?,
                ..ExportSpec::new(a.dest.destination()?, a.includes, a.excludes, a.all)
            };
            let m = backup::export(&spec, &Progress::new(true))?;
            let what = format!("{} entries", m.entry_count);
            print_manifest(&m, &spec.to, json, &what)?;
        }
        Command::Import(a) => {
            let spec = ImportSpec {
                store: a.store.options(Some(&a.from))?,
                from: a.from,
                root: a.root,
                restore_xattrs: a.restore_xattrs,
                includes: a.includes,
                backup_file_id: a.backup_file_id,
                opening: a.open.opening()?,
            };
            let report = restore::import(&spec, &Progress::new(true))?;
            print_report(&report, a.json, "restored")?;
        }
        Command::Verify(a) => {
            let spec = VerifySpec {
                store: a.store.options(Some(&a.from))?,
                from: a.from,
                backup_file_id: a.backup_file_id,
                read_data: a.read_data,
                opening: a.open.opening()?,
            };
            let report = restore::verify(&spec, &Progress::new(true))?;
            print_report(&report, a.json, "verified")?;
        }
        Command::BackupApp(a) => {
            let json = a.dest.json;
            let spec = BackupAppSpec {
                no_stop: a.no_stop,
                no_cache: a.no_cache,
                user: a.user,
                ..BackupAppSpec::new(a.dest.destination()?, a.apps)
            };
            let m = backup::backup_app(&spec, &Progress::new(true))?;
            let what = format!("apps {}", m.source_app_info_list.join(" "));
            print_manifest(&m, &spec.to, json, &what)?;
        }
        Command::RecoverApp(a) => {
            let spec = RecoverAppSpec {
                store: a.store.options(Some(&a.from))?,
                from: a.from,
                apps: a.apps,
                force: a.force,
                user: a.user,
                root: a.root,
                opening: a.open.opening()?,
            };
            let report = restore::recover_app(&spec, &Progress::new(true))?;
            if a.json {
                out!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                for app in &report.apps {
                    let why = match &app.step {
                        Some(step) => format!(" at {step}: {}", app.error),
                        None => String::new(),
                    };
                    eprintln!("{} {}{why}", app.status, app.package);
                }
            }
            if !report.all_recovered() {
                let failed: Vec<&str> = report.apps.iter().filter(|x| !x.ok()).map(|x| x.package.as_str()).collect();
                anyhow::bail!("not recovered: {}", failed.join(", "));
            }
        }
        Command::Version { .. } => out!("{}\n{}", version::long(), cpbackup::net::Network::current().describe())?,
        Command::Daemon { config } => {
            let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("CPBACKUP_")).collect();
            let cfg = cpbackup::daemon::config::Config::load(config.as_deref(), &env)?;
            cpbackup::daemon::run(cfg)?;
        }
        Command::Demo { dir } => demo(&dir)?,
        Command::List(a) => {
            let statuses =
                a.statuses.iter().map(|s| cpbackup::manifest::Status::parse(s)).collect::<Result<Vec<_>, _>>()?;
            let q = cpbackup::catalog::Query {
                backup_file_id: a.backup_file_id.unwrap_or_default(),
                backup_file_name: a.backup_file_name.unwrap_or_default(),
                instance_id: a.instance_id.unwrap_or_default(),
                instance_name: a.instance_name.unwrap_or_default(),
                instance_group_id: a.instance_group_id.unwrap_or_default(),
                description: a.description.unwrap_or_default(),
                statuses,
                start_time: a.start_time,
                end_time: a.end_time,
                end_user_id: a.end_user_id.unwrap_or_default(),
                backup_all: a.backup_all,
                max_results: a.max_results,
                next_token: a.next_token,
            };
            // Check the query before touching the network: bad input is exit 2, quickly.
            q.check()?;
            let (store, prefix) = catalog_store(&a.location, &a.store.options(Some(&a.location))?)?;
            let page = cpbackup::catalog::list(store.as_ref(), &prefix, &q)?;
            out!("{}", serde_json::to_string_pretty(&page)?)?;
        }
        Command::Ls(a) => {
            let spec = cpbackup::spec::LsSpec {
                store: a.store.options(Some(&a.from))?,
                from: a.from,
                backup_file_id: a.backup_file_id,
                includes: a.includes,
                opening: a.open.opening()?,
            };
            let mut out = std::io::stdout().lock();
            let mut failed = None;
            restore::ls(&spec, &mut |e| {
                let line = if a.json { serde_json::to_string(&e).unwrap_or_default() } else { e.line() };
                if failed.is_none() {
                    failed = writeln!(out, "{line}").err();
                }
            })?;
            if let Some(e) = failed {
                printed(Err(e))?;
            }
        }
        Command::Forget(a) => {
            let policy = cpbackup::repo::forget::Policy {
                last: a.keep_last,
                daily: a.keep_daily,
                weekly: a.keep_weekly,
                monthly: a.keep_monthly,
                ..Default::default()
            };
            let (store, prefix) = catalog_store(&a.location, &a.store.options(Some(&a.location))?)?;
            let prefix = cpbackup::repo::folder(&prefix);
            let done =
                cpbackup::repo::forget::forget(store.as_ref(), &prefix, &policy, a.instance_id.as_deref(), a.dry_run)?;
            out!("{}", serde_json::to_string_pretty(&done)?)?;
        }
        Command::Prune(a) => {
            let grace = cpbackup::repo::prune::parse_grace(&a.grace)?;
            let (store, prefix) = catalog_store(&a.location, &a.store.options(Some(&a.location))?)?;
            let repo = cpbackup::repo::Repo::open(store.as_ref(), &prefix, &a.open.opening()?, &[])?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let done = cpbackup::repo::prune::prune(&repo, grace, now)?;
            out!("{}", serde_json::to_string_pretty(&done)?)?;
        }
        Command::Delete(a) => {
            let (store, prefix) = catalog_store(&a.location, &a.store.options(Some(&a.location))?)?;
            let done = cpbackup::catalog::delete(store.as_ref(), &prefix, &a.backup_file_id)?;
            out!("{}", serde_json::to_string_pretty(&done)?)?;
        }
        Command::Cleanup(a) => {
            let done = cpbackup::store::s3::cleanup(&a.store.options(None)?)?;
            let mut out = serde_json::to_value(&done)?;
            if let Some(root) = &a.root {
                out["Settled"] = cpbackup::restore::finish_interrupted(root).into();
            }
            out!("{}", serde_json::to_string_pretty(&out)?)?;
        }
    }
    Ok(())
}

/// The README's first command: the whole data path on a demo root, a local folder as store.
fn demo(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let phone = dir.join("phone");
    let store = dir.join("store");
    let restored = dir.join("restored");
    for d in [&phone, &store, &restored] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    cpbackup::demo::make_root(&phone)?;
    let pkg = cpbackup::demo::PACKAGE;
    let dest = Destination {
        to: format!("{}/", store.display()),
        root: phone.clone(),
        name: Some("demo.tar.zst".into()),
        description: "cpbackup demo".into(),
        identity: Identity { android_instance_id: "acp-demo".into(), ..Default::default() },
        ..Default::default()
    };
    let includes = vec![format!("/data/user/0/{pkg}"), format!("/data/user_de/0/{pkg}"), "/data/media/0".into()];
    let spec = ExportSpec::new(dest, includes, Vec::new(), false);
    let m = backup::export(&spec, &Progress::new(true))?;
    out!("exported  {} -> {}", spec.includes.join(" "), m.backup_file_path)?;
    out!(
        "          {} entries, {} bytes of files, {} bytes stored ({}), sha256 {}",
        m.entry_count,
        m.file_size,
        m.archive_size,
        m.status.as_str(),
        m.sha256
    )?;
    let from = m.backup_file_path.clone();
    let v = restore::verify(&VerifySpec { from: from.clone(), ..Default::default() }, &Progress::new(true))?;
    out!(
        "verified  {} entries, checksum {}",
        v.entries,
        if v.checksum_verified { "matches the manifest" } else { "not checked" }
    )?;
    let r = restore::import(&ImportSpec { from, root: restored.clone(), ..Default::default() }, &Progress::new(true))?;
    out!("imported  {} entries, {} bytes into {}", r.entries, r.bytes, restored.display())?;
    out!("manifest  {}.manifest.json", m.backup_file_path)?;
    Ok(())
}

impl IdentityArgs {
    fn identity(self) -> Identity {
        Identity {
            android_instance_id: self.instance_id,
            android_instance_name: self.instance_name,
            instance_group_id: self.instance_group_id,
            end_user_id: self.end_user_id,
            region_id: self.region_id,
            task_id: self.task_id,
            schedule_id: String::new(),
        }
    }
}

impl DestArgs {
    fn destination(self) -> anyhow::Result<Destination> {
        Ok(Destination {
            sealing: self.seal.sealing()?,
            store: self.store.options(Some(&self.to))?,
            to: self.to,
            name: self.name,
            description: self.description,
            root: self.root,
            identity: self.identity.identity(),
            backup_file_id: None,
        })
    }
}

/// A backup's result: the manifest as JSON with `--json` (on stderr when stdout carries the
/// archive), else one line on stderr (nothing when the archive went to stdout).
fn print_manifest(m: &cpbackup::manifest::Manifest, to: &str, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        let text = serde_json::to_string_pretty(m)?;
        if to == "-" {
            eprintln!("{text}");
        } else {
            out!("{text}")?;
        }
    } else if to != "-" {
        eprintln!(
            "{} {}: {what}, {} bytes ({} stored), sha256 {}",
            m.status.as_str(),
            m.backup_file_path,
            m.file_size,
            m.archive_size,
            m.sha256
        );
    }
    Ok(())
}

fn print_report(r: &restore::Report, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(r)?)?;
    } else {
        let check = if r.checksum_verified { "sha256 verified" } else { "no manifest: sha256 not checked" };
        eprintln!("{verb} {}: {} entries, {} bytes ({check})", r.source, r.entries, r.bytes);
    }
    Ok(())
}
