//! The bench's command line: what to measure, for how long, and where the binaries are.

use std::path::PathBuf;
use std::time::Duration;

use contract::{Timings, parse_duration};
use serde::Serialize;

/// Lease timings a scenario runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// client-go's defaults, 15 s / 10 s / 2 s: the targets are stated for these.
    Default,
    /// 4 s / 3 s / 1 s, as the integration tests use: more rounds for the time.
    Short,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "15s/10s/2s",
            Profile::Short => "4s/3s/1s",
        }
    }

    pub fn timings(self) -> Timings {
        match self {
            Profile::Default => Timings::default(),
            Profile::Short => crate::elector::FAST,
        }
    }

    fn parse(s: &str) -> Result<Profile, String> {
        match s {
            "default" => Ok(Profile::Default),
            "short" => Ok(Profile::Short),
            other => Err(format!("unknown profile {other:?}: use default or short")),
        }
    }
}

/// What to measure and for how long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Options {
    pub candidates: usize,
    pub profiles: Vec<Profile>,
    /// Handover and failover rounds with the default profile (each failover waits ~15 s).
    pub rounds: usize,
    /// Rounds with the short profile.
    pub short_rounds: usize,
    /// Freeze-past-the-lease rounds per profile.
    pub freeze_rounds: usize,
    /// Idle window over which requests, CPU and RSS are measured.
    pub window: Duration,
    /// Window measuring the control plane's own lease traffic before any candidate runs.
    pub baseline: Duration,
    /// Elections of the fleet (3 candidates each); 0 skips it.
    pub fleet: usize,
    pub fleet_window: Duration,
    pub elector: bool,
    pub webhook: bool,
    /// Fixed webhook request rates (req/s) whose latency is measured.
    pub rates: Vec<u32>,
    /// Length of each webhook load step.
    pub load_duration: Duration,
    /// Connections of the unthrottled (max rate) step.
    pub max_connections: u32,
    /// Pods created through the API server, with and without the webhook.
    pub pod_creations: usize,
    /// `kubectl delete pod <leader>` rounds on the real cluster; 0 (and no restarts) skips it.
    pub pod_deletes: usize,
    /// `kubectl rollout restart` rounds on the real cluster.
    pub restarts: usize,
    pub out: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    /// The elector binary measured (bench.sh passes the static musl build the image ships).
    pub elector_bin: Option<PathBuf>,
    /// The client-go peer (bench.sh builds it from tests/bench/peer).
    pub peer_bin: Option<PathBuf>,
    pub quick: bool,
}

pub enum Command {
    Run(Box<Options>),
    Help,
}

pub const USAGE: &str = "\
bench: the release elector beside client-go's leaderelection (built here), and the webhook,
measured on one real control plane in one run

Usage: bench [options]   (./bench.sh installs what it needs, builds, then runs this)

  --quick                  smoke run: short profile, 2 rounds, 10 s windows, a fleet of 5,
                           3 s load steps, 20 pods (explicit options still win)
  --candidates N           candidates per election (default 3)
  --profiles default,short lease timings: default = 15s/10s/2s, short = 4s/3s/1s
  --rounds N               handover+failover rounds, default profile (default 10)
  --short-rounds N         rounds with the short profile (default 10)
  --freeze-rounds N        freeze-past-the-lease rounds per profile (default 3)
  --window DUR             idle window for requests/CPU/RSS (default 60s)
  --baseline DUR           control-plane-only window before the candidates (default 10s)
  --fleet N                elections of 3 candidates in the fleet, 0 = none (default 50)
  --fleet-window DUR       the fleet's measuring window (default 60s)
  --skip-elector           no elector scenarios (nor fleet)
  --skip-webhook           no webhook scenarios
  --rates 200,1000         fixed webhook rates in req/s (default 200,1000)
  --load-duration DUR      length of each webhook load step (default 15s)
  --max-connections N      connections of the unthrottled step (default 16)
  --pod-creations N        pods created through the API server, with and without the
                           webhook (default 200)
  --pod-deletes N          kubectl delete pod <leader> rounds on the real cluster
                           (default 5; --quick: 0; with --restarts 0 skips the cluster)
  --restarts N             kubectl rollout restart rounds on the real cluster (default 2)
  --out PATH               JSON report (default <workspace>/target/bench/latest.json)
  --bin-dir DIR            where elector and webhook are (default: next to this binary)
  --elector-bin PATH       measure this elector binary (bench.sh: the static musl one)
  --peer-bin PATH          the client-go peer (bench.sh builds it)
  (the webhook logs at $WEBHOOK_TEST_LOG, bench.sh: info, one line per admission)
  -h, --help               this text
