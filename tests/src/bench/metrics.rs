//! The Prometheus text format (the API server's, the elector's and the webhook's /metrics), and
//! the lease figures read from the API server's own counters (Kubernetes 1.35 names).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses `name{a="b",c="d"} value [timestamp]` lines; comments and malformed lines are skipped.
pub fn parse_prometheus(text: &str) -> Vec<MetricSample> {
    text.lines().filter_map(parse_metric_line).collect()
}

fn parse_metric_line(line: &str) -> Option<MetricSample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        // Label values are quoted and may contain escaped quotes, commas and braces.
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            while chars
                .peek()
                .is_some_and(|(_, c)| *c == ',' || c.is_whitespace())
            {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut val = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => val.push('\n'),
                        Some(other) => val.push(other),
                        None => return None,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => val.push(c),
                }
            }
            if !closed {
                return None;
            }
            labels.insert(key.trim().to_string(), val);
        }
        rest = &body[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(MetricSample {
        name,
        labels,
        value,
    })
}

fn matches(s: &MetricSample, name: &str, filter: &[(&str, &str)]) -> bool {
    s.name == name
        && filter
            .iter()
            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
}

/// Sum of `name` over all series matching `filter`.
pub fn sum_where(samples: &[MetricSample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| matches(s, name, filter))
        .map(|s| s.value)
        .sum()
}

/// Sum of `name` over series matching `filter`, grouped by the value of label `by`.
pub fn group_by(
    samples: &[MetricSample],
    name: &str,
    filter: &[(&str, &str)],
    by: &str,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| matches(s, name, filter)) {
        let key = s.labels.get(by).cloned().unwrap_or_default();
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

/// `after - before` per key (keys of either side; counters never go down).
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for k in before.keys().chain(after.keys()) {
        let d = after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
        out.insert(k.clone(), d);
    }
    out
}

/// Lease requests to the API server by verb (`apiserver_request_total`, all codes).
pub fn lease_requests_by_verb(samples: &[MetricSample]) -> BTreeMap<String, f64> {
    group_by(
        samples,
        "apiserver_request_total",
        &[("resource", "leases")],
        "verb",
    )
}

/// Open lease watches (`apiserver_longrunning_requests`; `apiserver_longrunning_gauge` before 1.23).
pub fn lease_watches(samples: &[MetricSample]) -> f64 {
    sum_where(
        samples,
        "apiserver_longrunning_requests",
        &[("resource", "leases"), ("verb", "WATCH")],
    )
}

/// Cumulative histogram buckets `(le, count)` of `name` (sorted by `le`).
pub fn histogram_buckets(samples: &[MetricSample], name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket)
        .filter_map(|s| {
            let le = match s.labels.get("le")?.as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            Some((le, s.value))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The bucket-wise difference of two cumulative histograms with the same bounds.
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (*le, c - b)
        })
        .collect()
}

/// Upper bound of the bucket holding quantile `q` of a cumulative histogram: an upper bound of
/// the true quantile, at the histogram's resolution. None when empty.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}

// ---------------------------------------------------------------------------------------------
// /proc and hey
// ---------------------------------------------------------------------------------------------

/// Lease requests by verb, non-2xx requests and open watches, as one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiSnapshot {
    pub by_verb: BTreeMap<String, f64>,
    pub failed: f64,
    pub watches: f64,
}

pub fn api_snapshot(samples: &[MetricSample]) -> ApiSnapshot {
    // Watches end with varying codes when the server closes them; only other verbs can fail.
    let failed = samples
        .iter()
        .filter(|s| matches(s, "apiserver_request_total", &[("resource", "leases")]))
        .filter(|s| s.labels.get("verb").is_some_and(|v| v != "WATCH"))
        .filter(|s| s.labels.get("code").is_some_and(|c| !c.starts_with('2')))
        .map(|s| s.value)
        .sum();
    ApiSnapshot {
        by_verb: lease_requests_by_verb(samples),
        failed,
        watches: lease_watches(samples),
    }
}

