//! The command line: parse, set up logging, run one operation, print its result, exit with
//! 0 (done), 1 (failed) or 2 (bad usage or input). The only place that uses `anyhow`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cpbackup::archive::Format;
use cpbackup::manifest::Identity;
use cpbackup::progress::Progress;
use cpbackup::spec::{ExportSpec, ImportSpec, StoreOptions, VerifySpec};
use cpbackup::{backup, restore, version};

#[derive(Parser)]
#[command(name = "cpbackup", version = version::VERSION, about = "Backup agent for Android cloud phones")]
struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Archive data paths (CPH batch-storage, ECP BackupFile).
    Export(ExportArgs),
    /// Restore an archive into the phone's filesystem (CPH batch-restore, ECP RecoveryFile).
    Import(ImportArgs),
    /// Read an archive through and check it, writing nothing.
    Verify(VerifyArgs),
    /// Print the version, git commit, target and build profile.
    Version,
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
}

impl StoreArgs {
    fn options(&self) -> StoreOptions {
        StoreOptions {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            parts_in_flight: self.parts_in_flight,
        }
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
    /// Where the archive goes: a path, file://PATH, a folder ending in /, or - for stdout.
    #[arg(long, value_name = "DEST")]
    to: String,
    /// tar, tar.zst or ab; default from DEST's extension, else tar.zst.
    #[arg(long)]
    format: Option<String>,
    /// The directory that stands for the phone's /.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Name of the archive when DEST is a folder (ECP BackupFileName).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "")]
    description: String,
    /// Print the manifest as JSON (on stderr when the archive goes to stdout).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct ImportArgs {
    /// The archive: a path, file://PATH, or - for stdin.
    #[arg(long, value_name = "SRC")]
    from: String,
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Apply archived extended attributes (SELinux labels among them).
    #[arg(long)]
    restore_xattrs: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct VerifyArgs {
    #[arg(long, value_name = "SRC")]
    from: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let input = e.downcast_ref::<cpbackup::Error>().is_some_and(|e| e.is_input());
            eprintln!("cpbackup: error: {e:#}");
            ExitCode::from(if input { 2 } else { 1 })
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Export(a) => {
            let format = a.format.as_deref().map(Format::parse).transpose()?;
            let spec = ExportSpec {
                includes: a.includes,
                excludes: a.excludes,
                all: a.all,
                to: a.to,
                format,
                root: a.root,
                name: a.name,
                description: a.description,
                identity: identity(a.identity),
                store: a.store.options(),
            };
            let manifest = backup::export(&spec, &Progress::new(true))?;
            if a.json {
                let json = serde_json::to_string_pretty(&manifest)?;
                if spec.to == "-" {
                    eprintln!("{json}");
                } else {
                    println!("{json}");
                }
            } else if spec.to != "-" {
                eprintln!(
                    "{} {}: {} entries, {} bytes ({} stored), sha256 {}",
                    manifest.status.as_str(),
                    manifest.backup_file_path,
                    manifest.entry_count,
                    manifest.file_size,
                    manifest.archive_size,
                    manifest.sha256
                );
            }
        }
        Command::Import(a) => {
            let spec = ImportSpec { from: a.from, root: a.root, restore_xattrs: a.restore_xattrs, store: a.store.options() };
            let report = restore::import(&spec, &Progress::new(true))?;
            print_report(&report, a.json, "restored")?;
        }
        Command::Verify(a) => {
            let spec = VerifySpec { from: a.from, store: a.store.options() };
            let report = restore::verify(&spec, &Progress::new(true))?;
            print_report(&report, a.json, "verified")?;
        }
        Command::Version => println!("{}", version::long()),
    }
    Ok(())
}

fn identity(a: IdentityArgs) -> Identity {
    Identity {
        android_instance_id: a.instance_id,
        android_instance_name: a.instance_name,
        instance_group_id: a.instance_group_id,
        end_user_id: a.end_user_id,
        region_id: a.region_id,
        task_id: a.task_id,
    }
}

fn print_report(r: &restore::Report, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
    } else {
        let check = if r.checksum_verified { "sha256 verified" } else { "no manifest: sha256 not checked" };
        eprintln!("{verb} {}: {} entries, {} bytes ({check})", r.source, r.entries, r.bytes);
    }
    Ok(())
}
