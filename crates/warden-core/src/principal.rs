//! The authenticated principal and role-based access control.
//!
//! Every credential (API key, JWT from a configured issuer, a token Warden
//! issued to a user or OAuth2 client, an mTLS certificate) resolves to one
//! [`Principal`], which travels in the request extensions from
//! authentication to audit. A principal holds [`Grants`]: the union of the
//! permissions of its roles (or of its token's scopes), optionally narrowed
//! by the credential's own model allowlist.
//!
//! Permissions are written as in config and in token scopes (docs/api.md):
//! `predict:<model>`, `predict:*`, `models:read`, `metrics:read`,
//! `admin:keys`, `admin:users`, `admin:audit`, `admin:models`, `admin:*`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A permission that is not about one model (docs/api.md, docs/identity.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Permission {
    /// Read every model's metadata and readiness.
    ModelsRead = 0,
    /// Scrape `/metrics`.
    MetricsRead,
    /// Manage API keys.
    AdminKeys,
    /// Manage users and OAuth2 clients (and token signing keys).
    AdminUsers,
    /// Query and verify the audit trail.
    AdminAudit,
    /// Load and reload models.
    AdminModels,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 6] = [
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
            Self::ModelsRead => "models:read",
            Self::MetricsRead => "metrics:read",
            Self::AdminKeys => "admin:keys",
            Self::AdminUsers => "admin:users",
            Self::AdminAudit => "admin:audit",
            Self::AdminModels => "admin:models",
        }
    }

    const fn is_admin(self) -> bool {
        matches!(
            self,
            Self::AdminKeys | Self::AdminUsers | Self::AdminAudit | Self::AdminModels
        )
    }
}

/// A set of [`Permission`]s (a bit set: checked on every request).
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

    /// Every permission in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }
}

impl std::ops::BitOr for Permissions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Permission::as_str))
            .finish()
    }
}

/// A set of model names: every model, or only the listed ones (possibly none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelScope {
    /// Every model.
    All,
    /// Only these model names (empty: no model).
    Only(Arc<[String]>),
}

impl ModelScope {
    /// No model at all.
    pub fn none() -> Self {
        Self::Only(Arc::from([]))
    }

    /// Whether `model` is in the set.
    pub fn allows(&self, model: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.iter().any(|n| n == model),
        }
    }

    /// Whether the set holds no model.
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Only(n) if n.is_empty())
    }

    fn union(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::All, _) | (_, Self::All) => Self::All,
            (Self::Only(a), Self::Only(b)) => {
                let mut names: Vec<String> = a.iter().chain(b.iter()).cloned().collect();
                names.sort();
                names.dedup();
                Self::Only(names.into())
            }
        }
    }

    fn intersect(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::All, x) | (x, Self::All) => x.clone(),
            (Self::Only(a), Self::Only(b)) => {
                Self::Only(a.iter().filter(|n| b.contains(n)).cloned().collect())
            }
        }
    }
}

/// One permission as written in config or in a token scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    /// `predict:*`
    PredictAll,
    /// `predict:<model>`
    Predict(String),
    /// `admin:*`: every admin permission.
    AdminAll,
    /// Any other permission, e.g. `models:read`.
    Other(Permission),
}

impl Grant {
    /// Parses a permission string; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "predict:*" => Some(Self::PredictAll),
            "admin:*" => Some(Self::AdminAll),
            _ => {
                if let Some(model) = text.strip_prefix("predict:") {
                    return crate::is_model_name(model).then(|| Self::Predict(model.to_owned()));
                }
                Permission::ALL
                    .into_iter()
                    .find(|p| p.as_str() == text)
                    .map(Self::Other)
            }
        }
    }
}

impl Grant {
    /// Whether this is an `admin:` permission.
    pub fn is_admin(&self) -> bool {
        match self {
            Self::AdminAll => true,
            Self::Other(p) => p.is_admin(),
            Self::PredictAll | Self::Predict(_) => false,
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PredictAll => f.write_str("predict:*"),
            Self::Predict(m) => write!(f, "predict:{m}"),
            Self::AdminAll => f.write_str("admin:*"),
            Self::Other(p) => f.write_str(p.as_str()),
        }
    }
}

/// What a principal may do: the union of its roles' (or scopes') grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Permissions that are not about one model.
    pub permissions: Permissions,
    /// Models the principal may run inference on.
    pub predict: ModelScope,
}

