//! Labels and label selectors, one set of rules for tetherd and the CLI.
//!
//! Keys and values use letters, digits, `-`, `_`, `.` and `/`, at most 63
//! characters; a key starts with a letter or digit, a value may be empty.
//! Selectors take Kubernetes' equality and set forms:
//! `env=prod,tier!=edge,site in (berlin,paris),role notin (db),gpu,!beta`.
//! As in Kubernetes, `!=` and `notin` also match devices without the key.

use std::collections::BTreeSet;
use std::fmt;

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

/// One term of a selector; a device matches a selector when it meets all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`; also met without the key.
    NotEquals(String, String),
    /// `key in (a,b)`: the key is set to one of the values.
    In(String, BTreeSet<String>),
    /// `key notin (a,b)`: the key is missing or set to none of the values.
    NotIn(String, BTreeSet<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => !labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::NotExists(key) => !labels.contains_key(key),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |values: &BTreeSet<String>| values.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Requirement::Equals(key, value) => write!(f, "{key}={value}"),
            Requirement::NotEquals(key, value) => write!(f, "{key}!={value}"),
            Requirement::In(key, values) => write!(f, "{key} in ({})", set(values)),
            Requirement::NotIn(key, values) => write!(f, "{key} notin ({})", set(values)),
            Requirement::Exists(key) => write!(f, "{key}"),
            Requirement::NotExists(key) => write!(f, "!{key}"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// The longest selector tetherd evaluates, in bytes; as the API documents.
pub const MAX_SELECTOR_LEN: usize = 4096;
/// The most requirements one selector may have. Each is a subquery in SQL:
/// a thousand of them exceed SQLite's expression depth and keep
/// PostgreSQL's planner busy for minutes, and a device carries at most
/// `MAX_LABELS` labels to select on.
pub const MAX_REQUIREMENTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "invalid label selector {selector:?} at {term:?}: use key=value, key!=value, key in (v1,v2), key notin (v1,v2), key or !key, separated by commas (keys and values: letters, digits, '-', '_', '.', '/', at most 63; a set names at least one value)"
    )]
    Term { selector: String, term: String },
    #[error("label selector is {0} bytes long; it may have at most {MAX_SELECTOR_LEN}")]
    TooLong(usize),
    #[error(
        "label selector has {0} requirements; it may have at most {MAX_REQUIREMENTS} (use `key in (v1,v2)` for several values of one key)"
    )]
    TooManyRequirements(usize),
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        if selector.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong(selector.len()));
        }
        let mut requirements = Vec::new();
        for term in terms(selector) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = requirement(term).ok_or_else(|| SelectorError::Term {
                selector: selector.to_owned(),
                term: term.to_owned(),
            })?;
            requirements.push(requirement);
        }
        if requirements.len() > MAX_REQUIREMENTS {
            return Err(SelectorError::TooManyRequirements(requirements.len()));
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|requirement| requirement.matches(labels))
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.0
    }
}

/// The selector in one canonical spelling (what two equivalent selectors
/// written differently have in common, e.g. to tell queries apart).
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

/// The selector split at the commas between terms, not those inside `( )`.
fn terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
}

fn requirement(term: &str) -> Option<Requirement> {
    if let Some(open) = term.find('(') {
        let values = term[open..].strip_prefix('(')?.strip_suffix(')')?;
        // `()` is no set; Kubernetes refuses it too (`in ("")` would be
        // spelled `in (,)`, as the key set to an empty value).
        if values.trim().is_empty() {
            return None;
        }
        let mut words = term[..open].split_whitespace();
        let (key, operator) = (key_of(words.next()?)?, words.next()?);
        if words.next().is_some() {
            return None;
        }
        let values = values
            .split(',')
            .map(value_of)
            .collect::<Option<BTreeSet<_>>>()?;
        return match operator {
            "in" => Some(Requirement::In(key, values)),
            "notin" => Some(Requirement::NotIn(key, values)),
            _ => None,
        };
    }
    if let Some((key, value)) = term.split_once("!=") {
        Some(Requirement::NotEquals(key_of(key)?, value_of(value)?))
    } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        Some(Requirement::Equals(key_of(key)?, value_of(value)?))
    } else if let Some(key) = term.strip_prefix('!') {
        Some(Requirement::NotExists(key_of(key)?))
    } else {
        Some(Requirement::Exists(key_of(term)?))
    }
}

fn key_of(key: &str) -> Option<String> {
    let key = key.trim();
    is_valid_key(key).then(|| key.to_owned())
}

fn value_of(value: &str) -> Option<String> {
    let value = value.trim();
    is_valid_value(value).then(|| value.to_owned())
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
        let none = labels(&[]);
        let case = |s: &str| LabelSelector::parse(s).expect("valid selector");
        assert!(case("env=prod").matches(&prod_gpu));
        assert!(case("env==prod,gpu").matches(&prod_gpu));
        assert!(!case("env=prod").matches(&dev));
        assert!(case("env!=prod").matches(&dev));
        assert!(
            case("env!=prod").matches(&none),
            "!= matches without the key"
        );
        assert!(case("!gpu").matches(&dev));
        assert!(!case("!gpu").matches(&prod_gpu));
        assert!(case("").matches(&dev));
        assert!(case("env in (dev, test)").matches(&dev));
        assert!(!case("env in (dev,test)").matches(&prod_gpu));
        assert!(!case("env in (dev)").matches(&none));
        assert!(case("env notin (dev)").matches(&prod_gpu));
        assert!(
            case("env notin (dev)").matches(&none),
            "notin matches without the key"
        );
        assert!(!case("env notin (dev,prod)").matches(&dev));
        assert!(case("env in (prod),gpu,gpu notin (no)").matches(&prod_gpu));
    }

    #[test]
    fn selectors_have_one_canonical_spelling() {
        let canonical = |s: &str| LabelSelector::parse(s).expect("valid").to_string();
        assert_eq!(canonical(" env == prod , gpu"), "env=prod,gpu");
        assert_eq!(canonical("site in ( b,a ,a),!x"), "site in (a,b),!x");
        assert_eq!(canonical("site notin (a)"), "site notin (a)");
        let written = "env!=dev,site in (a,b),role notin (db),gpu,!beta";
        assert_eq!(canonical(written), written);
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
        assert!(
            matches!(&err, SelectorError::Term { term, .. } if term == "=x"),
            "{err:?}"
        );
        assert!(LabelSelector::parse("a b=c").is_err());
        for bad in [
            "env in prod",
            "env in (a",
            "env within (a)",
            "env in (a b)",
            "env in (a) x",
            "in (a)",
            "env=a@b",
            "env in ()",
            "env notin ( )",
        ] {
            let err = LabelSelector::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("key in (v1,v2)"), "{err}");
        }
    }

    #[test]
    fn selectors_are_bounded_in_length_and_requirements() {
        let most: Vec<String> = (0..MAX_REQUIREMENTS).map(|i| format!("!k{i}")).collect();
        assert!(LabelSelector::parse(&most.join(",")).is_ok());
        let one_more = format!("{},x", most.join(","));
        assert_eq!(
            LabelSelector::parse(&one_more),
            Err(SelectorError::TooManyRequirements(MAX_REQUIREMENTS + 1))
        );
        let long = format!("site in ({})", "a,".repeat(MAX_SELECTOR_LEN / 2));
        let err = LabelSelector::parse(&long).expect_err("too long");
        assert_eq!(err, SelectorError::TooLong(long.len()));
        assert!(err.to_string().contains("at most 4096"), "{err}");
    }
}
