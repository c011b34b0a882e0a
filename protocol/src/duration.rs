//! Durations as Kiln's settings and flags write them: `250ms`, `30s`, `5m`,
//! `1h`, `30d`, a fraction of one unit (`1.5s`), a bare number of seconds
//! (`30`, `0.5`), or humantime's longer forms (`1h 30m`, `2days`). One
//! parser for every binary.

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return from_secs(t, secs);
    }
    // One fractional number of one unit; humantime takes whole numbers.
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.contains('.') {
        if let Ok(n) = number.parse::<f64>() {
            let scale = match unit.trim() {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                other => {
                    return Err(format!(
                        "unknown unit {other:?} in {t:?}; a fraction takes ms, s, m, h or d"
                    ))
                }
            };
            return from_secs(t, n * scale);
        }
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{t:?} is not a duration such as 500ms, 30s, 5m, 1h or 30d: {e}"))
}

fn from_secs(text: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_settings_use() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("30", Duration::from_secs(30)),
            (" 2 ", Duration::from_secs(2)),
            ("0.5", Duration::from_millis(500)),
            ("0.5s", Duration::from_millis(500)),
            ("1.5h", Duration::from_secs(5400)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("30d", Duration::from_secs(30 * 86400)),
            ("0", Duration::ZERO),
            ("1h 30m", Duration::from_secs(5400)),
            ("2days", Duration::from_secs(2 * 86400)),
        ];
        for (text, want) in ok {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
        for bad in ["soon", "5 fortnights", "-5", "1.5 parsecs", "", "1e400"] {
            assert!(parse(bad).is_err(), "{bad}: {:?}", parse(bad));
        }
        assert!(parse("5 parsecs").unwrap_err().contains("parsecs"));
    }
}
