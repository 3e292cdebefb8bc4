//! Label selectors in Kubernetes' equality form: `env=prod,tier!=edge,gpu,!beta`.

use tether_proto::api::Labels;

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
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    valid.then(|| key.to_owned())
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
    fn bad_selectors_name_the_term() {
        let err = LabelSelector::parse("env=prod,=x").expect_err("empty key");
        assert_eq!(err.term, "=x");
        assert!(LabelSelector::parse("a b=c").is_err());
    }
}
