//! The `chart_templates`, `deployments`, `deployment_revisions`,
//! `deployment_templates` and `deployment_devices` tables (ADR 0029).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;
use tether_proto::desired::DeploymentState;
use tether_proto::desired::resources::{ChartTemplateSpec, DeploymentSpecification, RolloutPhase};
use tether_proto::desired::updates::UpdateHold;
use tether_proto::labels::LabelSelector;

use super::codec::{
    device_id, from_json, get, limit, millis, time, to_i64, to_json, to_u64, violates,
};
use super::selector::label_filter;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    pub name: String,
    pub spec: ChartTemplateSpec,
    pub used_by: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub name: String,
    pub spec: DeploymentSpecification,
    pub revision: u64,
    pub phase: RolloutPhase,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One device's row of a deployment's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentDeviceRecord {
    pub device: DeviceId,
    pub revision: Option<u64>,
    pub previous_revision: Option<u64>,
    pub version: Option<String>,
    pub batch: Option<u32>,
    pub rolled_back_from: Option<u64>,
    pub assigned_at: DateTime<Utc>,
    pub reported_version: Option<String>,
    pub state: Option<DeploymentState>,
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A write of a deployment: its spec as a new revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentWrite<'a> {
    pub name: &'a str,
    pub spec: &'a DeploymentSpecification,
    /// The revision's body (JSON), templates resolved.
    pub body: &'a str,
}

const DEPLOYMENT_COLUMNS: &str = "name, spec, revision, phase, reason, created_at, updated_at";
const DEVICE_COLUMNS: &str = "device, revision, previous_revision, version, batch, \
     rolled_back_from, assigned_at, reported_version, state, reason, updated_at";

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

fn phase_from(name: &str) -> Result<RolloutPhase, StoreError> {
    Ok(match name {
        "progressing" => RolloutPhase::Progressing,
        "complete" => RolloutPhase::Complete,
        "paused" => RolloutPhase::Paused,
        "deleting" => RolloutPhase::Deleting,
        other => {
            return Err(StoreError::Corrupt(format!(
                "deployment phase {other:?} is not one tetherd writes"
            )));
        }
    })
}

fn state_from(name: &str) -> Result<DeploymentState, StoreError> {
    Ok(match name {
        "ready" => DeploymentState::Ready,
        "progressing" => DeploymentState::Progressing,
        "failed" => DeploymentState::Failed,
        other => {
            return Err(StoreError::Corrupt(format!(
                "deployment state {other:?} is not one tetherd writes"
            )));
        }
    })
}

fn optional_u64(row: &AnyRow, column: &'static str) -> Result<Option<u64>, StoreError> {
    get::<Option<i64>>(row, column)?
        .map(|value| to_u64(value, column))
        .transpose()
}

fn deployment_from_row(row: &AnyRow) -> Result<DeploymentRecord, StoreError> {
    let name: String = get(row, "name")?;
    Ok(DeploymentRecord {
        spec: from_json(&get::<String>(row, "spec")?, &format!("deployment {name}"))?,
        revision: to_u64(get(row, "revision")?, "a deployment's revision")?,
        phase: phase_from(&get::<String>(row, "phase")?)?,
        reason: get(row, "reason")?,
        created_at: time(get(row, "created_at")?, "a deployment's created_at")?,
        updated_at: time(get(row, "updated_at")?, "a deployment's updated_at")?,
        name,
    })
}

fn device_from_row(row: &AnyRow) -> Result<DeploymentDeviceRecord, StoreError> {
    Ok(DeploymentDeviceRecord {
        device: device_id(get(row, "device")?)?,
        revision: optional_u64(row, "revision")?,
        previous_revision: optional_u64(row, "previous_revision")?,
        version: get(row, "version")?,
        batch: optional_u64(row, "batch")?.map(|b| u32::try_from(b).unwrap_or(u32::MAX)),
        rolled_back_from: optional_u64(row, "rolled_back_from")?,
        assigned_at: time(get(row, "assigned_at")?, "assigned_at")?,
        reported_version: get(row, "reported_version")?,
        state: get::<Option<String>>(row, "state")?
            .as_deref()
            .map(state_from)
            .transpose()?,
        reason: get(row, "reason")?,
        updated_at: time(get(row, "updated_at")?, "updated_at")?,
    })
}

