//! kubectl's label syntax: `k=v` to set, `k-` to remove, and selectors
//! (`k=v,k2!=v2,k3 in (a,b),k4 notin (c),k5,!k6`), checked by the same rules tetherd applies
//! (`tether_proto::labels`), so what the CLI accepts the server accepts.

use std::collections::BTreeMap;

use tether_proto::api::Labels;
use tether_proto::labels::{LabelSelector, SelectorError, is_valid_key, is_valid_value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("invalid label {0:?}: expected KEY=VALUE")]
    NotAPair(String),
    #[error("invalid label change {0:?}: expected KEY=VALUE to set or KEY- to remove")]
    NotAChange(String),
    #[error(
        "invalid label key {0:?}: use at most 63 letters, digits, '-', '_', '.' and '/', starting with a letter or digit"
    )]
    Key(String),
    #[error("invalid label value {0:?}: use at most 63 letters, digits, '-', '_', '.' and '/'")]
    Value(String),
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error("label {0:?} is both set and removed; name it once")]
    Conflict(String),
}

/// A label to set, `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

impl std::str::FromStr for Label {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| LabelError::NotAPair(s.to_owned()))?;
        Ok(Label {
            key: check_key(key)?,
            value: check_value(value)?,
        })
    }
}

/// A change of `tether devices label`: `KEY=VALUE` or `KEY-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(Label),
    Remove(String),
}

impl std::str::FromStr for LabelChange {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('=') {
            return s.parse().map(LabelChange::Set);
        }
        match s.strip_suffix('-') {
            Some(key) => Ok(LabelChange::Remove(check_key(key)?)),
            None => Err(LabelError::NotAChange(s.to_owned())),
        }
    }
}

/// The JSON merge patch of a set of changes: `null` removes a label.
pub fn merge_patch(
    changes: &[LabelChange],
) -> Result<BTreeMap<String, Option<String>>, LabelError> {
    let mut patch = BTreeMap::new();
    for change in changes {
        let (key, value) = match change {
            LabelChange::Set(label) => (&label.key, Some(label.value.clone())),
            LabelChange::Remove(key) => (key, None),
        };
        if let Some(earlier) = patch.insert(key.clone(), value.clone())
            && earlier != value
        {
            return Err(LabelError::Conflict(key.clone()));
        }
    }
    Ok(patch)
}

/// A label selector, `k=v,k2!=v2,k3 in (a,b),k4 notin (c),k5,!k6`: devices
/// whose labels meet all terms.
#[derive(Debug, Clone)]
pub struct Selector {
    text: String,
    parsed: LabelSelector,
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.parsed == other.parsed
    }
}

impl Eq for Selector {}

impl std::str::FromStr for Selector {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Selector {
            parsed: LabelSelector::parse(s)?,
            text: s.to_owned(),
        })
    }
}

impl Selector {
    /// The `labelSelector` query value tetherd takes.
    pub fn to_query(&self) -> String {
        self.text.clone()
    }
}

/// Labels as a map; the last of repeated keys wins, as with kubectl.
pub fn to_map(labels: &[Label]) -> Labels {
    labels
        .iter()
        .map(|l| (l.key.clone(), l.value.clone()))
        .collect()
}

fn check_key(key: &str) -> Result<String, LabelError> {
    if is_valid_key(key) {
        Ok(key.to_owned())
    } else {
        Err(LabelError::Key(key.to_owned()))
    }
}

fn check_value(value: &str) -> Result<String, LabelError> {
    if is_valid_value(value) {
        Ok(value.to_owned())
    } else {
        Err(LabelError::Value(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(key: &str, value: &str) -> Label {
        Label {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn labels_are_key_value_pairs() {
        assert_eq!("site=berlin".parse(), Ok(label("site", "berlin")));
        assert_eq!("tier=".parse(), Ok(label("tier", "")));
        assert_eq!(
            "example.com/role=gw".parse(),
            Ok(label("example.com/role", "gw"))
        );
        assert_eq!(
            "site".parse::<Label>(),
            Err(LabelError::NotAPair("site".into()))
        );
        assert_eq!("=v".parse::<Label>(), Err(LabelError::Key("".into())));
        assert_eq!("-a=v".parse::<Label>(), Err(LabelError::Key("-a".into())));
        assert_eq!(
            "a=b=c".parse::<Label>(),
            Err(LabelError::Value("b=c".into()))
        );
        assert_eq!(
            "a=b c".parse::<Label>(),
            Err(LabelError::Value("b c".into()))
        );
    }

    #[test]
    fn changes_set_with_equals_and_remove_with_a_trailing_dash() {
        assert_eq!(
            "site=berlin".parse(),
            Ok(LabelChange::Set(label("site", "berlin")))
        );
        assert_eq!("site-".parse(), Ok(LabelChange::Remove("site".into())));
        assert_eq!(
            "role=a-".parse(),
            Ok(LabelChange::Set(label("role", "a-"))),
            "a dash after '=' is part of the value"
        );
        assert_eq!(
            "site".parse::<LabelChange>(),
            Err(LabelError::NotAChange("site".into()))
        );
        assert_eq!("-".parse::<LabelChange>(), Err(LabelError::Key("".into())));
    }

    #[test]
    fn a_merge_patch_uses_null_for_removal() {
        let changes: Vec<LabelChange> = ["a=1", "b-", "a=1"]
            .iter()
            .map(|s| s.parse().expect("valid change"))
            .collect();
        let patch = merge_patch(&changes).expect("no conflict");
        assert_eq!(patch.get("a"), Some(&Some("1".to_owned())));
        assert_eq!(patch.get("b"), Some(&None));
        let json = serde_json::to_value(&patch).expect("serializes");
        assert_eq!(json, serde_json::json!({"a": "1", "b": null}));

        let changes: Vec<LabelChange> = ["a=1", "a-"]
            .iter()
            .map(|s| s.parse().expect("valid change"))
            .collect();
        assert_eq!(merge_patch(&changes), Err(LabelError::Conflict("a".into())));
    }

    #[test]
    fn selectors_take_what_tetherd_takes() {
        for accepted in [
            "site=berlin, env==prod",
            "env!=prod",
            "site",
            "!beta,gpu",
            "site in (berlin,paris),tier notin (edge)",
        ] {
            let selector: Selector = accepted.parse().expect(accepted);
            assert_eq!(selector.to_query(), accepted, "sent as written");
        }
        for refused in ["=x", "a b=c", "-x=1", "site in berlin", "site in (a"] {
            let err = refused.parse::<Selector>().expect_err(refused);
            assert!(err.to_string().contains("invalid label selector"), "{err}");
        }
    }

    #[test]
    fn values_tetherd_would_refuse_are_refused_here() {
        assert!(matches!(
            "site=a@b".parse::<Label>(),
            Err(LabelError::Value(_))
        ));
        assert!(matches!(
            format!("k={}", "v".repeat(64)).parse::<Label>(),
            Err(LabelError::Value(_))
        ));
    }

    #[test]
    fn repeated_keys_keep_the_last_value() {
        let map = to_map(&[label("a", "1"), label("a", "2")]);
        assert_eq!(map.get("a").map(String::as_str), Some("2"));
    }
}
