//! Identifiers and values read from text: instance, run, region and zone names, versions,
//! booleans, and the stable hash used to derive names. Pure; each check says what it accepts.

use std::fmt;

/// FNV-1a, 32 bits: a stable hash for names (std's hasher may change between Rust releases;
/// run ids must not). Not for security.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// `i-` and 8 or 17 lower-case hex digits.
pub fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// An SSM command id: a UUID, 36 characters of hex digits and dashes (8-4-4-4-12).
pub fn is_command_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// 1 to 64 letters, digits, `-`, `_` or `.`: safe in a tag, a comment and a parameter name.
pub fn is_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The most retries of a timed-out VSS freeze a deployment may ask for (`VSS_RETRIES`).
pub const MAX_VSS_RETRIES: u32 = 3;

/// Whether `id` has the form of a scheduled run's id, `YYYYMMDDTHHMMSSZ-xxxxxxxx` (8 hex):
/// the namespace on-demand runs may not enter.
pub fn is_scheduled_run_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 25
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(u8::is_ascii_hexdigit)
}

/// The scheduled time a scheduled run's id names (`is_scheduled_run_id`); `None` for any
/// other id.
pub fn scheduled_run_time(id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if !is_scheduled_run_id(id) {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(&id[..15], "%Y%m%dT%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

/// An AWS account id: twelve digits.
pub fn is_account_id(id: &str) -> bool {
    id.len() == 12 && id.chars().all(|c| c.is_ascii_digit())
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`…
pub fn is_region(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// A comma-separated list of regions; the error names the first bad one.
pub fn parse_regions(text: &str) -> Result<Vec<String>, String> {
    let mut regions = Vec::new();
    for region in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        if !is_region(region) {
            return Err(format!("{region:?} is not a region name such as eu-west-1"));
        }
        if !regions.iter().any(|r| r == region) {
            regions.push(region.to_string());
        }
    }
    Ok(regions)
}

/// `eu-west-1a`, `us-east-1-bos-1a` (a Local Zone)…: a region name and a zone letter.
pub fn is_availability_zone(zone: &str) -> bool {
    let Some(letter) = zone.chars().last() else {
        return false;
    };
    let head = &zone[..zone.len() - letter.len_utf8()];
    letter.is_ascii_lowercase()
        && head.split('-').count() >= 3
        && head
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && head.bytes().last().is_some_and(|b| b.is_ascii_digit())
}

/// `true`/`false` in the spellings operators use in CloudFormation parameters and tags.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// A dotted numeric version (SSM Agent versions look like `3.3.40.0`), compared numerically.
#[derive(Debug, Clone)]
pub struct AgentVersion(Vec<u64>);

/// `2.2.58` equals `2.2.58.0`: equality follows the padded ordering below.
impl PartialEq for AgentVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for AgentVersion {}

impl AgentVersion {
    /// `0`: below every real version (a placeholder while configuration problems are listed).
    pub fn zero() -> Self {
        AgentVersion(vec![0])
    }

    pub fn parse(text: &str) -> Option<Self> {
        let parts: Option<Vec<u64>> = text.trim().split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(AgentVersion)
    }
}

impl PartialOrd for AgentVersion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AgentVersion {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let len = self.0.len().max(other.0.len());
        let at = |v: &Vec<u64>, i: usize| v.get(i).copied().unwrap_or(0);
        (0..len)
            .map(|i| at(&self.0, i).cmp(&at(&other.0, i)))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_command_id_is_a_uuid() {
        assert!(is_command_id("e8d3c0e4-71f7-4491-898f-c9b35bee5f3b"));
        assert!(!is_command_id("e8d3c0e4-71f7-4491-898f-c9b35bee5f3"));
        assert!(!is_command_id("e8d3c0e4x71f7-4491-898f-c9b35bee5f3b"));
        assert!(!is_command_id("g8d3c0e4-71f7-4491-898f-c9b35bee5f3b"));
        assert!(!is_command_id(""));
    }

    use super::*;

    #[test]
    fn scheduled_run_ids_have_a_namespace_of_their_own() {
        assert!(is_scheduled_run_id("20261123T000000Z-ab12cd34"));
        for other in [
            "20261123T000000Z-od-ab12cd34",
            "manual-1",
            "20261123T000000Z-ab12cd3",
            "20261123T000000Z-ab12cd3g",
            "2026112xT000000Z-ab12cd34",
        ] {
            assert!(!is_scheduled_run_id(other), "{other}");
        }
    }

    #[test]
    fn versions_compare_numerically_not_as_text() {
        let v = |s| AgentVersion::parse(s).expect("version");
        assert!(v("3.0.502.0") > v("2.2.58.0"));
        assert!(v("2.2.100.0") > v("2.2.58.0"));
        assert!(v("2.2.58") == v("2.2.58.0"));
        assert!(v("2.2.45.0") < v("2.2.58.0"));
        assert!(AgentVersion::parse("2.x").is_none());
        assert!(AgentVersion::parse("").is_none());
    }

    #[test]
    fn instance_ids() {
        assert!(is_instance_id("i-0123456789abcdef0"));
        assert!(is_instance_id("i-12345678"));
        assert!(!is_instance_id("i-0123456789ABCDEF0"));
        assert!(!is_instance_id("i-123"));
        assert!(!is_instance_id("vol-12345678"));
    }
}
