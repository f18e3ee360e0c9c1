//! Statistics over samples: min / median / max, nearest-rank percentiles, and latencies with
//! the requests that never got an answer counted as infinitely slow.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// min / median / max of the finite values; None for none.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        n,
        min: v[0],
        median,
        max: v[n - 1],
    })
}

/// Nearest-rank percentile (q in 0..=1) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sorted latencies of the answered requests plus `+inf` for each of the `expected` requests
/// that got no (successful) answer: a load tool that drops its failures from the figures would
/// make a failing server look fast.
pub fn latencies_with_missing(answered: &[f64], expected: usize) -> Vec<f64> {
    let mut v: Vec<f64> = answered.to_vec();
    v.extend(std::iter::repeat_n(
        f64::INFINITY,
        expected.saturating_sub(answered.len()),
    ));
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(
            summarize(&[3.0, 1.0, 2.0]),
            Some(Summary {
                n: 3,
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(
            summarize(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median),
            Some(2.5)
        );
        assert_eq!(summarize(&[f64::NAN, 1.0]).map(|s| s.n), Some(1));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn missing_answers_count_as_infinitely_slow() {
        let answered: Vec<f64> = (1..=98).map(f64::from).collect();
        // 100 sent, 98 answered: the 99th percentile is a missing answer.
        let v = latencies_with_missing(&answered, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(f64::INFINITY));
        // All answered (or more than expected, e.g. a rate slightly exceeded): unchanged.
        let v = latencies_with_missing(&[2.0, 1.0], 1);
        assert_eq!(v, [1.0, 2.0]);
    }
}
