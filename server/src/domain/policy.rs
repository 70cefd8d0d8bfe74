//! Tenant rollout policies as the rest of the server sees them (SPEC W1, W2; DESIGN §7): an
//! uploaded version, the three hooks, what a rollout attaches per hook (with its JSON
//! config), and the device records and verdicts that cross into and out of a hook. No I/O;
//! running a policy is `crate::policy`'s.

use super::task::word_enum;
use super::*;
use crate::clock::Millis;

word_enum!(
    /// Where a policy takes part in a rollout (W2).
    Hook {
        /// Which candidate devices join.
        Scope,
        /// Per task about to be released: approve, defer or reject.
        Approval,
        /// Each tick: how many tasks may be released, or pause or abort.
        Rate,
    }
);

/// The largest config a rollout may give one hook (JSON, as sent).
pub const MAX_POLICY_CONFIG_BYTES: usize = 64 << 10;

/// One stored version of a tenant's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    pub id: PolicyId,
    pub name: PolicyName,
    /// 1 for the first upload of a name, then one more for each.
    pub version: u32,
    /// sha256 of the component, lowercase hex.
    pub digest: String,
    /// The hooks it exports, in `Hook` order.
    pub hooks: Vec<Hook>,
    /// The component's size in bytes.
    pub size: u64,
    pub created_at: Millis,
}

/// A policy version attached to one hook of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyAttachment {
    pub policy: PolicyId,
    /// The config handed to the policy (`host.config`): JSON text, empty when none.
    pub config: String,
}

/// The policies of a rollout, per hook; `None`: the built-in behaviour (W2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutPolicies {
    pub scope: Option<PolicyAttachment>,
    pub approval: Option<PolicyAttachment>,
    pub rate: Option<PolicyAttachment>,
}

impl RolloutPolicies {
    pub fn get(&self, hook: Hook) -> Option<&PolicyAttachment> {
        match hook {
            Hook::Scope => self.scope.as_ref(),
            Hook::Approval => self.approval.as_ref(),
            Hook::Rate => self.rate.as_ref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.scope.is_none() && self.approval.is_none() && self.rate.is_none()
    }

    /// The attached hooks, in `Hook` order.
    pub fn attached(&self) -> impl Iterator<Item = (Hook, &PolicyAttachment)> {
        Hook::ALL
            .iter()
            .filter_map(|h| self.get(*h).map(|a| (*h, a)))
    }

    /// The rules that need no database: the config's size, and how the hooks fit the rest
    /// of the rollout.
    pub fn check(&self, rate: bool, push_mode: PushMode, waves: &[Wave]) -> Result<(), Invalid> {
        for (hook, a) in self.attached() {
            if a.config.len() > MAX_POLICY_CONFIG_BYTES {
                return Err(Invalid::new(
                    format!("policies.{}.config", hook.as_str()),
                    format!(
                        "a policy config may be at most {MAX_POLICY_CONFIG_BYTES} bytes of JSON, got {}",
                        a.config.len()
                    ),
                ));
            }
        }
        if self.rate.is_some() && (rate || waves.iter().any(|w| w.rate.is_some())) {
            return Err(Invalid::new(
                "policies.rate",
                "a rate policy decides the push rate; leave out the built-in rate (and the waves' rates)",
            ));
        }
        for hook in [Hook::Rate, Hook::Approval] {
            if self.get(hook).is_some() && push_mode == PushMode::Pull {
                return Err(Invalid::new(
                    format!("policies.{}", hook.as_str()),
                    format!(
                        "a {} policy decides what is pushed; with push_mode pull devices ask and are answered at once",
                        hook.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The device fields a scope or approval hook reads; the host fills only these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFields {
    pub attribute_keys: Vec<String>,
    pub tag_keys: Vec<String>,
    pub module_names: Vec<String>,
    pub groups: bool,
}

impl DeviceFields {
    /// Whether anything beyond the device row itself is read.
    pub fn needs_more(&self) -> bool {
        !self.attribute_keys.is_empty()
            || !self.tag_keys.is_empty()
            || !self.module_names.is_empty()
            || self.groups
    }
}

/// A device as a scope or approval hook sees it: `None` for a field it did not ask for,
/// otherwise only the asked keys the device has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub name: String,
    /// The product key.
    pub product: String,
    pub online: bool,
    /// (module, version)
    pub modules: Option<Vec<(String, String)>>,
    pub attributes: Option<Vec<(String, String)>>,
    pub tags: Option<Vec<(String, String)>>,
    /// Names of the groups the device is in.
    pub groups: Option<Vec<String>>,
}

/// A task about to be released, as an approval hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalTask {
    pub task: TaskId,
    pub device: DeviceRecord,
    /// The version the device reported for the rollout's module; empty when unknown.
    pub from_version: String,
    /// 0 on the first try, then the retry number.
    pub attempt: u32,
}

/// An approval hook's answer for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    /// Ask again no sooner than this many seconds later (at least 1).
    Defer(u32),
    /// Never release it: the task ends `rejected` with the reason.
    Reject(String),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn att(config: &str) -> Option<PolicyAttachment> {
        Some(PolicyAttachment {
            policy: PolicyId(1),
            config: config.into(),
        })
    }

    #[test]
    fn hooks_fit_the_rollout_or_say_why_not() {
        let rate = RolloutPolicies {
            rate: att(""),
            ..Default::default()
        };
        assert!(rate.check(false, PushMode::Push, &[]).is_ok());
        assert_eq!(
            rate.check(true, PushMode::Push, &[]).unwrap_err().field,
            "policies.rate"
        );
        assert_eq!(
            rate.check(false, PushMode::Pull, &[]).unwrap_err().field,
            "policies.rate"
        );
        let approval = RolloutPolicies {
            approval: att(""),
            ..Default::default()
        };
        assert_eq!(
            approval
                .check(false, PushMode::Pull, &[])
                .unwrap_err()
                .field,
            "policies.approval"
        );
        let scope = RolloutPolicies {
            scope: att(&"x".repeat(MAX_POLICY_CONFIG_BYTES + 1)),
            ..Default::default()
        };
        assert_eq!(
            scope.check(false, PushMode::Pull, &[]).unwrap_err().field,
            "policies.scope.config"
        );
        assert_eq!(
            rate.attached().map(|(h, _)| h).collect::<Vec<_>>(),
            vec![Hook::Rate]
        );
    }
}
