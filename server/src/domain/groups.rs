//! Groups, asset trees, device labels (attributes and tags) and the device filter that
//! search and rollout scopes share (SPEC D3, D4, D5, B7, B8). Pure records and rules.

use super::*;
use crate::clock::Millis;
use std::collections::BTreeMap;

/// SPEC D3: a group membership call adds or removes at most this many devices.
pub const MAX_DEVICES_PER_CALL: usize = 10_000;
/// SPEC B8: an asset-tree scope spans at most this many trees.
pub const MAX_ASSET_TREES_PER_SCOPE: usize = 5;
/// A filter may expand to at most this many group or asset-node ids (subtrees included),
/// so one query stays far under every backend's bind-parameter limit.
pub const MAX_SCOPE_IDS: usize = 10_000;

/// A node of a tenant's group tree (SPEC D3). Groups are tenant-wide, not per product.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: GroupId,
    pub parent_id: Option<GroupId>,
    pub name: DisplayName,
    pub description: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewGroup {
    pub name: DisplayName,
    pub parent: Option<GroupId>,
    pub description: String,
}

/// What a group update may change; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupPatch {
    pub name: Option<DisplayName>,
    pub description: Option<String>,
}

/// An asset tree of a tenant (SPEC D4, EnOS asset trees).
#[derive(Debug, Clone, PartialEq)]
pub struct AssetTree {
    pub id: AssetTreeId,
    pub name: DisplayName,
    pub created_at: Millis,
}

/// A node of an asset tree; devices are bound to nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetNode {
    pub id: AssetNodeId,
    pub tree_id: AssetTreeId,
    pub parent_id: Option<AssetNodeId>,
    pub name: DisplayName,
    pub created_at: Millis,
}

/// The two kinds of name → value labels a device carries (SPEC D4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    Attribute,
    Tag,
}

impl LabelKind {
    /// The input field that holds labels of this kind (`attributes`, `tags`).
    pub fn field(self) -> &'static str {
        match self {
            LabelKind::Attribute => "attributes",
            LabelKind::Tag => "tags",
        }
    }

    pub fn max_count(self) -> usize {
        match self {
            LabelKind::Attribute => limits::MAX_DEVICE_ATTRIBUTES,
            LabelKind::Tag => limits::MAX_DEVICE_TAGS,
        }
    }

    fn max_value_len(self) -> usize {
        match self {
            LabelKind::Attribute => limits::MAX_ATTRIBUTE_VALUE_LEN,
            LabelKind::Tag => limits::MAX_TAG_VALUE_LEN,
        }
    }

    /// Checks a label name (`AttributeName` or `TagKey` rule); `field` is named in errors.
    pub fn check_name(self, field: &str, name: &str) -> Result<(), Invalid> {
        match self {
            LabelKind::Attribute => AttributeName::parse(field, name).map(drop),
            LabelKind::Tag => TagKey::parse(field, name).map(drop),
        }
    }

    /// Checks a label value (0 to the kind's maximum length, no control characters).
    pub fn check_value(self, field: &str, value: &str) -> Result<(), Invalid> {
        bounded_text(field, value, 0, self.max_value_len())
    }

    /// Validates a whole set (a replace): every name and value, and the count.
    pub fn parse_set(self, set: BTreeMap<String, String>) -> Result<Labels, Invalid> {
        for (name, value) in &set {
            let field = format!("{}.{name}", self.field());
            self.check_name(&field, name)?;
            self.check_value(&field, value)?;
        }
        self.check_count(set.len())?;
        Ok(Labels { kind: self, set })
    }

    /// Validates a merge: names, and values of the entries that are set (`None` deletes).
    pub fn parse_patch(
        self,
        patch: BTreeMap<String, Option<String>>,
    ) -> Result<LabelPatch, Invalid> {
        for (name, value) in &patch {
            let field = format!("{}.{name}", self.field());
            self.check_name(&field, name)?;
            if let Some(v) = value {
                self.check_value(&field, v)?;
            }
        }
        Ok(LabelPatch { kind: self, patch })
    }

    /// A device may carry at most [`LabelKind::max_count`] labels of a kind.
    pub fn check_count(self, n: usize) -> Result<(), Invalid> {
        if n > self.max_count() {
            return Err(Invalid::new(
                self.field(),
                format!(
                    "a device carries at most {} {}; this would make {n}",
                    self.max_count(),
                    self.field()
                ),
            ));
        }
        Ok(())
    }
}

