//! HEALTHCHECK: `NONE`, or `CMD` with its timing flags.

use super::InstructionErrorKind as Kind;
use super::flags::{FlagType, Flags};
use crate::parser::Node;

/// Docker's `HealthConfig`; durations in nanoseconds, 0 = inherit/default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args…]` (exec form) or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

/// Docker's minimum for every HEALTHCHECK duration.
const MINIMUM_NANOS: i64 = 1_000_000;

pub(super) fn parse(node: &Node) -> Result<Healthcheck, Kind> {
    let Some((kind, args)) = node.args.split_first() else {
        return Err(Kind::AtLeastOneArgument("HEALTHCHECK"));
    };
    let kind = kind.to_uppercase();
    if kind == "NONE" {
        if !args.is_empty() || !node.flags.is_empty() {
            return Err(Kind::HealthcheckNoneArgs);
        }
        return Ok(Healthcheck {
            test: vec![kind],
            ..Healthcheck::default()
        });
    }
    let flags = Flags::parse(
        &node.flags,
        &[
            ("interval", FlagType::String),
            ("timeout", FlagType::String),
            ("start-period", FlagType::String),
            ("start-interval", FlagType::String),
            ("retries", FlagType::String),
        ],
    )?;
    if kind != "CMD" {
        return Err(Kind::HealthcheckType(kind));
    }
    if args.is_empty() {
        return Err(Kind::HealthcheckMissingCommand);
    }
    let test_kind = if node.json { "CMD" } else { "CMD-SHELL" };
    let duration = |flag: &'static str| -> Result<i64, Kind> {
        let Some(value) = flags.string(flag) else {
            return Ok(0);
        };
        let bad = |reason: &str| Kind::Duration {
            flag,
            value: value.clone(),
            reason: reason.to_owned(),
        };
        let nanos = parse_go_duration(&value).map_err(&bad)?;
        // 0 means "the default"; anything else must be at least 1ms.
        if nanos != 0 && nanos < MINIMUM_NANOS {
            return Err(bad("cannot be less than 1ms"));
        }
        Ok(nanos)
    };
    let retries = match flags.string("retries") {
        None => 0,
        Some(r) => match r.parse::<i32>() {
            Ok(n) if n >= 0 => i64::from(n),
            _ => return Err(Kind::Retries(r)),
        },
    };
    Ok(Healthcheck {
        test: std::iter::once(test_kind.to_owned())
            .chain(args.iter().cloned())
            .collect(),
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    })
}

/// Go's `time.ParseDuration`: `[-+]` then one or more `<number><unit>` with
/// units ns, us (µs), ms, s, m, h; a bare `0` is allowed. In nanoseconds.
pub fn parse_go_duration(s: &str) -> Result<i64, &'static str> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err("invalid duration");
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." {
            return Err("invalid duration");
        }
        let value: f64 = number.parse().map_err(|_| "invalid duration")?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err("missing unit in duration"),
            _ => return Err("unknown unit in duration"),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if total > i64::MAX as f64 {
        return Err("invalid duration");
    }
    #[allow(clippy::cast_possible_truncation)]
    let nanos = total.round() as i64;
    Ok(if negative { -nanos } else { nanos })
}

#[cfg(test)]
mod tests {
    use super::parse_go_duration as d;

    #[test]
    fn durations() {
        assert_eq!(d("30s"), Ok(30_000_000_000));
        assert_eq!(d("1m30s"), Ok(90_000_000_000));
        assert_eq!(d("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(d("300ms"), Ok(300_000_000));
        assert_eq!(d("0"), Ok(0));
        assert!(d("10").is_err());
        assert!(d("5x").is_err());
        assert!(d("").is_err());
    }
}
