//! A maintenance-window approval: a task is released only inside the device's local night
//! hours; outside them it is deferred to the next window's start. The device's time zone is
//! read from one attribute: a fixed UTC offset (`+08:00`, `-0530`, `UTC`, `Z`) or one of a
//! small set of IANA names whose rules are built in (see [`zone`]). A full tz database
//! (chrono-tz) would add about a megabyte to every component and its compile time to each
//! call's instantiation, for zones a fleet rarely uses; a device with an unknown zone falls
//! back to `default_zone` and the policy logs how many did.
//!
//! Config: `{"attribute": "tz", "start_hour": 1, "end_hour": 5, "default_zone": "UTC"}`;
//! the window is `[start_hour, end_hour)` local time and may wrap midnight (22 → 4).

use ota_policy_sdk::{
    export_policy, log, ApprovalPolicy, Level, Policy, PolicyError, Requirements, Task, Verdict,
};
use serde::Deserialize;

const DAY: i64 = 86_400;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "tz")]
    pub attribute: String,
    pub start_hour: u64,
    pub end_hour: u64,
    #[serde(default = "utc")]
    pub default_zone: String,
}

fn tz() -> String {
    "tz".into()
}
fn utc() -> String {
    "UTC".into()
}

/// Daylight-saving rules of the built-in zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dst {
    None,
    /// EU: +1 h from the last Sunday of March to the last Sunday of October, 01:00 UTC.
    Eu,
    /// US: +1 h from the second Sunday of March to the first Sunday of November, 02:00 local.
    Us,
}

/// A zone: standard offset in seconds and its daylight-saving rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone {
    pub offset: i64,
    pub dst: Dst,
}

/// Parses a zone name or fixed offset; `None` if unknown.
pub fn zone(name: &str) -> Option<Zone> {
    let fixed = |h: i64, m: i64| Zone {
        offset: h * 3_600 + m * 60,
        dst: Dst::None,
    };
    let z = match name {
        "UTC" | "Z" | "Etc/UTC" | "GMT" => fixed(0, 0),
        "Europe/London" | "Europe/Dublin" | "Europe/Lisbon" => Zone {
            offset: 0,
            dst: Dst::Eu,
        },
        "Europe/Berlin" | "Europe/Paris" | "Europe/Madrid" | "Europe/Rome" | "Europe/Amsterdam"
        | "Europe/Brussels" | "Europe/Vienna" | "Europe/Stockholm" | "Europe/Warsaw"
        | "Europe/Prague" | "Europe/Zurich" => Zone {
            offset: 3_600,
            dst: Dst::Eu,
        },
        "Europe/Athens" | "Europe/Helsinki" | "Europe/Bucharest" | "Europe/Kiev"
        | "Europe/Kyiv" => Zone {
            offset: 7_200,
            dst: Dst::Eu,
        },
        "America/New_York" | "America/Toronto" => Zone {
            offset: -5 * 3_600,
            dst: Dst::Us,
        },
        "America/Chicago" => Zone {
            offset: -6 * 3_600,
            dst: Dst::Us,
        },
        "America/Denver" => Zone {
            offset: -7 * 3_600,
            dst: Dst::Us,
        },
        "America/Los_Angeles" | "America/Vancouver" => Zone {
            offset: -8 * 3_600,
            dst: Dst::Us,
        },
        "America/Phoenix" => fixed(-7, 0),
        "America/Sao_Paulo" => fixed(-3, 0),
        "Asia/Shanghai" | "Asia/Hong_Kong" | "Asia/Singapore" | "Asia/Taipei" => fixed(8, 0),
        "Asia/Tokyo" | "Asia/Seoul" => fixed(9, 0),
        "Asia/Kolkata" => fixed(5, 30),
        "Asia/Dubai" => fixed(4, 0),
        "Australia/Brisbane" => fixed(10, 0),
        _ => return parse_offset(name),
    };
    Some(z)
}