/// A validated set of labels of one kind, name → value.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    pub kind: LabelKind,
    pub set: BTreeMap<String, String>,
}

/// A validated merge: `Some` sets a value, `None` deletes the label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelPatch {
    pub kind: LabelKind,
    pub patch: BTreeMap<String, Option<String>>,
}

impl LabelPatch {
    /// The set after applying this patch to `current` (the count is checked by the caller).
    pub fn apply(&self, mut current: BTreeMap<String, String>) -> BTreeMap<String, String> {
        for (k, v) in &self.patch {
            match v {
                Some(v) => {
                    current.insert(k.clone(), v.clone());
                }
                None => {
                    current.remove(k);
                }
            }
        }
        current
    }
}

/// How a label's value must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// The device carries the label, with any value.
    Any,
    /// The value is one of these (one value for `name:value`; several for B8 tag scopes).
    OneOf(Vec<String>),
}

/// A condition on one attribute or tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMatch {
    pub kind: LabelKind,
    pub name: String,
    pub value: ValueMatch,
}

impl LabelMatch {
    /// Parses `name` or `name:value` (split at the first `:`); `field` is named in errors.
    pub fn parse(kind: LabelKind, field: &str, text: &str) -> Result<Self, Invalid> {
        let (name, value) = match text.split_once(':') {
            Some((n, v)) => (n, ValueMatch::OneOf(vec![v.to_owned()])),
            None => (text, ValueMatch::Any),
        };
        Self::new(kind, field, name, value)
    }

    /// Validates the name and every value against the label rules.
    pub fn new(
        kind: LabelKind,
        field: &str,
        name: &str,
        value: ValueMatch,
    ) -> Result<Self, Invalid> {
        kind.check_name(field, name)?;
        if let ValueMatch::OneOf(vs) = &value {
            if vs.is_empty() {
                return Err(Invalid::new(field, "give at least one value"));
            }
            for v in vs {
                kind.check_value(field, v)?;
            }
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
            value,
        })
    }
}

/// A condition on a device's current version of one module (SPEC D2 data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleMatch {
    pub module: ModuleName,
    /// The current version is one of these; empty means any (the module was reported).
    pub versions: Vec<Version>,
}

/// Which devices a search or a rollout scope selects (SPEC D5, B4, B7, B8). Every condition
/// that is set must hold; a device matches when all do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    pub product: Option<ProductId>,
    /// The device name starts with this (case-sensitive).
    pub name_prefix: Option<String>,
    /// The device is a member of one of these groups (or, with `include_subgroups`, of one
    /// of their subgroups at any depth).
    pub groups: Vec<GroupId>,
    pub include_subgroups: bool,
    /// The device sits on one of these asset nodes (or, with `include_descendants`, on a
    /// node below one of them); the nodes may lie in at most [`MAX_ASSET_TREES_PER_SCOPE`]
    /// trees.
    pub asset_nodes: Vec<AssetNodeId>,
    pub include_descendants: bool,
    /// Every condition must hold (attributes and tags).
    pub labels: Vec<LabelMatch>,
    pub module: Option<ModuleMatch>,
    /// The device does not currently run this version of `exclude_version.0` (B4/B10:
    /// devices already on the target version get no task). A device that never reported
    /// the module matches.
    pub exclude_version: Option<(ModuleName, Version)>,
    pub online: Option<bool>,
}

