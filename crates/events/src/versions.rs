//! Schema versions (SPEC §3.4): what each version of the contract says, which ones this
//! build reads, and how an older one is upcast to this build's types.
//!
//! Within one version, changes are additive only (a new optional field, a new event
//! type): readers ignore what they do not know. A change a reader must understand bumps
//! the version. This build reads [`SchemaVersion::OLDEST`] to [`SchemaVersion::NEWEST`];
//! which one a service writes is its `WRITE_SCHEMA_VERSION` setting, so a rolling upgrade
//! is "upgrade the readers, then switch the writers", and a rollback the same backwards.
//!
//! - **1**: the six event types of SPEC §3.3.
//! - **2**: `OrderCreated` carries `pay_by`, the payment deadline (RFC 3339), required.
//!   payment-service never charges after it. A version-1 reader would ignore the field and
//!   could charge late, so it is a new version, not an additive field. The other payloads
//!   are those of version 1. Upcast of a version-1 `OrderCreated`: no deadline
//!   (`pay_by: None`). Written as version 1, an `OrderCreated` loses its `pay_by` (a
//!   version-1 reader could not keep it anyway); order-service still enforces the deadline
//!   on its side, by cancelling what is unpaid at `pay_by`.

use std::fmt;
use std::str::FromStr;

/// The `schema_version` of an entry, one this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaVersion(u32);

impl SchemaVersion {
    pub const V1: Self = Self(1);
    pub const V2: Self = Self(2);
    /// The oldest version this build reads (and upcasts).
    pub const OLDEST: Self = Self::V1;
    /// The newest version this build reads and can write.
    pub const NEWEST: Self = Self::V2;
    /// What a service writes unless told otherwise: the newest version every reader of
    /// the previous release reads, so that a rolling upgrade never sends a replica still
    /// on that release something it must park. The release after next makes it `V2`.
    pub const WRITTEN_BY_DEFAULT: Self = Self::V1;
    /// Every version this build reads, oldest first.
    pub const ALL: [Self; 2] = [Self::V1, Self::V2];

    /// The number, as the `schema_version` field carries it.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<u32> for SchemaVersion {
    type Error = String;
    fn try_from(version: u32) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.0 == version)
            .ok_or_else(|| {
                format!(
                    "schema_version {version} is not one this build reads ({} to {})",
                    Self::OLDEST,
                    Self::NEWEST
                )
            })
    }
}

impl FromStr for SchemaVersion {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let version: u32 = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a schema version (a whole number)"))?;
        Self::try_from(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_versions_this_build_reads_parse() {
        assert_eq!("1".parse(), Ok(SchemaVersion::V1));
        assert_eq!("2".parse(), Ok(SchemaVersion::V2));
        for bad in ["0", "3", "two", "-1", ""] {
            assert!(bad.parse::<SchemaVersion>().is_err(), "{bad:?}");
        }
        assert!(SchemaVersion::OLDEST <= SchemaVersion::WRITTEN_BY_DEFAULT);
        assert!(SchemaVersion::WRITTEN_BY_DEFAULT <= SchemaVersion::NEWEST);
    }
}
