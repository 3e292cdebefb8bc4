//! Login throttling: after a few failures in a row, a client address or a
//! username must wait before its next attempt (1 s, doubling, capped). Pure
//! state; the caller passes the clock.
//!
//! An attempt counts as failed from the moment it starts and is taken back
//! when it succeeds, so a burst of concurrent guesses is counted in full
//! rather than racing past the check.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Entries kept per table; an attacker cycling addresses or usernames
/// cannot grow memory past this. When full, expired streaks go first, then
/// the least recently failed.
const MAX_ENTRIES: usize = 16_384;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    pub failures_before_backoff: u32,
    pub backoff_max: Duration,
}

/// Who must wait, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    pub by: ThrottledBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottledBy {
    ClientAddress,
    Username,
}

#[derive(Debug, Clone, Copy)]
struct Streak {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

struct Table<K> {
    streaks: HashMap<K, Streak>,
}

impl<K: Hash + Eq + Copy> Table<K> {
    fn new() -> Self {
        Self {
            streaks: HashMap::new(),
        }
    }

    fn retry_after(&self, config: &ThrottleConfig, key: &K, now: Instant) -> Option<Duration> {
        let streak = self.streaks.get(key)?;
        if forgotten(config, streak, now) {
            return None;
        }
        streak
            .blocked_until
            .checked_duration_since(now)
            .filter(|wait| !wait.is_zero())
    }

    fn fail(&mut self, config: &ThrottleConfig, key: K, now: Instant) {
        if !self.streaks.contains_key(&key) && self.streaks.len() >= MAX_ENTRIES {
            self.make_room(config, now);
        }
        let streak = self.streaks.entry(key).or_insert(Streak {
            failures: 0,
            last_failure: now,
            blocked_until: now,
        });
        if forgotten(config, streak, now) {
            streak.failures = 0;
        }
        streak.failures = streak.failures.saturating_add(1);
        streak.last_failure = now;
        let over = streak
            .failures
            .saturating_sub(config.failures_before_backoff);
        if over > 0 {
            streak.blocked_until = now + backoff(config, over);
        }
    }

    /// Takes back one failure counted at the start of an attempt that
    /// succeeded, and the wait it started if the streak is back within
    /// the free attempts; a wait earned by earlier failures stays.
    fn undo(&mut self, config: &ThrottleConfig, key: &K, now: Instant) {
        if let Some(streak) = self.streaks.get_mut(key) {
            streak.failures = streak.failures.saturating_sub(1);
            if streak.failures <= config.failures_before_backoff {
                streak.blocked_until = now;
            }
        }
    }

    fn forget(&mut self, key: &K) {
        self.streaks.remove(key);
    }