impl Default for Grants {
    fn default() -> Self {
        Self::none()
    }
}

impl Grants {
    /// Nothing at all.
    pub fn none() -> Self {
        Self {
            permissions: Permissions::default(),
            predict: ModelScope::none(),
        }
    }

    /// Everything (the built-in `admin` role).
    pub fn all() -> Self {
        Self {
            permissions: Permissions::ALL,
            predict: ModelScope::All,
        }
    }

    /// The grants of a list of permissions.
    pub fn of<'a>(grants: impl IntoIterator<Item = &'a Grant>) -> Self {
        let mut out = Self::none();
        for g in grants {
            out.add(g);
        }
        out
    }

    /// Adds one permission.
    pub fn add(&mut self, grant: &Grant) {
        match grant {
            Grant::PredictAll => self.predict = ModelScope::All,
            Grant::Predict(m) => {
                self.predict = self
                    .predict
                    .union(&ModelScope::Only(Arc::from([m.clone()])));
            }
            Grant::AdminAll => {
                self.permissions = self.permissions
                    | Permissions::of(&[
                        Permission::AdminKeys,
                        Permission::AdminUsers,
                        Permission::AdminAudit,
                        Permission::AdminModels,
                    ]);
            }
            Grant::Other(p) => self.permissions = self.permissions | Permissions::of(&[*p]),
        }
    }

    /// The union of two sets of grants.
    pub fn union(&self, other: &Self) -> Self {
        Self {
            permissions: self.permissions | other.permissions,
            predict: self.predict.union(&other.predict),
        }
    }

    /// Whether these grants include `grant`.
    pub fn covers(&self, grant: &Grant) -> bool {
        match grant {
            Grant::PredictAll => self.predict == ModelScope::All,
            Grant::Predict(m) => self.predict.allows(m),
            Grant::AdminAll => Permission::ALL
                .into_iter()
                .filter(|p| p.is_admin())
                .all(|p| self.permissions.contains(p)),
            Grant::Other(p) => self.permissions.contains(*p),
        }
    }

    /// The grants as a list of permission strings, e.g. for a token's
    /// `scope` claim. `Grants::of` of the list gives these grants back.
    pub fn to_list(&self) -> Vec<Grant> {
        let mut out = Vec::new();
        match &self.predict {
            ModelScope::All => out.push(Grant::PredictAll),
            ModelScope::Only(names) => out.extend(names.iter().cloned().map(Grant::Predict)),
        }
        out.extend(self.permissions.iter().map(Grant::Other));
        out
    }

    /// The grants as a space-separated scope string.
    pub fn to_scope(&self) -> String {
        self.to_list()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The role's name.
    pub name: Arc<str>,
    /// What the role is for (shown by `warden roles list`).
    pub description: String,
    /// The permissions as written.
    pub permissions: Vec<Grant>,
    /// The permissions, resolved.
    pub grants: Grants,
    /// Whether this is one of the built-in roles (docs/identity.md).
    pub builtin: bool,
}

/// The names of the built-in roles (docs/api.md).
pub const BUILTIN_ROLES: [&str; 3] = ["admin", "predict", "metrics"];

/// Every role Warden knows: the built-ins and those defined in config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    by_name: BTreeMap<Arc<str>, Role>,
}

impl Default for Roles {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Roles {
    /// The built-in roles only.
    pub fn builtin() -> Self {
        let mut by_name = BTreeMap::new();
        for (name, description, permissions) in [
            (
                "admin",
                "Everything.",
                vec![
                    Grant::PredictAll,
                    Grant::Other(Permission::ModelsRead),
                    Grant::Other(Permission::MetricsRead),
                    Grant::AdminAll,
                ],
            ),
            (
                "predict",
                "Inference and metadata on the models it is allowed.",
                vec![Grant::PredictAll, Grant::Other(Permission::ModelsRead)],
            ),
            (
                "metrics",
                "Scrape /metrics.",
                vec![Grant::Other(Permission::MetricsRead)],
            ),
        ] {
            let grants = Grants::of(&permissions);
            by_name.insert(
                Arc::from(name),
                Role {
                    name: Arc::from(name),
                    description: description.into(),
                    permissions,
                    grants,
                    builtin: true,
                },
            );
        }
        Self { by_name }
    }

