//! A feature's bytes a day (the spec's `budgets`, e.g. logs 50 MB a day on
//! a metered link), spent so that the most severe records go last.
//!
//! The day's bytes are a hard cap: once they are spent, nothing more goes
//! until the next UTC day. Within the day the budget is a token bucket that
//! fills at the day's rate and holds an hour's worth, so a burst in the
//! morning cannot spend the whole day; a record is admitted only while the
//! bucket keeps its priority's reserve, so when the bucket runs low debug
//! lines go first, then info, notice and warning, and errors and worse go
//! until the cap (whose last few percent are theirs alone). Costs are wire bytes (compressed), estimated from the
//! record's JSON with the ratio the last batches had, and corrected by what
//! each batch really cost when it is sent.
//!
//! The same bucket and cap slow rather than drop for `spoolReplay`
//! ([`DailyBudget::delay`]): a backlog's batch waits until it fits.
//!
//! A stream's day survives a restart: its counts ([`BudgetDay`]) are saved
//! in the stream's spool metadata with the acknowledged position, so an
//! agent restarted at noon goes on spending the same day's bytes.

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tether_proto::telemetry::Dropped;

const SECONDS_A_DAY: f64 = 86_400.0;
/// The bucket holds this share of the day: an hour.
const BURST_SHARE: f64 = 1.0 / 24.0;
/// Wire bytes per JSON byte before any batch was sent (zlib on log lines).
const INITIAL_RATIO: f64 = 0.3;
/// How much each batch moves the learned ratio.
const RATIO_WEIGHT: f64 = 0.2;

/// Share of the bucket a record of this priority may use: what it must
/// leave in the bucket is the rest. Metrics have no priority and count as
/// errors (they stop only at the cap).
fn share(priority: Option<u8>) -> f64 {
    match priority {
        None | Some(0..=3) => 1.0,
        Some(4) => 0.9,
        Some(5) => 0.75,
        Some(6) => 0.5,
        Some(_) => 0.25,
    }
}

/// Share of the day's cap a record of this priority may reach: the last
/// bytes of a day are kept for errors.
fn cap_share(priority: Option<u8>) -> f64 {
    match priority {
        None | Some(0..=3) => 1.0,
        Some(4) => 0.98,
        Some(5) => 0.95,
        Some(_) => 0.9,
    }
}

/// What a limited budget has counted today: saved so that a restarted
/// agent keeps counting against the same day's bytes and bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetDay {
    /// The limit these counts were made under: a different one after the
    /// restart refills the bucket, as a spec change does.
    pub limit: u64,
    pub day: NaiveDate,
    pub spent: f64,
    pub tokens: f64,
    pub filled_at: DateTime<Utc>,
    pub ratio: f64,
}

#[derive(Debug, Clone)]
pub struct DailyBudget {
    /// Bytes a day; `None` is unlimited.
    limit: Option<u64>,
    day: Option<NaiveDate>,
    /// Bytes counted today (estimates, then corrected).
    spent: f64,
    tokens: f64,
    filled_at: Option<DateTime<Utc>>,
    ratio: f64,
    /// Records not admitted, since the agent started.
    dropped: Dropped,
}

impl DailyBudget {
    pub fn new(limit: Option<u64>) -> Self {
        let mut budget = Self {
            limit: None,
            day: None,
            spent: 0.0,
            tokens: 0.0,
            filled_at: None,
            ratio: INITIAL_RATIO,
            dropped: Dropped::default(),
        };
        budget.set_limit(limit);
        budget
    }

    /// A budget that goes on counting from `saved` (under its limit until
    /// the spec sets one), or a new unlimited one.
    pub fn restored(saved: Option<&BudgetDay>) -> Self {
        let mut budget = Self::new(None);
        if let Some(saved) = saved {
            budget.limit = Some(saved.limit);
            budget.day = Some(saved.day);
            budget.spent = saved.spent;
            budget.tokens = saved.tokens;
            budget.filled_at = Some(saved.filled_at);
            budget.ratio = saved.ratio;
        }
        budget
    }

