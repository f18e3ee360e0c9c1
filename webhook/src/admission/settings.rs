//! Per-pod settings read from `leader-election/*` annotations, validated (pure, no I/O).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use contract::Timings;
use contract::annotations as ann;

use super::resources::ResourceSettings;

/// Why a pod or workload is refused; the message is shown to the user by `kubectl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial(pub String);

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Denial {}

/// How the elector is injected: as a native sidecar (init container with `restartPolicy:
/// Always`) or as a regular container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NativeMode {
    /// Native only where every kubelet (and the API server) is at least 1.29.
    Auto,
    Always,
    Never,
}

impl FromStr for NativeMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(()),
        }
    }
}

/// What a pod's annotations ask for. Defaults apply to everything not annotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    pub lease_name: Option<String>,
    pub timings: Timings,
    /// `None`: the elector's default ([`Timings::default_renew_interval`]).
    pub renew_interval: Option<Duration>,
    pub port: u16,
    pub leader_label: bool,
    /// `None`: use the webhook's `--native-sidecar` mode.
    pub native: Option<NativeMode>,
    pub resources: ResourceSettings,
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            lease_name: None,
            timings: Timings::default(),
            renew_interval: None,
            port: contract::http::DEFAULT_PORT,
            leader_label: false,
            native: None,
            resources: ResourceSettings::default(),
        }
    }
}

impl PodSettings {
    /// The renew interval the elector is given: the annotation, else the elector's default.
    pub fn effective_renew_interval(&self) -> Duration {
        self.renew_interval
            .unwrap_or_else(|| self.timings.default_renew_interval())
    }
}

type Annotations = BTreeMap<String, String>;

/// The expected form of a user annotation, for messages.
fn expected(key: &str) -> &'static str {
    ann::USER_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, form)| *form)
        .unwrap_or("a valid value")
}

pub(super) fn invalid(key: &str, value: &str) -> Denial {
    Denial(format!(
        "annotation {key}={value:?} is invalid: expected {}",
        expected(key)
    ))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, Denial> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value)),
    }
}

/// Whether the pod opted in. Absent or `"false"`: no; `"true"`: yes; anything else is refused.
pub fn enabled(annotations: Option<&Annotations>) -> Result<bool, Denial> {
    match annotations.and_then(|a| a.get(ann::ENABLED)) {
        None => Ok(false),
        Some(v) => parse_bool(ann::ENABLED, v),
    }
}

/// A Kubernetes object name usable for a Lease (DNS-1123 subdomain).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn parse_duration(key: &str, value: &str) -> Result<Duration, Denial> {
    match contract::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(invalid(key, value)),
    }
}

/// Reads and validates every setting annotation; the first bad one is refused with a message
/// naming it and its expected form.
pub fn parse_settings(annotations: Option<&Annotations>) -> Result<PodSettings, Denial> {
    let mut s = PodSettings::default();
    let Some(a) = annotations else {
        return Ok(s);
    };
    if let Some(v) = a.get(ann::LEASE_NAME) {
        if !is_dns_subdomain(v) {
            return Err(invalid(ann::LEASE_NAME, v));
        }
        s.lease_name = Some(v.clone());
    }
    if let Some(v) = a.get(ann::LEASE_DURATION) {
        s.timings.lease_duration = parse_duration(ann::LEASE_DURATION, v)?;
    }
    if let Some(v) = a.get(ann::RENEW_DEADLINE) {
        s.timings.renew_deadline = parse_duration(ann::RENEW_DEADLINE, v)?;
    }
    if let Some(v) = a.get(ann::RETRY_PERIOD) {
        s.timings.retry_period = parse_duration(ann::RETRY_PERIOD, v)?;
    }
    s.timings
        .validate((ann::LEASE_DURATION, ann::RENEW_DEADLINE, ann::RETRY_PERIOD))
        .map_err(|e| Denial(format!("invalid lease timings: {e}")))?;
    if let Some(v) = a.get(ann::RENEW_INTERVAL) {
        let d = parse_duration(ann::RENEW_INTERVAL, v)?;
        s.timings
            .validate_renew_interval(
                d,
                (ann::RENEW_INTERVAL, ann::RENEW_DEADLINE, ann::RETRY_PERIOD),
            )
            .map_err(|e| Denial(format!("invalid lease timings: {e}")))?;
        s.renew_interval = Some(d);
    }
    if let Some(v) = a.get(ann::PORT) {
        s.port = match v.trim().parse::<u16>() {
            Ok(p) if p >= 1024 => p,
            _ => return Err(invalid(ann::PORT, v)),
        };
    }
    if let Some(v) = a.get(ann::LEADER_LABEL) {
        s.leader_label = parse_bool(ann::LEADER_LABEL, v)?;
    }
    if let Some(v) = a.get(ann::NATIVE_SIDECAR) {
        s.native = Some(v.parse().map_err(|()| invalid(ann::NATIVE_SIDECAR, v))?);
    }
    s.resources = ResourceSettings::parse(a)?;
    Ok(s)
}