    /// Adds a role defined in config. Fails if the name is taken or invalid.
    pub fn define(
        &mut self,
        name: &str,
        description: String,
        permissions: &[String],
    ) -> Result<(), String> {
        if !is_role_name(name) {
            return Err(format!(
                "{name:?} is not a role name (1 to 64 letters, digits, '-', '_')"
            ));
        }
        if self.by_name.contains_key(name) {
            return Err(format!(
                "{name:?} is a built-in role and cannot be redefined"
            ));
        }
        let mut parsed = Vec::with_capacity(permissions.len());
        for p in permissions {
            parsed.push(Grant::parse(p).ok_or_else(|| {
                format!(
                    "{p:?} is not a permission (predict:<model>, predict:*, models:read, metrics:read, admin:keys, admin:users, admin:audit, admin:models, admin:*)"
                )
            })?);
        }
        let name: Arc<str> = Arc::from(name);
        self.by_name.insert(
            name.clone(),
            Role {
                name,
                description,
                grants: Grants::of(&parsed),
                permissions: parsed,
                builtin: false,
            },
        );
        Ok(())
    }

    /// A role by name.
    pub fn get(&self, name: &str) -> Option<&Role> {
        self.by_name.get(name)
    }

    /// Every role, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.by_name.values()
    }

    /// The names of every role, comma-separated (for error messages).
    pub fn names(&self) -> String {
        self.by_name
            .keys()
            .map(|k| &**k)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether `name` can name a role, a user or a client: 1 to 64 ASCII
/// letters, digits, `-`, `_` or `.`, not starting with `.`.
pub fn is_role_name(name: &str) -> bool {
    crate::is_model_name(name)
}

/// Who is calling, resolved from a credential.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Stable identifier for logs and audit, e.g. `key:k3j4h5g6f7d8`,
    /// `user:alice`, `client:c1x2`, `jwt:corp:svc-42`. Never a secret.
    pub id: Arc<str>,
    /// The roles the credential carries (for per-role output policies).
    pub roles: Arc<[Arc<str>]>,
    /// What the roles (or token scopes) grant.
    pub grants: Grants,
    /// The credential's own model allowlist, narrowing `grants`.
    pub models: ModelScope,
}

impl Principal {
    /// A principal with one role and the role's grants.
    pub fn with_role(id: impl Into<Arc<str>>, role: &Role, models: ModelScope) -> Self {
        Self {
            id: id.into(),
            roles: Arc::from([role.name.clone()]),
            grants: role.grants.clone(),
            models,
        }
    }

    /// Whether the principal holds `permission`.
    pub fn has(&self, permission: Permission) -> bool {
        self.grants.permissions.contains(permission)
    }

    /// Whether the principal carries the role `name`.
    pub fn has_role(&self, name: &str) -> bool {
        self.roles.iter().any(|r| &**r == name)
    }

    /// Whether the principal may run inference on `model`.
    pub fn may_predict(&self, model: &str) -> bool {
        self.grants.predict.allows(model) && self.models.allows(model)
    }

    /// Whether the principal may read `model`'s metadata: `models:read`, or
    /// predict on it.
    pub fn may_read_model(&self, model: &str) -> bool {
        (self.has(Permission::ModelsRead) || self.grants.predict.allows(model))
            && self.models.allows(model)
    }

    /// Whether this principal may hand out (or take over) a credential with
    /// `role` narrowed to `models`: only if it holds everything that
    /// credential would hold. An `admin:keys` holder cannot mint an admin key.
    pub fn may_grant(&self, role: &Role, models: &ModelScope) -> bool {
        let within = match (&self.models, models) {
            (ModelScope::All, _) => true,
            (ModelScope::Only(_), ModelScope::All) => false,
            (ModelScope::Only(mine), ModelScope::Only(theirs)) => {
                theirs.iter().all(|m| mine.contains(m))
            }
        };
        let target = Grants {
            permissions: role.grants.permissions,
            predict: role.grants.predict.intersect(models),
        };
        let mine = self.effective_grants();
        within && target.to_list().iter().all(|g| mine.covers(g))
    }

