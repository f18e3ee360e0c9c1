//! Command line and environment. Flag and env names come from the contract crate, which the
//! webhook uses to write the container spec.

use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use contract::{Timings, env, flags};

use crate::error::Error;

/// Where the in-cluster namespace is mounted.
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Raw command line, before defaults that depend on the environment are resolved.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "elector",
    version,
    about = "Leader-election sidecar: holds a coordination.k8s.io/v1 Lease and serves the \
             leader on HTTP (GET / -> {\"name\":\"<leader>\"})."
)]
pub struct Args {
    /// Name of the Lease to elect on.
    #[arg(long = flags::ELECTION, env = env::ELECTION, value_name = "NAME")]
    pub election: String,

    /// Namespace of the Lease [default: $POD_NAMESPACE, else the in-cluster namespace, else
    /// "default"].
    #[arg(long = flags::ELECTION_NAMESPACE, env = env::ELECTION_NAMESPACE, value_name = "NS")]
    pub election_namespace: Option<String>,

    /// This candidate's identity [default: $POD_NAME, else the hostname].
    #[arg(long = flags::ID, env = env::ID, value_name = "ID")]
    pub id: Option<String>,

    /// Address of the HTTP API. `:PORT` means every interface, IPv6 and IPv4 (`[::]` with
    /// IPv4 as v4-mapped addresses; `0.0.0.0` alone when the kernel has no IPv6); an address
    /// (`0.0.0.0:4040`, `[::1]:4040`, `localhost:4040`) is used as given.
    #[arg(long = flags::HTTP, env = env::HTTP, value_name = "ADDR",
          default_value_t = Listen::AllInterfaces(contract::http::DEFAULT_PORT),
          value_parser = parse_listen)]
    pub http: Listen,

    /// Lease duration; renew deadline and retry period are derived from it (2/3 and 2/15),
    /// unless given explicitly.
    #[arg(long = flags::TTL, env = env::TTL, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// How long a lease is valid after its last renew [default: 15s].
    #[arg(long = flags::LEASE_DURATION, env = env::LEASE_DURATION, value_name = "DURATION",
          value_parser = parse_duration)]
    pub lease_duration: Option<Duration>,

    /// How long the leader keeps trying to renew before it stops claiming leadership
    /// [default: 10s].
    #[arg(long = flags::RENEW_DEADLINE, env = env::RENEW_DEADLINE, value_name = "DURATION",
          value_parser = parse_duration)]
    pub renew_deadline: Option<Duration>,

    /// How long candidates wait between tries, and how soon the leader retries a failed renew
    /// [default: 2s].
    #[arg(long = flags::RETRY_PERIOD, env = env::RETRY_PERIOD, value_name = "DURATION",
          value_parser = parse_duration)]
    pub retry_period: Option<Duration>,

    /// How often the leader renews while renewals succeed (after a failure it retries every
    /// retry period) [default: a third of the lease duration, at most renew deadline − retry
    /// period].
    #[arg(long = flags::RENEW_INTERVAL, env = env::RENEW_INTERVAL, value_name = "DURATION",
          value_parser = parse_duration)]
    pub renew_interval: Option<Duration>,

    /// Release the lease on SIGTERM/SIGINT so a standby takes over at once.
    #[arg(long = flags::RELEASE_ON_CANCEL, env = env::RELEASE_ON_CANCEL, value_name = "BOOL",
          default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set)]
    pub release_on_cancel: bool,

    /// Format of the diagnostic logs on stderr.
    #[arg(long = flags::LOG_FORMAT, env = env::LOG_FORMAT, value_enum,
          default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

/// Fully resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub election: String,
    pub namespace: String,
    pub id: String,
    pub http: Listen,
    pub timings: Timings,
    /// How often the leader renews while renewals succeed.
    pub renew_interval: Duration,
    pub release_on_cancel: bool,
    pub log_format: LogFormat,
}

/// What the environment provides besides flags (injected so resolution is testable).
#[derive(Debug, Clone, Default)]
pub struct Ambient {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub namespace_file: Option<String>,
    pub hostname: Option<String>,
}

impl Ambient {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Ambient {
            pod_namespace: var(env::POD_NAMESPACE),
            pod_name: var(env::POD_NAME),
            namespace_file: std::fs::read_to_string(NAMESPACE_FILE).ok(),
            hostname: hostname(),
        }
    }
}

