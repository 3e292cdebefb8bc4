//! Label selectors as SQL over `device_labels`, with every key and value a
//! bound parameter. `=`, `in` and existence are semi-joins written
//! `d.name IN (SELECT l.device … )`: both databases then find the devices
//! through the `(key, value, device)` index (SQLite's planner turns a
//! correlated `EXISTS` into a probe per device instead, 30 times slower
//! for a rare value at 20,000 devices). `!=`, `notin` and `!key` are
//! correlated `NOT EXISTS` (an anti-join on PostgreSQL, a primary-key probe
//! per device on SQLite), so they also match devices without the key, as
//! Kubernetes defines them.

use tether_proto::labels::{LabelSelector, Requirement};

/// Conditions on the device row `d`, and the values to bind to their
/// placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LabelFilter {
    /// Each condition is one SQL boolean expression; all must hold.
    pub conditions: Vec<String>,
    pub binds: Vec<String>,
}

impl LabelFilter {
    /// ` AND c1 AND c2 …`, to follow a `WHERE` that is always present.
    pub fn and_clause(&self) -> String {
        self.conditions
            .iter()
            .map(|condition| format!(" AND {condition}"))
            .collect()
    }
}

/// The selector's conditions on `devices d`, numbering placeholders from
/// `$first` in the order they appear (SQLite binds by that order, PostgreSQL
/// by number; both agree this way).
pub(super) fn label_filter(selector: &LabelSelector, first: usize) -> LabelFilter {
    let mut binds = Vec::new();
    let mut placeholder = |value: &str| {
        binds.push(value.to_owned());
        format!("${}", first + binds.len() - 1)
    };
    let conditions = selector
        .requirements()
        .iter()
        .map(|requirement| {
            let (negated, key, values) = match requirement {
                Requirement::Equals(key, value) => (false, key, Some(vec![value])),
                Requirement::NotEquals(key, value) => (true, key, Some(vec![value])),
                Requirement::In(key, values) => (false, key, Some(values.iter().collect())),
                Requirement::NotIn(key, values) => (true, key, Some(values.iter().collect())),
                Requirement::Exists(key) => (false, key, None),
                Requirement::NotExists(key) => (true, key, None),
            };
            let mut sql = if negated {
                "NOT EXISTS (SELECT 1 FROM device_labels l WHERE l.device = d.name AND l.key = "
            } else {
                "d.name IN (SELECT l.device FROM device_labels l WHERE l.key = "
            }
            .to_owned();
            sql.push_str(&placeholder(key));
            match values.as_deref() {
                Some([value]) => sql.push_str(&format!(" AND l.value = {}", placeholder(value))),
                Some(values) => {
                    let list: Vec<String> = values.iter().map(|v| placeholder(v)).collect();
                    sql.push_str(&format!(" AND l.value IN ({})", list.join(", ")));
                }
                None => {}
            }
            sql.push(')');
            sql
        })
        .collect();
    LabelFilter { conditions, binds }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(selector: &str, first: usize) -> LabelFilter {
        label_filter(&LabelSelector::parse(selector).expect("valid"), first)
    }

    const IN: &str = "d.name IN (SELECT l.device FROM device_labels l WHERE l.key";
    const NOT_EXISTS: &str =
        "NOT EXISTS (SELECT 1 FROM device_labels l WHERE l.device = d.name AND l.key";

    #[test]
    fn each_requirement_is_a_subquery_with_bound_values() {
        let cases = [
            (
                "env=prod",
                format!("{IN} = $1 AND l.value = $2)"),
                vec!["env", "prod"],
            ),
            (
                "env!=prod",
                format!("{NOT_EXISTS} = $1 AND l.value = $2)"),
                vec!["env", "prod"],
            ),
            (
                "site in (b,a)",
                format!("{IN} = $1 AND l.value IN ($2, $3))"),
                vec!["site", "a", "b"],
            ),
            (
                "site notin (a,b)",
                format!("{NOT_EXISTS} = $1 AND l.value IN ($2, $3))"),
                vec!["site", "a", "b"],
            ),
            ("gpu", format!("{IN} = $1)"), vec!["gpu"]),
            ("!gpu", format!("{NOT_EXISTS} = $1)"), vec!["gpu"]),
        ];
        for (selector, sql, binds) in cases {
            let filter = filter(selector, 1);
            assert_eq!(filter.conditions, [sql], "{selector}");
            assert_eq!(filter.binds, binds, "{selector}");
        }
    }

    #[test]
    fn placeholders_continue_from_the_first_and_rise_in_order() {
        let filter = filter("env=prod,site in (a,b),!beta", 3);
        let sql = filter.and_clause();
        let numbers: Vec<usize> = sql
            .split('$')
            .skip(1)
            .map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .expect("a placeholder number")
            })
            .collect();
        assert_eq!(numbers, [3, 4, 5, 6, 7, 8]);
        assert_eq!(filter.binds, ["env", "prod", "site", "a", "b", "beta"]);
        assert!(
            sql.starts_with(" AND d.name IN") && sql.contains(" AND NOT EXISTS"),
            "{sql}"
        );
    }

    #[test]
    fn values_never_reach_the_sql_text() {
        let filter = filter("k=x--y,k2 in (a/b,c.d)", 1);
        let sql = filter.and_clause();
        for value in ["x--y", "a/b", "c.d", "k2"] {
            assert!(!sql.contains(value), "{value} spliced into {sql}");
        }
    }

    #[test]
    fn an_empty_selector_adds_nothing() {
        assert_eq!(filter("", 1).and_clause(), "");
    }
}
