//! The device: everything cpbackup learns from or asks of Android itself. `shell` is the only
//! place that spawns processes; `device` is the phone's command line as operations (pm, am,
//! getprop, restorecon, chcon); `pm` parses their output (pure); `apk` reads signing
//! certificates and ABIs out of APKs; `owner` and `selinux` give restored files the fresh
//! install's owner and label. What the install does not carry: `perms` parses the phone's
//! runtime permissions and app ops (pure), `splits` says what each APK needs from a phone
//! (pure), `keystore` tells whether an app holds Keystore keys, `details` is the record of all
//! that (`AppDetails`) and the steps that bring it back, `fidelity` collects it at backup and
//! applies it at restore.

pub mod apk;
pub mod details;
pub mod device;
pub mod fidelity;
pub mod keystore;
pub mod owner;
pub mod perms;
pub mod pm;
pub mod selinux;
pub mod shell;
pub mod splits;

/// What the manifest records about the system a backup came from.
#[derive(Debug, Clone, Default)]
pub struct SystemInfo {
    /// `ro.build.fingerprint`, empty off-device.
    pub fingerprint: String,
    /// `ro.build.version.sdk`, 0 off-device.
    pub sdk: u32,
    /// `ro.product.cpu.abi`, or the agent's own architecture off-device.
    pub abi: String,
}

impl SystemInfo {
    /// Ask `getprop`; off-device (no getprop on PATH) fall back to what the binary knows.
    pub fn read() -> SystemInfo {
        let fingerprint = shell::getprop("ro.build.fingerprint").unwrap_or_default();
        let sdk = shell::getprop("ro.build.version.sdk").and_then(|s| s.parse().ok()).unwrap_or(0);
        let abi = shell::getprop("ro.product.cpu.abi")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        SystemInfo { fingerprint, sdk, abi }
    }
}