/// `+08:00`, `-0530`, `+8`, `UTC+02:00`.
fn parse_offset(s: &str) -> Option<Zone> {
    let s = s
        .strip_prefix("UTC")
        .or_else(|| s.strip_prefix("GMT"))
        .unwrap_or(s);
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i64>().ok()?, 0),
        3 => (
            digits[..1].parse::<i64>().ok()?,
            digits[1..].parse::<i64>().ok()?,
        ),
        _ => (
            digits[..2].parse::<i64>().ok()?,
            digits[2..].parse::<i64>().ok()?,
        ),
    };
    if h > 14 || m > 59 {
        return None;
    }
    Some(Zone {
        offset: sign * (h * 3_600 + m * 60),
        dst: Dst::None,
    })
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn year_of(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

/// The day (since the epoch) of the `n`th Sunday of a month; `n = 0` is the last one.
fn sunday(y: i64, m: i64, n: i64) -> i64 {
    // 1970-01-01 was a Thursday: weekday 0 = Sunday
    let weekday = |d: i64| (d + 4).rem_euclid(7);
    if n == 0 {
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let last = days_from_civil(ny, nm, 1) - 1;
        last - weekday(last)
    } else {
        let first = days_from_civil(y, m, 1);
        first + (7 - weekday(first)) % 7 + 7 * (n - 1)
    }
}

impl Zone {
    /// The offset from UTC in seconds at the instant `t` (Unix seconds).
    pub fn offset_at(&self, t: i64) -> i64 {
        let y = year_of((t + self.offset).div_euclid(DAY));
        let summer = match self.dst {
            Dst::None => false,
            Dst::Eu => {
                let start = sunday(y, 3, 0) * DAY + 3_600;
                let end = sunday(y, 10, 0) * DAY + 3_600;
                (start..end).contains(&t)
            }
            Dst::Us => {
                let start = sunday(y, 3, 2) * DAY + 2 * 3_600 - self.offset;
                let end = sunday(y, 11, 1) * DAY + 2 * 3_600 - (self.offset + 3_600);
                (start..end).contains(&t)
            }
        };
        self.offset + if summer { 3_600 } else { 0 }
    }
}

pub struct Maintenance {
    attribute: String,
    start: i64,
    end: i64,
    default_zone: Zone,
}

impl Policy for Maintenance {
    type Config = Config;

    fn new(c: Config) -> Result<Self, PolicyError> {
        let start = ota_policy_sdk::in_range("start_hour", c.start_hour, 0, 23)?;
        let end = ota_policy_sdk::in_range("end_hour", c.end_hour, 0, 24)?;
        if start == end % 24 {
            return Err(PolicyError::new(
                "bad_config",
                "start_hour and end_hour must differ (an empty or whole-day window)",
            ));
        }
        let default_zone = zone(&c.default_zone).ok_or_else(|| {
            PolicyError::new(
                "bad_config",
                format!("unknown default_zone {}", c.default_zone),
            )
        })?;
        Ok(Self {
            attribute: c.attribute,
            start: i64::try_from(start).unwrap_or(0) * 3_600,
            end: i64::try_from(end).unwrap_or(0) * 3_600,
            default_zone,
        })
    }
}

impl Maintenance {
    /// Seconds to wait from `now` (Unix seconds) in `zone` until the window opens; 0 inside.
    pub fn wait(&self, zone: Zone, now: i64) -> i64 {
        let local = (now + zone.offset_at(now)).rem_euclid(DAY);
        let inside = if self.start < self.end {
            (self.start..self.end).contains(&local)
        } else {
            local >= self.start || local < self.end
        };
        if inside {
            0
        } else {
            (self.start - local).rem_euclid(DAY)
        }
    }
}

impl ApprovalPolicy for Maintenance {
    fn requirements(&self) -> Requirements {
        Requirements {
            attribute_keys: vec![self.attribute.clone()],
            ..Requirements::default()
        }
    }

    fn approve(&self, now_ms: u64, tasks: &[Task]) -> Result<Vec<Verdict>, PolicyError> {
        let now = i64::try_from(now_ms / 1_000).unwrap_or(i64::MAX);
        let mut unknown = 0usize;
        let out = tasks
            .iter()
            .map(|t| {
                let z = match t.device.attribute(&self.attribute) {
                    Some(name) => zone(name).unwrap_or_else(|| {
                        unknown += 1;
                        self.default_zone
                    }),
                    None => self.default_zone,
                };
                match self.wait(z, now) {
                    0 => Verdict::Approve,
                    s => Verdict::Defer(u32::try_from(s.max(1)).unwrap_or(u32::MAX)),
                }
            })
            .collect();
        if unknown > 0 {
            log(
                Level::Warn,
                &format!("{unknown} devices name an unknown time zone; used the default zone"),
            );
        }
        Ok(out)
    }
}

export_policy!(Maintenance);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ota_policy_sdk::testing::{device, task, Harness};

    const CONFIG: &str = r#"{"attribute": "tz", "start_hour": 1, "end_hour": 5}"#;
    /// 2026-07-01 00:30:00 UTC
    const JULY: u64 = 1_782_865_800_000;

    fn in_zone(tz: &str) -> Task {
        task(1, device(1, "d").with_attribute("tz", tz))
    }

    #[test]
    fn approves_inside_local_night_and_defers_to_the_window_outside() {
        let mut h = Harness::with_config(CONFIG);
        let v = h
            .approve::<Maintenance>(
                JULY,
                &[
                    in_zone("+08:00"),           // 08:30 local: 16.5 h to 01:00
                    in_zone("UTC+01:00"),        // 01:30: inside
                    in_zone("Europe/Berlin"),    // summer: 02:30, inside
                    in_zone("America/New_York"), // summer: 20:30, 4.5 h to 01:00
                    in_zone("Mars/Olympus"),     // unknown: UTC 00:30, 30 min
                    task(2, device(2, "no-tz")),
                ],
            )
            .unwrap();
        assert_eq!(
            v,
            vec![
                Verdict::Defer(16 * 3_600 + 1_800),
                Verdict::Approve,
                Verdict::Approve,
                Verdict::Defer(4 * 3_600 + 1_800),
                Verdict::Defer(1_800),
                Verdict::Defer(1_800),
            ]
        );
        assert_eq!(h.logs().len(), 1, "{:?}", h.logs());
    }

    #[test]
    fn daylight_saving_rules_switch_on_the_right_days() {
        let berlin = zone("Europe/Berlin").unwrap();
        let ny = zone("America/New_York").unwrap();
        // 2026-03-29 00:59:59 UTC / 01:00:00 UTC (EU switch)
        let eu = days_from_civil(2026, 3, 29) * DAY + 3_600;
        assert_eq!(berlin.offset_at(eu - 1), 3_600);
        assert_eq!(berlin.offset_at(eu), 7_200);
        // 2026-03-08 07:00 UTC = 02:00 EST (US switch); 2026-11-01 06:00 UTC = 02:00 EDT
        let us = days_from_civil(2026, 3, 8) * DAY + 7 * 3_600;
        assert_eq!(ny.offset_at(us - 1), -5 * 3_600);
        assert_eq!(ny.offset_at(us), -4 * 3_600);
        let back = days_from_civil(2026, 11, 1) * DAY + 6 * 3_600;
        assert_eq!(ny.offset_at(back - 1), -4 * 3_600);
        assert_eq!(ny.offset_at(back), -5 * 3_600);
        assert_eq!(zone("-0530").unwrap().offset, -(5 * 3_600 + 1_800));
        assert_eq!(zone("+8").unwrap().offset, 8 * 3_600);
        assert_eq!(zone("8"), None);
    }

    #[test]
    fn a_window_across_midnight() {
        let mut h = Harness::with_config(r#"{"start_hour": 22, "end_hour": 4}"#);
        // 00:30 UTC: inside 22..04
        assert_eq!(
            h.approve::<Maintenance>(JULY, &[in_zone("UTC")]).unwrap(),
            vec![Verdict::Approve]
        );
        // 08:30 in +08:00: 13.5 h to 22:00
        assert_eq!(
            h.approve::<Maintenance>(JULY, &[in_zone("+08:00")])
                .unwrap(),
            vec![Verdict::Defer(13 * 3_600 + 1_800)]
        );
    }
}
