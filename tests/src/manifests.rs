//! The shipped manifests: reading, rendering with kustomize, applying the RBAC the tests rely on.

use std::path::{Path, PathBuf};

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, PostParams};

use crate::control_plane::{ControlPlane, kubectl_path};
use crate::error::{Context, Error, Result, fail};

pub fn manifests_dir() -> PathBuf {
    crate::workspace_root().join("manifests")
}

/// The elector ClusterRole file the integration tests apply as shipped.
pub fn elector_cluster_role_file() -> PathBuf {
    manifests_dir()
        .join("base")
        .join("elector-clusterrole.yaml")
}

/// Parses multi-document YAML into JSON values, dropping empty documents.
pub fn parse_yaml_docs(text: &str, origin: &str) -> Result<Vec<serde_json::Value>> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| fail(format!("parsing YAML from {origin}"), e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

pub fn read_yaml_file(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).context(format!("reading {}", path.display()))?;
    parse_yaml_docs(&text, &path.display().to_string())
}

/// `kubectl kustomize <dir>` (client-side only), parsed.
pub async fn kustomize(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let kubectl = kubectl_path()?;
    let out = tokio::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .await
        .context(format!("running kubectl kustomize {}", dir.display()))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("kubectl kustomize {}", dir.display()),
            status: crate::procs::describe(out.status),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    parse_yaml_docs(
        &String::from_utf8_lossy(&out.stdout),
        &format!("kubectl kustomize {}", dir.display()),
    )
}

/// Kind of a kustomization directory: `Kustomization` (renders standalone) or `Component`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KustomizationDir {
    pub dir: PathBuf,
    pub is_component: bool,
}

/// Every directory under `root` holding a kustomization file, sorted.
pub fn find_kustomizations(root: &Path) -> Result<Vec<KustomizationDir>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).context(format!("listing {}", dir.display()))?;
        for entry in entries {
            let entry = entry.context(format!("listing {}", dir.display()))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name();
            if matches!(
                name.to_str(),
                Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
            ) {
                let docs = read_yaml_file(&path)?;
                let is_component = docs
                    .first()
                    .and_then(|d| d.get("kind"))
                    .and_then(|k| k.as_str())
                    == Some("Component");
                found.push(KustomizationDir {
                    dir: dir.clone(),
                    is_component,
                });
            }
        }
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).context(format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).context(format!("listing {}", from.display()))? {
        let entry = entry.context(format!("listing {}", from.display()))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).context(format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// Applies the shipped elector ClusterRole file (idempotent).
pub async fn apply_elector_cluster_role(cp: &ControlPlane) -> Result<()> {
    let file = elector_cluster_role_file();
    if !file.is_file() {
        return Err(fail(
            "applying the elector ClusterRole",
            format!("{} does not exist (manifests/ ships it)", file.display()),
        ));
    }
    let path = file.display().to_string();
    cp.kubectl_ok(&["apply", "-f", &path], None).await?;
    Ok(())
}

/// Applies the shipped elector ClusterRoles once per control plane: tests sharing one run in
/// parallel, and concurrent applies of the same new objects can conflict.
pub async fn ensure_elector_cluster_roles(cp: &ControlPlane) -> Result<()> {
    // Keyed by the control plane's scratch directory, unique per control plane (ports are not:
    // a later one may reuse them). Held across the apply, so a second caller waits for the first.
    static APPLIED: tokio::sync::Mutex<Vec<PathBuf>> = tokio::sync::Mutex::const_new(Vec::new());
    let mut applied = APPLIED.lock().await;
    if !applied.iter().any(|d| d == cp.dir()) {
        apply_elector_cluster_role(cp).await?;
        applied.push(cp.dir().to_path_buf());
    }
    Ok(())
}

/// Binds ServiceAccount `namespace/sa` to the elector ClusterRole with a RoleBinding, as the
/// webhook does for injected pods.
pub async fn bind_elector_role(cp: &ControlPlane, namespace: &str, sa: &str) -> Result<()> {
    bind_cluster_role(
        cp,
        namespace,
        sa,
        contract::ROLE_BINDING,
        contract::CLUSTER_ROLE,
    )
    .await
}

/// Binds ServiceAccount `namespace/sa` to ClusterRole `cluster_role` with RoleBinding `name`.
pub async fn bind_cluster_role(
    cp: &ControlPlane,
    namespace: &str,
    sa: &str,
    name: &str,
    cluster_role: &str,
) -> Result<()> {
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    }))
    .map_err(|e| fail("building a RoleBinding", e.to_string()))?;
    Api::<RoleBinding>::namespaced(cp.admin_client().await?, namespace)
        .create(&PostParams::default(), &rb)
        .await
        .context(format!("creating RoleBinding {namespace}/{name}"))?;
    Ok(())
}

/// Objects of `kind` in `docs`.
pub fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter()
        .filter(|d| d.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml() -> Result<()> {
        let docs = parse_yaml_docs(
            "# comment\napiVersion: v1\nkind: A\n---\n---\nkind: B\nlist: [1, 2]\n",
            "test",
        )?;
        assert_eq!(docs.len(), 2);
        assert_eq!(of_kind(&docs, "B")[0]["list"][1], 2);
        assert!(parse_yaml_docs("a: [", "bad").is_err());
        Ok(())
    }

    #[test]
    fn shipped_elector_cluster_role_matches_the_contract() -> Result<()> {
        let docs = read_yaml_file(&elector_cluster_role_file())?;
        let roles = of_kind(&docs, "ClusterRole");
        let role = roles
            .iter()
            .find(|r| r["metadata"]["name"] == contract::CLUSTER_ROLE)
            .ok_or_else(|| fail("elector ClusterRole", "not in the shipped file"))?;
        let rules = role["rules"].as_array().cloned().unwrap_or_default();
        let lease_rule = rules
            .iter()
            .find(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == "leases"))
            })
            .ok_or_else(|| fail("elector ClusterRole", "no rule on leases"))?;
        for verb in ["get", "create", "update", "watch"] {
            assert!(
                lease_rule["verbs"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == verb)),
                "leases rule lacks {verb}"
            );
        }
        Ok(())
    }
}
