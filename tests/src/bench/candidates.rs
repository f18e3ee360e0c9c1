//! The two implementations measured side by side: the project's elector and client-go's
//! leaderelection (tests/bench/peer), started the same way and asked the same questions
//! (`GET /` → `{"name": …}`, `GET /status` → `is_leader`), so every scenario runs both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use contract::format_duration;
use serde::Serialize;

use crate::control_plane;
use crate::elector::{Elector, ElectorSpec, elector_args, wait_for_agreed_leader};
use crate::error::{Result, fail};
use crate::procs::Proc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Impl {
    /// The project's elector.
    Project,
    /// client-go's leaderelection with a LeaseLock.
    Peer,
}

impl Impl {
    pub const BOTH: [Impl; 2] = [Impl::Project, Impl::Peer];

    pub fn name(self) -> &'static str {
        match self {
            Impl::Project => "elector",
            Impl::Peer => "client-go",
        }
    }
}

/// The binaries measured.
#[derive(Debug, Clone)]
pub struct Bins {
    pub elector: PathBuf,
    pub peer: PathBuf,
}

impl Bins {
    pub fn of(&self, imp: Impl) -> &Path {
        match imp {
            Impl::Project => &self.elector,
            Impl::Peer => &self.peer,
        }
    }
}

/// The peer's command line: the same election, identity, address and timings as the elector's.
pub fn peer_args(spec: &ElectorSpec, id: &str, addr: SocketAddr) -> Vec<String> {
    let t = spec.timings;
    vec![
        format!("--id={id}"),
        format!("--election={}", spec.lease),
        format!("--election-namespace={}", spec.namespace),
        format!("--http={addr}"),
        format!("--lease-duration={}", format_duration(t.lease_duration)),
        format!("--renew-deadline={}", format_duration(t.renew_deadline)),
        format!("--retry-period={}", format_duration(t.retry_period)),
    ]
}

/// Starts candidate `id` of `imp` on a free loopback port; `tag` keeps log files of restarts
/// apart.
pub fn spawn(
    imp: Impl,
    bins: &Bins,
    spec: &ElectorSpec,
    id: &str,
    tag: &str,
    log_dir: &Path,
) -> Result<Elector> {
    let addr = control_plane::free_loopback_addr()?;
    let args = match imp {
        Impl::Project => elector_args(spec, id, addr),
        Impl::Peer => peer_args(spec, id, addr),
    };
    let proc = Proc::spawn(
        &format!("{}-{id}-{tag}", imp.name()),
        bins.of(imp),
        &args,
        &[
            ("KUBECONFIG", spec.kubeconfig.display().to_string()),
            ("RUST_LOG", "info".into()),
        ],
        log_dir,
    )?;
    Ok(Elector {
        id: id.to_string(),
        addr,
        proc,
    })
}

pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// One election of one implementation: its candidates and how to replace one.
pub struct Election {
    pub imp: Impl,
    pub bins: Bins,
    pub spec: ElectorSpec,
    pub log_dir: PathBuf,
    pub electors: Vec<Elector>,
    spawned: usize,
}

impl Election {
    /// `n` candidates named like the pods of one ReplicaSet.
    pub fn start(
        imp: Impl,
        bins: &Bins,
        spec: ElectorSpec,
        n: usize,
        log_dir: PathBuf,
    ) -> Result<Election> {
        let mut e = Election {
            imp,
            bins: bins.clone(),
            spec,
            log_dir,
            electors: Vec::new(),
            spawned: 0,
        };
        for i in 0..n {
            let c = e.spawn(&format!("{}-6c9f7d8b5-{i:02}", e.spec.lease))?;
            e.electors.push(c);
        }
        Ok(e)
    }

    fn spawn(&mut self, id: &str) -> Result<Elector> {
        self.spawned += 1;
        spawn(
            self.imp,
            &self.bins,
            &self.spec,
            id,
            &self.spawned.to_string(),
            &self.log_dir,
        )
    }

    /// Replaces candidate `i` (exited) by a fresh process with the same identity.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        let id = self.electors[i].id.clone();
        let fresh = self.spawn(&id)?;
        fresh.wait_ready(READY_TIMEOUT).await?;
        self.electors[i] = fresh;
        Ok(())
    }

    pub async fn wait_ready(&self) -> Result<()> {
        for e in &self.electors {
            e.wait_ready(READY_TIMEOUT).await?;
        }
        Ok(())
    }

    /// The index of the one candidate all agree leads.
    pub async fn agreed_leader(&self, timeout: Duration) -> Result<usize> {
        let refs: Vec<&Elector> = self.electors.iter().collect();
        let id = wait_for_agreed_leader(&refs, timeout).await?;
        self.electors
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| fail("finding the leader", format!("{id} is not a candidate")))
    }

    pub fn logs(&self) -> String {
        self.electors
            .iter()
            .map(|e| e.proc.output_tail(15))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM to every candidate, concurrently, SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) {
        let stops = self.electors.iter().map(|e| e.proc.stop(grace));
        let _ = futures::future::join_all(stops).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_gets_the_same_election_and_timings() {
        let spec = ElectorSpec {
            lease: "bench".into(),
            namespace: "ns-1".into(),
            kubeconfig: PathBuf::from("/k"),
            timings: contract::Timings::default(),
            extra_args: vec!["--ignored".into()],
        };
        let addr: SocketAddr = "127.0.0.1:4040".parse().expect("addr");
        assert_eq!(
            peer_args(&spec, "a-0", addr),
            [
                "--id=a-0",
                "--election=bench",
                "--election-namespace=ns-1",
                "--http=127.0.0.1:4040",
                "--lease-duration=15s",
                "--renew-deadline=10s",
                "--retry-period=2s",
            ]
        );
    }
}
