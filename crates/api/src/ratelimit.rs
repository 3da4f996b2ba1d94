//! Request rate limits (seed 000): anonymous callers per client network
//! (IPv4 /24, IPv6 /48), signed-in callers per account, each level at its
//! own rate; and failed logins per account and per network. GCRA limiters
//! from `governor`, on a clock that tests can drive.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_domain::{Caller, Level, Username};
use governor::clock::{Clock, FakeRelativeClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::{Quota, RateLimiter};

/// Real time, or a clock a test advances by hand.
#[derive(Debug, Clone)]
pub enum RateClock {
    Real(Instant),
    Manual(FakeRelativeClock),
}

impl RateClock {
    pub fn real() -> Self {
        RateClock::Real(Instant::now())
    }
}

impl Clock for RateClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match self {
            RateClock::Real(origin) => Nanos::from(origin.elapsed()),
            RateClock::Manual(clock) => clock.now(),
        }
    }
}

/// Who a limit is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The caller's network: IPv4 /24 or IPv6 /48.
    Network(IpAddr),
    Account(Username),
}

/// The network a client address belongs to, for counting anonymous
/// requests and failed logins: a whole /24 (IPv4) or /48 (IPv6) shares one
/// budget, so one client cannot dodge it by hopping addresses.
pub fn network_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network_of(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
            }
        },
    }
}

type Keyed<K> = RateLimiter<
    K,
    governor::state::keyed::DefaultKeyedStateStore<K>,
    RateClock,
    governor::middleware::NoOpMiddleware<Nanos>,
