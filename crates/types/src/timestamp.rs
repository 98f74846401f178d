//! Timestamps as Ironic writes them: UTC with microseconds and an explicit
//! `+00:00` offset (gophercloud cannot parse timestamps without one).

use serde::{Deserialize, Serialize};
use std::fmt;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const WIRE_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00");

/// A point in time, always UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Now, truncated to microseconds: the precision of the wire and the
    /// store, so a timestamp survives both unchanged.
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Timestamp(
            now.replace_nanosecond(now.microsecond() * 1000)
                .unwrap_or(now),
        )
    }

    pub fn from_unix_micros(micros: i64) -> Self {
        let nanos = i128::from(micros) * 1000;
        Timestamp(
            OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        )
    }

    pub fn unix_micros(self) -> i64 {
        (self.0.unix_timestamp_nanos() / 1000) as i64
    }

    /// Seconds elapsed since this timestamp (negative if it is in the future).
    pub fn age_seconds(self) -> f64 {
        (OffsetDateTime::now_utc() - self.0).as_seconds_f64()
    }

    pub fn parse(s: &str) -> Result<Self, time::error::Parse> {
        use time::format_description::well_known::Rfc3339;
        OffsetDateTime::parse(s, &Rfc3339).map(|t| Timestamp(t.to_offset(time::UtcOffset::UTC)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.format(WIRE_FORMAT).map_err(|_| fmt::Error)?;
        f.write_str(&s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_has_microseconds_and_offset() {
        let t = Timestamp::from_unix_micros(1_700_000_000_123_456);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.123456+00:00");
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn other_offsets_are_normalised_to_utc() {
        let t = Timestamp::parse("2023-11-14T23:13:20.5+01:00").unwrap();
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.500000+00:00");
    }
}
