//! Addressing: which names a bucket and an object may have (the CPH rules), and how to reach a
//! bucket from what the control plane sends (endpoint URL or bare host, region, path- or
//! virtual-hosted style, OBS's unsigned payload). Pure functions, unit-tested.
//!
//! It must never let a credential embedded in an endpoint URL (`user:pass@`) reach the address
//! it returns or the endpoint it shows: the shown endpoint goes into manifests.

use crate::error::{Error, Result};
use crate::store::Scheme;

/// Bucket names by the CPH rule: 3–63 characters of `a-z 0-9 - .`.
pub fn check_bucket(bucket: &str) -> Result<()> {
    let ok_len = (3..=63).contains(&bucket.len());
    let ok_chars = bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(Error::path_rule(
            bucket,
            "is not a valid bucket name: use 3 to 63 characters, each a lowercase letter, a digit, '-' or '.'",
        ))
    }
}

/// Object paths by the CPH rule: at most 1,024 characters of `A-Z a-z 0-9 . / - _ + # =`.
pub fn check_key(key: &str) -> Result<()> {
    let ok_chars = key.bytes().all(|b| b.is_ascii_alphanumeric() || b"./-_+#=".contains(&b));
    if key.len() > 1024 {
        return Err(Error::path_rule(
            key,
            format!("is not a valid object path: {} characters, at most 1024 are allowed", key.len()),
        ));
    }
    if !ok_chars {
        return Err(Error::path_rule(
            key,
            "is not a valid object path: use only letters A-Z a-z, digits and . / - _ + # =",
        ));
    }
    Ok(())
}

/// Where and how to reach a bucket, worked out from the scheme and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// The endpoint URL handed to the SDK; `None` lets the SDK pick AWS's own.
    pub url: Option<String>,
    pub region: String,
    pub path_style: bool,
    /// Send `UNSIGNED-PAYLOAD` (OBS accepts no other payload mode an in-memory body can use).
    pub unsigned_payload: bool,
    /// The endpoint as recorded in manifests (UploadEndpoint): a host, without credentials.
    pub shown: String,
}

/// Work out the endpoint, region and addressing style.
///
/// `endpoint` is the control plane's UploadEndpoint: a full URL (`http://127.0.0.1:3900`,
/// used as given), or a bare host. A bare OSS host (`oss-cn-shanghai-internal.aliyuncs.com`)
/// becomes OSS's S3-compatible host (`https://s3.oss-cn-shanghai-internal.aliyuncs.com`), a
/// bare OBS host stays itself over https; for both the region comes from the host unless
/// given. IP literals and `localhost` are addressed path-style (they have no DNS for
/// `bucket.host`), everything else virtual-hosted (OSS and OBS refuse path-style).
pub fn address(
    scheme: Scheme,
    bucket: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
    env_region: Option<&str>,
    force_path_style: bool,
) -> Result<Addressing> {
    let region = region.or(env_region).map(str::trim).filter(|r| !r.is_empty()).map(str::to_string);
    let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty());
    let (url, host) = match endpoint {
        Some(e) if e.contains("://") => {
            let (proto, rest) = e.split_once("://").unwrap_or(("https", e));
            if proto != "http" && proto != "https" {
                return Err(Error::usage(format!("endpoint {e:?}: only http:// and https:// URLs are supported")));
            }
            // Credentials in the URL (user:pass@) are dropped: they are never used and must never be shown.
            let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
            let rest = rest.trim_end_matches('/');
            if rest.is_empty() {
                return Err(Error::usage(format!("endpoint {e:?} names no host")));
            }
            (Some(format!("{proto}://{rest}")), rest.to_string())
        }
        Some(e) => {
            let mut host = e.trim_end_matches('/').to_string();
            if host.contains('/') || host.contains('@') {
                return Err(Error::usage(format!("endpoint {e:?} is neither a host name nor an http(s):// URL")));
            }
            // A bucket domain (`BUCKET.oss-….aliyuncs.com`) as the endpoint fails signing on
            // OBS (SignatureDoesNotMatch): the SDK adds the bucket itself.
            if let Some(rest) = host.strip_prefix(&format!("{bucket}.")) {
                if is_oss_host(rest) || is_obs_host(rest) {
                    host = rest.to_string();
                }
            }
            if is_oss_host(&host) && !host.starts_with("s3.") {
                host = format!("s3.{host}");
            }
            (Some(format!("https://{host}")), host)
        }
        None => match scheme {
            Scheme::Oss => {
                let r = region.as_deref().ok_or_else(|| {
                    Error::usage("oss:// needs --endpoint (e.g. oss-cn-hangzhou.aliyuncs.com) or --region")
                })?;
                let host = format!("s3.oss-{r}.aliyuncs.com");
                (Some(format!("https://{host}")), host)
            }
            Scheme::Obs => {
                let r = region.as_deref().ok_or_else(|| {
                    Error::usage("obs:// needs --endpoint (e.g. obs.cn-north-4.myhuaweicloud.com) or --region")
                })?;
                let host = format!("obs.{r}.myhuaweicloud.com");
                (Some(format!("https://{host}")), host)
            }
            Scheme::S3 => (None, String::new()),
        },
    };
    let bare = host_of(&host);
    let region = match region {
        Some(r) => r,
        None => region_from_host(bare).unwrap_or_else(|| "us-east-1".to_string()),
    };
    let path_style = force_path_style || is_ip_or_localhost(bare);
    let unsigned_payload = scheme == Scheme::Obs || is_obs_host(bare);
    let shown = if host.is_empty() { format!("s3.{region}.amazonaws.com") } else { host };
    Ok(Addressing { url, region, path_style, unsigned_payload, shown })
}

