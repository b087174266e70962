//! What each APK of an app needs from a phone, and whether a phone has it: the native ABIs an
//! APK carries (`lib/ABI/`, read by `apk::inspect`), and the configuration a split is named for
//! (`split_config.arm64_v8a.apk`, `split_config.xxhdpi.apk`, `split_config.fr.apk`, also a
//! feature's `split_feature.config.xxhdpi.apk`), checked against `ro.product.cpu.abilist`,
//! the density bucket of `ro.sf.lcd_density` and the phone's language.
//!
//! Pure: names and numbers in, verdicts out. It never decides what to do about a misfit (the
//! caller fails the app or warns) and never reads an APK itself.

use serde::{Deserialize, Serialize};

/// Android's density buckets (DisplayMetrics) and their dots per inch.
pub const DENSITIES: [(&str, u32); 7] =
    [("ldpi", 120), ("mdpi", 160), ("tvdpi", 213), ("hdpi", 240), ("xhdpi", 320), ("xxhdpi", 480), ("xxxhdpi", 640)];

/// The ABIs Android knows, and how a split name spells them (`-` becomes `_`).
pub const ABIS: [&str; 6] = ["arm64-v8a", "armeabi-v7a", "armeabi", "x86_64", "x86", "riscv64"];

/// What one APK of an app needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SplitNeeds {
    /// The APK's name in the archive (`base.apk`, `split_config.xxhdpi.apk`).
    pub name: String,
    /// ABIs it carries native code for (`lib/ABI/`), or the ABI its name is for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub abis: Vec<String>,
    /// The density bucket a `config.<density>` split is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub density: Option<String>,
    /// The language a `config.<language>` split is for (`fr`, `pt`, `zh`…), lowercase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

/// The configuration qualifier of a split name: `split_config.xxhdpi.apk` → `xxhdpi`,
/// `split_feature.config.fr.apk` → `fr`; `None` for the base and for feature splits.
pub fn config_qualifier(apk_name: &str) -> Option<&str> {
    let stem = apk_name.strip_suffix(".apk").unwrap_or(apk_name);
    let stem = stem.strip_prefix("split_").unwrap_or(stem);
    let q = match stem.strip_prefix("config.") {
        Some(q) => q,
        None => stem.rsplit_once(".config.").map(|(_, q)| q)?,
    };
    (!q.is_empty()).then_some(q)
}

/// What an APK needs: its `lib/ABI/` ABIs (from the APK itself) and what its name says.
pub fn needs(apk_name: &str, lib_abis: &[String]) -> SplitNeeds {
    let mut n = SplitNeeds { name: apk_name.to_string(), abis: lib_abis.to_vec(), ..Default::default() };
    if let Some(q) = config_qualifier(apk_name) {
        if let Some(abi) = ABIS.iter().find(|a| a.replace('-', "_") == q) {
            if !n.abis.iter().any(|a| a == abi) {
                n.abis.push(abi.to_string());
            }
        } else if DENSITIES.iter().any(|(d, _)| *d == q) {
            n.density = Some(q.to_string());
        } else if let Some(lang) = language(q) {
            n.locale = Some(lang);
        }
    }
    n.abis.sort();
    n.abis.dedup();
    n
}

/// A language qualifier (`fr`, `fil`, `pt_BR`, `b+sr+Latn`) → its lowercase language.
fn language(q: &str) -> Option<String> {
    let q = q.strip_prefix("b+").unwrap_or(q);
    let lang = q.split(|c| c == '_' || c == '-' || c == '+').next()?;
    let ok = (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_alphabetic());
    ok.then(|| lang.to_ascii_lowercase())
}

/// The bucket a density in dpi falls into: the smallest bucket at or above it, `xxxhdpi`
/// beyond; `None` for 0 (the property was unset or odd).
pub fn density_bucket(dpi: u32) -> Option<&'static str> {
    if dpi == 0 {
        return None;
    }
    Some(DENSITIES.iter().find(|(_, d)| *d >= dpi).map(|(n, _)| *n).unwrap_or("xxxhdpi"))
}

/// The language of a locale property (`persist.sys.locale`, `ro.product.locale`): `fr-FR`,
/// `en_US`, `zh-Hans-CN` → `fr`, `en`, `zh`.
pub fn locale_language(locale: &str) -> Option<String> {
    language(locale.trim())
}

/// The phone, as the checks see it.
#[derive(Debug, Clone, Default)]
pub struct Phone {
    /// `ro.product.cpu.abilist`.
    pub abilist: Vec<String>,
    /// `ro.sf.lcd_density`, 0 when unknown.
    pub density: u32,
    /// The language of `persist.sys.locale` (or `ro.product.locale`), when known.
    pub language: Option<String>,
}

