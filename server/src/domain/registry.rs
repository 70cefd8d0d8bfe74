//! Records of the registry as the rest of the server sees them (not rows, not wire types).

use super::*;
use crate::clock::Millis;

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: DisplayName,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub name: DisplayName,
    pub role: Role,
    /// The first characters of the key, to recognise it in lists; the rest is never kept.
    pub prefix: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// Who is calling: resolved from a bearer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    pub key: ApiKeyId,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub id: ProductId,
    pub tenant_id: TenantId,
    pub product_key: ProductKey,
    pub name: DisplayName,
    pub protocol: Protocol,
    /// SPEC P2: update rollouts require a verified package.
    pub require_verification: bool,
    pub description: String,
    pub created_at: Millis,
}

#[derive(Clone, PartialEq)]
pub struct Device {
    pub id: DeviceId,
    pub tenant_id: TenantId,
    pub product_id: ProductId,
    pub name: DeviceName,
    pub secret: String,
    pub online: bool,
    pub activated_at: Option<Millis>,
    pub last_seen_at: Option<Millis>,
    pub created_at: Millis,
}

// The secret stays out of `Debug` output: device records end up in logs and panic messages.
impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("product_id", &self.product_id)
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("online", &self.online)
            .field("activated_at", &self.activated_at)
            .field("last_seen_at", &self.last_seen_at)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A device's current version of one module (SPEC D2).
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleVersion {
    pub module: ModuleName,
    pub version: Version,
    pub updated_at: Millis,
}

/// One version report of the history (SPEC D2).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionReport {
    pub id: i64,
    pub module: ModuleName,
    pub version: Version,
    pub reported_at: Millis,
}

/// A new device as an import row or a single create: the secret is generated when absent.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDevice {
    pub name: DeviceName,
    pub secret: Option<DeviceSecret>,
}