/// The host without a port (and without brackets for IPv6).
fn host_of(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    }
}

fn is_oss_host(h: &str) -> bool {
    let h = host_of(h);
    (h.starts_with("oss-") || h.starts_with("s3.oss-")) && h.ends_with(".aliyuncs.com")
}

fn is_obs_host(h: &str) -> bool {
    let h = host_of(h);
    h.starts_with("obs.") && h.ends_with(".myhuaweicloud.com")
}

fn is_ip_or_localhost(h: &str) -> bool {
    h == "localhost" || h.ends_with(".localhost") || h.parse::<std::net::IpAddr>().is_ok()
}

/// `s3.oss-cn-shanghai-internal.aliyuncs.com` → `cn-shanghai`; `obs.cn-north-4.myhuaweicloud.com` → `cn-north-4`.
fn region_from_host(h: &str) -> Option<String> {
    if is_oss_host(h) {
        let first = h.trim_start_matches("s3.").split('.').next()?;
        let r = first.strip_prefix("oss-")?;
        let r = r.strip_suffix("-internal").unwrap_or(r);
        return Some(r.to_string());
    }
    if is_obs_host(h) {
        return h.split('.').nth(1).map(str::to_string);
    }
    None
}

/// `oss`, `obs` or `s3`: the scheme of the store's URLs.
pub(super) fn scheme_prefix(s: Scheme) -> &'static str {
    match s {
        Scheme::Oss => "oss",
        Scheme::Obs => "obs",
        Scheme::S3 => "s3",
    }
}

/// "OSS", "OBS" or "S3": the manifest's UploadType and the upload records' scheme.
pub(super) fn scheme_kind(s: Scheme) -> &'static str {
    match s {
        Scheme::Oss => "OSS",
        Scheme::Obs => "OBS",
        Scheme::S3 => "S3",
    }
}