>;

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, at least 1.
    pub fn seconds(self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

pub struct RateLimits {
    clock: RateClock,
    /// One limiter per level, indexed like `Level::ALL`.
    requests: [Keyed<Subject>; 4],
    /// Tells how many failures are left, so the last allowed one blocks.
    login_failures: RateLimiter<
        Subject,
        governor::state::keyed::DefaultKeyedStateStore<Subject>,
        RateClock,
        StateInformationMiddleware,
    >,
    /// Subjects whose failed logins ran out, until when.
    login_blocked: Mutex<HashMap<Subject, Nanos>>,
}

fn quota_per(amount: u32, period: Duration) -> Quota {
    let amount = NonZeroU32::new(amount.max(1)).expect("at least 1");
    let each = (period / amount.get()).max(Duration::from_nanos(1));
    Quota::with_period(each)
        .expect("period above zero")
        .allow_burst(amount)
}

impl RateLimits {
    /// `requests_per_minute` per level (indexed like `Level::ALL`); at most
    /// `login_failures` failed logins per account and per network in
    /// `login_window`.
    pub fn new(
        requests_per_minute: [u32; 4],
        login_failures: u32,
        login_window: Duration,
        clock: RateClock,
    ) -> Self {
        let minute = Duration::from_secs(60);
        let requests = requests_per_minute
            .map(|rate| RateLimiter::dashmap_with_clock(quota_per(rate, minute), clock.clone()));
        Self {
            login_failures: RateLimiter::dashmap_with_clock(
                quota_per(login_failures, login_window),
                clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>(),
            clock,
            requests,
            login_blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request by `caller` from `peer`.
    pub fn check_request(&self, caller: &Caller, peer: IpAddr) -> Result<(), RetryAfter> {
        let subject = match &caller.account {
            Some(account) => Subject::Account(account.clone()),
            None => Subject::Network(network_of(peer)),
        };
        let limiter = &self.requests[level_index(caller.level)];
        limiter
            .check_key(&subject)
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    fn login_subjects(username: Option<&Username>, peer: IpAddr) -> Vec<Subject> {
        let mut subjects = vec![Subject::Network(network_of(peer))];
        subjects.extend(username.cloned().map(Subject::Account));
        subjects
    }

    /// Whether a login for `username` from `peer` may be tried now: refused
    /// while either the account or the network has used up its failures.
    pub fn check_login(&self, username: Option<&Username>, peer: IpAddr) -> Result<(), RetryAfter> {
        let now = self.clock.now();
        let blocked = self.login_blocked.lock().expect("not poisoned");
        let wait = Self::login_subjects(username, peer)
            .iter()
            .filter_map(|s| blocked.get(s))
            .filter(|until| **until > now)
            .map(|until| Duration::from(until.duration_since(now)))
            .max();
        match wait {
            Some(wait) => Err(RetryAfter(wait)),
            None => Ok(()),
        }
    }

    /// Counts a failed login against the account and the network. The
    /// failure that uses up the allowance blocks further logins until the
    /// next failure would be allowed, so at most `login_failures` are tried
    /// per window.
    pub fn login_failed(&self, username: Option<&Username>, peer: IpAddr) {
        let now = self.clock.now();
        let mut blocked = self.login_blocked.lock().expect("not poisoned");
        blocked.retain(|_, until| *until > now);
        for subject in Self::login_subjects(username, peer) {
            let refused = match self.login_failures.check_key(&subject) {
                // That was the last one allowed: asking again is refused
                // (a refusal uses nothing up) and says until when.
                Ok(left) if left.remaining_burst_capacity() == 0 => {
                    self.login_failures.check_key(&subject).err()
                }
                Ok(_) => None,
                Err(not_until) => Some(not_until),
            };
            if let Some(not_until) = refused {
                let until = now + Nanos::from(not_until.wait_time_from(now));
                blocked.insert(subject, until);
            }
        }
    }

    /// Forgets limiter state that no longer limits anyone, so memory stays
    /// bounded by recent clients. Call now and then.
    pub fn housekeeping(&self) {
        for limiter in &self.requests {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.login_failures.retain_recent();
        let now = self.clock.now();
        self.login_blocked
            .lock()
            .expect("not poisoned")
            .retain(|_, until| *until > now);
    }
}

fn level_index(level: Level) -> usize {
    Level::ALL
        .iter()
        .position(|l| *l == level)
        .expect("every level is in ALL")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn member(name: &str) -> Caller {
        Caller {
            account: Some(Username::new(name).unwrap()),
            level: Level::OrgMember,
            allowed: BTreeSet::new(),
        }
    }

    fn limits(clock: &FakeRelativeClock) -> RateLimits {
        RateLimits::new(
            [3, 5, 4, 100],
            2,
            Duration::from_secs(60),
            RateClock::Manual(clock.clone()),
        )
    }

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        assert_eq!(network_of(ip("10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(network_of(ip("::ffff:10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(network_of(ip("2001:db8:1:2:3::9")), ip("2001:db8:1::"));
    }

    #[test]
    fn anonymous_callers_share_their_network_budget() {
        let clock = FakeRelativeClock::default();
        let l = limits(&clock);
        let anon = Caller::anonymous();
        for last in 1..=3 {
            assert_eq!(
                l.check_request(&anon, ip(&format!("10.0.0.{last}"))),
                Ok(())
            );
        }
        let refused = l.check_request(&anon, ip("10.0.0.200")).unwrap_err();
        assert_eq!(refused.seconds(), 20, "one request every 20 s at 3/min");
        assert_eq!(
            l.check_request(&anon, ip("10.0.1.1")),
            Ok(()),
            "another /24"
        );
        clock.advance(Duration::from_secs(20));
        assert_eq!(l.check_request(&anon, ip("10.0.0.9")), Ok(()));
        assert!(l.check_request(&anon, ip("10.0.0.9")).is_err());
    }

    #[test]
    fn accounts_are_limited_each_at_their_level_rate() {
        let clock = FakeRelativeClock::default();
        let l = limits(&clock);
        for _ in 0..4 {
            assert_eq!(l.check_request(&member("alice"), ip("10.0.0.1")), Ok(()));
        }
        assert_eq!(
            l.check_request(&member("alice"), ip("192.168.0.1")),
            Err(RetryAfter(Duration::from_secs(15))),
            "the account, not the address, is counted"
        );
        assert_eq!(l.check_request(&member("bob"), ip("10.0.0.1")), Ok(()));
        let admin = Caller {
            level: Level::Admin,
            ..member("root")
        };
        for _ in 0..100 {
            assert_eq!(l.check_request(&admin, ip("10.0.0.1")), Ok(()));
        }
        assert!(l.check_request(&admin, ip("10.0.0.1")).is_err());
    }

    #[test]
    fn failed_logins_block_the_account_and_the_network() {
        let clock = FakeRelativeClock::default();
        let l = limits(&clock);
        let alice = Username::new("alice").unwrap();
        let bob = Username::new("bob").unwrap();
        for _ in 0..2 {
            assert_eq!(l.check_login(Some(&alice), ip("10.0.0.1")), Ok(()));
            l.login_failed(Some(&alice), ip("10.0.0.1"));
        }
        // Two failures are allowed, and no third is tried.
        let wait = l.check_login(Some(&alice), ip("172.16.0.1")).unwrap_err();
        assert_eq!(wait.seconds(), 30, "the account is blocked from anywhere");
        assert!(
            l.check_login(Some(&bob), ip("10.0.0.77")).is_err(),
            "the network is blocked for every account"
        );
        assert_eq!(l.check_login(Some(&bob), ip("10.9.0.1")), Ok(()));
        clock.advance(Duration::from_secs(30));
        assert_eq!(l.check_login(Some(&alice), ip("10.0.0.1")), Ok(()));
        // One failure came back, and one more is all it allows.
        l.login_failed(Some(&alice), ip("10.0.0.1"));
        let wait = l.check_login(Some(&alice), ip("10.0.0.1")).unwrap_err();
        assert_eq!(wait.seconds(), 30);
    }
}