    /// The principal's grants with its model allowlist applied, e.g. the
    /// most a token issued to it may carry.
    pub fn effective_grants(&self) -> Grants {
        Grants {
            permissions: self.grants.permissions,
            predict: self.grants.predict.intersect(&self.models),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(roles: &Roles, name: &str) -> Role {
        roles.get(name).unwrap().clone()
    }

    #[test]
    fn builtin_roles_grant_what_spec_says() {
        let roles = Roles::builtin();
        let admin = role(&roles, "admin").grants;
        assert!(admin.covers(&Grant::AdminAll) && admin.covers(&Grant::PredictAll));
        assert!(admin.permissions.contains(Permission::MetricsRead));
        assert_eq!(admin, Grants::all());
        let p = role(&roles, "predict").grants;
        assert!(p.covers(&Grant::PredictAll) && p.permissions.contains(Permission::ModelsRead));
        assert!(!p.permissions.contains(Permission::AdminKeys));
        assert!(!p.permissions.contains(Permission::MetricsRead));
        let m = role(&roles, "metrics").grants;
        assert!(m.permissions.contains(Permission::MetricsRead) && m.predict.is_empty());
    }

    #[test]
    fn configured_roles_parse_permissions() {
        let mut roles = Roles::builtin();
        roles
            .define(
                "analyst",
                String::new(),
                &["predict:iris".into(), "metrics:read".into()],
            )
            .unwrap();
        let a = Principal::with_role("user:a", &role(&roles, "analyst"), ModelScope::All);
        assert!(a.may_predict("iris") && !a.may_predict("digits"));
        assert!(a.may_read_model("iris") && !a.may_read_model("digits"));
        assert!(a.has(Permission::MetricsRead) && !a.has(Permission::ModelsRead));
        assert!(a.has_role("analyst"));

        for (bad, why) in [("admin", "built-in"), ("bad name!", "not a role name")] {
            let e = roles.define(bad, String::new(), &[]).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let e = roles
            .define("x", String::new(), &["predict:../etc".into()])
            .unwrap_err();
        assert!(e.contains("not a permission"), "{e}");
    }

    #[test]
    fn model_allowlist_narrows_grants() {
        let roles = Roles::builtin();
        let p = Principal::with_role(
            "key:x",
            &role(&roles, "predict"),
            ModelScope::Only(vec!["iris".to_string()].into()),
        );
        assert!(p.may_predict("iris") && !p.may_predict("digits"));
        assert!(!p.may_read_model("digits"));
        assert_eq!(p.effective_grants().to_scope(), "predict:iris models:read");
        let m = Principal::with_role("key:m", &role(&roles, "metrics"), ModelScope::All);
        assert!(!m.may_predict("iris") && !m.may_read_model("iris"));
    }

    #[test]
    fn nobody_grants_more_than_they_hold() {
        let mut roles = Roles::builtin();
        roles
            .define(
                "keymaster",
                String::new(),
                &["admin:keys".into(), "predict:iris".into()],
            )
            .unwrap();
        let km = Principal::with_role("key:k", &role(&roles, "keymaster"), ModelScope::All);
        let iris = ModelScope::Only(vec!["iris".to_string()].into());
        assert!(!km.may_grant(&role(&roles, "admin"), &ModelScope::All));
        assert!(
            !km.may_grant(&role(&roles, "predict"), &ModelScope::All),
            "no models:read"
        );
        assert!(km.may_grant(&role(&roles, "keymaster"), &iris));
        let admin = Principal::with_role("key:a", &role(&roles, "admin"), ModelScope::All);
        assert!(admin.may_grant(&role(&roles, "admin"), &ModelScope::All));
        let narrowed = Principal::with_role("key:n", &role(&roles, "admin"), iris.clone());
        assert!(!narrowed.may_grant(&role(&roles, "predict"), &ModelScope::All));
        assert!(narrowed.may_grant(&role(&roles, "predict"), &iris));
    }

    #[test]
    fn scope_strings_round_trip() {
        for scope in [
            "predict:* models:read",
            "predict:digits predict:iris metrics:read admin:keys",
            "",
        ] {
            let list: Vec<Grant> = scope
                .split_whitespace()
                .map(|s| Grant::parse(s).unwrap())
                .collect();
            assert_eq!(Grants::of(&list).to_scope(), scope);
        }
        let admin = Grants::of(&[Grant::AdminAll]);
        assert!(admin.covers(&Grant::Other(Permission::AdminAudit)));
        assert!(!admin.covers(&Grant::Other(Permission::MetricsRead)));
        for bad in [
            "predict:",
            "admin",
            "models:write",
            "predict:a b",
            "PREDICT:*",
        ] {
            assert_eq!(Grant::parse(bad), None, "{bad}");
        }
    }
}
