//! `hey`, the HTTP load generator the webhook is measured with: its CSV output and how a total
//! rate is split over workers.

/// One request from `hey -o csv`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeyRow {
    /// Seconds, at hey's 0.1 ms resolution.
    pub latency: f64,
    pub status: u16,
}

/// hey's CSV: `response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,
/// status-code,offset`. Failed requests are not listed by hey at all.
pub fn parse_hey_csv(text: &str) -> std::result::Result<Vec<HeyRow>, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.starts_with("response-time,") => {}
        other => return Err(format!("not hey's CSV output (first line {other:?})")),
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let latency = f.first().and_then(|v| v.parse().ok());
            let status = f.get(6).and_then(|v| v.parse().ok());
            match (latency, status) {
                (Some(latency), Some(status)) => Ok(HeyRow { latency, status }),
                _ => Err(format!("bad hey CSV line {l:?}")),
            }
        })
        .collect()
}

/// hey rate-limits per worker (`-q`), so a total rate is split over workers doing at most 100
/// req/s each — enough that one slow answer does not stall the schedule.
pub fn hey_workers(rate: u32) -> (u32, f64) {
    let workers = rate.div_ceil(100).max(1);
    (workers, f64::from(rate) / f64::from(workers))
}

// ---------------------------------------------------------------------------------------------
// Figures and the table
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hey_output_and_workers() {
        let csv = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n\
                   0.0025,0.0002,0.0000,0.0001,0.0020,0.0001,200,0.0001\n0.0110,0,0,0,0,0,500,0.5\n";
        let rows = parse_hey_csv(csv).expect("valid");
        assert_eq!(
            rows,
            [
                HeyRow {
                    latency: 0.0025,
                    status: 200
                },
                HeyRow {
                    latency: 0.011,
                    status: 500
                }
            ]
        );
        assert_eq!(parse_hey_csv("response-time,x\n").map(|r| r.len()), Ok(0));
        assert!(parse_hey_csv("Summary:\n").is_err());
        assert!(parse_hey_csv("response-time,a\nx,y\n").is_err());
        let cases = [
            (200, (2, 100.0)),
            (1000, (10, 100.0)),
            (50, (1, 50.0)),
            (250, (3, 250.0 / 3.0)),
        ];
        for (rate, want) in cases {
            assert_eq!(hey_workers(rate), want, "{rate}");
        }
    }
}
