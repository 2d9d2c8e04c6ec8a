//! The loop's events on one wall-clock timeline: drift onsets (from the
//! stream, when the generator sends the onset row), the gateway's rollout
//! decisions (its routing history) and the trainer's events log. External
//! shapes are read tolerantly: unknown events and fields are ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What happened, in the loop's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The stream's documented concept change reached the gateway.
    DriftOnset,
    /// The trainer's monitors flagged drift or a quality drop.
    DriftDetected,
    RetrainStarted,
    RetrainFinished,
    Published,
    /// A canary started or advanced a step.
    CanaryStep,
    Promoted,
    RolledBack,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::DriftOnset => "drift onset",
            Kind::DriftDetected => "drift detected",
            Kind::RetrainStarted => "retrain started",
            Kind::RetrainFinished => "retrain finished",
            Kind::Published => "published",
            Kind::CanaryStep => "canary step",
            Kind::Promoted => "promoted",
            Kind::RolledBack => "rolled back",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// `stream`, `gateway` or `trainer`.
    pub source: String,
    pub kind: Kind,
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub detail: String,
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` → milliseconds since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" | "" => 0,
        _ => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let hh: i64 = rest.get(1..3)?.parse().ok()?;
            let mm: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hh * 60 + mm)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

/// A timestamp field as ms since the epoch: RFC 3339 text, or a number in
/// ms (or s, when it is too small to be ms).
fn time_of(v: &Value) -> Option<u64> {
    for key in ["t_ms", "ts_ms", "timestamp_ms", "time_ms", "at_ms"] {
        if let Some(n) = v[key].as_f64() {
            return Some(n as u64);
        }
    }
    for key in ["at", "ts", "time", "timestamp"] {
        match &v[key] {
            Value::String(s) => return parse_rfc3339_ms(s),
            Value::Number(n) => {
                let x = n.as_f64()?;
                return Some(if x < 1e11 {
                    (x * 1000.0) as u64
                } else {
                    x as u64
                });
            }
            _ => {}
        }
    }
    None
}

/// The first `version N` in a text.
fn version_in(text: &str) -> Option<u64> {
    let i = text.find("version ")?;
    let digits: String = text[i + 8..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn as_version(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// One line of the trainer's events log.
pub fn from_trainer(line: &str) -> Option<Event> {
    let v: Value = serde_json::from_str(line).ok()?;
    let name = ["event", "kind", "type", "name"]
        .iter()
        .find_map(|k| v[*k].as_str())?
        .to_ascii_lowercase();
    // Attempts that did not happen (`retrain_failed`, `publish_failed`,
    // `rejected`) are not marked.
    if name.contains("fail") || name.contains("reject") {
        return None;
    }
    let kind =
        if name.contains("drift") || name.contains("quality_drop") || name.contains("trigger") {
            Kind::DriftDetected
        } else if name.contains("rollback") || name.contains("rolled") {
            Kind::RolledBack
        } else if name.contains("promot") {
            Kind::Promoted
        } else if name.contains("canary") || name.contains("advance") || name.contains("step") {
            Kind::CanaryStep
        } else if name.contains("publish") {
            Kind::Published
        } else if name.contains("train") && (name.contains("start") || name.contains("begin")) {
            Kind::RetrainStarted
        } else if name.contains("train")
            && (name.contains("finish") || name.contains("done") || name.contains("end"))
        {
            Kind::RetrainFinished
        } else {
            return None;
        };
    let version = ["version", "candidate", "candidate_version", "new_version"]
        .iter()
        .find_map(|k| as_version(&v[*k]));
    let detail = ["reason", "detail", "message"]
        .iter()
        .find_map(|k| v[*k].as_str())
        .unwrap_or(&name);
    Some(Event {
        t_ms: time_of(&v)?,
        source: "trainer".into(),
        kind,
        version,
        detail: detail.to_string(),
    })
}

/// One entry of the gateway's rollout history (`GET /v2/models/{m}/routing`,
/// `rollout.history`).
pub fn from_gateway(entry: &Value) -> Option<Event> {
    let reason = entry["reason"].as_str().unwrap_or_default();
    let canary = entry["canary"]
        .as_object()
        .and_then(|m| m.keys().next())
        .and_then(|k| k.parse().ok());
    let (kind, version) = match entry["decision"].as_str()? {
        "start" | "advance" => (Kind::CanaryStep, canary.or_else(|| version_in(reason))),
        "promote" => (Kind::Promoted, as_version(&entry["stable"])),
        "rollback" => (Kind::RolledBack, version_in(reason).or(canary)),
        _ => return None,
    };
    Some(Event {
        t_ms: time_of(entry)?,
        source: "gateway".into(),
        kind,
        version,
        detail: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_instants() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-18T11:06:40.25Z"),
            Some(1_795_000_000_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-18T12:06:40+01:00"),
            Some(1_795_000_000_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        let now = quiver_contract::time::rfc3339(1_795_000_123);
        assert_eq!(parse_rfc3339_ms(&now), Some(1_795_000_123_000));
    }

    #[test]
    fn trainer_lines_are_read_tolerantly() {
        let e = from_trainer(r#"{"ts_ms": 5000, "event": "published", "version": 2}"#).unwrap();
        assert_eq!(
            (e.t_ms, e.kind, e.version),
            (5000, Kind::Published, Some(2))
        );
        let e =
            from_trainer(r#"{"at": "1970-01-01T00:00:01Z", "kind": "retrain_started"}"#).unwrap();
        assert_eq!((e.t_ms, e.kind), (1000, Kind::RetrainStarted));
        let e =
            from_trainer(r#"{"time": 2, "type": "DriftDetected", "reason": "psi 0.4"}"#).unwrap();
        assert_eq!(
            (e.t_ms, e.kind, e.detail.as_str()),
            (2000, Kind::DriftDetected, "psi 0.4")
        );
        assert_eq!(from_trainer(r#"{"ts_ms": 1, "event": "heartbeat"}"#), None);
        assert_eq!(
            from_trainer(r#"{"ts_ms": 1, "event": "publish_failed", "version": 2}"#),
            None
        );
        assert_eq!(
            from_trainer(r#"{"ts_ms": 1, "event": "retrain_failed"}"#),
            None
        );
        assert_eq!(from_trainer(r#"{"ts_ms": 1, "event": "rejected"}"#), None);
        let e = from_trainer(r#"{"ts_ms": 1, "event": "canary_started", "version": 4}"#).unwrap();
        assert_eq!((e.kind, e.version), (Kind::CanaryStep, Some(4)));
        let e = from_trainer(r#"{"ts_ms": 1, "event": "quality_drop", "version": 1}"#).unwrap();
        assert_eq!(e.kind, Kind::DriftDetected);
        assert_eq!(from_trainer(r#"{"event": "published"}"#), None);
        assert_eq!(from_trainer("not json"), None);
    }

    #[test]
    fn gateway_decisions_map_to_kinds() {
        let at = "1970-01-01T00:00:10Z";
        let start = json!({"at": at, "decision": "start", "canary": {"3": 0.05}, "reason": "r"});
        assert_eq!(
            from_gateway(&start).map(|e| (e.kind, e.version)),
            Some((Kind::CanaryStep, Some(3)))
        );
        let promote = json!({"at": at, "decision": "promote", "stable": 3, "canary": {}});
        assert_eq!(
            from_gateway(&promote).map(|e| (e.kind, e.version, e.t_ms)),
            Some((Kind::Promoted, Some(3), 10_000))
        );
        let rb = json!({"at": at, "decision": "rollback", "canary": {}, "reason": "worse; version 4 rolled back"});
        assert_eq!(
            from_gateway(&rb).map(|e| (e.kind, e.version)),
            Some((Kind::RolledBack, Some(4)))
        );
        assert_eq!(from_gateway(&json!({"at": at, "decision": "init"})), None);
    }
}
