//! Go's `time.ParseDuration` format, which kubelet's config and plugins use (`12h`, `1h30m`,
//! `5m0s`, `1.5h`, `300ms`), so credgate reads durations exactly as kubelet would.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (write it as Go does: 30s, 5m, 1h30m)")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest.starts_with('-') {
        return Err(err("negative durations mean nothing here"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err("empty"));
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit"))?;
        let number: f64 = rest[..number_len].parse().map_err(|_| err("bad number"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit (ns, us, ms, s, m, h)")),
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).map_err(|_| err("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_kubelet_configs_hold() {
        let d = |s| parse_go_duration(s).unwrap();
        assert_eq!(d("12h"), Duration::from_secs(12 * 3600));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("5m0s"), Duration::from_secs(300));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("300ms"), Duration::from_millis(300));
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("0"), Duration::ZERO);
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in ["", "5", "5x", "-1s", "h", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