/// The scheme an upload record names (`scheme_kind`'s inverse; anything else is S3).
pub(super) fn scheme_of_kind(kind: &str) -> Scheme {
    match kind {
        "OSS" => Scheme::Oss,
        "OBS" => Scheme::Obs,
        _ => Scheme::S3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_key_rules() {
        for ok in ["abc", "my-bucket.1", &"a".repeat(63)] {
            check_bucket(ok).unwrap();
        }
        for bad in ["ab", "My-Bucket", "b_b", &"a".repeat(64), ""] {
            let e = check_bucket(bad).unwrap_err();
            assert!(e.is_input(), "{e}");
            assert!(e.to_string().contains("3 to 63"), "{e}");
        }
        check_key("backups/acp-1_20240520.tar.zst").unwrap();
        check_key("a+b#c=d_e-f.g/").unwrap();
        check_key("").unwrap();
        let e = check_key("bad key").unwrap_err();
        assert!(e.to_string().contains("\"bad key\"") && e.to_string().contains(". / - _ + # ="), "{e}");
        assert!(check_key("ü").is_err());
        check_key(&"k".repeat(1024)).unwrap();
        let e = check_key(&"k".repeat(1025)).unwrap_err();
        assert!(e.to_string().contains("1025 characters"), "{e}");
    }

    #[test]
    fn endpoints_and_regions() {
        let a = address(Scheme::Oss, "b", Some("oss-cn-shanghai-internal.aliyuncs.com"), None, None, false).unwrap();
        assert_eq!(a.url.as_deref(), Some("https://s3.oss-cn-shanghai-internal.aliyuncs.com"));
        assert_eq!(a.region, "cn-shanghai");
        assert!(!a.path_style && !a.unsigned_payload);
        assert_eq!(a.shown, "s3.oss-cn-shanghai-internal.aliyuncs.com");

        let a =
            address(Scheme::Oss, "b", Some("oss-cn-hangzhou.aliyuncs.com"), Some("cn-x"), Some("env"), false).unwrap();
        assert_eq!(a.region, "cn-x", "--region wins");
        let a = address(Scheme::Oss, "b", None, None, Some("cn-beijing"), false).unwrap();
        assert_eq!(a.url.as_deref(), Some("https://s3.oss-cn-beijing.aliyuncs.com"));
        assert!(address(Scheme::Oss, "b", None, None, None, false).unwrap_err().is_input());

        let a = address(Scheme::Obs, "b", Some("obs.cn-north-4.myhuaweicloud.com"), None, None, false).unwrap();
        assert_eq!(a.url.as_deref(), Some("https://obs.cn-north-4.myhuaweicloud.com"));
        assert_eq!(a.region, "cn-north-4");
        assert!(a.unsigned_payload && !a.path_style);
        // The bucket domain given as the endpoint is reduced to the service endpoint.
        let a = address(Scheme::Obs, "bk", Some("bk.obs.cn-north-4.myhuaweicloud.com"), None, None, false).unwrap();
        assert_eq!(a.url.as_deref(), Some("https://obs.cn-north-4.myhuaweicloud.com"));

        let a = address(Scheme::S3, "b", Some("http://127.0.0.1:3900"), None, Some("garage"), false).unwrap();
        assert_eq!(a.url.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(a.region, "garage");
        assert!(a.path_style);
        assert_eq!(a.shown, "127.0.0.1:3900");
        let a = address(Scheme::S3, "b", Some("http://key:secret@localhost:3900/"), None, None, false).unwrap();
        assert_eq!(a.url.as_deref(), Some("http://localhost:3900"));
        assert!(a.path_style && !a.shown.contains("secret"));
        assert!(address(Scheme::S3, "b", Some("http://[::1]:3900"), None, None, false).unwrap().path_style);
        assert!(!address(Scheme::S3, "b", Some("https://s3.example.com"), None, None, false).unwrap().path_style);
        assert!(address(Scheme::S3, "b", Some("https://s3.example.com"), None, None, true).unwrap().path_style);
        assert!(address(Scheme::S3, "b", Some("ftp://x"), None, None, false).is_err());

        let a = address(Scheme::S3, "b", None, None, None, false).unwrap();
        assert_eq!((a.url, a.region.as_str()), (None, "us-east-1"));
    }
}