    /// What to save: `None` while unlimited or before its first record.
    pub fn saved(&self) -> Option<BudgetDay> {
        let saved = BudgetDay {
            limit: self.limit?,
            day: self.day?,
            spent: self.spent,
            tokens: self.tokens,
            filled_at: self.filled_at?,
            ratio: self.ratio,
        };
        // JSON has no NaN: a count that is not a number is not saved.
        [saved.spent, saved.tokens, saved.ratio]
            .iter()
            .all(|n| n.is_finite())
            .then_some(saved)
    }

    /// A new limit (the spec changed): the bucket starts full, what was
    /// spent today still counts.
    pub fn set_limit(&mut self, limit: Option<u64>) {
        if self.limit != limit {
            self.limit = limit;
            self.tokens = self.burst();
        }
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// What was not admitted, by priority (metrics count in the total only).
    pub fn dropped(&self) -> &Dropped {
        &self.dropped
    }

    fn burst(&self) -> f64 {
        self.limit.map_or(0.0, |limit| limit as f64 * BURST_SHARE)
    }

    /// Starts a new day's cap, and fills the bucket for the time since the
    /// last call.
    fn advance(&mut self, now: DateTime<Utc>) {
        let today = now.date_naive();
        if self.day != Some(today) {
            self.day = Some(today);
            self.spent = 0.0;
        }
        if let (Some(limit), Some(filled_at)) = (self.limit, self.filled_at) {
            let seconds = (now - filled_at).num_milliseconds().max(0) as f64 / 1000.0;
            self.tokens = (self.tokens + limit as f64 * seconds / SECONDS_A_DAY).min(self.burst());
        }
        self.filled_at = Some(now);
    }

    /// Whether a record of `json_bytes` and `priority` may be sent; if so
    /// its estimated cost is counted, if not it is counted as dropped.
    pub fn admit(&mut self, now: DateTime<Utc>, priority: Option<u8>, json_bytes: usize) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        self.advance(now);
        let cost = json_bytes as f64 * self.ratio;
        let over_cap = self.spent + cost > limit as f64 * cap_share(priority);
        // Errors and worse go until the cap, whatever the bucket holds.
        let share = share(priority);
        let over_share = share < 1.0 && self.tokens - cost < self.burst() * (1.0 - share);
        if over_cap || over_share {
            self.dropped.total += 1;
            if let Some(priority) = priority {
                self.dropped.by_priority[usize::from(priority.min(7))] += 1;
            }
            return false;
        }
        self.tokens -= cost;
        self.spent += cost;
        true
    }

    /// For a budget that slows instead of dropping (`spoolReplay`): how
    /// long a batch of `wire_bytes` must wait, or `None` if it may go now
    /// (then it is counted). A batch larger than the bucket goes once the
    /// bucket is full, and the day's first batch goes whatever its size, so
    /// none waits forever behind its own size.
    pub fn delay(&mut self, now: DateTime<Utc>, wire_bytes: usize) -> Option<Duration> {
        let limit = self.limit? as f64;
        self.advance(now);
        let cost = wire_bytes as f64;
        if self.spent > 0.0 && self.spent + cost > limit {
            let tomorrow = now
                .date_naive()
                .checked_add_days(Days::new(1))
                .and_then(|day| day.and_hms_opt(0, 0, 0))
                .map_or(now, |midnight| midnight.and_utc());
            return Some(
                (tomorrow - now)
                    .to_std()
                    .unwrap_or_default()
                    .max(Duration::from_millis(1)),
            );
        }
        let needed = cost.min(self.burst());
        if self.tokens < needed {
            let seconds = (needed - self.tokens) * SECONDS_A_DAY / limit;
            return Some(Duration::from_secs_f64(seconds.clamp(0.001, SECONDS_A_DAY)));
        }
        self.tokens -= cost;
        self.spent += cost;
        None
    }

