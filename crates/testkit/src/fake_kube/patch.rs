//! PATCH bodies: JSON merge patch (RFC 7386) and the part of strategic merge
//! patch kubectl sends (`kubectl apply`, `rollout restart`, `scale`).
//! Strategic merge here merges lists of objects by their `name` (containers,
//! env, volumes, ports with names) and replaces other lists; `$patch: delete`
//! removes a merged element and the ordering and retain-keys directives are
//! dropped, since they only order what the merge already holds.

use serde_json::Value;

/// RFC 7386: objects merge, `null` deletes, anything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

pub(crate) fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        *target = Value::Object(replaced);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.get("name").is_some()) =>
            {
                let existing = target
                    .entry(key.clone())
                    .or_insert(Value::Array(Vec::new()));
                merge_named(existing, items);
            }
            _ => strategic(target.entry(key.clone()).or_insert(Value::Null), value),
        }
    }
}

fn merge_named(target: &mut Value, items: &[Value]) {
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let Value::Array(list) = target else {
        return;
    };
    for item in items {
        let position = list.iter().position(|e| e.get("name") == item.get("name"));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(at), true) => {
                list.remove(at);
            }
            (Some(at), false) => strategic(&mut list[at], item),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, item);
                list.push(fresh);
            }
            (None, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_restart_annotation_joins_the_pod_template_and_containers_merge_by_name() {
        let mut deployment = json!({"spec": {"replicas": 2, "template": {"spec": {
            "containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}}});
        strategic(
            &mut deployment,
            &json!({"spec": {"template": {
                "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}},
                "spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                         "containers": [{"name": "b", "image": "b:2"}]}}}}),
        );
        assert_eq!(
            deployment,
            json!({"spec": {"replicas": 2, "template": {
                "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}},
                "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}]}}}})
        );
    }

    #[test]
    fn merge_patch_null_deletes_and_lists_replace() {
        let mut object = json!({"a": 1, "b": {"c": 2, "d": [1, 2]}});
        merge(&mut object, &json!({"a": null, "b": {"d": [3]}}));
        assert_eq!(object, json!({"b": {"c": 2, "d": [3]}}));
    }
}