";

fn parse_list<T>(
    flag: &str,
    v: &str,
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let items: Vec<T> = v
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| one(x.trim()).map_err(|e| format!("{flag}: {e}")))
        .collect::<Result<_, _>>()?;
    if items.is_empty() {
        return Err(format!("{flag} needs at least one value"));
    }
    Ok(items)
}

fn number<T: std::str::FromStr + PartialOrd + Default>(
    flag: &str,
    s: &str,
    allow_zero: bool,
) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(v) if v > T::default() || (allow_zero && v == T::default()) => Ok(v),
        _ => Err(format!(
            "{flag}: {s:?} is not a {} whole number",
            if allow_zero {
                "non-negative"
            } else {
                "positive"
            }
        )),
    }
}

fn duration(flag: &str, s: &str) -> Result<Duration, String> {
    match parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{flag}: {s:?} must be longer than zero")),
        Err(e) => Err(format!("{flag}: {e}")),
    }
}

/// Parses the command line (without the program name). `--quick` only changes defaults, so
/// explicit options win wherever they appear.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut it = args.into_iter();
    let mut quick = false;
    let mut candidates = None;
    let mut profiles = None;
    let mut rounds = None;
    let mut short_rounds = None;
    let mut freeze_rounds = None;
    let mut window = None;
    let mut baseline = None;
    let mut fleet = None;
    let mut fleet_window = None;
    let (mut elector, mut webhook) = (true, true);
    let mut rates = None;
    let mut load_duration = None;
    let mut max_connections = None;
    let mut pod_creations = None;
    let (mut pod_deletes, mut restarts) = (None, None);
    let (mut out, mut bin_dir, mut elector_bin, mut peer_bin) = (None, None, None, None);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |inline: Option<String>| -> Result<String, String> {
            inline
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))
        };
        let f = flag.as_str();
        match f {
            "-h" | "--help" => return Ok(Command::Help),
            "--quick" => quick = true,
            "--skip-elector" => elector = false,
            "--skip-webhook" => webhook = false,
            "--candidates" => candidates = Some(number(f, &value(inline)?, false)?),
            "--profiles" => profiles = Some(parse_list(f, &value(inline)?, Profile::parse)?),
            "--rounds" => rounds = Some(number(f, &value(inline)?, false)?),
            "--short-rounds" => short_rounds = Some(number(f, &value(inline)?, false)?),
            "--freeze-rounds" => freeze_rounds = Some(number(f, &value(inline)?, true)?),
            "--window" => window = Some(duration(f, &value(inline)?)?),
            "--baseline" => baseline = Some(duration(f, &value(inline)?)?),
            "--fleet" => fleet = Some(number(f, &value(inline)?, true)?),
            "--fleet-window" => fleet_window = Some(duration(f, &value(inline)?)?),
            "--rates" => rates = Some(parse_list(f, &value(inline)?, |s| number(f, s, false))?),
            "--load-duration" => load_duration = Some(duration(f, &value(inline)?)?),
            "--max-connections" => max_connections = Some(number(f, &value(inline)?, false)?),
            "--pod-creations" => pod_creations = Some(number(f, &value(inline)?, true)?),
            "--pod-deletes" => pod_deletes = Some(number(f, &value(inline)?, true)?),
            "--restarts" => restarts = Some(number(f, &value(inline)?, true)?),
            "--out" => out = Some(PathBuf::from(value(inline)?)),
            "--bin-dir" => bin_dir = Some(PathBuf::from(value(inline)?)),
            "--elector-bin" => elector_bin = Some(PathBuf::from(value(inline)?)),
            "--peer-bin" => peer_bin = Some(PathBuf::from(value(inline)?)),
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    if !elector && !webhook {
        return Err("--skip-elector and --skip-webhook together leave nothing to measure".into());
    }
    let secs = Duration::from_secs;
    let pick = |v: Option<usize>, q: usize, full: usize| v.unwrap_or(if quick { q } else { full });
    Ok(Command::Run(Box::new(Options {
        candidates: candidates.unwrap_or(3),
        profiles: profiles.unwrap_or_else(|| {
            if quick {
                vec![Profile::Short]
            } else {
                vec![Profile::Default]
            }
        }),
        rounds: pick(rounds, 2, 10),
        short_rounds: pick(short_rounds, 2, 10),
        freeze_rounds: pick(freeze_rounds, 1, 3),
        window: window.unwrap_or(if quick { secs(10) } else { secs(60) }),
        baseline: baseline.unwrap_or(if quick { secs(5) } else { secs(10) }),
        fleet: pick(fleet, 5, 50),
        fleet_window: fleet_window.unwrap_or(if quick { secs(10) } else { secs(60) }),
        elector,
        webhook,
        rates: rates.unwrap_or_else(|| vec![200, 1000]),
        load_duration: load_duration.unwrap_or(if quick { secs(3) } else { secs(15) }),
        max_connections: max_connections.unwrap_or(16),
        pod_creations: pick(pod_creations, 20, 200),
        pod_deletes: pick(pod_deletes, 0, 5),
        restarts: pick(restarts, 0, 2),
        out,
        bin_dir,
        elector_bin,
        peer_bin,
        quick,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args(s: &str) -> Result<Command, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    fn opts(s: &str) -> Options {
        match args(s) {
            Ok(Command::Run(o)) => *o,
            Ok(Command::Help) => panic!("{s}: help"),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn argument_table() {
        let d = opts("");
        assert_eq!(d.candidates, 3);
        assert_eq!(d.profiles, [Profile::Default]);
        assert_eq!((d.rounds, d.freeze_rounds, d.fleet), (10, 3, 50));
        assert_eq!(d.window, Duration::from_secs(60));
        assert_eq!(d.pod_creations, 200);
        assert_eq!((d.pod_deletes, d.restarts), (5, 2));
        assert_eq!(
            (
                opts("--quick").pod_deletes,
                opts("--quick --restarts 1").restarts
            ),
            (0, 1)
        );
        assert!(d.elector && d.webhook && !d.quick);

        let q = opts("--quick");
        assert_eq!(q.profiles, [Profile::Short]);
        assert_eq!((q.short_rounds, q.fleet), (2, 5));
        assert_eq!(q.window, Duration::from_secs(10));
        // Explicit options win over --quick in any order.
        let q = opts("--fleet=0 --quick --window 90s --short-rounds 4");
        assert_eq!(
            (q.fleet, q.window, q.short_rounds),
            (0, Duration::from_secs(90), 4)
        );

        let o = opts(
            "--profiles default,short --rates 300,2000 --out /tmp/x.json --skip-webhook --max-connections 4",
        );
        assert_eq!(o.profiles, [Profile::Default, Profile::Short]);
        assert_eq!(o.rates, [300, 2000]);
        assert_eq!(o.out.as_deref(), Some(Path::new("/tmp/x.json")));
        assert!(!o.webhook && o.elector);
        assert_eq!(o.max_connections, 4);
        let o = opts("--elector-bin /x/elector --peer-bin=/y/peer");
        assert_eq!(o.elector_bin.as_deref(), Some(Path::new("/x/elector")));
        assert_eq!(o.peer_bin.as_deref(), Some(Path::new("/y/peer")));
        assert_eq!(opts("--window 1m30s").window, Duration::from_secs(90));
        assert!(matches!(args("-h"), Ok(Command::Help)));

        let bad: &[(&str, &str)] = &[
            ("--candidates 0", "positive"),
            ("--candidates", "needs a value"),
            ("--fleet -1", "non-negative"),
            ("--profiles fast", "unknown profile"),
            ("--window 10", "--window"),
            ("--window 0s", "longer than zero"),
            ("--window 10parsecs", "--window"),
            ("--frobnicate", "unknown option"),
            ("--skip-elector --skip-webhook", "nothing to measure"),
            ("--rates ,", "at least one"),
        ];
        for (line, want) in bad {
            match args(line) {
                Err(e) => assert!(e.contains(want), "{line}: {e}"),
                Ok(_) => panic!("{line}: accepted"),
            }
        }
    }
}
