//! Human durations for command-line flags: `50us`, `500ms`, `10s`, `30m`, `24h`, `7d`.

use std::time::Duration;

/// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} has no unit; use e.g. 10s, 30m, 24h, 7d"))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("duration {text:?} does not start with a number"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} is too large"))?;
    let secs_per_unit = match unit {
        "us" => return Ok(Duration::from_micros(n)),
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "duration {text:?} has unknown unit {unit:?}; use us, ms, s, m, h or d"
            ))
        }
    };
    n.checked_mul(secs_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn units() {
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse("10").is_err());
        assert!(parse("h").is_err());
        assert!(parse("10y").is_err());
        assert!(parse("99999999999999999999d").is_err());
    }
}

/// Parses a bit rate: a number with an optional decimal suffix `k`, `M` or
/// `G` (bits per second), e.g. `20M`, `1.5G`, `800k`, `0`.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a bit rate (e.g. 20M, 800k, 1.5G)"))?;
    if !v.is_finite() || v < 0.0 || v * mult > 1e15 {
        return Err(format!("bit rate {text:?} is out of range"));
    }
    Ok((v * mult) as u64)
}

#[cfg(test)]
mod rate_tests {
    use super::parse_rate;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20M"), Ok(20_000_000));
        assert_eq!(parse_rate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_rate("800k"), Ok(800_000));
        assert_eq!(parse_rate("1200"), Ok(1200));
        assert_eq!(parse_rate("0"), Ok(0));
        for bad in ["", "M", "-1M", "fast", "1e99", "NaN", "1.2.3M"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
