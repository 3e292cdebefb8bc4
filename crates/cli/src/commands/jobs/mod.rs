//! `tether jobs …`: fleet-wide jobs: list, show, cancel, per-device results;
//! and the live progress `tether actions run -l … --wait` shows.

mod cancel;
mod get;
mod list;
mod results;

use std::io::IsTerminal;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::api::{Job, JobState};
use tokio::time::Instant;

use super::{CommandError, Context, Outcome};
use crate::client::ApiClient;
use crate::output::{self, OutputFormat};

/// How often the progress bar asks tetherd for the counts.
const BAR_REFRESH: Duration = Duration::from_millis(250);
/// How often progress is written as a plain line when not on a terminal.
const LINE_REFRESH: Duration = Duration::from_secs(1);

/// Follow fleet-wide jobs and their per-device results.
#[derive(Debug, clap::Subcommand)]
pub enum Jobs {
    List(list::List),
    Get(get::Get),
    Cancel(cancel::Cancel),
    Results(results::Results),
}

impl Jobs {
    pub fn description(&self) -> String {
        match self {
            Jobs::List(cmd) => cmd.description(),
            Jobs::Get(cmd) => cmd.description(),
            Jobs::Cancel(cmd) => cmd.description(),
            Jobs::Results(cmd) => cmd.description(),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        match self {
            Jobs::List(cmd) => cmd.run(ctx).await,
            Jobs::Get(cmd) => cmd.run(ctx).await,
            Jobs::Cancel(cmd) => cmd.run(ctx).await,
            Jobs::Results(cmd) => cmd.run(ctx).await,
        }
    }
}

/// Shows the job's progress on standard error until its last action has
/// ended or `timeout` passed (a bar on a terminal, else a line a second),
/// then prints it and tells how it went.
pub async fn follow(
    ctx: &Context,
    client: &ApiClient,
    mut job: Job,
    timeout: Duration,
) -> Result<Outcome, CommandError> {
    let deadline = Instant::now() + timeout;
    // The bar draws on standard error; a line a second reads better in a
    // log or a pipe.
    let on_terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let bar = on_terminal.then(|| {
        let bar = indicatif::ProgressBar::new(job.devices);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let refresh = if on_terminal {
        BAR_REFRESH
    } else {
        LINE_REFRESH
    };
    loop {
        match &bar {
            Some(bar) => {
                bar.set_position(job.counts.finished());
                bar.set_message(progress(&job));
            }
            None => eprintln!(
                "{}/{} {}",
                job.counts.finished(),
                job.devices,
                progress(&job)
            ),
        }
        if job.finished_at.is_some() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(refresh.min(deadline.saturating_duration_since(Instant::now()))).await;
        job = client.get_job(&job.id).await?;
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    print_job(ctx, &job)?;
    Ok(outcome(&job, timeout))
}

/// `succeeded 9, failed 1, open 40`: what a person watches for.
fn progress(job: &Job) -> String {
    let c = &job.counts;
    let mut parts = vec![format!("succeeded {}", c.succeeded)];
    let unsuccessful = [
        ("failed", c.failed),
        ("rejected", c.rejected),
        ("timed out", c.timed_out),
        ("expired", c.expired),
        ("cancelled", c.cancelled),
    ];
    parts.extend(
        unsuccessful
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}")),
    );
    let open = c.queued + c.pending + c.delivered;
    if open > 0 {
        parts.push(format!("open {open}"));
    }
    parts.join(", ")
}

/// Exit 0 only when every device's action succeeded.
fn outcome(job: &Job, timeout: Duration) -> Outcome {
    let c = &job.counts;
    if job.finished_at.is_none() {
        return Outcome::Failed {
            reason: format!(
                "job {} still running after {} ({}); follow it with `tether jobs get {} --wait`",
                job.id,
                humantime::format_duration(timeout),
                progress(job),
                job.id
            ),
        };
    }
    if c.succeeded == c.total() && job.state == JobState::Completed {
        return Outcome::Success;
    }
    Outcome::Failed {
        reason: format!(
            "{} of {} devices did not succeed ({}); see `tether jobs results {} --state failed`",
            c.total() - c.succeeded,
            c.total(),
            progress(job),
            job.id
        ),
    }
}

pub(crate) fn print_job(ctx: &Context, job: &Job) -> Result<(), CommandError> {
    let now = Utc::now();
    output::print(ctx.output, job, |job| describe(now, job))?;
    Ok(())
}

fn describe(now: DateTime<Utc>, job: &Job) -> String {
    let limit = |value: Option<u32>, unit: &str| {
        value.map_or_else(|| "unlimited".to_owned(), |v| format!("{v}{unit}"))
    };
    output::fields(&[
        ("ID", job.id.clone()),
        ("ACTION", job.action.clone()),
        ("SELECTOR", job.label_selector.clone()),
        ("STATE", job.state.to_string()),
        ("DEVICES", job.devices.to_string()),
        ("PROGRESS", progress(job)),
        ("CONCURRENCY", limit(job.concurrency, "")),
        ("RATE", limit(job.rate_per_second, "/s")),
        (
            "CREATED",
            format!(
                "{} ({} ago)",
                output::timestamp(job.created_at),
                output::age(now, job.created_at)
            ),
        ),
        ("FINISHED", output::age_or_none(now, job.finished_at)),
    ])
}

fn table(now: DateTime<Utc>, jobs: &[Job]) -> String {
    output::columns(
        [
            "ID", "ACTION", "SELECTOR", "STATE", "DEVICES", "PROGRESS", "AGE",
        ],
        jobs.iter()
            .map(|job| {
                [
                    job.id.clone(),
                    job.action.clone(),
                    job.label_selector.clone(),
                    job.state.to_string(),
                    job.devices.to_string(),
                    progress(job),
                    output::age(now, job.created_at),
                ]
            })
            .collect(),
    )
}

/// Whether the job output goes to a person (a table) or a script.
fn for_people(ctx: &Context) -> bool {
    ctx.output == OutputFormat::Table
}

#[cfg(test)]
mod tests {
    use tether_proto::api::JobCounts;

    use super::*;

    fn job(counts: JobCounts, finished: bool) -> Job {
        let created_at = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        Job {
            id: "j1".into(),
            label_selector: "site=berlin".into(),
            action: "get-node-ip".into(),
            input: serde_json::json!({}),
            state: JobState::Completed,
            devices: counts.total(),
            counts,
            concurrency: Some(5),
            rate_per_second: None,
            ttl_seconds: 3600,
            timeout_seconds: 300,
            created_at,
            cancelled_at: None,
            finished_at: finished.then_some(created_at),
        }
    }

    #[test]
    fn progress_names_only_what_happened() {
        let counts = JobCounts {
            succeeded: 9,
            failed: 1,
            queued: 30,
            delivered: 10,
            ..JobCounts::default()
        };
        assert_eq!(
            progress(&job(counts, false)),
            "succeeded 9, failed 1, open 40"
        );
    }

    #[test]
    fn only_a_job_where_every_device_succeeded_exits_zero() {
        let timeout = Duration::from_secs(30);
        let all = JobCounts {
            succeeded: 3,
            ..JobCounts::default()
        };
        assert_eq!(outcome(&job(all, true), timeout), Outcome::Success);
        let some = JobCounts {
            succeeded: 2,
            expired: 1,
            ..JobCounts::default()
        };
        let Outcome::Failed { reason } = outcome(&job(some, true), timeout) else {
            panic!("one expired");
        };
        assert!(
            reason.starts_with("1 of 3 devices did not succeed (succeeded 2, expired 1)"),
            "{reason}"
        );
        let Outcome::Failed { reason } = outcome(&job(all, false), timeout) else {
            panic!("not finished");
        };
        assert!(reason.contains("still running after 30s"), "{reason}");
    }
}
