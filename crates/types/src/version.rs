//! API microversions (`1.N`).

use std::fmt;
use std::str::FromStr;

/// An Ironic API microversion. Only major version 1 exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl ApiVersion {
    /// The oldest version served (Ironic's too).
    pub const MIN: ApiVersion = ApiVersion::v1(1);
    /// The newest version whose features Ferric implements. 1.95 adds
    /// `disable_power_off`; Metal3's baremetal-operator needs at least 1.89.
    pub const MAX: ApiVersion = ApiVersion::v1(95);

    pub const fn v1(minor: u32) -> Self {
        ApiVersion { major: 1, minor }
    }

    /// True if this version is `1.minor` or newer.
    pub fn at_least(self, minor: u32) -> bool {
        self.major > 1 || (self.major == 1 && self.minor >= minor)
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A version string that is not of the form `MAJOR.MINOR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid API version {0:?}: expected MAJOR.MINOR such as 1.31, or \"latest\"")]
pub struct InvalidVersion(pub String);

impl FromStr for ApiVersion {
    type Err = InvalidVersion;
    fn from_str(s: &str) -> Result<Self, InvalidVersion> {
        let bad = || InvalidVersion(s.to_string());
        let (major, minor) = s.trim().split_once('.').ok_or_else(bad)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !digits(minor) {
            return Err(bad());
        }
        Ok(ApiVersion {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let v: ApiVersion = "1.31".parse().unwrap();
        assert_eq!(v, ApiVersion::v1(31));
        assert!(v > ApiVersion::v1(9));
        assert!(v.at_least(31) && !v.at_least(32));
        assert_eq!(v.to_string(), "1.31");
    }

    #[test]
    fn refuses_garbage() {
        for s in ["", "1", "1.", ".1", "1.x", "one.two", "1.2.3", "-1.2"] {
            assert!(s.parse::<ApiVersion>().is_err(), "{s:?} parsed");
        }
    }
}
