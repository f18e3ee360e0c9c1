//! The cluster's network namespace: a veth pair to the host (the node's address inside, the
//! host's outside, a /30 of their own), loopback, and a dead-end device for the Service range.
//! No default route: nothing in the namespace reaches beyond the host end of the pair.

use std::process::Command;

use super::config::Slot;
use crate::error::{Context, Result, fail};
use crate::layout::SERVICE_CLUSTER_IP_RANGE;

/// Creates the namespace and its interfaces; the teardown deletes them.
pub fn create(slot: &Slot) -> Result<()> {
    let name = slot.name();
    let netns = slot.netns_path();
    let host = format!("{}/30", slot.host_ip());
    let node = format!("{}/30", slot.node_ip());
    let ns = |args: &[&str]| -> Vec<String> {
        let mut v = vec![format!("--net={}", netns.display()), "ip".to_string()];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    };
    let steps: Vec<(&str, Vec<String>)> = vec![
        ("ip", strings(&["netns", "add", &name])),
        (
            "ip",
            strings(&[
                "link", "add", &name, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ]),
        ),
        ("ip", strings(&["addr", "add", &host, "dev", &name])),
        ("ip", strings(&["link", "set", &name, "up"])),
        ("nsenter", ns(&["link", "set", "lo", "up"])),
        ("nsenter", ns(&["addr", "add", &node, "dev", "eth0"])),
        ("nsenter", ns(&["link", "set", "eth0", "up"])),
        // A connection to a ClusterIP needs a route before kube-proxy's OUTPUT DNAT rewrites
        // it. The route leads into a veth pair with both ends inside the namespace (this VM's
        // kernel has no dummy device): a packet nothing rewrote ends there, unanswered.
        (
            "nsenter",
            ns(&[
                "link", "add", "svc0", "type", "veth", "peer", "name", "svc1",
            ]),
        ),
        ("nsenter", ns(&["link", "set", "svc0", "up"])),
        ("nsenter", ns(&["link", "set", "svc1", "up"])),
        (
            "nsenter",
            ns(&["route", "add", SERVICE_CLUSTER_IP_RANGE, "dev", "svc0"]),
        ),
    ];
    for (program, args) in steps {
        run(program, &args)?;
    }
    Ok(())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Runs a set-up command, failing with its stderr.
pub fn run(program: &str, args: &[String]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .context(format!("running {command}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(fail(
            &command,
            format!(
                "exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}
