//! Fuzz target: what the phone says about an app's permissions and app ops, and the app
//! details read back from an archive. `android::perms` (`parse_runtime_permissions`,
//! `parse_appops`, `split_uid_ops`, the name rule), `android::splits` (`needs`, `check`,
//! `density_bucket`, `locale_language`) and `android::details` (`AppDetails::from_json`,
//! `restore_steps` and each step's argument vector).
//!
//! Input: the first line is the package name, the second the Android user (a number), the rest
//! the tool's output or the archived JSON (all taken as lossy UTF-8).

#![no_main]

use cpbackup::android::details::{restore_steps, AppDetails};
use cpbackup::android::perms;
use cpbackup::android::splits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let package = lines.next().unwrap_or("");
    let user: u32 = lines.next().and_then(|u| u.trim().parse().ok()).unwrap_or(0);
    let out = lines.next().unwrap_or("");

    for p in perms::parse_runtime_permissions(out, package, user) {
        assert!(perms::is_android_name(&p.name), "{:?}", p.name);
        assert!(p
            .flags
            .iter()
            .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')));
    }
    let listing = perms::parse_appops(out);
    assert!(listing.ops.iter().all(|o| perms::is_android_name(&o.name)));
    let uid_listing = perms::parse_appops(package);
    let (uid_ops, pkg_ops) = perms::split_uid_ops(&listing, &uid_listing);
    assert_eq!(uid_ops.len() + pkg_ops.len(), listing.ops.len());
    if !listing.uid_first {
        assert!(uid_ops.is_empty());
    }

    let needs: Vec<_> = out.lines().take(64).map(|l| splits::needs(l, &[package.to_string()])).collect();
    let phone = splits::Phone {
        abilist: package.split(',').map(str::to_string).collect(),
        density: user,
        language: splits::locale_language(package),
    };
    let _ = splits::check(&needs, &phone);
    let _ = splits::density_bucket(user);

    if let Ok(d) = AppDetails::from_json(out.as_bytes()) {
        let again = AppDetails::from_json(&d.to_json()).expect("what was read serialises back");
        assert_eq!(again, d);
        let (steps, _warnings) = restore_steps(&d, package);
        if d.package != package {
            assert!(steps.is_empty());
        }
        for s in steps {
            let (program, args) = s.argv(package, user);
            assert!(program == "pm" || program == "appops");
            assert_eq!(args.iter().filter(|a| *a == "--user").count(), 1, "{args:?}");
            assert!(args.iter().any(|a| a == package), "{args:?}");
            // Every argument is a fixed word, the user, the package or a name of Android's form.
            for a in &args {
                let fixed = ["grant", "set-permission-flags", "set", "--user", "--uid", "user-set", "user-fixed"]
                    .contains(&a.as_str())
                    || perms::OpMode::parse(a).is_some();
                assert!(fixed || a == package || *a == user.to_string() || perms::is_android_name(a), "{a:?}");
            }
        }
    }
});
