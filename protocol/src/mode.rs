//! Which kind of delivery service a hub is: the reduced-metadata hub this project exists for,
//! or a conventional full-metadata DS kept for comparison.

use serde::{Deserialize, Serialize};

/// A hub's mode. Clients must be configured for the same mode as their hub: each mode refuses
/// the other's requests with a clear error rather than misreading them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DsMode {
    /// Reduced metadata (draft-robert-mimi-delivery-service-03 RM): group state under the
    /// members' EAR keys, pseudonymous leaves, sealed queue addresses, Privacy Pass tokens.
    #[default]
    Rm,
    /// A conventional full-metadata DS (draft-04 style), for measuring the price of privacy:
    /// plaintext group state, real client credentials in leaves, plain queue ids, and rate
    /// limits per client identity.
    Baseline,
}

impl DsMode {
    /// The name used in configs, flags and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rm => "rm",
            Self::Baseline => "baseline",
        }
    }
}

impl std::str::FromStr for DsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rm" => Ok(Self::Rm),
            "baseline" => Ok(Self::Baseline),
            other => Err(format!("unknown mode {other:?} (expected rm or baseline)")),
        }
    }
}

impl std::fmt::Display for DsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