impl Store {
    /// `Conflict` if a template of that name exists.
    pub async fn insert_template(
        &self,
        name: &str,
        spec: &ChartTemplateSpec,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO chart_templates (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(name)
        .bind(to_json(spec, "a chart template")?)
        .bind(millis(now))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::UniqueViolation) {
                StoreError::Conflict {
                    what: format!("chart template {name}"),
                }
            } else {
                StoreError::Query {
                    context: "create a chart template",
                    source,
                }
            }
        })?;
        Ok(())
    }

    /// Replaces a template's spec; `NotFound` if there is none.
    pub async fn update_template(
        &self,
        name: &str,
        spec: &ChartTemplateSpec,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let updated =
            sqlx::query("UPDATE chart_templates SET spec = $1, updated_at = $2 WHERE name = $3")
                .bind(to_json(spec, "a chart template")?)
                .bind(millis(now))
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(query_error("update a chart template"))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("chart template {name}"),
            });
        }
        Ok(())
    }

    /// Templates by name: at most `limit` after `after`, each with the
    /// deployments that use it.
    pub async fn list_templates(
        &self,
        names: Option<&[String]>,
        after: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<TemplateRecord>, StoreError> {
        let context = "list chart templates";
        let rows = match names {
            Some(names) => {
                let mut found = Vec::new();
                for name in names {
                    if let Some(row) = sqlx::query(
                        "SELECT name, spec, created_at, updated_at FROM chart_templates WHERE name = $1",
                    )
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(query_error(context))?
                    {
                        found.push(row);
                    }
                }
                found
            }
            None => sqlx::query(
                "SELECT name, spec, created_at, updated_at FROM chart_templates \
                 WHERE name > $1 ORDER BY name LIMIT $2",
            )
            .bind(after.unwrap_or_default())
            .bind(limit(limit_to))
            .fetch_all(&self.pool)
            .await
            .map_err(query_error(context))?,
        };
        let mut templates = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = get(row, "name")?;
            let used_by = self.deployments_using(&name).await?;
            templates.push(TemplateRecord {
                spec: from_json(
                    &get::<String>(row, "spec")?,
                    &format!("chart template {name}"),
                )?,
                used_by,
                created_at: time(get(row, "created_at")?, "a template's created_at")?,
                updated_at: time(get(row, "updated_at")?, "a template's updated_at")?,
                name,
            });
        }
        Ok(templates)
    }

    /// `NotFound` if there is none; `Conflict` naming the deployments that
    /// use it.
    pub async fn delete_template(&self, name: &str) -> Result<(), StoreError> {
        let used = self
            .list_templates(Some(&[name.to_owned()]), None, 1)
            .await?
            .pop()
            .map(|t| t.used_by);
        match used {
            None => Err(StoreError::NotFound {
                what: format!("chart template {name}"),
            }),
            Some(users) if !users.is_empty() => Err(StoreError::Conflict {
                what: format!(
                    "chart template {name}, used by deployment{} {}",
                    if users.len() == 1 { "" } else { "s" },
                    users.join(", ")
                ),
            }),
            Some(_) => {
                sqlx::query("DELETE FROM chart_templates WHERE name = $1")
                    .bind(name)
                    .execute(&self.pool)
                    .await
                    .map_err(|source| {
                        if violates(&source, ErrorKind::ForeignKeyViolation) {
                            StoreError::Conflict {
                                what: format!("chart template {name}, used by a deployment"),
                            }
                        } else {
                            StoreError::Query {
                                context: "delete a chart template",
                                source,
                            }
                        }
                    })?;
                Ok(())
            }
        }
    }

    /// Creates a deployment at revision 1 (`Conflict` if the name is
    /// taken), or — with `expected_revision` — makes its next revision
    /// (`Conflict` if it moved on, `NotFound` if gone). The rollout starts
    /// over.
    pub async fn write_deployment(
        &self,
        write: &DeploymentWrite<'_>,
        expected_revision: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let context = "write a deployment";
        let name = write.name;
        let mut tx = self.begin(context).await?;
        let revision = match expected_revision {
            None => {
                sqlx::query(&format!(
                    "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) VALUES ($1, $2, 1, 'progressing', NULL, $3, $3)"
                ))
                .bind(name)
                .bind(to_json(write.spec, "a deployment")?)
                .bind(millis(now))
                .execute(&mut *tx)
                .await
                .map_err(|source| {
                    if violates(&source, ErrorKind::UniqueViolation) {
                        StoreError::Conflict {
                            what: format!("deployment {name}"),
                        }
                    } else {
                        StoreError::Query { context, source }
                    }
                })?;
                1
            }
            Some(expected) => {
                let next = expected + 1;
                let updated = sqlx::query(
                    "UPDATE deployments SET spec = $1, revision = $2, phase = 'progressing', \
                     reason = NULL, updated_at = $3 \
                     WHERE name = $4 AND revision = $5 AND phase <> 'deleting'",
                )
                .bind(to_json(write.spec, "a deployment")?)
                .bind(to_i64(next, "a revision")?)
                .bind(millis(now))
                .bind(name)
                .bind(to_i64(expected, "a revision")?)
                .execute(&mut *tx)
                .await
                .map_err(query_error(context))?;
                if updated.rows_affected() == 0 {
                    return Err(StoreError::Conflict {
                        what: format!("deployment {name} at revision {expected}"),
                    });
                }
                sqlx::query("DELETE FROM deployment_templates WHERE deployment = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error(context))?;
                next
            }
        };
        if let Some(version) = &write.spec.agent_release {
            self.share_agent_release(&mut tx, version).await?;
        }
        sqlx::query(
            "INSERT INTO deployment_revisions (deployment, revision, body, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(to_i64(revision, "a revision")?)
        .bind(write.body)
        .bind(millis(now))
        .execute(&mut *tx)
        .await
        .map_err(query_error(context))?;
        for template in &write.spec.charts {
            sqlx::query("INSERT INTO deployment_templates (deployment, template) VALUES ($1, $2)")
                .bind(name)
                .bind(template)
                .execute(&mut *tx)
                .await
                .map_err(|source| {
                    if violates(&source, ErrorKind::ForeignKeyViolation) {
                        StoreError::NotFound {
                            what: format!("chart template {template}"),
                        }
                    } else {
                        StoreError::Query { context, source }
                    }
                })?;
        }
        tx.commit().await.map_err(query_error(context))?;
        Ok(revision)
    }

    pub async fn get_deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a deployment"))?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    /// Deployments by name: at most `limit` after `after`.
    pub async fn list_deployments(
        &self,
        after: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE name > $1 ORDER BY name LIMIT $2"
        ))
        .bind(after.unwrap_or_default())
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list deployments"))?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// The deployments that use `template`.
    pub async fn deployments_using(&self, template: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT deployment FROM deployment_templates WHERE template = $1 ORDER BY deployment",
        )
        .bind(template)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list a template's deployments"))
    }

    pub async fn get_revision_body(
        &self,
        deployment: &str,
        revision: u64,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT body FROM deployment_revisions WHERE deployment = $1 AND revision = $2",
        )
        .bind(deployment)
        .bind(to_i64(revision, "a revision")?)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a deployment revision"))
    }

    /// Sets the rollout's phase if the deployment is still at `revision`
    /// (a new revision starts its own rollout); `Deleting` sticks.
    pub async fn set_deployment_phase(
        &self,
        name: &str,
        revision: Option<u64>,
        phase: RolloutPhase,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE deployments SET phase = $1, reason = $2, updated_at = $3 \
             WHERE name = $4 AND ($5 < 0 OR revision = $5) \
             AND (phase <> 'deleting' OR $1 = 'deleting')",
        )
        .bind(phase.as_str())
        .bind(reason)
        .bind(millis(now))
        .bind(name)
        .bind(revision.map_or(Ok(-1), |r| to_i64(r, "a revision"))?)
        .execute(&self.pool)
        .await
        .map_err(query_error("set a deployment's phase"))?;
        Ok(updated.rows_affected() > 0)
    }

    pub async fn delete_deployment(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deployments WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete a deployment"))?;
        Ok(())
    }

    /// The names of the devices `selector` picks, sorted.
    pub async fn device_names(
        &self,
        selector: &LabelSelector,
    ) -> Result<Vec<DeviceId>, StoreError> {
        let filter = label_filter(selector, 1);
        let sql = format!(
            "SELECT d.name FROM devices d WHERE 1 = 1{} ORDER BY d.name",
            filter.and_clause()
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for value in &filter.binds {
            query = query.bind(value);
        }
        query
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list devices by labels"))?
            .into_iter()
            .map(device_id)
            .collect()
    }

    /// Every device whose agent last reported update holds, with them:
    /// rollouts pass these over. Few at a time, so read whole.
    pub async fn update_holds(&self) -> Result<BTreeMap<DeviceId, Vec<UpdateHold>>, StoreError> {
        let rows = sqlx::query(
            "SELECT device, update_holds FROM device_specs WHERE update_holds IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list devices' update holds"))?;
        rows.iter()
            .map(|row| {
                let device = device_id(get(row, "device")?)?;
                let holds: String = get(row, "update_holds")?;
                Ok((device, from_json(&holds, "update holds")?))
            })
            .collect()
    }

    pub async fn deployment_devices(
        &self,
        deployment: &str,
    ) -> Result<Vec<DeploymentDeviceRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM deployment_devices WHERE deployment = $1 ORDER BY device"
        ))
        .bind(deployment)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list a deployment's devices"))?;
        rows.iter().map(device_from_row).collect()
    }

    /// Records what a device was sent (or that it was put back).
    pub async fn put_deployment_device(
        &self,
        deployment: &str,
        record: &DeploymentDeviceRecord,
    ) -> Result<(), StoreError> {
        let context = "record a deployment's device";
        let optional = |value: Option<u64>| value.map(|v| to_i64(v, "a revision")).transpose();
        sqlx::query(&format!(
            "INSERT INTO deployment_devices (deployment, {DEVICE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (deployment, device) DO UPDATE SET revision = excluded.revision, \
             previous_revision = excluded.previous_revision, version = excluded.version, \
             batch = excluded.batch, rolled_back_from = excluded.rolled_back_from, \
             assigned_at = excluded.assigned_at, reported_version = excluded.reported_version, \
             state = excluded.state, reason = excluded.reason, updated_at = excluded.updated_at"
        ))
        .bind(deployment)
        .bind(record.device.as_str())
        .bind(optional(record.revision)?)
        .bind(optional(record.previous_revision)?)
        .bind(record.version.as_deref())
        .bind(record.batch.map(i64::from))
        .bind(optional(record.rolled_back_from)?)
        .bind(millis(record.assigned_at))
        .bind(record.reported_version.as_deref())
        .bind(record.state.map(DeploymentState::as_str))
        .bind(record.reason.as_deref())
        .bind(millis(record.updated_at))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::ForeignKeyViolation) {
                StoreError::NotFound {
                    what: format!("device {} or deployment {deployment}", record.device),
                }
            } else {
                StoreError::Query { context, source }
            }
        })?;
        Ok(())
    }

    pub async fn remove_deployment_device(
        &self,
        deployment: &str,
        device: &DeviceId,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deployment_devices WHERE deployment = $1 AND device = $2")
            .bind(deployment)
            .bind(device.as_str())
            .execute(&self.pool)
            .await
            .map_err(query_error("remove a deployment's device"))?;
        Ok(())
    }

    /// What a device reported of its deployments; rows of deployments it
    /// was not sent are left alone. A device put back keeps the reason it
    /// failed.
    pub async fn record_deployment_reports(
        &self,
        device: &DeviceId,
        reports: &BTreeMap<String, tether_proto::desired::DeploymentStatus>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for (deployment, status) in reports {
            sqlx::query(
                "UPDATE deployment_devices SET reported_version = $1, state = $2, \
                 reason = CASE WHEN rolled_back_from IS NULL THEN $3 ELSE reason END, \
                 updated_at = $4 WHERE deployment = $5 AND device = $6",
            )
            .bind(&status.version)
            .bind(status.state.as_str())
            .bind(status.reason.as_deref())
            .bind(millis(now))
            .bind(deployment)
            .bind(device.as_str())
            .execute(&self.pool)
            .await
            .map_err(query_error("record a device's deployment report"))?;
        }
        Ok(())
    }
}
