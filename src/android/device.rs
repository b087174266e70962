//! The phone as cpbackup uses it: look up, stop, uninstall and install packages, read
//! properties, relabel files. Every operation is one call of Android's own tool through the
//! `CommandLine` trait (the real one runs `shell::run`), and its output goes through the pure
//! parsers in `pm`.
//!
//! It never builds a shell string and never passes a package name that has not passed
//! `pm::check_package_name`.

use std::io::Read;
use std::time::{Duration, Instant};

use super::details::Step;
use super::perms::{self, OpLine, OpsListing};
use super::{pm, shell};
use crate::error::{Error, Result};

/// The device's command line: run `program args…` (stdin optional), return its output or an
/// `Error::Device` quoting it. The privileged edge tests can replace in unit tests; the
/// integration tests drive the real one with fake tools on PATH.
pub trait CommandLine {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&mut dyn Read>) -> Result<String>;
}

/// The real command line: processes found on PATH.
pub struct Shell;

impl CommandLine for Shell {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&mut dyn Read>) -> Result<String> {
        shell::run(program, args, stdin)
    }
}

pub struct Device<'a> {
    cli: &'a dyn CommandLine,
    /// The Android user whose apps this acts on: every pm and am command that takes
    /// `--user N` gets it (0, the owner, unless `for_user` says otherwise).
    user: u32,
}

