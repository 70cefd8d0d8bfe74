//! API key roles and what each may do (SPEC M1).

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Keys, policies, products, devices and everything an operator may do.
    Admin,
    /// Packages and rollouts, and reading everything.
    Operator,
    /// Read only.
    Viewer,
}

/// What a call wants to do; the role decides whether it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    ManageKeys,
    ManageRegistry,
    ManagePackages,
    ManageRollouts,
    ManagePolicies,
}

impl Role {
    pub fn may(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Operator => matches!(
                action,
                Action::Read | Action::ManagePackages | Action::ManageRollouts
            ),
            Role::Viewer => action == Action::Read,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC M1
    #[test]
    fn roles_grant_exactly_their_actions() {
        use Action::*;
        let all = [
            Read,
            ManageKeys,
            ManageRegistry,
            ManagePackages,
            ManageRollouts,
            ManagePolicies,
        ];
        assert!(all.iter().all(|a| Role::Admin.may(*a)));
        let op: Vec<_> = all.iter().filter(|a| Role::Operator.may(**a)).collect();
        assert_eq!(op, vec![&Read, &ManagePackages, &ManageRollouts]);
        let viewer: Vec<_> = all.iter().filter(|a| Role::Viewer.may(**a)).collect();
        assert_eq!(viewer, vec![&Read]);
        for r in [Role::Admin, Role::Operator, Role::Viewer] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
