//! Labels and label selectors, one set of rules for tetherd and the CLI.
//!
//! Keys and values use letters, digits, `-`, `_`, `.` and `/`, at most 63
//! characters; a key starts with a letter or digit, a value may be empty.
//! Selectors take Kubernetes' equality form: `env=prod,tier!=edge,gpu,!beta`.

use crate::api::Labels;

pub const MAX_LABEL_LEN: usize = 63;
/// The most labels one device may carry: every device listing returns them all.
pub const MAX_LABELS: usize = 64;

fn label_chars(s: &str) -> bool {
    s.len() <= MAX_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

pub fn is_valid_key(key: &str) -> bool {
    key.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && label_chars(key)
}

pub fn is_valid_value(value: &str) -> bool {
    label_chars(value)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid label selector {selector:?} at {term:?}: use key=value, key!=value, key or !key, separated by commas"
)]
pub struct SelectorError {
    pub selector: String,
    pub term: String,
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let error = || SelectorError {
                selector: selector.to_owned(),
                term: term.to_owned(),
            };
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key_of(key).ok_or_else(error)?, value.trim().to_owned())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                Requirement::Equals(key_of(key).ok_or_else(error)?, value.trim().to_owned())
            } else if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key_of(key).ok_or_else(error)?)
            } else {
                Requirement::Exists(key_of(term).ok_or_else(error)?)
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::NotExists(key) => !labels.contains_key(key),
        })
    }
}

fn key_of(key: &str) -> Option<String> {
    let key = key.trim();
    is_valid_key(key).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let prod_gpu = labels(&[("env", "prod"), ("gpu", "yes")]);
        let dev = labels(&[("env", "dev")]);
        let case = |s: &str| LabelSelector::parse(s).expect("valid selector");
        assert!(case("env=prod").matches(&prod_gpu));
        assert!(case("env==prod,gpu").matches(&prod_gpu));
        assert!(!case("env=prod").matches(&dev));
        assert!(case("env!=prod").matches(&dev));
        assert!(case("!gpu").matches(&dev));
        assert!(!case("!gpu").matches(&prod_gpu));
        assert!(case("").matches(&dev));
    }

    #[test]
    fn keys_and_values_follow_one_rule() {
        assert!(is_valid_key("site") && is_valid_key("app.kubernetes.io/name"));
        assert!(!is_valid_key("") && !is_valid_key("-x") && !is_valid_key("a b"));
        assert!(!is_valid_key(&"k".repeat(64)));
        assert!(is_valid_value("") && is_valid_value("eu-west_1.a"));
        assert!(!is_valid_value("a@b") && !is_valid_value("a,b") && !is_valid_value("a=b"));
    }

    #[test]
    fn bad_selectors_name_the_term() {
        let err = LabelSelector::parse("env=prod,=x").expect_err("empty key");
        assert_eq!(err.term, "=x");
        assert!(LabelSelector::parse("a b=c").is_err());
    }
}