impl<'a> Device<'a> {
    pub fn new(cli: &'a dyn CommandLine) -> Device<'a> {
        Device { cli, user: 0 }
    }

    /// The device, acting on the apps of Android user `user`.
    pub fn for_user(cli: &'a dyn CommandLine, user: u32) -> Device<'a> {
        Device { cli, user }
    }

    pub fn user(&self) -> u32 {
        self.user
    }

    /// `pm COMMAND… --user N REST…` (`command` is `path`, or `list packages`: the options of
    /// `pm list packages` follow both words).
    fn pm_user(&self, command: &[&str], rest: &[&str]) -> Result<String> {
        let user = self.user.to_string();
        let mut args = command.to_vec();
        args.extend(["--user", user.as_str()]);
        args.extend_from_slice(rest);
        self.pm(&args)
    }

    fn pm(&self, args: &[&str]) -> Result<String> {
        self.cli.run("pm", args, None)
    }

    /// `getprop KEY`, trimmed; empty when unset.
    pub fn getprop(&self, key: &str) -> Result<String> {
        Ok(self.cli.run("getprop", &[key], None)?.trim().to_string())
    }

    /// `ro.build.version.sdk` as a number (0 when the property is empty or odd).
    pub fn sdk(&self) -> Result<u32> {
        Ok(self.getprop("ro.build.version.sdk")?.parse().unwrap_or(0))
    }

    pub fn abilist(&self) -> Result<Vec<String>> {
        let mut l = pm::parse_abilist(&self.getprop("ro.product.cpu.abilist")?);
        if l.is_empty() {
            l = pm::parse_abilist(&self.getprop("ro.product.cpu.abi")?);
        }
        Ok(l)
    }

    /// The installed package, or `None` when pm does not know it.
    pub fn package(&self, package: &str) -> Result<Option<pm::Listed>> {
        pm::check_package_name(package)?;
        let out = self.pm_user(&["list", "packages"], &["-U", "--show-versioncode", package])?;
        Ok(pm::parse_list_packages(&out, package))
    }

    /// The APK paths (device paths), base first.
    pub fn apk_paths(&self, package: &str) -> Result<Vec<String>> {
        pm::check_package_name(package)?;
        let out = self.pm_user(&["path"], &[package])?;
        let paths = pm::parse_path(&out);
        if paths.is_empty() {
            return Err(Error::Device {
                command: shell::shown("pm", &["path", "--user", &self.user.to_string(), package]),
                output: format!("no APK path in {out:?}"),
            });
        }
        Ok(paths)
    }

    /// Who installed the package; empty when unknown (an old pm without `-i` is not an error).
    pub fn installer(&self, package: &str) -> String {
        match self.pm_user(&["list", "packages"], &["-i", package]) {
            Ok(out) => pm::parse_installer(&out, package),
            Err(e) => {
                tracing::debug!("no installer for {package}: {e}");
                String::new()
            }
        }
    }

    pub fn force_stop(&self, package: &str) -> Result<()> {
        pm::check_package_name(package)?;
        self.cli.run("am", &["force-stop", "--user", &self.user.to_string(), package], None).map(|_| ())
    }

    pub fn uninstall(&self, package: &str) -> Result<()> {
        pm::check_package_name(package)?;
        let user = self.user.to_string();
        let args = ["uninstall", "--user", user.as_str(), package];
        let out = self.pm(&args)?;
        pm::check_success(&shell::shown("pm", &args), &out)
    }

    /// Install `apks` (name, size, content) in one session: create, write each, commit. The
    /// session is abandoned when any step fails.
    pub fn install(&self, apks: &mut [(String, u64, &mut dyn Read)]) -> Result<()> {
        let total: u64 = apks.iter().map(|a| a.1).sum();
        let total_s = total.to_string();
        let user = self.user.to_string();
        let create = ["install-create", "--user", user.as_str(), "-r", "-t", "-S", total_s.as_str()];
        let out = self.pm(&create)?;
        let session = pm::parse_session(&shell::shown("pm", &create), &out)?;
        let sid = session.to_string();
        let written = (|| {
            for (name, size, src) in apks.iter_mut() {
                let size_s = size.to_string();
                let args = ["install-write", "-S", size_s.as_str(), sid.as_str(), name.as_str(), "-"];
                let out = self.cli.run("pm", &args, Some(&mut **src))?;
                pm::check_success(&shell::shown("pm", &args), &out)?;
            }
            let args = ["install-commit", sid.as_str()];
            let out = self.pm(&args)?;
            pm::check_success(&shell::shown("pm", &args), &out)
        })();
        if let Err(e) = written {
            if let Err(e2) = self.pm(&["install-abandon", sid.as_str()]) {
                tracing::debug!("abandoning install session {sid}: {e2}");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Poll pm until it lists the package and `ready` (its data dir exists) holds.
    pub fn wait_installed(&self, package: &str, timeout: Duration, ready: &dyn Fn() -> bool) -> Result<pm::Listed> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.package(package)? {
                if ready() {
                    return Ok(l);
                }
            }
            if start.elapsed() > timeout {
                return Err(Error::Device {
                    command: shell::shown(
                        "pm",
                        &["list", "packages", "--user", &self.user.to_string(), "-U", "--show-versioncode", package],
                    ),
                    output: format!(
                        "the package or its data directory did not appear within {} s of the install",
                        timeout.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `restorecon -R DIR`.
    pub fn restorecon(&self, dir: &str) -> Result<()> {
        self.cli.run("restorecon", &["-R", dir], None).map(|_| ())
    }

    /// `chcon -R -h CONTEXT DIR`.
    pub fn chcon(&self, context: &str, dir: &str) -> Result<()> {
        self.cli.run("chcon", &["-R", "-h", context, dir], None).map(|_| ())
    }

    /// `dumpsys package PKG`: the text `perms::parse_runtime_permissions` reads.
    pub fn dumpsys_package(&self, package: &str) -> Result<String> {
        pm::check_package_name(package)?;
        self.cli.run("dumpsys", &["package", package], None)
    }

    /// The app ops set for the package in `user`, split into (uid modes, package modes):
    /// `appops get --user N PKG`, and when that lists uid modes, `appops get UID` to tell where
    /// they end (see `perms::split_uid_ops`).
    pub fn app_ops(&self, package: &str, user: u32, uid: u32) -> Result<(Vec<OpLine>, Vec<OpLine>)> {
        pm::check_package_name(package)?;
        let user = user.to_string();
        let listing = perms::parse_appops(&self.cli.run("appops", &["get", "--user", &user, package], None)?);
        let uid_listing = if listing.uid_first {
            perms::parse_appops(&self.cli.run("appops", &["get", &uid.to_string()], None)?)
        } else {
            OpsListing::default()
        };
        Ok(perms::split_uid_ops(&listing, &uid_listing))
    }

    /// Run one restore step (a grant, flags, an app op) for `package` in `user`. pm and appops
    /// say nothing when they succeed; a non-zero exit, or output that names an error or an
    /// exception, is a failure quoting it.
    pub fn apply(&self, step: &Step, package: &str, user: u32) -> Result<()> {
        pm::check_package_name(package)?;
        let (program, args) = step.argv(package, user);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.cli.run(program, &args, None)?;
        let failed = out.lines().any(|l| {
            let l = l.trim_start();
            ["Error", "Exception", "Failure", "Unknown command", "java.lang."].iter().any(|w| l.starts_with(w))
        });
        if failed {
            return Err(Error::Device { command: shell::shown(program, &args), output: out });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A scripted command line: answers by program + first argument, records every call.
    struct Scripted {
        answers: Vec<(&'static str, Result<String, String>)>,
        calls: RefCell<Vec<String>>,
    }

    impl CommandLine for Scripted {
        fn run(&self, program: &str, args: &[&str], stdin: Option<&mut dyn Read>) -> Result<String> {
            let cmd = shell::shown(program, args);
            let mut fed = String::new();
            if let Some(s) = stdin {
                let mut v = Vec::new();
                s.read_to_end(&mut v).map_err(|e| Error::Device { command: cmd.clone(), output: e.to_string() })?;
                fed = format!(" <{}", v.len());
            }
            self.calls.borrow_mut().push(format!("{cmd}{fed}"));
            let key = format!("{program} {}", args.first().unwrap_or(&""));
            match self.answers.iter().find(|(k, _)| *k == key) {
                Some((_, Ok(out))) => Ok(out.clone()),
                Some((_, Err(out))) => Err(Error::Device { command: cmd, output: out.clone() }),
                None => Ok(String::new()),
            }
        }
    }

    #[test]
    fn install_session_and_abandon_on_failure() {
        let cli = Scripted {
            answers: vec![
                ("pm install-create", Ok("Success: created install session [77]".into())),
                ("pm install-write", Ok("Success: streamed 3 bytes".into())),
                (
                    "pm install-commit",
                    Ok("Failure [INSTALL_FAILED_INVALID_APK: Split lib_slice was defined multiple times]".into()),
                ),
            ],
            calls: RefCell::new(Vec::new()),
        };
        let d = Device::new(&cli);
        let mut a: &[u8] = b"abc";
        let mut b: &[u8] = b"de";
        let e = d
            .install(&mut [
                ("base.apk".into(), 3, &mut a as &mut dyn Read),
                ("split_x.apk".into(), 2, &mut b as &mut dyn Read),
            ])
            .unwrap_err()
            .to_string();
        assert!(e.contains("INSTALL_FAILED_INVALID_APK"), "{e}");
        let calls = cli.calls.borrow();
        assert_eq!(
            *calls,
            vec![
                "pm install-create --user 0 -r -t -S 5",
                "pm install-write -S 3 77 base.apk - <3",
                "pm install-write -S 2 77 split_x.apk - <2",
                "pm install-commit 77",
                "pm install-abandon 77",
            ]
        );
    }

    #[test]
    fn names_are_checked_before_any_command() {
        let cli = Scripted { answers: vec![], calls: RefCell::new(Vec::new()) };
        let d = Device::new(&cli);
        assert!(d.force_stop("x;reboot").is_err());
        assert!(d.uninstall("../x").is_err());
        assert!(cli.calls.borrow().is_empty());
    }

    #[test]
    fn app_ops_ask_for_the_uid_only_when_it_has_modes() {
        let cli = Scripted {
            answers: vec![(
                "appops get",
                Ok("Uid mode: RUN_ANY_IN_BACKGROUND: ignore\nSYSTEM_ALERT_WINDOW: allow".into()),
            )],
            calls: RefCell::new(Vec::new()),
        };
        let (uid, pkg) = Device::new(&cli).app_ops("a.b", 10, 1010123).unwrap();
        assert_eq!(*cli.calls.borrow(), vec!["appops get --user 10 a.b", "appops get 1010123"]);
        // The canned answer repeats both lines for the uid: the split takes what matches.
        assert_eq!(uid.len() + pkg.len(), 2);
        assert_eq!(uid[0].name, "RUN_ANY_IN_BACKGROUND");

        let cli =
            Scripted { answers: vec![("appops get", Ok("No operations.".into()))], calls: RefCell::new(Vec::new()) };
        let (uid, pkg) = Device::new(&cli).app_ops("a.b", 0, 10123).unwrap();
        assert!(uid.is_empty() && pkg.is_empty());
        assert_eq!(*cli.calls.borrow(), vec!["appops get --user 0 a.b"]);
        assert!(Device::new(&cli).app_ops("-a", 0, 1).is_err());
    }

    #[test]
    fn steps_fail_on_what_pm_and_appops_print() {
        let step = Step::Grant { permission: "android.permission.CAMERA".into() };
        let quiet = Scripted { answers: vec![], calls: RefCell::new(Vec::new()) };
        Device::new(&quiet).apply(&step, "a.b", 0).unwrap();
        assert_eq!(*quiet.calls.borrow(), vec!["pm grant --user 0 a.b android.permission.CAMERA"]);
        for said in [
            "Exception occurred while executing 'grant':\njava.lang.SecurityException: Package a.b has not requested permission X",
            "Error: Unknown operation string: X",
            "Unknown command: set-permission-flags",
        ] {
            let cli = Scripted { answers: vec![("pm grant", Ok(said.into()))], calls: RefCell::new(Vec::new()) };
            let e = Device::new(&cli).apply(&step, "a.b", 0).unwrap_err().to_string();
            assert!(e.contains("pm grant --user 0 a.b android.permission.CAMERA") && e.contains(said.lines().last().unwrap()), "{e}");
        }
        assert!(Device::new(&quiet).apply(&step, "a.b;x", 0).is_err());
    }

    #[test]
    fn uninstall_failure_is_quoted() {
        let cli = Scripted {
            answers: vec![("pm uninstall", Ok("Failure [DELETE_FAILED_DEVICE_POLICY_MANAGER]".into()))],
            calls: RefCell::new(Vec::new()),
        };
        let e = Device::new(&cli).uninstall("a.b").unwrap_err().to_string();
        assert!(e.contains("`pm uninstall --user 0 a.b` failed: Failure [DELETE_FAILED_DEVICE_POLICY_MANAGER]"), "{e}");
    }
}
