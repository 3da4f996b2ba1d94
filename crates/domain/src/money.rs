//! Money as whole micro-dollars (never floating point), and the cost of a
//! node's lifetime at an hourly price, exact to the micro-dollar.

use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An amount of dollars, in micro-dollars. Signed: corrections and balances
/// can be negative.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

pub const MICROS_PER_DOLLAR: i64 = 1_000_000;
const MILLIS_PER_HOUR: i128 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an amount of dollars: {reason} (write it like \"25.00\", \"0.10\" or \"-3.5\")")]
pub struct MoneyError {
    pub value: String,
    pub reason: &'static str,
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_micros(micros: i64) -> Self {
        Money(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    pub fn from_dollars(dollars: i64) -> Option<Self> {
        dollars.checked_mul(MICROS_PER_DOLLAR).map(Money)
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    /// Decimal dollars with at most six decimals and an optional sign; no
    /// exponent, no thousands separators, no currency sign.
    fn from_str(s: &str) -> Result<Self, MoneyError> {
        let err = |reason| MoneyError {
            value: s.to_owned(),
            reason,
        };
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(err("no digits"));
        }
        if !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return Err(err("only digits and one '.' are allowed"));
        }
        if fraction.len() > 6 {
            return Err(err(
                "more than six decimals (a micro-dollar is the smallest unit)",
            ));
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err("too large"))?
        };
        let fraction: i64 = format!("{fraction:0<6}").parse().expect("six digits");
        let micros = whole
            .checked_mul(MICROS_PER_DOLLAR)
            .and_then(|w| w.checked_add(fraction))
            .ok_or_else(|| err("too large"))?;
        Ok(Money(if negative { -micros } else { micros }))
    }
}

impl fmt::Display for Money {
    /// Dollars with two decimals, or more when there are sub-cent digits:
    /// "25.00", "0.10", "0.000125", "-3.50".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / MICROS_PER_DOLLAR as u64;
        let fraction = abs % MICROS_PER_DOLLAR as u64;
        let mut digits = format!("{fraction:06}");
        while digits.len() > 2 && digits.ends_with('0') {
            digits.pop();
        }
        write!(f, "{sign}{whole}.{digits}")
    }
}

impl Money {
    /// As people write an amount: `$25.00`, `-$3.50`, `$0.000125` (the
    /// sign before the dollar sign; cents, and more digits only where
    /// there are sub-cent ones).
    pub fn dollars(self) -> Dollars {
        Dollars(self)
    }

    /// As people read an amount at a glance: rounded to the cent, half
    /// away from zero (`$7.14`, `-$3.50`, `$0.00`).
    pub fn cents(self) -> Dollars {
        let cent = MICROS_PER_DOLLAR / 100;
        let abs = (self.0.unsigned_abs() as i64 + cent / 2) / cent * cent;
        Dollars(Money(if self.0 < 0 { -abs } else { abs }))
    }
}

/// [`Money::dollars`].
#[derive(Debug, Clone, Copy)]
pub struct Dollars(Money);

impl fmt::Display for Dollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        match text.strip_prefix('-') {
            Some(abs) => write!(f, "-${abs}"),
            None => write!(f, "${text}"),
        }
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, other: Money) -> Money {
        Money(self.0 + other.0)
    }
}

impl AddAssign for Money {
    fn add_assign(&mut self, other: Money) {
        self.0 += other.0;
    }
}

impl Sub for Money {
    type Output = Money;
    fn sub(self, other: Money) -> Money {
        Money(self.0 - other.0)
    }
}

impl SubAssign for Money {
    fn sub_assign(&mut self, other: Money) {
        self.0 -= other.0;
    }
}

impl Neg for Money {
    type Output = Money;
    fn neg(self) -> Money {
        Money(-self.0)
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Add::add)
    }
}

