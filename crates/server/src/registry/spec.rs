//! The rules of a device's spec, without IO: update masks, versions,
//! preconditions, and whether the agent caught up.
//!
//! An update names the fields it sets with a mask (`spec.loggingConfig`,
//! `spec.loggingConfig.priority`): those are taken from the request — or
//! removed, if the request lacks them — and every other field stays as it
//! was. Without a mask the request's spec replaces the whole spec. The
//! version goes up by one on every change and not at all on a write that
//! changes nothing, so provisioning can re-apply a template freely.

use serde_json::{Map, Value};
use tether_proto::spec::{self, DeviceSpec, ReportedStatus, SpecError};

/// The paths of an update mask, each split into the segments after `spec`.
/// Empty segments list: the whole spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateMask(Vec<Vec<String>>);

/// The version an update was made against does not match the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the spec is at version {current}, not {expected} as If-Match says: read the device again and retry with its specVersion"
)]
pub struct VersionMismatch {
    pub expected: u64,
    pub current: u64,
}

impl UpdateMask {
    /// Parses `updateMask`: comma-separated paths, each `spec` or
    /// `spec.<section>[.<field>…]`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let mut paths = Vec::new();
        for path in text.split(',').map(str::trim) {
            let mut segments = path.split('.');
            let valid = segments.next() == Some("spec")
                && path.split('.').skip(1).all(|segment| {
                    !segment.is_empty()
                        && segment
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                });
            if !valid {
                return Err(SpecError::new(
                    "updateMask",
                    format!(
                        "{path:?} is not a field path: use spec, spec.<section> or spec.<section>.<field>, separated by commas"
                    ),
                ));
            }
            paths.push(segments.map(str::to_owned).collect());
        }
        Ok(Self(paths))
    }
}

/// The spec after an update of `current` with `request` (the request's
/// `spec`), under `mask` if given. The result is validated whole.
pub fn apply_update(
    current: &DeviceSpec,
    request: &Value,
    mask: Option<&UpdateMask>,
) -> Result<DeviceSpec, SpecError> {
    let Value::Object(request) = request else {
        return Err(SpecError::new("spec", "must be a JSON object of sections"));
    };
    let updated = match mask {
        None => request.clone(),
        Some(UpdateMask(paths)) => {
            let mut updated = current.clone();
            for path in paths {
                copy_path(request, &mut updated, path)?;
            }
            updated
        }
    };
    spec::validate(&Value::Object(updated.clone()))?;
    Ok(updated)
}

/// Sections tetherd writes itself: `deployments`, from the deployments
/// that target the device, and `secrets`, sealed to the device's key
/// (ADR 0030). An operator's update may neither set nor remove them.
pub const MANAGED_SECTIONS: [&str; 2] = [
    tether_proto::desired::SECTION,
    tether_proto::secrets::SECTION,
];