impl DeviceFilter {
    /// A filter for the members of `group` and all its subgroups (SPEC B7).
    pub fn group(group: GroupId) -> Self {
        Self {
            groups: vec![group],
            include_subgroups: true,
            ..Default::default()
        }
    }

    /// A filter for the devices on `nodes` and below (SPEC B8).
    pub fn asset_nodes(nodes: Vec<AssetNodeId>) -> Self {
        Self {
            asset_nodes: nodes,
            include_descendants: true,
            ..Default::default()
        }
    }

    /// Checks the parts that need no lookups: the name prefix.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(p) = &self.name_prefix {
            if p.is_empty() || p.chars().count() > 64 {
                return Err(Invalid::new(
                    "name_prefix",
                    "must be 1 to 64 characters long",
                ));
            }
            if p.chars().any(char::is_control) {
                return Err(Invalid::new(
                    "name_prefix",
                    "must not contain control characters",
                ));
            }
        }
        Ok(())
    }
}

/// How many devices currently report one version of a module (SPEC D6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCount {
    pub version: Version,
    pub devices: u64,
}

/// Sorts version counts the way operators read them: most devices first, then by version.
pub fn sort_version_counts(v: &mut [VersionCount]) {
    v.sort_by(|a, b| {
        b.devices
            .cmp(&a.devices)
            .then_with(|| a.version.as_str().cmp(b.version.as_str()))
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_name_the_bad_entry() {
        let mut m = BTreeMap::new();
        m.insert("color".to_owned(), "red".to_owned());
        m.insert("bad name".to_owned(), "x".to_owned());
        let e = LabelKind::Attribute.parse_set(m).unwrap_err();
        assert_eq!(e.field, "attributes.bad name");
        let mut m = BTreeMap::new();
        m.insert("site".to_owned(), "x".repeat(1025));
        let e = LabelKind::Tag.parse_set(m).unwrap_err();
        assert_eq!(e.field, "tags.site");
        let big: BTreeMap<String, String> =
            (0..101).map(|i| (format!("a{i}"), String::new())).collect();
        assert_eq!(
            LabelKind::Attribute.parse_set(big).unwrap_err().field,
            "attributes"
        );
    }

    #[test]
    fn patches_set_and_delete() {
        let mut p = BTreeMap::new();
        p.insert("a".to_owned(), Some("1".to_owned()));
        p.insert("b".to_owned(), None);
        let patch = LabelKind::Tag.parse_patch(p).unwrap();
        let mut cur = BTreeMap::new();
        cur.insert("b".to_owned(), "x".to_owned());
        cur.insert("c".to_owned(), "y".to_owned());
        let out = patch.apply(cur);
        assert_eq!(
            out.into_iter().collect::<Vec<_>>(),
            vec![("a".into(), "1".into()), ("c".into(), "y".into())]
        );
    }

    #[test]
    fn label_matches_split_at_the_first_colon() {
        let m = LabelMatch::parse(LabelKind::Attribute, "attribute", "fw:1:2").unwrap();
        assert_eq!(m.name, "fw");
        assert_eq!(m.value, ValueMatch::OneOf(vec!["1:2".into()]));
        let m = LabelMatch::parse(LabelKind::Tag, "tag", "env").unwrap();
        assert_eq!(m.value, ValueMatch::Any);
        assert_eq!(
            LabelMatch::parse(LabelKind::Attribute, "attribute", "a b:1")
                .unwrap_err()
                .field,
            "attribute"
        );
    }

    #[test]
    fn version_counts_sort_by_count_then_version() {
        let v = |s: &str, n| VersionCount {
            version: Version::parse("v", s).unwrap(),
            devices: n,
        };
        let mut all = vec![v("1.0", 2), v("2.0", 5), v("0.9", 2)];
        sort_version_counts(&mut all);
        let got: Vec<_> = all.iter().map(|c| c.version.as_str()).collect();
        assert_eq!(got, vec!["2.0", "0.9", "1.0"]);
    }
}