/// What the checks found: `errors` keep the app from being installed (unless `--force`),
/// `warnings` go into the package's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fit {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Check an app's APKs against the phone: an APK whose native code fits none of the phone's
/// ABIs is an error; a density split for another bucket, or language splits none of which is
/// the phone's language, a warning.
pub fn check(apks: &[SplitNeeds], phone: &Phone) -> Fit {
    let mut fit = Fit::default();
    if !phone.abilist.is_empty() {
        for a in apks.iter().filter(|a| !a.abis.is_empty()) {
            if !a.abis.iter().any(|abi| phone.abilist.contains(abi)) {
                fit.errors.push(format!(
                    "{} has native code for {} only, and this phone runs {}",
                    a.name,
                    a.abis.join(", "),
                    phone.abilist.join(", ")
                ));
            }
        }
    }
    if let Some(bucket) = density_bucket(phone.density) {
        for a in apks {
            if let Some(d) = a.density.as_deref().filter(|d| *d != bucket) {
                fit.warnings.push(format!(
                    "{} holds {d} resources and this phone is {bucket} ({} dpi): the app may look blurred or oversized until it is reinstalled from its store",
                    a.name, phone.density
                ));
            }
        }
    }
    let languages: Vec<&str> = apks.iter().filter_map(|a| a.locale.as_deref()).collect();
    if let Some(lang) = phone.language.as_deref() {
        if !languages.is_empty() && !languages.contains(&lang) {
            fit.warnings.push(format!(
                "the backup has language splits for {} but none for this phone's language ({lang}): the app shows another language until it is reinstalled from its store",
                languages.join(", ")
            ));
        }
    }
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn split_names() {
        assert_eq!(config_qualifier("split_config.arm64_v8a.apk"), Some("arm64_v8a"));
        assert_eq!(config_qualifier("split_config.xxhdpi.apk"), Some("xxhdpi"));
        assert_eq!(config_qualifier("split_dynamic_feature.config.fr.apk"), Some("fr"));
        assert_eq!(config_qualifier("base.apk"), None);
        assert_eq!(config_qualifier("split_dynamic_feature.apk"), None);
        assert_eq!(config_qualifier("split_config..apk"), None);

        let n = needs("split_config.arm64_v8a.apk", &s(&["arm64-v8a"]));
        assert_eq!(n.abis, s(&["arm64-v8a"]));
        let n = needs("split_config.armeabi_v7a.apk", &[]);
        assert_eq!(n.abis, s(&["armeabi-v7a"]));
        let n = needs("split_config.x86_64.apk", &[]);
        assert_eq!(n.abis, s(&["x86_64"]));
        let n = needs("split_config.xxhdpi.apk", &[]);
        assert_eq!((n.density.as_deref(), n.locale.as_deref(), n.abis.len()), (Some("xxhdpi"), None, 0));
        assert_eq!(needs("split_config.fr.apk", &[]).locale.as_deref(), Some("fr"));
        assert_eq!(needs("split_config.pt_BR.apk", &[]).locale.as_deref(), Some("pt"));
        assert_eq!(needs("split_config.b+sr+Latn.apk", &[]).locale.as_deref(), Some("sr"));
        assert_eq!(needs("split_config.fil.apk", &[]).locale.as_deref(), Some("fil"));
        let other = needs("split_config.night.apk", &[]);
        assert_eq!((other.density, other.locale), (None, None));
        let base = needs("base.apk", &s(&["x86", "arm64-v8a", "x86"]));
        assert_eq!(base.abis, s(&["arm64-v8a", "x86"]));
    }

    #[test]
    fn buckets_and_locales() {
        assert_eq!(density_bucket(0), None);
        assert_eq!(density_bucket(160), Some("mdpi"));
        assert_eq!(density_bucket(320), Some("xhdpi"));
        assert_eq!(density_bucket(420), Some("xxhdpi"));
        assert_eq!(density_bucket(560), Some("xxxhdpi"));
        assert_eq!(density_bucket(900), Some("xxxhdpi"));
        assert_eq!(locale_language("fr-FR").as_deref(), Some("fr"));
        assert_eq!(locale_language("en_US\n").as_deref(), Some("en"));
        assert_eq!(locale_language("zh-Hans-CN").as_deref(), Some("zh"));
        assert_eq!(locale_language(""), None);
    }

    #[test]
    fn fit_against_a_phone() {
        let apks = vec![
            needs("base.apk", &[]),
            needs("split_config.arm64_v8a.apk", &s(&["arm64-v8a"])),
            needs("split_config.xxhdpi.apk", &[]),
            needs("split_config.fr.apk", &[]),
            needs("split_config.de.apk", &[]),
        ];
        let arm = Phone { abilist: s(&["arm64-v8a", "armeabi-v7a"]), density: 480, language: Some("fr".into()) };
        assert_eq!(check(&apks, &arm), Fit::default());

        let x86 = Phone { abilist: s(&["x86_64", "x86"]), density: 320, language: Some("en".into()) };
        let fit = check(&apks, &x86);
        assert_eq!(fit.errors.len(), 1, "{fit:?}");
        assert!(fit.errors[0].contains("split_config.arm64_v8a.apk") && fit.errors[0].contains("x86_64"));
        assert_eq!(fit.warnings.len(), 2, "{fit:?}");
        assert!(fit.warnings[0].contains("xxhdpi") && fit.warnings[0].contains("xhdpi (320 dpi)"));
        assert!(fit.warnings[1].contains("fr, de") && fit.warnings[1].contains("(en)"));

        // Unknown phone facts check nothing; an app without language splits warns of none.
        assert_eq!(check(&apks, &Phone::default()), Fit::default());
        let no_lang = vec![needs("base.apk", &[])];
        assert!(check(&no_lang, &x86).warnings.is_empty());
    }
}