/// What a node has cost from `launched_at` until `until` at `per_hour`,
/// rounded down to the micro-dollar; zero if `until` is not after launch.
///
/// Always computed from the launch, never by adding up pieces: the
/// increment to charge since the last accrual is
/// `lifetime_cost(.., now) - lifetime_cost(.., last)`, so however the
/// accruals are split (ticks, restarts), their sum is exact.
pub fn lifetime_cost(per_hour: Money, launched_at: DateTime<Utc>, until: DateTime<Utc>) -> Money {
    let millis = (until - launched_at).num_milliseconds().max(0) as i128;
    let micros = per_hour.0 as i128 * millis / MILLIS_PER_HOUR;
    Money(micros.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

/// The cost of `nodes` nodes at `per_hour` for `millis` milliseconds,
/// rounded up: what a request must be able to pay for before it starts.
pub fn projected_cost(per_hour: Money, nodes: u32, millis: i64) -> Money {
    let total = per_hour.0 as i128 * nodes as i128 * millis.max(0) as i128;
    let micros = (total + MILLIS_PER_HOUR - 1) / MILLIS_PER_HOUR;
    Money(micros.min(i64::MAX as i128) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Money {
        s.parse().unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn dollars_put_the_sign_first() {
        assert_eq!(m("25").dollars().to_string(), "$25.00");
        assert_eq!(m("-3.5").dollars().to_string(), "-$3.50");
        assert_eq!(m("0.000125").dollars().to_string(), "$0.000125");
    }

    #[test]
    fn cents_round_half_away_from_zero() {
        for (amount, shown) in [
            ("-7.135", "-$7.14"),
            ("7.134999", "$7.13"),
            ("0.000125", "$0.00"),
            ("-0.004", "$0.00"),
            ("12", "$12.00"),
            ("0.005", "$0.01"),
        ] {
            assert_eq!(m(amount).cents().to_string(), shown, "{amount}");
        }
    }

    #[test]
    fn parses_and_prints_dollars() {
        assert_eq!(m("25.00"), Money::from_micros(25_000_000));
        assert_eq!(m("0.10"), Money::from_micros(100_000));
        assert_eq!(m("-3.5"), Money::from_micros(-3_500_000));
        assert_eq!(m(".5"), Money::from_micros(500_000));
        assert_eq!(m("+7"), Money::from_micros(7_000_000));
        assert_eq!(m("0.000001"), Money::from_micros(1));
        for (s, shown) in [
            ("25", "25.00"),
            ("0.1", "0.10"),
            ("-3.5", "-3.50"),
            ("0.000125", "0.000125"),
            ("-0.000001", "-0.000001"),
        ] {
            assert_eq!(m(s).to_string(), shown);
        }
        for bad in [
            "",
            ".",
            "1.2.3",
            "1e3",
            "$5",
            "1,000",
            "0.0000001",
            "99999999999999999",
            "--1",
            " 1",
        ] {
            assert!(bad.parse::<Money>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lifetime_cost_is_exact_and_additive() {
        let price = m("0.10");
        assert_eq!(lifetime_cost(price, at(0), at(3600)), m("0.10"));
        assert_eq!(lifetime_cost(price, at(0), at(36)), m("0.001"));
        assert_eq!(lifetime_cost(price, at(10), at(0)), Money::ZERO);
        // 7 s at $0.10/h is 194.44… micro-dollars: rounded down.
        assert_eq!(lifetime_cost(price, at(0), at(7)), Money::from_micros(194));
        // Accrued in uneven pieces, the sum is the whole exactly.
        let cuts = [0, 7, 13, 500, 501, 3599, 7300];
        let pieces: Money = cuts
            .windows(2)
            .map(|w| lifetime_cost(price, at(0), at(w[1])) - lifetime_cost(price, at(0), at(w[0])))
            .sum();
        assert_eq!(pieces, lifetime_cost(price, at(0), at(7300)));
    }

    #[test]
    fn projected_cost_rounds_up() {
        assert_eq!(projected_cost(m("0.10"), 3, 8 * 3_600_000), m("2.40"));
        assert_eq!(projected_cost(m("0.10"), 1, 7_000), Money::from_micros(195));
        assert_eq!(projected_cost(m("0.10"), 0, 7_000), Money::ZERO);
    }
}

/// A month, for the monthly allowance: credited once per calendar month
/// (UTC), on its first day.
pub fn month_of(t: DateTime<Utc>) -> (i32, u32) {
    use chrono::Datelike;
    (t.year(), t.month())
}

/// What the monthly allowance adds at `now` to `balance`, given the month
/// last credited: `None` if this month was credited already; otherwise the
/// allowance, cut so the balance does not pass `max_balance` (zero if it is
/// already there). Months the server missed are not paid twice: one credit
/// covers the current month.
pub fn monthly_credit(
    balance: Money,
    allowance: Money,
    max_balance: Money,
    last_credited: Option<(i32, u32)>,
    now: DateTime<Utc>,
) -> Option<Money> {
    if last_credited.is_some_and(|last| last >= month_of(now)) {
        return None;
    }
    let room = (max_balance - balance).max(Money::ZERO);
    Some(allowance.min(room).max(Money::ZERO))
}

/// Hours until `balance` reaches zero at `burn_per_hour`; `None` when
/// nothing is burning.
pub fn forecast_hours(balance: Money, burn_per_hour: Money) -> Option<f64> {
    (burn_per_hour.micros() > 0)
        .then(|| (balance.micros().max(0) as f64) / burn_per_hour.micros() as f64)
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    fn m(s: &str) -> Money {
        s.parse().unwrap()
    }

    fn day(y: i32, mo: u32, d: u32) -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(y, mo, d, 0, 0, 0).unwrap()
    }

    #[test]
    fn the_allowance_comes_once_a_month_up_to_the_cap() {
        let (allowance, cap) = (m("100"), m("250"));
        assert_eq!(
            monthly_credit(m("0"), allowance, cap, None, day(2026, 11, 1)),
            Some(m("100"))
        );
        assert_eq!(
            monthly_credit(
                m("100"),
                allowance,
                cap,
                Some((2026, 11)),
                day(2026, 11, 30)
            ),
            None,
            "once per month"
        );
        assert_eq!(
            monthly_credit(m("200"), allowance, cap, Some((2026, 11)), day(2026, 12, 1)),
            Some(m("50")),
            "up to the cap"
        );
        assert_eq!(
            monthly_credit(m("300"), allowance, cap, Some((2026, 11)), day(2027, 1, 1)),
            Some(Money::ZERO)
        );
        assert_eq!(
            monthly_credit(m("-20"), allowance, cap, Some((2026, 6)), day(2027, 1, 15)),
            Some(m("100")),
            "missed months are not paid twice"
        );
    }

    #[test]
    fn forecast() {
        assert_eq!(forecast_hours(m("10"), m("0.50")), Some(20.0));
        assert_eq!(forecast_hours(m("-1"), m("0.50")), Some(0.0));
        assert_eq!(forecast_hours(m("10"), Money::ZERO), None);
    }
}
