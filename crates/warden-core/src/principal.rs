//! The authenticated principal: who is calling and what they may do.
//!
//! Every credential (API key today; JWT, OAuth2 client, user and mTLS
//! identity later) resolves to one [`Principal`], which travels in the
//! request extensions from authentication to audit.

use std::fmt;
use std::sync::Arc;

/// A permission a role grants (SPEC §3 / RBAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Permission {
    /// Run inference (on the models the principal's scope allows).
    Predict = 0,
    /// Read model metadata and readiness.
    ModelsRead,
    /// Scrape `/metrics`.
    MetricsRead,
    /// Manage API keys.
    AdminKeys,
    /// Manage users and OAuth2 clients.
    AdminUsers,
    /// Query and verify the audit trail.
    AdminAudit,
    /// Load and reload models.
    AdminModels,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 7] = [
        Self::Predict,
        Self::ModelsRead,
        Self::MetricsRead,
        Self::AdminKeys,
        Self::AdminUsers,
        Self::AdminAudit,
        Self::AdminModels,
    ];

    /// The permission's name as written in config and tokens.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::ModelsRead => "models:read",
            Self::MetricsRead => "metrics:read",
            Self::AdminKeys => "admin:keys",
            Self::AdminUsers => "admin:users",
            Self::AdminAudit => "admin:audit",
            Self::AdminModels => "admin:models",
        }
    }
}

/// A set of permissions (a bit set: checked on every request).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u16);

impl Permissions {
    /// Every permission.
    pub const ALL: Permissions = Permissions((1 << Permission::ALL.len()) - 1);

    /// The set holding exactly these permissions.
    pub const fn of(list: &[Permission]) -> Self {
        let mut bits = 0u16;
        let mut i = 0;
        while i < list.len() {
            bits |= 1 << list[i] as u8;
            i += 1;
        }
        Self(bits)
    }

    /// Whether the set holds `p`.
    pub const fn contains(self, p: Permission) -> bool {
        self.0 & (1 << p as u8) != 0
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                Permission::ALL
                    .iter()
                    .filter(|p| self.contains(**p))
                    .map(|p| p.as_str()),
            )
            .finish()
    }
}

/// The built-in roles of SPEC §3. Configurable roles come with RBAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Inference and metadata on the models it is allowed.
    Predict,
    /// `metrics:read` only.
    Metrics,
}

impl Role {
    /// Every built-in role.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Predict, Role::Metrics];

    /// The role's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Predict => "predict",
            Self::Metrics => "metrics",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The permissions the role grants.
    pub const fn permissions(self) -> Permissions {
        match self {
            Self::Admin => Permissions::ALL,
            Self::Predict => Permissions::of(&[Permission::Predict, Permission::ModelsRead]),
            Self::Metrics => Permissions::of(&[Permission::MetricsRead]),
        }
    }
}

/// Which models a principal may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelScope {
    /// Every model.
    All,
    /// Only these model names.
    Only(Arc<[String]>),
}

impl ModelScope {
    /// Whether `model` is in scope.
    pub fn allows(&self, model: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.iter().any(|n| n == model),
        }
    }
}

/// Who is calling, resolved from a credential.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Stable identifier for logs and audit, e.g. `key:k3j4h5g6f7d8`. Never a secret.
    pub id: Arc<str>,
    /// The role the credential carries.
    pub role: Role,
    /// Permissions from the role.
    pub permissions: Permissions,
    /// Models the credential may use.
    pub models: ModelScope,
}

impl Principal {
    /// Whether the principal holds `permission`.
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(permission)
    }

    /// Whether the principal may run inference on `model`.
    pub fn may_predict(&self, model: &str) -> bool {
        self.has(Permission::Predict) && self.models.allows(model)
    }

    /// Whether the principal may read `model`'s metadata.
    pub fn may_read_model(&self, model: &str) -> bool {
        (self.has(Permission::ModelsRead) || self.has(Permission::Predict))
            && self.models.allows(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_spec_says() {
        assert!(Role::Admin.permissions().contains(Permission::AdminKeys));
        let p = Role::Predict.permissions();
        assert!(p.contains(Permission::Predict) && p.contains(Permission::ModelsRead));
        assert!(!p.contains(Permission::AdminKeys) && !p.contains(Permission::MetricsRead));
        let m = Role::Metrics.permissions();
        assert!(m.contains(Permission::MetricsRead) && !m.contains(Permission::Predict));
    }

    #[test]
    fn scope_limits_models() {
        let p = Principal {
            id: "key:x".into(),
            role: Role::Predict,
            permissions: Role::Predict.permissions(),
            models: ModelScope::Only(vec!["iris".to_string()].into()),
        };
        assert!(p.may_predict("iris"));
        assert!(!p.may_predict("digits"));
        assert!(!p.may_read_model("digits"));
        let metrics = Principal {
            role: Role::Metrics,
            permissions: Role::Metrics.permissions(),
            ..p
        };
        assert!(!metrics.may_predict("iris") && !metrics.may_read_model("iris"));
    }
}