/// Keys a user may set (those copied from workloads to their pod template).
pub fn is_user_key(key: &str) -> bool {
    ann::USER_KEYS.iter().any(|(k, _)| *k == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn enabled_values() {
        let cases: &[(Option<&str>, Result<bool, ()>)] = &[
            (None, Ok(false)),
            (Some("true"), Ok(true)),
            (Some("false"), Ok(false)),
            (Some("yes"), Err(())),
            (Some("True"), Err(())),
            (Some(""), Err(())),
        ];
        for (value, want) in cases {
            let a = value.map(|v| map(&[(ann::ENABLED, v)]));
            let got = enabled(a.as_ref());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{value:?}"),
                (Err(d), Err(())) => {
                    assert!(d.0.contains(ann::ENABLED), "{d}");
                    assert!(d.0.contains("\"true\" or \"false\""), "{d}");
                }
                (g, w) => panic!("{value:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn settings_table() {
        // (annotations, Ok(check) or Err(substring of the message))
        type Check = fn(&PodSettings) -> bool;
        type Case<'a> = (Vec<(&'a str, &'a str)>, Result<Check, &'a str>);
        let cases: Vec<Case> = vec![
            (vec![], Ok(|s| *s == PodSettings::default())),
            (
                vec![(ann::LEASE_NAME, "my-lease.v2")],
                Ok(|s| s.lease_name.as_deref() == Some("my-lease.v2")),
            ),
            (vec![(ann::LEASE_NAME, "My_Lease")], Err(ann::LEASE_NAME)),
            (vec![(ann::LEASE_NAME, "-x")], Err(ann::LEASE_NAME)),
            (
                vec![
                    (ann::LEASE_DURATION, "30s"),
                    (ann::RENEW_DEADLINE, "20s"),
                    (ann::RETRY_PERIOD, "500ms"),
                ],
                Ok(|s| {
                    s.timings.lease_duration == Duration::from_secs(30)
                        && s.timings.retry_period == Duration::from_millis(500)
                }),
            ),
            (
                vec![(ann::LEASE_DURATION, "soon")],
                Err(ann::LEASE_DURATION),
            ),
            (vec![(ann::RETRY_PERIOD, "0s")], Err(ann::RETRY_PERIOD)),
            // Valid durations in the wrong order name the annotations to change.
            (vec![(ann::RENEW_DEADLINE, "20s")], Err(ann::RENEW_DEADLINE)),
            (vec![(ann::PORT, "8080")], Ok(|s| s.port == 8080)),
            (vec![(ann::PORT, "80")], Err("between 1024 and 65535")),
            (vec![(ann::PORT, "70000")], Err(ann::PORT)),
            (vec![(ann::LEADER_LABEL, "true")], Ok(|s| s.leader_label)),
            (vec![(ann::LEADER_LABEL, "1")], Err(ann::LEADER_LABEL)),
            (
                vec![(ann::NATIVE_SIDECAR, "never")],
                Ok(|s| s.native == Some(NativeMode::Never)),
            ),
            (vec![(ann::NATIVE_SIDECAR, "sometimes")], Err("\"auto\"")),
            (
                vec![(ann::RENEW_INTERVAL, "8s")],
                Ok(|s| s.effective_renew_interval() == Duration::from_secs(8)),
            ),
            (
                vec![],
                Ok(|s| s.effective_renew_interval() == Duration::from_millis(7500)),
            ),
            (
                vec![(ann::RENEW_INTERVAL, "later")],
                Err(ann::RENEW_INTERVAL),
            ),
            (vec![(ann::RENEW_INTERVAL, "0s")], Err(ann::RENEW_INTERVAL)),
            // 9s + the 2s retry period would pass the 10s renew deadline.
            (vec![(ann::RENEW_INTERVAL, "9s")], Err("at most 8s")),
            (
                vec![
                    (ann::LEASE_DURATION, "60s"),
                    (ann::RENEW_DEADLINE, "40s"),
                    (ann::RENEW_INTERVAL, "30s"),
                ],
                Ok(|s| s.renew_interval == Some(Duration::from_secs(30))),
            ),
            (
                vec![(ann::CPU_REQUEST, "50m"), (ann::MEMORY_LIMIT, "64Mi")],
                Ok(|s| {
                    s.resources.cpu_request.as_ref().unwrap().text == "50m"
                        && s.resources.memory_limit.as_ref().unwrap().text == "64Mi"
                }),
            ),
            (
                vec![(ann::CPU_LIMIT, "lots")],
                Err("a positive CPU quantity"),
            ),
            (vec![(ann::CPU_REQUEST, "-1")], Err(ann::CPU_REQUEST)),
            (
                vec![(ann::MEMORY_REQUEST, "16MB")],
                Err(ann::MEMORY_REQUEST),
            ),
            (
                vec![(ann::MEMORY_LIMIT, "32m")],
                Err("did you mean \"32Mi\""),
            ),
            (
                vec![(ann::CPU_REQUEST, "200m"), (ann::CPU_LIMIT, "0.1")],
                Err("must not exceed its limit"),
            ),
        ];
        for (pairs, want) in cases {
            let a = map(&pairs);
            match (parse_settings(Some(&a)), want) {
                (Ok(s), Ok(check)) => assert!(check(&s), "{pairs:?}: {s:?}"),
                (Err(d), Err(sub)) => assert!(d.0.contains(sub), "{pairs:?}: {d}"),
                (got, _) => panic!("{pairs:?}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn durations_format_for_both_parsers() {
        assert_eq!(contract::format_duration(Duration::from_secs(15)), "15s");
        assert_eq!(
            contract::format_duration(Duration::from_millis(1500)),
            "1500ms"
        );
        for d in [Duration::from_secs(90), Duration::from_millis(250)] {
            assert_eq!(
                humantime::parse_duration(&contract::format_duration(d)).unwrap(),
                d
            );
        }
    }

    #[test]
    fn dns_subdomain() {
        for ok in ["a", "my-app", "a.b-c.d1", "0abc"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "A", "a_b", "a..b", "-a", "a-", ".a", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