/// Counter increase per minute between two snapshots, by verb.
pub fn per_minute(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    minutes: f64,
) -> BTreeMap<String, f64> {
    delta(before, after)
        .into_iter()
        .map(|(k, v)| (k, if minutes > 0.0 { v / minutes } else { 0.0 }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const APISERVER: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 30
apiserver_request_total{code="409",component="apiserver",contentType="application/json",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="GET",version="v1"} 3
apiserver_request_total{code="0",component="apiserver",contentType="application/json",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="WATCH",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 99
apiserver_longrunning_requests{component="apiserver",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="WATCH",version="v1"} 2
apiserver_longrunning_requests{component="apiserver",group="coordination.k8s.io",resource="leases",scope="cluster",subresource="",verb="WATCH",version="v1"} 1
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 5
"#;

    #[test]
    fn apiserver_metrics_by_verb_and_watches() {
        let s = parse_prometheus(APISERVER);
        assert_eq!(s.len(), 8);
        let by_verb = lease_requests_by_verb(&s);
        assert_eq!(by_verb.get("PUT"), Some(&32.0));
        assert_eq!(by_verb.get("GET"), Some(&3.0));
        assert_eq!(by_verb.get("WATCH"), Some(&1.0));
        assert_eq!(by_verb.get("LIST"), None, "pods are not leases");
        assert_eq!(lease_watches(&s), 3.0);
        let snap = api_snapshot(&s);
        assert_eq!(snap.failed, 2.0, "the 409s; a WATCH's code does not count");
        let before: BTreeMap<String, f64> = [("PUT".to_string(), 10.0)].into();
        let d = delta(&before, &by_verb);
        assert_eq!(d.get("PUT"), Some(&22.0));
        assert_eq!(d.get("GET"), Some(&3.0));
    }

    /// (name, labels, value) a line should parse to.
    type Parsed<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

    #[test]
    fn prometheus_lines() {
        let cases: &[(&str, Option<Parsed>)] = &[
            ("up 1", Some(("up", &[], 1.0))),
            (
                "x_total{a=\"b\"} 2.5 1700000000",
                Some(("x_total", &[("a", "b")], 2.5)),
            ),
            (
                r#"y{a="q\"uo,te}",b="n\\l"} 3"#,
                Some(("y", &[("a", "q\"uo,te}"), ("b", "n\\l")], 3.0)),
            ),
            (
                "h_bucket{le=\"+Inf\"} 7",
                Some(("h_bucket", &[("le", "+Inf")], 7.0)),
            ),
            ("z{a=\"1\",} 4", Some(("z", &[("a", "1")], 4.0))),
            ("# HELP up x", None),
            ("", None),
            ("broken{a=\"b} 1", None),
            ("novalue", None),
            ("bad 1x", None),
        ];
        for (line, want) in cases {
            let got = parse_metric_line(line);
            match (got, want) {
                (None, None) => {}
                (Some(s), Some((name, labels, value))) => {
                    assert_eq!(s.name, *name, "{line}");
                    let want: BTreeMap<String, String> = labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    assert_eq!(s.labels, want, "{line}");
                    assert_eq!(s.value, *value, "{line}");
                }
                (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn histograms() {
        let text = "h_bucket{le=\"0.001\"} 10\nh_bucket{le=\"0.002\"} 90\nh_bucket{le=\"+Inf\"} 100\nh_bucket{le=\"0.004\"} 99\nh_sum 0.2\nh_count 100\n";
        let s = parse_prometheus(text);
        let b = histogram_buckets(&s, "h");
        assert_eq!(
            b,
            [
                (0.001, 10.0),
                (0.002, 90.0),
                (0.004, 99.0),
                (f64::INFINITY, 100.0)
            ]
        );
        assert_eq!(histogram_quantile(&b, 0.5), Some(0.002));
        assert_eq!(histogram_quantile(&b, 0.99), Some(0.004));
        assert_eq!(histogram_quantile(&b, 1.0), Some(f64::INFINITY));
        let before = [
            (0.001, 10.0),
            (0.002, 10.0),
            (0.004, 10.0),
            (f64::INFINITY, 10.0),
        ];
        let d = bucket_delta(&before, &b);
        assert_eq!(
            d,
            [
                (0.001, 0.0),
                (0.002, 80.0),
                (0.004, 89.0),
                (f64::INFINITY, 90.0)
            ]
        );
        assert_eq!(histogram_quantile(&d, 0.1), Some(0.002));
        assert_eq!(histogram_quantile(&[], 0.5), None);
        assert_eq!(histogram_quantile(&[(1.0, 0.0)], 0.5), None);
    }

    #[test]
    fn rates_per_minute() {
        let a: BTreeMap<String, f64> = [("GET".to_string(), 10.0)].into();
        let b: BTreeMap<String, f64> = [("GET".to_string(), 40.0), ("PUT".to_string(), 6.0)].into();
        let r = per_minute(&a, &b, 0.5);
        assert_eq!(r.get("GET"), Some(&60.0));
        assert_eq!(r.get("PUT"), Some(&12.0));
        assert_eq!(per_minute(&a, &b, 0.0).get("GET"), Some(&0.0));
    }
}