fn hostname() -> Option<String> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let name = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        if !name.is_empty() {
            return Some(name);
        }
    }
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty())
}

pub use contract::listen::{Listen, parse_listen};
pub use contract::parse_duration;

/// A DNS subdomain name, as Kubernetes requires for a Lease name or namespace.
fn check_dns_name(what: &str, flag: &str, value: &str, max: usize) -> Result<(), Error> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if value.is_empty()
        || value.len() > max
        || !value.chars().all(ok_char)
        || !alnum(value.chars().next())
        || !alnum(value.chars().last())
    {
        return Err(Error::Config(format!(
            "--{flag} \"{value}\" is not a valid {what}: use at most {max} lowercase letters, \
             digits, '-' or '.', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Accepts Go-style single-dash long flags (`-election=x`), as the classic sidecar's manifests
/// use them.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    const LONG: &[&str] = &[
        flags::ELECTION,
        flags::ELECTION_NAMESPACE,
        flags::ID,
        flags::HTTP,
        flags::TTL,
        flags::LEASE_DURATION,
        flags::RENEW_DEADLINE,
        flags::RETRY_PERIOD,
        flags::RENEW_INTERVAL,
        flags::RELEASE_ON_CANCEL,
        flags::LOG_FORMAT,
    ];
    let mut out = Vec::new();
    let mut rest = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i > 0 && !rest && arg == "--" {
            rest = true;
        } else if i > 0 && !rest && arg.starts_with('-') && !arg.starts_with("--") {
            let name = arg[1..].split('=').next().unwrap_or_default();
            if LONG.contains(&name) {
                out.push(format!("-{arg}"));
                continue;
            }
        }
        out.push(arg);
    }
    out
}

impl Config {
    /// Resolves defaults and validates. Errors name the flag to change.
    pub fn resolve(args: Args, ambient: &Ambient) -> Result<Config, Error> {
        check_dns_name("Lease name", flags::ELECTION, &args.election, 253)?;

        let namespace = args
            .election_namespace
            .or_else(|| ambient.pod_namespace.clone())
            .or_else(|| ambient.namespace_file.as_ref().map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        check_dns_name("namespace", flags::ELECTION_NAMESPACE, &namespace, 63)?;

        let id = args
            .id
            .or_else(|| ambient.pod_name.clone())
            .or_else(|| ambient.hostname.clone())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::Config(format!(
                    "no identity: set --{} (or ${} / ${})",
                    flags::ID,
                    env::ID,
                    env::POD_NAME
                ))
            })?;

        let base = args.ttl.map(Timings::from_ttl).unwrap_or_default();
        let from_ttl = |explicit: bool, flag: &str| -> String {
            match (explicit, args.ttl.is_some()) {
                (false, true) => format!("--{flag} (derived from --{})", flags::TTL),
                _ => format!("--{flag}"),
            }
        };
        let lease_name = if args.lease_duration.is_none() && args.ttl.is_some() {
            format!("--{}", flags::TTL)
        } else {
            format!("--{}", flags::LEASE_DURATION)
        };
        let renew_name = from_ttl(args.renew_deadline.is_some(), flags::RENEW_DEADLINE);
        let retry_name = from_ttl(args.retry_period.is_some(), flags::RETRY_PERIOD);
        let timings = Timings {
            lease_duration: args.lease_duration.unwrap_or(base.lease_duration),
            renew_deadline: args.renew_deadline.unwrap_or(base.renew_deadline),
            retry_period: args.retry_period.unwrap_or(base.retry_period),
        };
        timings
            .validate((&lease_name, &renew_name, &retry_name))
            .map_err(|e| Error::Config(e.0))?;
        let renew_interval = match args.renew_interval {
            Some(interval) => {
                timings
                    .validate_renew_interval(
                        interval,
                        (
                            &format!("--{}", flags::RENEW_INTERVAL),
                            &renew_name,
                            &retry_name,
                        ),
                    )
                    .map_err(|e| Error::Config(e.0))?;
                interval
            }
            None => timings.default_renew_interval(),
        };

        Ok(Config {
            election: args.election,
            namespace,
            id,
            http: args.http,
            timings,
            renew_interval,
            release_on_cancel: args.release_on_cancel,
            log_format: args.log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let argv = std::iter::once("elector")
            .chain(args.iter().copied())
            .map(String::from);
        Args::try_parse_from(normalize_args(argv))
    }

    fn ambient() -> Ambient {
        Ambient {
            pod_namespace: None,
            pod_name: None,
            namespace_file: None,
            hostname: Some("host-1".into()),
        }
    }

    fn resolve(args: &[&str], amb: &Ambient) -> Result<Config, String> {
        let a = parse(args).map_err(|e| e.to_string())?;
        Config::resolve(a, amb).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = resolve(&["--election", "x"], &ambient()).unwrap();
        assert_eq!(c.namespace, "default");
        assert_eq!(c.id, "host-1");
        assert_eq!(c.http, Listen::AllInterfaces(4040));
        assert_eq!(c.http.to_string(), ":4040");
        assert_eq!(c.timings, Timings::default());
        assert_eq!(c.renew_interval, Duration::from_millis(7500));
        assert!(c.release_on_cancel);
        assert_eq!(c.log_format, LogFormat::Plain);
    }

    #[test]
    fn namespace_and_id_precedence() {
        let mut amb = ambient();
        amb.namespace_file = Some("from-file\n".into());
        assert_eq!(
            resolve(&["--election=x"], &amb).unwrap().namespace,
            "from-file"
        );
        amb.pod_namespace = Some("from-env".into());
        amb.pod_name = Some("pod-7".into());
        let c = resolve(&["--election=x"], &amb).unwrap();
        assert_eq!((c.namespace.as_str(), c.id.as_str()), ("from-env", "pod-7"));
        let c = resolve(
            &["--election=x", "--election-namespace=flag", "--id=me"],
            &amb,
        )
        .unwrap();
        assert_eq!((c.namespace.as_str(), c.id.as_str()), ("flag", "me"));
    }

    #[test]
    fn ttl_and_overrides() {
        let c = resolve(&["--election=x", "--ttl=30s"], &ambient()).unwrap();
        assert_eq!(c.timings, Timings::from_ttl(Duration::from_secs(30)));
        let c = resolve(
            &["--election=x", "--ttl=30s", "--retry-period=1s"],
            &ambient(),
        )
        .unwrap();
        assert_eq!(c.timings.retry_period, Duration::from_secs(1));
        assert_eq!(c.timings.renew_deadline, Duration::from_secs(20));
        assert_eq!(c.renew_interval, Duration::from_secs(15));
        let c = resolve(&["--election=x", "-renew-interval=3s"], &ambient()).unwrap();
        assert_eq!(c.renew_interval, Duration::from_secs(3));
    }

    #[test]
    fn bad_timings_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--renew-deadline=20s"], "--renew-deadline"),
            (&["--retry-period=10s"], "--retry-period"),
            (&["--ttl=500ms"], "--ttl"),
            (
                &["--ttl=30s", "--lease-duration=10s"],
                "--renew-deadline (derived from --ttl)",
            ),
            (&["--lease-duration=ten"], "--lease-duration"),
            (
                &["--renew-interval=9s"],
                "--renew-interval (9s) plus --retry-period",
            ),
            (
                &["--renew-interval=0s"],
                "--renew-interval must be greater than zero",
            ),
            (
                &["--ttl=30s", "--renew-interval=19s"],
                "--renew-deadline (derived from --ttl)",
            ),
        ];
        for (extra, want) in cases {
            let mut args = vec!["--election=x"];
            args.extend_from_slice(extra);
            let err = resolve(&args, &ambient()).unwrap_err();
            assert!(err.contains(want), "{extra:?}: {err}");
        }
    }

    #[test]
    fn invalid_input_is_rejected_clearly() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "--election"),
            (&["--election=Bad_Name"], "not a valid Lease name"),
            (
                &["--election=x", "--election-namespace=NS"],
                "--election-namespace",
            ),
            (&["--election=x", "--http=nowhere"], "--http"),
            (&["--election=x", "--bogus"], "--bogus"),
            (&["--election=x", "--log-format=xml"], "--log-format"),
            // Pod labelling moved to the webhook's controller: the elector has no such flag.
            (&["--election=x", "--leader-label"], "--leader-label"),
        ];
        for (args, want) in cases {
            let err = resolve(args, &ambient()).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn classic_spellings() {
        let c = resolve(
            &[
                "-election=x",
                "-http=localhost:4041",
                "--release-on-cancel=false",
            ],
            &ambient(),
        )
        .unwrap();
        assert_eq!(c.election, "x");
        assert_eq!(c.http, Listen::Addr("127.0.0.1:4041".parse().unwrap()));
        assert!(!c.release_on_cancel);
    }
}