    fn make_room(&mut self, config: &ThrottleConfig, now: Instant) {
        self.streaks
            .retain(|_, streak| !forgotten(config, streak, now));
        if self.streaks.len() >= MAX_ENTRIES {
            let oldest = self
                .streaks
                .iter()
                .min_by_key(|(_, streak)| streak.last_failure)
                .map(|(key, _)| *key);
            if let Some(key) = oldest {
                self.streaks.remove(&key);
            }
        }
    }
}

/// A streak ends after `backoff_max` without a failure.
fn forgotten(config: &ThrottleConfig, streak: &Streak, now: Instant) -> bool {
    now.saturating_duration_since(streak.last_failure) > config.backoff_max
        && now >= streak.blocked_until
}

/// The wait after the `over`-th failure beyond the free ones: 1 s, 2 s, 4 s, … capped.
fn backoff(config: &ThrottleConfig, over: u32) -> Duration {
    let doublings = over.saturating_sub(1).min(31);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(config.backoff_max)
}

/// The client an address belongs to, for throttles and caps: an IPv4
/// address itself, an IPv6 address by its /64 prefix. One IPv6 host is
/// usually given a whole /64, so keying by address would give it as many
/// fresh streaks (and connection shares) as it cares to use.
pub fn client_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Usernames are kept as hashes: a key of fixed size whatever was sent.
type UsernameKey = [u8; 32];

pub fn username_key(username: &str) -> UsernameKey {
    Sha256::digest(username.as_bytes()).into()
}

pub struct LoginThrottle {
    config: ThrottleConfig,
    by_address: Table<IpAddr>,
    by_username: Table<UsernameKey>,
    /// Clients that logged in as a user before, with when they last did:
    /// the user's own wait does not apply to them, so others' guesses
    /// cannot lock a user out of where they usually log in from.
    trusted: HashMap<(UsernameKey, IpAddr), Instant>,
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            by_address: Table::new(),
            by_username: Table::new(),
            trusted: HashMap::new(),
        }
    }

    /// Starts an attempt from `address`: refused while the address waits,
    /// else counted as a failure until [`Self::succeeded`].
    pub fn begin_from(&mut self, address: IpAddr, now: Instant) -> Result<(), Throttled> {
        let address = client_of(address);
        if let Some(retry_after) = self.by_address.retry_after(&self.config, &address, now) {
            return Err(Throttled {
                retry_after,
                by: ThrottledBy::ClientAddress,
            });
        }
        self.by_address.fail(&self.config, address, now);
        Ok(())
    }

    /// Refuses `address` while it waits, without counting an attempt: for
    /// requests a legitimate client sends in parallel bursts (a fleet
    /// enrolling), which count only once refused, by [`Self::failed_from`].
    pub fn check_from(&self, address: IpAddr, now: Instant) -> Result<(), Throttled> {
        match self
            .by_address
            .retry_after(&self.config, &client_of(address), now)
        {
            Some(retry_after) => Err(Throttled {
                retry_after,
                by: ThrottledBy::ClientAddress,
            }),
            None => Ok(()),
        }
    }

    /// An attempt admitted by [`Self::check_from`] was refused.
    pub fn failed_from(&mut self, address: IpAddr, now: Instant) {
        self.by_address.fail(&self.config, client_of(address), now);
    }

    /// Continues an attempt from `address` with the username it names; the
    /// same rule, except for a client that logged in as that user before:
    /// its own address streak still bounds its guesses.
    pub fn begin_for(
        &mut self,
        address: IpAddr,
        username: UsernameKey,
        now: Instant,
    ) -> Result<(), Throttled> {
        if self.trusted.contains_key(&(username, client_of(address))) {
            return Ok(());
        }
        if let Some(retry_after) = self.by_username.retry_after(&self.config, &username, now) {
            return Err(Throttled {
                retry_after,
                by: ThrottledBy::Username,
            });
        }
        self.by_username.fail(&self.config, username, now);
        Ok(())
    }

    /// A correct password ends the username's streak, takes back the
    /// address's count for this attempt and trusts the client for the user.
    pub fn succeeded(&mut self, address: IpAddr, username: UsernameKey, now: Instant) {
        self.succeeded_from(address, now);
        self.by_username.forget(&username);
        let client = (username, client_of(address));
        if !self.trusted.contains_key(&client) && self.trusted.len() >= MAX_ENTRIES {
            let oldest = self
                .trusted
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(key, _)| *key);
            if let Some(key) = oldest {
                self.trusted.remove(&key);
            }
        }
        self.trusted.insert(client, now);
    }

    /// An attempt without a username (a certificate renewal) succeeded:
    /// takes back the address's count for it.
    pub fn succeeded_from(&mut self, address: IpAddr, now: Instant) {
        self.by_address.undo(&self.config, &client_of(address), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottleConfig {
            failures_before_backoff: 3,
            backoff_max: Duration::from_secs(60),
        })
    }

    #[test]
    fn an_address_waits_after_its_free_failures_and_the_wait_doubles() {
        let mut throttle = throttle();
        let now = Instant::now();
        for _ in 0..3 {
            throttle.begin_from(ADDRESS, now).expect("free attempts");
        }
        // The fourth failure is allowed, and starts a 1 s wait.
        throttle
            .begin_from(ADDRESS, now)
            .expect("the fourth attempt");
        let refused = throttle.begin_from(ADDRESS, now).expect_err("waiting");
        assert_eq!(refused.by, ThrottledBy::ClientAddress);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        let later = now + Duration::from_secs(1);
        throttle.begin_from(ADDRESS, later).expect("after the wait");
        let refused = throttle.begin_from(ADDRESS, later).expect_err("waiting");
        assert_eq!(refused.retry_after, Duration::from_secs(2));
        // Another address is not affected.
        throttle
            .begin_from(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), later)
            .expect("another address");
    }

    #[test]
    fn the_wait_is_capped_and_a_quiet_streak_is_forgotten() {
        let mut throttle = throttle();
        let mut now = Instant::now();
        let mut last_wait = Duration::ZERO;
        for _ in 0..40 {
            match throttle.begin_from(ADDRESS, now) {
                Ok(()) => {}
                Err(refused) => {
                    last_wait = refused.retry_after;
                    now += refused.retry_after;
                }
            }
        }
        assert_eq!(last_wait, Duration::from_secs(60), "capped at backoff_max");
        let quiet = now + Duration::from_secs(61);
        for _ in 0..3 {
            throttle.begin_from(ADDRESS, quiet).expect("a fresh streak");
        }
    }

    #[test]
    fn a_username_is_throttled_across_addresses_and_success_resets_it() {
        let mut throttle = throttle();
        let now = Instant::now();
        let admin = username_key("admin");
        for i in 0..4u8 {
            let address = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, i));
            throttle.begin_from(address, now).expect("fresh address");
            throttle
                .begin_for(address, admin, now)
                .expect("free attempts");
        }
        let refused = throttle
            .begin_for(ADDRESS, admin, now)
            .expect_err("username waits");
        assert_eq!(refused.by, ThrottledBy::Username);
        throttle
            .begin_for(ADDRESS, username_key("alice"), now)
            .expect("another user");

        let later = now + Duration::from_secs(1);
        throttle.begin_from(ADDRESS, later).expect("address");
        throttle
            .begin_for(ADDRESS, admin, later)
            .expect("after the wait");
        throttle.succeeded(ADDRESS, admin, later);
        for _ in 0..3 {
            throttle
                .begin_for(ADDRESS, admin, later)
                .expect("reset by the success");
        }
    }

    #[test]
    fn a_success_takes_back_only_its_own_count() {
        let mut throttle = throttle();
        let now = Instant::now();
        let admin = username_key("admin");
        // Three free failures, then a success: the success's reservation
        // would have started a wait; it is taken back.
        for _ in 0..3 {
            throttle.begin_from(ADDRESS, now).expect("free");
        }
        throttle.begin_from(ADDRESS, now).expect("fourth");
        throttle.succeeded(ADDRESS, admin, now);
        throttle
            .begin_from(ADDRESS, now)
            .expect("no wait after a success");
        // That was the fourth real failure: its wait stands.
        throttle
            .begin_from(ADDRESS, now)
            .expect_err("an earned wait");
    }

    #[test]
    fn concurrent_attempts_count_before_they_finish() {
        let mut throttle = throttle();
        let now = Instant::now();
        // Ten attempts start before any finishes: only the free ones and
        // the one that starts the wait get through.
        let admitted = (0..10)
            .filter(|_| throttle.begin_from(ADDRESS, now).is_ok())
            .count();
        assert_eq!(admitted, 4);
    }

    #[test]
    fn an_ipv6_client_is_throttled_by_its_prefix_not_each_address() {
        let mut throttle = throttle();
        let now = Instant::now();
        // Four failures from four addresses of one /64 start its wait.
        for host in 1..=4u16 {
            let address = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, 0, 0, 0, host));
            throttle.begin_from(address, now).expect("free attempts");
        }
        let fresh = IpAddr::V6(std::net::Ipv6Addr::new(
            0x2001, 0xdb8, 0, 7, 0xdead, 0, 0, 1,
        ));
        let refused = throttle
            .begin_from(fresh, now)
            .expect_err("another address of the same /64 waits too");
        assert_eq!(refused.by, ThrottledBy::ClientAddress);
        let neighbour = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 8, 0, 0, 0, 1));
        throttle
            .begin_from(neighbour, now)
            .expect("another /64 is another client");
        // IPv4-mapped addresses are their IPv4 client.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("valid");
        assert_eq!(client_of(mapped), ADDRESS);
    }

    #[test]
    fn others_guessing_a_password_do_not_lock_its_user_out_of_a_known_client() {
        let mut throttle = throttle();
        let now = Instant::now();
        let admin = username_key("admin");
        let home = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));
        throttle.begin_from(home, now).expect("admin logs in");
        throttle.begin_for(home, admin, now).expect("admin logs in");
        throttle.succeeded(home, admin, now);
        // Guessers from many addresses put the username in a wait.
        for i in 0..4u8 {
            let guesser = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, i));
            throttle.begin_from(guesser, now).expect("fresh address");
            throttle
                .begin_for(guesser, admin, now)
                .expect("free attempts");
        }
        let stranger = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 200));
        throttle
            .begin_for(stranger, admin, now)
            .expect_err("a new client waits for the user");
        // The admin, from where they logged in before, does not.
        throttle
            .begin_from(home, now)
            .expect("its address is clean");
        throttle
            .begin_for(home, admin, now)
            .expect("a known client is not locked out");
    }

    #[test]
    fn failures_counted_after_the_fact_start_the_same_wait() {
        let mut throttle = throttle();
        let now = Instant::now();
        // A burst checked at once is not refused for being a burst.
        for _ in 0..10 {
            throttle.check_from(ADDRESS, now).expect("only checked");
        }
        for _ in 0..4 {
            throttle.failed_from(ADDRESS, now);
        }
        let refused = throttle.check_from(ADDRESS, now).expect_err("waits");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        // The same streak as logins from that address.
        throttle
            .begin_from(ADDRESS, now)
            .expect_err("a login from it waits too");
    }

    #[test]
    fn memory_is_bounded_whatever_is_sent() {
        let mut throttle = throttle();
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES + 100) {
            let name = format!("user-{i}");
            throttle
                .begin_for(ADDRESS, username_key(&name), now)
                .expect("first failure");
        }
        assert!(throttle.by_username.streaks.len() <= MAX_ENTRIES);
    }
}