/// The mask an operator's update is applied under: theirs, or — without
/// one, a whole-spec replacement — every section but the managed ones, so
/// replacing the spec keeps what deployments put there.
pub fn operator_mask(request: &Value, mask: Option<UpdateMask>) -> Result<UpdateMask, SpecError> {
    let managed = |section: &str| MANAGED_SECTIONS.contains(&section);
    let refuse = |section: &str| {
        SpecError::new(
            format!("spec.{section}"),
            if section == tether_proto::secrets::SECTION {
                "is written by tetherd from the secrets that target the device; change those (`tether secrets`) instead"
            } else {
                "is written by tetherd from the deployments that target the device; change those (`tether deployments`) instead"
            },
        )
    };
    if let Value::Object(sections) = request
        && let Some(section) = sections.keys().find(|s| managed(s))
    {
        return Err(refuse(section));
    }
    let every_section = || -> Vec<Vec<String>> {
        let mut names: Vec<String> = spec::SECTIONS.iter().map(|s| (*s).to_owned()).collect();
        if let Value::Object(sections) = request {
            names.extend(sections.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|name| !managed(name))
            .map(|name| vec![name])
            .collect()
    };
    let Some(UpdateMask(paths)) = mask else {
        return Ok(UpdateMask(every_section()));
    };
    let mut allowed = Vec::new();
    for path in paths {
        match path.first() {
            None => allowed.extend(every_section()),
            Some(section) if managed(section) => return Err(refuse(section)),
            Some(_) => allowed.push(path),
        }
    }
    Ok(UpdateMask(allowed))
}

/// Sets `path` in `into` to its value in `from`, or removes it there if
/// `from` lacks it. The empty path is the whole object.
fn copy_path(
    from: &Map<String, Value>,
    into: &mut Map<String, Value>,
    path: &[String],
) -> Result<(), SpecError> {
    let Some((last, parents)) = path.split_last() else {
        *into = from.clone();
        return Ok(());
    };
    let mut source = Some(from);
    let mut target = into;
    for (depth, segment) in parents.iter().enumerate() {
        source = source
            .and_then(|s| s.get(segment))
            .and_then(Value::as_object);
        let entry = target
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        target = entry.as_object_mut().ok_or_else(|| {
            SpecError::new(
                format!("spec.{}", path[..=depth].join(".")),
                "is not an object, so the mask cannot reach into it",
            )
        })?;
    }
    match source.and_then(|s| s.get(last)) {
        Some(value) => {
            target.insert(last.clone(), value.clone());
        }
        None => {
            target.remove(last);
        }
    }
    Ok(())
}

/// The version after writing `updated` over `current` at `version`:
/// `None` if nothing changes.
pub fn next_version(version: u64, current: &DeviceSpec, updated: &DeviceSpec) -> Option<u64> {
    (current != updated).then_some(version + 1)
}

/// `If-Match: "N"` (or `N`): the spec version the update was made against.
pub fn parse_if_match(header: &str) -> Result<u64, SpecError> {
    let value = header.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    value.parse().map_err(|_| {
        SpecError::new(
            "If-Match",
            format!("{header:?} is not a spec version: send the device's specVersion in quotes, e.g. If-Match: \"3\""),
        )
    })
}

/// Refuses an update made against another version than the current one.
pub fn check_precondition(expected: Option<u64>, current: u64) -> Result<(), VersionMismatch> {
    match expected {
        Some(expected) if expected != current => Err(VersionMismatch { expected, current }),
        _ => Ok(()),
    }
}

/// Whether the agent reports this spec version applied, without errors.
pub fn in_sync(version: u64, reported: Option<&ReportedStatus>) -> bool {
    match reported {
        Some(status) => status.spec_version == version && status.errors.is_empty(),
        // A spec nobody wrote needs no applying.
        None => version == 0,
    }
}

/// A device that reports a version newer than its spec's lies (or talks
/// to another controller): refused, never stored.
pub fn check_reported(version: u64, reported: &ReportedStatus) -> Result<(), String> {
    if reported.spec_version > version {
        Err(format!(
            "specVersion {} is newer than the device's spec (version {version}); report only versions tetherd sent",
            reported.spec_version
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_keep_off_the_deployments_section_and_a_replacement_keeps_it() {
        let current: DeviceSpec = serde_json::from_value(serde_json::json!({
            "metricsConfig": {"intervalSeconds": 5},
            "deployments": {"web": {"version": "1-a"}},
        }))
        .expect("spec");
        let replace = serde_json::json!({"loggingConfig": {"priority": 3}});
        let mask = operator_mask(&replace, None).expect("allowed");
        let updated = apply_update(&current, &replace, Some(&mask)).expect("valid");
        assert_eq!(updated.get("deployments"), current.get("deployments"));
        assert!(updated.get("metricsConfig").is_none(), "replaced");
        assert_eq!(updated["loggingConfig"]["priority"], 3);

        let sneaky = serde_json::json!({"deployments": {}});
        let err = operator_mask(&sneaky, None).expect_err("managed");
        assert_eq!(err.path, "spec.deployments");
        let masked = UpdateMask::parse("spec.deployments.web").expect("parses");
        let err = operator_mask(&serde_json::json!({}), Some(masked)).expect_err("managed");
        assert!(err.message.contains("tether deployments"), "{err}");
        let whole = UpdateMask::parse("spec").expect("parses");
        let mask = operator_mask(&replace, Some(whole)).expect("allowed");
        let updated = apply_update(&current, &replace, Some(&mask)).expect("valid");
        assert_eq!(updated.get("deployments"), current.get("deployments"));
    }
    use serde_json::json;

    fn spec(value: Value) -> DeviceSpec {
        value.as_object().cloned().expect("an object")
    }

    fn mask(text: &str) -> UpdateMask {
        UpdateMask::parse(text).expect("valid mask")
    }

    fn current() -> DeviceSpec {
        spec(json!({
            "loggingConfig": {"priority": 6, "units": ["ssh.service"]},
            "metricsConfig": {"intervalSeconds": 30},
        }))
    }

    #[test]
    fn a_field_mask_changes_only_that_field() {
        let updated = apply_update(
            &current(),
            &json!({"loggingConfig": {"priority": 3, "units": ["other.service"]}, "metricsConfig": {"intervalSeconds": 5}}),
            Some(&mask("spec.loggingConfig.priority")),
        )
        .expect("applies");
        assert_eq!(
            updated,
            spec(json!({
                "loggingConfig": {"priority": 3, "units": ["ssh.service"]},
                "metricsConfig": {"intervalSeconds": 30},
            }))
        );
    }

    #[test]
    fn a_section_mask_replaces_the_section_and_removes_what_the_request_lacks() {
        let updated = apply_update(
            &current(),
            &json!({"loggingConfig": {"enableJournalExport": true}}),
            Some(&mask("spec.loggingConfig, spec.metricsConfig")),
        )
        .expect("applies");
        assert_eq!(
            updated,
            spec(json!({"loggingConfig": {"enableJournalExport": true}}))
        );
    }

    #[test]
    fn a_mask_creates_the_section_it_reaches_into() {
        let updated = apply_update(
            &DeviceSpec::new(),
            &json!({"budgets": {"logs": 50}}),
            Some(&mask("spec.budgets.logs")),
        )
        .expect("applies");
        assert_eq!(updated, spec(json!({"budgets": {"logs": 50}})));
    }

    #[test]
    fn without_a_mask_the_whole_spec_is_replaced() {
        let updated =
            apply_update(&current(), &json!({"budgets": {"logs": 1}}), None).expect("applies");
        assert_eq!(updated, spec(json!({"budgets": {"logs": 1}})));
        let whole = apply_update(&current(), &json!({}), Some(&mask("spec"))).expect("applies");
        assert!(whole.is_empty());
    }

    #[test]
    fn the_result_is_validated_and_the_field_named() {
        let error = apply_update(
            &current(),
            &json!({"loggingConfig": {"priority": 9}}),
            Some(&mask("spec.loggingConfig.priority")),
        )
        .expect_err("refused");
        assert_eq!(
            error.to_string(),
            "spec.loggingConfig.priority: must be a whole number 0–7"
        );
        let error = apply_update(&current(), &json!({"firmware": {}}), None).expect_err("refused");
        assert_eq!(error.path, "spec.firmware");
        let error = apply_update(&current(), &json!([1]), None).expect_err("refused");
        assert_eq!(error.path, "spec");
        let error = apply_update(
            &current(),
            &json!({"loggingConfig": {"priority": {"x": 1}}}),
            Some(&mask("spec.loggingConfig.priority.x")),
        )
        .expect_err("refused");
        assert_eq!(error.path, "spec.loggingConfig.priority");
    }

    #[test]
    fn masks_must_be_paths_under_spec() {
        assert_eq!(
            mask("spec.loggingConfig,spec.budgets.logs"),
            UpdateMask(vec![
                vec!["loggingConfig".into()],
                vec!["budgets".into(), "logs".into()],
            ])
        );
        for bad in [
            "",
            "labels",
            "spec.",
            "spec..x",
            "loggingConfig",
            "spec.a b",
            "spec.x,",
        ] {
            let error = UpdateMask::parse(bad).expect_err(bad);
            assert_eq!(error.path, "updateMask", "{bad}");
        }
    }

    #[test]
    fn the_version_moves_only_on_a_change() {
        let current = current();
        assert_eq!(next_version(4, &current, &current.clone()), None);
        let mut changed = current.clone();
        changed.remove("metricsConfig");
        assert_eq!(next_version(4, &current, &changed), Some(5));
    }

    #[test]
    fn if_match_names_the_version_the_update_was_made_against() {
        assert_eq!(parse_if_match("\"3\""), Ok(3));
        assert_eq!(parse_if_match("3"), Ok(3));
        assert_eq!(
            parse_if_match("W/\"3\"").expect_err("weak").path,
            "If-Match"
        );
        assert_eq!(check_precondition(None, 7), Ok(()));
        assert_eq!(check_precondition(Some(7), 7), Ok(()));
        assert_eq!(
            check_precondition(Some(6), 7),
            Err(VersionMismatch {
                expected: 6,
                current: 7
            })
        );
    }

    #[test]
    fn in_sync_means_this_version_applied_without_errors() {
        let applied = |version, errors: Vec<SpecError>| ReportedStatus {
            spec_version: version,
            errors,
            ..ReportedStatus::default()
        };
        assert!(in_sync(0, None));
        assert!(!in_sync(1, None));
        assert!(in_sync(2, Some(&applied(2, vec![]))));
        assert!(!in_sync(3, Some(&applied(2, vec![]))));
        assert!(!in_sync(
            2,
            Some(&applied(
                2,
                vec![SpecError::new("spec.loggingConfig", "no")]
            ))
        ));
    }

    #[test]
    fn a_version_newer_than_the_spec_is_refused() {
        let reported = |version| ReportedStatus {
            spec_version: version,
            ..ReportedStatus::default()
        };
        assert!(check_reported(3, &reported(3)).is_ok());
        assert!(check_reported(3, &reported(1)).is_ok());
        let reason = check_reported(3, &reported(4)).expect_err("a lie");
        assert!(reason.contains("specVersion 4"), "{reason}");
    }
}
