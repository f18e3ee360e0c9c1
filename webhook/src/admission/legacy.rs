//! The leader-elector:0.4 sidecar this project replaces: recognised in a pod (or a workload's
//! pod template) that also asks for the elector, and refused with the migration steps (pure).

use contract::annotations as ann;
use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::patch::API_ACCESS_VOLUME;
use super::settings::Denial;

/// The repository name of an image reference, without registry, path, tag or digest:
/// `gcr.io/google_containers/leader-elector:0.4` → `leader-elector`.
pub fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// Whether the image is the old sidecar's, wherever it is mirrored.
pub fn is_legacy_image(image: &str) -> bool {
    image_name(image) == contract::LEGACY_IMAGE_NAME
}

/// Whether this container is the elector this webhook injects. It is named
/// [`contract::CONTAINER_NAME`] like the old sidecar, so the name alone does not tell: the
/// webhook's own container mounts its token volume; one without that mount is ours unless it
/// runs the old image.
pub fn is_our_elector(c: &Container) -> bool {
    c.name == contract::CONTAINER_NAME
        && (c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == API_ACCESS_VOLUME)
            || !c.image.as_deref().is_some_and(is_legacy_image))
}

/// The first container (or init container) that looks like the old sidecar.
pub fn find(spec: &PodSpec) -> Option<&Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| {
            !is_our_elector(c)
                && (contract::LEGACY_CONTAINER_NAMES.contains(&c.name.as_str())
                    || c.image.as_deref().is_some_and(is_legacy_image))
        })
}

/// Refuses a pod (or template) asking for the elector while it still runs the old sidecar:
/// both would elect, on different locks, so two pods could lead at once.
pub fn refuse(spec: &PodSpec, lease: Option<&str>) -> Result<(), Denial> {
    let Some(c) = find(spec) else {
        return Ok(());
    };
    let lease = lease.map_or_else(|| "a Lease".to_string(), |l| format!("the Lease {l:?}"));
    Err(Denial(format!(
        "container {:?} (image {:?}) looks like the leader-elector:0.4 sidecar, and \
         {}=\"true\" injects its replacement: remove that container from the pod template, and \
         the Role/RoleBinding that let it get and update Endpoints; the app keeps calling \
         http://localhost:4040 and gets the same {{\"name\":\"<leader>\"}} answer. The lock \
         moves from an Endpoints annotation to {lease}, and the two never see each other: do \
         not run old and new pods at once (scale to 0 first, or use a Recreate rollout). See \
         \"Upgrading from leader-elector:0.4\" in the README",
        c.name,
        c.image.as_deref().unwrap_or_default(),
        ann::ENABLED,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        for (image, name) in [
            (
                "gcr.io/google_containers/leader-elector:0.4",
                "leader-elector",
            ),
            ("k8s.gcr.io/leader-elector", "leader-elector"),
            (
                "registry.local:5000/mirror/leader-elector:0.5",
                "leader-elector",
            ),
            ("leader-elector@sha256:abc", "leader-elector"),
            ("ghcr.io/leader-election/elector:0.1.0", "elector"),
            ("registry.local:5000/elector", "elector"),
        ] {
            assert_eq!(image_name(image), name, "{image}");
        }
    }
}
