//! SELinux labels of restored app files. The label comes from the phone, never from the
//! archive: `restorecon -R` relabels from the policy, and when restorecon is missing or fails,
//! the context of the freshly created data dir (which carries the app's own MCS categories) is
//! applied with `chcon -R -h`.
//!
//! It never writes `security.selinux` itself and never applies an archived label.

use std::path::Path;

use super::device::Device;
use crate::error::{Error, Result};

const XATTR: &str = "security.selinux";

/// The SELinux context of `path` (not following a symlink), without its trailing NUL; `None`
/// on a system without labels.
pub fn context_of(path: &Path) -> Option<String> {
    let raw = xattr::get(path, XATTR).ok()??;
    let s = String::from_utf8_lossy(&raw).trim_end_matches('\0').trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// How a tree was relabelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relabel {
    Restorecon,
    Chcon(String),
    /// External storage on a system that labels nothing there (no context to copy) and where
    /// restorecon failed: left as is, with this warning.
    Unlabelled(String),
}

/// Relabel `dir`: `restorecon -R`, or `chcon -R -h CONTEXT` with `context` (read from the fresh
/// dir before the swap) when restorecon is missing or fails. `prefer_context` goes straight to
/// chcon (external storage, where restorecon gives the wrong type).
pub fn relabel(device: &Device, dir: &Path, context: Option<&str>, prefer_context: bool) -> Result<Relabel> {
    let shown = dir.to_string_lossy();
    if !prefer_context || context.is_none() {
        match device.restorecon(&shown) {
            Ok(()) => return Ok(Relabel::Restorecon),
            Err(e) => {
                let Some(ctx) = context else {
                    if prefer_context {
                        return Ok(Relabel::Unlabelled(format!(
                            "{e}; {shown} and its parent carry no SELinux context, so it was left unlabelled"
                        )));
                    }
                    return Err(Error::Device {
                        command: format!("restorecon -R {shown}"),
                        output: format!("{e}; and {shown} had no SELinux context to copy with chcon"),
                    });
                };
                tracing::warn!("{e}; applying {ctx} with chcon instead");
            }
        }
    }
    let ctx = context.unwrap_or_default();
    device.chcon(ctx, &shown)?;
    Ok(Relabel::Chcon(ctx.to_string()))
}