    /// A batch of `json_bytes` went out as `wire_bytes`: what it cost
    /// replaces the estimate, and the ratio learns from it.
    pub fn sent(&mut self, now: DateTime<Utc>, json_bytes: usize, wire_bytes: usize) {
        if self.limit.is_none() || json_bytes == 0 {
            return;
        }
        self.advance(now);
        let correction = wire_bytes as f64 - json_bytes as f64 * self.ratio;
        self.spent = (self.spent + correction).max(0.0);
        self.tokens -= correction;
        let observed = wire_bytes as f64 / json_bytes as f64;
        self.ratio += (observed - self.ratio) * RATIO_WEIGHT;
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use tether_proto::telemetry::{self, LogRecord, Records, TelemetryBatch};

    use super::*;

    fn midnight() -> DateTime<Utc> {
        "2026-12-02T00:00:00Z".parse().expect("valid")
    }

    #[test]
    fn without_a_limit_everything_goes() {
        let mut budget = DailyBudget::new(None);
        for _ in 0..1000 {
            assert!(budget.admit(midnight(), Some(7), 10_000));
        }
        assert_eq!(budget.dropped().total, 0);
    }

    #[test]
    fn the_day_s_cap_holds_and_a_new_day_starts_over() {
        let mut budget = DailyBudget::new(Some(10_000));
        let mut now = midnight();
        let mut admitted = 0;
        // Errors only, one a minute, each ~30 wire bytes: 1,440 a day is
        // 43 KB wanted against 10 KB allowed.
        for _ in 0..1440 {
            if budget.admit(now, Some(3), 100) {
                admitted += 1;
            }
            now += TimeDelta::minutes(1);
        }
        let spent = admitted as f64 * 100.0 * INITIAL_RATIO;
        assert!(spent <= 10_000.0, "{spent}");
        assert!(spent >= 9_500.0, "the day's bytes are used: {spent}");
        assert!(budget.admit(now, Some(3), 100), "a new day");
    }

    #[test]
    fn a_restored_budget_goes_on_counting_the_same_day() {
        let mut budget = DailyBudget::new(Some(10_000));
        let noon = midnight() + TimeDelta::hours(12);
        // Errors go until the cap: 300 of 30 bytes spend 9,000 of it.
        for _ in 0..300 {
            assert!(budget.admit(noon, Some(3), 100));
        }
        let saved = budget.saved().expect("a limited budget that counted");
        let json = serde_json::to_string(&saved).expect("json");
        let saved: BudgetDay = serde_json::from_str(&json).expect("reads back");

        let mut restarted = DailyBudget::restored(Some(&saved));
        restarted.set_limit(Some(10_000));
        let admitted = (0..100)
            .filter(|_| restarted.admit(noon + TimeDelta::minutes(1), Some(3), 100))
            .count();
        assert_eq!(admitted, 33, "only the day's last 1,000 bytes are left");
        // The next day starts over.
        let mut tomorrow = DailyBudget::restored(Some(&saved));
        assert!(tomorrow.admit(noon + TimeDelta::days(1), Some(6), 100));
        let fresh = DailyBudget::restored(Some(&saved));
        assert_eq!(fresh.limit(), Some(10_000), "enforced until the spec says");
        assert!(
            DailyBudget::new(None).saved().is_none(),
            "unlimited: nothing"
        );
    }

    #[test]
    fn a_replay_budget_slows_batches_to_its_rate_and_drops_none() {
        // 2,400 bytes a day: 100 an hour, the bucket's size.
        let mut budget = DailyBudget::new(Some(2_400));
        let start = midnight() + TimeDelta::hours(1);
        assert_eq!(DailyBudget::new(None).delay(start, 1 << 20), None);
        assert_eq!(budget.delay(start, 60), None, "the bucket starts full");
        // 40 left: 30 more wait until 30 bytes' worth refilled (30 × 36 s).
        let wait = budget.delay(start, 70).expect("waits");
        assert_eq!(wait.as_secs(), 1_080);
        let later = start + TimeDelta::seconds(1_080);
        assert_eq!(budget.delay(later, 70), None);
        // Larger than the bucket: goes once it is full again.
        let wait = budget.delay(later, 500).expect("waits");
        assert_eq!(wait.as_secs(), 3_600);
        assert_eq!(budget.delay(later + TimeDelta::hours(1), 500), None);
        assert!(budget.dropped().total == 0, "nothing is dropped");
        // Once the day's bytes are spent, the next batch waits for midnight.
        let mut budget = DailyBudget::new(Some(2_400));
        let evening = midnight() + TimeDelta::hours(23);
        assert_eq!(budget.delay(evening, 5_000), None, "the day's first goes");
        let wait = budget.delay(evening, 10).expect("waits");
        assert_eq!(wait.as_secs(), 3_600);
    }

    /// The acceptance: a day of logs, three times what the budget
    /// allows, compressed in time, through the real batch encoder. The
    /// bytes on the wire stay within 5 % of the budget, and what is dropped
    /// is dropped lowest priority first.
    #[test]
    fn a_day_of_logs_keeps_within_five_percent_and_drops_the_least_severe_first() {
        const LIMIT: u64 = 500_000;
        let mut budget = DailyBudget::new(Some(LIMIT));
        let mut now = midnight();
        let mut batch = Vec::new();
        let mut batch_json = 0;
        let mut wire = 0;
        let mut sent_by_priority = [0u64; 8];
        let mut line = 0u64;
        let send = |batch: &mut Vec<LogRecord>,
                    batch_json: &mut usize,
                    now: DateTime<Utc>,
                    budget: &mut DailyBudget| {
            if batch.is_empty() {
                return 0;
            }
            let encoded = telemetry::encode(&TelemetryBatch {
                spool_id: "day".into(),
                first_seq: 0,
                records: Records::Logs(std::mem::take(batch)),
                dropped: Dropped::default(),
                replay: false,
                usage: Vec::new(),
            });
            budget.sent(now, *batch_json, encoded.len());
            *batch_json = 0;
            encoded.len()
        };
        // One line every 2 s all day (43,200 lines), priorities as a busy
        // host writes them.
        while now < midnight() + TimeDelta::days(1) {
            let priority = match line % 100 {
                0 => 2,
                1..=4 => 4,
                5..=14 => 5,
                15..=64 => 6,
                _ => 7,
            };
            let record = LogRecord {
                at: now,
                priority,
                unit: ["sshd.service", "kernel", "app.service", "cron"][(line % 4) as usize].into(),
                message: format!(
                    "request id={line} path=/api/v1/items/{} status=200 duration_ms={} from 10.0.{}.{}",
                    line % 977,
                    line % 113,
                    line % 250,
                    (line * 7) % 250
                ),
                fields: Default::default(),
            };
            let json = serde_json::to_vec(&record).expect("json").len();
            if budget.admit(now, Some(priority), json) {
                sent_by_priority[usize::from(priority)] += 1;
                batch.push(record);
                batch_json += json;
                if batch.len() == 1000 {
                    wire += send(&mut batch, &mut batch_json, now, &mut budget);
                }
            }
            // Flushed every 10 s (tether-agent's spool: every second).
            if line % 5 == 4 {
                wire += send(&mut batch, &mut batch_json, now, &mut budget);
            }
            now += TimeDelta::seconds(2);
            line += 1;
        }
        wire += send(&mut batch, &mut batch_json, now, &mut budget);

        let wire = wire as f64;
        assert!(
            wire <= LIMIT as f64 * 1.05 && wire >= LIMIT as f64 * 0.95,
            "{wire} bytes sent against a budget of {LIMIT}"
        );
        let dropped = budget.dropped().by_priority;
        assert_eq!(dropped[2], 0, "errors all went: {dropped:?}");
        let wanted = [0, 0, 432, 0, 1_728, 4_320, 21_600, 15_120];
        let dropped_share = |p: usize| dropped[p] as f64 / wanted[p] as f64;
        assert!(
            dropped_share(7) > dropped_share(6)
                && dropped_share(6) > dropped_share(5)
                && dropped_share(5) >= dropped_share(4),
            "least severe dropped most: {dropped:?} of {wanted:?}"
        );
        assert_eq!(
            budget.dropped().total,
            dropped.iter().sum::<u64>(),
            "counted by priority"
        );
        assert_eq!(
            sent_by_priority.iter().sum::<u64>() + budget.dropped().total,
            line,
            "every line sent or counted as dropped"
        );
    }
}
