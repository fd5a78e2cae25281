//! Number and time formatting shared by the screens and the export file.

use unicode_width::UnicodeWidthChar;

/// Milliseconds in the unit that fits a narrow column: whole ms below
/// 10 s (`812ms`), seconds with one decimal below 10 minutes (`11.4s`),
/// then minutes and seconds (`12m05s`). At most 7 columns with a sign.
pub fn ms(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_string();
    }
    let abs = value.abs();
    if abs < 9_999.5 {
        format!("{}ms", value.round() as i64)
    } else if abs < 599_950.0 {
        format!("{:.1}s", value / 1000.0)
    } else {
        let total = (abs / 1000.0).round() as u64;
        let sign = if value < 0.0 { "-" } else { "" };
        format!("{sign}{}m{:02}s", total / 60, total % 60)
    }
}

/// Signed offset from deletion_seen: `+812ms`, `-40ms`.
pub fn offset(value: i64) -> String {
    if value >= 0 {
        format!("+{}", ms(value as f64))
    } else {
        ms(value as f64)
    }
}

pub fn opt_ms(value: Option<i64>) -> String {
    value
        .map(|v| ms(v as f64))
        .unwrap_or_else(|| "-".to_string())
}

/// Seconds as configured in a pod spec: `5s`, `2.5s`, `-` when absent.
pub fn seconds(value: Option<f64>) -> String {
    match value {
        Some(s) if s.fract() == 0.0 => format!("{s:.0}s"),
        Some(s) => format!("{s:.1}s"),
        None => "-".to_string(),
    }
}

/// UTC time of day with milliseconds, `HH:MM:SS.mmm`. The log shows the
/// time of day only: the date is today's, and a UTC clock needs no
/// time-zone database.
pub fn time_of_day(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    let (h, rest) = (day_ms / 3_600_000, day_ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    format!("{h:02}:{m:02}:{:02}.{:03}", rest / 1000, rest % 1000)
}

/// Cuts `text` to at most `width` terminal columns, ending in `…` when cut.
pub fn fit(text: &str, width: usize) -> String {
    let total: usize = text.chars().map(|c| c.width().unwrap_or(0)).sum();
    if total <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(ms(4312.4), "4312ms");
        assert_eq!(ms(9_999.0), "9999ms");
        assert_eq!(ms(11_400.0), "11.4s");
        assert_eq!(ms(-12_345.0), "-12.3s");
        assert_eq!(ms(123_456.0), "123.5s");
        assert_eq!(ms(725_000.0), "12m05s");
        assert_eq!(ms(f64::NAN), "-");
        assert_eq!(offset(812), "+812ms");
        assert_eq!(offset(-40), "-40ms");
        assert_eq!(seconds(Some(5.0)), "5s");
        assert_eq!(seconds(Some(2.5)), "2.5s");
        assert_eq!(seconds(None), "-");
        assert_eq!(time_of_day(86_400_000 + 3_723_004), "01:02:03.004");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(fit("abc", 0), "");
    }
}
