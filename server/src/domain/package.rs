//! Firmware packages and their files as the rest of the server sees them, and the rules a
//! package must follow (SPEC P1, P2). No I/O.

use super::*;
use crate::clock::Millis;

/// One firmware image (or delta) for one module of one product (SPEC P1).
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    pub id: PackageId,
    pub tenant_id: TenantId,
    pub product_id: ProductId,
    pub module: ModuleName,
    pub version: Version,
    pub kind: PackageKind,
    /// The one version a diff applies to; `None` for a full package.
    pub source_version: Option<Version>,
    pub sign_method: SignMethod,
    pub status: PackageStatus,
    pub description: String,
    pub created_at: Millis,
    /// G5: when and why it was withdrawn (no rollout uses it until reinstated).
    pub withdrawn: Option<(Millis, String)>,
}

/// One stored file of a package, with the digests the server computed while storing it.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageFile {
    pub id: PackageFileId,
    pub tenant_id: TenantId,
    pub package_id: PackageId,
    pub name: FileName,
    pub size: u64,
    /// Lowercase hex.
    pub md5: String,
    /// Lowercase hex.
    pub sha256: String,
    /// Where the firmware storage keeps the bytes; never chosen by a caller.
    pub storage_key: String,
    pub created_at: Millis,
}

impl PackageFile {
    /// The digest a device checks, for the package's sign method (SPEC P1, V1 `sign`).
    pub fn sign(&self, method: SignMethod) -> &str {
        match method {
            SignMethod::Md5 => &self.md5,
            SignMethod::Sha256 => &self.sha256,
        }
    }
}

/// A package to create; only [`NewPackage::new`] builds one, so its fields obey the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPackage {
    module: ModuleName,
    version: Version,
    kind: PackageKind,
    source_version: Option<Version>,
    sign_method: SignMethod,
    description: String,
}

impl NewPackage {
    /// Checks the rules of SPEC P1: a diff names exactly one source version, other than its
    /// own; a full package names none; the description is bounded.
    pub fn new(
        module: ModuleName,
        version: Version,
        kind: PackageKind,
        source_version: Option<Version>,
        sign_method: SignMethod,
        description: String,
    ) -> Result<Self, Invalid> {
        match (kind, &source_version) {
            (PackageKind::Diff, None) => {
                return Err(Invalid::new(
                    "source_version",
                    "a diff package must name the version it applies to",
                ))
            }
            (PackageKind::Diff, Some(s)) if s == &version => {
                return Err(Invalid::new(
                    "source_version",
                    "a diff package cannot apply to its own version",
                ))
            }
            (PackageKind::Full, Some(_)) => return Err(Invalid::new(
                "source_version",
                "a full package applies to any version; leave source_version out or use kind diff",
            )),
            _ => {}
        }
        bounded_text("description", &description, 0, limits::MAX_DESCRIPTION_LEN)?;
        Ok(Self {
            module,
            version,
            kind,
            source_version,
            sign_method,
            description,
        })
    }

    pub fn module(&self) -> &ModuleName {
        &self.module
    }
    pub fn version(&self) -> &Version {
        &self.version
    }
    pub fn kind(&self) -> PackageKind {
        self.kind
    }
    pub fn source_version(&self) -> Option<&Version> {
        self.source_version.as_ref()
    }
    pub fn sign_method(&self) -> SignMethod {
        self.sign_method
    }
    pub fn description(&self) -> &str {
        &self.description
    }
}

/// Whether a caller may set `to` by hand (SPEC P2): `verified` comes only from a
/// verification rollout that succeeded, so it is refused here.
pub fn check_manual_status(to: PackageStatus) -> Result<(), Invalid> {
    match to {
        PackageStatus::Unverified | PackageStatus::NoNeed => Ok(()),
        PackageStatus::Verified => Err(Invalid::new(
            "status",
            "verified is set only when a verification rollout of the package succeeds; \
             by hand you may set no_need or unverified",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse("version", s).unwrap()
    }

    fn new(kind: PackageKind, source: Option<&str>) -> Result<NewPackage, Invalid> {
        NewPackage::new(
            ModuleName::default_module(),
            v("2.0"),
            kind,
            source.map(v),
            SignMethod::Md5,
            String::new(),
        )
    }

    // SPEC P1
    #[test]
    fn diff_needs_one_other_source_version_and_full_takes_none() {
        assert!(new(PackageKind::Full, None).is_ok());
        assert!(new(PackageKind::Diff, Some("1.0")).is_ok());
        for (kind, src) in [
            (PackageKind::Diff, None),
            (PackageKind::Diff, Some("2.0")),
            (PackageKind::Full, Some("1.0")),
        ] {
            let e = new(kind, src).unwrap_err();
            assert_eq!(e.field, "source_version", "{kind:?} {src:?}");
        }
        let long = "x".repeat(limits::MAX_DESCRIPTION_LEN + 1);
        let e = NewPackage::new(
            ModuleName::default_module(),
            v("2.0"),
            PackageKind::Full,
            None,
            SignMethod::Sha256,
            long,
        )
        .unwrap_err();
        assert_eq!(e.field, "description");
    }

    // Part of P2: `verified` comes only from a verification rollout.
    #[test]
    fn verified_cannot_be_set_by_hand() {
        assert!(check_manual_status(PackageStatus::NoNeed).is_ok());
        assert!(check_manual_status(PackageStatus::Unverified).is_ok());
        let e = check_manual_status(PackageStatus::Verified).unwrap_err();
        assert_eq!(e.field, "status");
        assert!(e.message.contains("verification rollout"), "{}", e.message);
    }
}
