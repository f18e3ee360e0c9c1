//! The elector's CPU and memory: annotations read as Kubernetes quantities, and the requests and
//! limits the elector gets, Guaranteed when the pod is (pure, no I/O).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use contract::annotations as ann;
use contract::resources as defaults;
use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_quantity::ParsedQuantity;
use serde_json::{Map, Value, json};

use super::settings::{Denial, invalid};

/// A quantity as the user wrote it (what goes into the pod) and its value (for comparisons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    pub text: String,
    pub value: ParsedQuantity,
}

/// Kubernetes' quantity grammar (`<sign><digits>[.<digits>]<suffix>`, suffix one of the binary
/// or decimal SI suffixes or `e`/`E` with an integer exponent). kube_quantity parses through an
/// `f64` reader that also takes `inf`, `nan` or a bare suffix, which the API server refuses.
fn is_quantity_syntax(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits);
    let number_ok = number.matches('.').count() <= 1 && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        exp => exp
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())),
    };
    number_ok && suffix_ok
}

/// A positive quantity, or `None` when the text is not one.
pub fn parse_quantity(text: &str) -> Option<Amount> {
    let text = text.trim();
    if !is_quantity_syntax(text) {
        return None;
    }
    let value = ParsedQuantity::try_from(&Quantity(text.to_string())).ok()?;
    (value > ParsedQuantity::default()).then(|| Amount {
        text: text.to_string(),
        value,
    })
}

/// Whether a memory amount is a whole number of bytes (`32m` is 0.032 bytes: a typo for `32Mi`).
fn whole_bytes(a: &Amount) -> bool {
    a.value
        .to_bytes_f64()
        .is_some_and(|b| b >= 1.0 && b.fract() == 0.0)
}

/// What the user annotated; `None` fields take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSettings {
    pub cpu_request: Option<Amount>,
    pub cpu_limit: Option<Amount>,
    pub memory_request: Option<Amount>,
    pub memory_limit: Option<Amount>,
}

fn read(
    annotations: &BTreeMap<String, String>,
    key: &str,
    memory: bool,
) -> Result<Option<Amount>, Denial> {
    let Some(v) = annotations.get(key) else {
        return Ok(None);
    };
    match parse_quantity(v) {
        Some(a) if !memory || whole_bytes(&a) => Ok(Some(a)),
        Some(_) if v.trim().ends_with('m') => Err(Denial(format!(
            "{} (a lowercase \"m\" means thousandths of a byte: did you mean \"{}Mi\"?)",
            invalid(key, v).0,
            v.trim().trim_end_matches('m')
        ))),
        _ => Err(invalid(key, v)),
    }
}

impl ResourceSettings {
    /// Reads the four annotations; a request above its limit is refused naming both.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Self, Denial> {
        let s = Self {
            cpu_request: read(annotations, ann::CPU_REQUEST, false)?,
            cpu_limit: read(annotations, ann::CPU_LIMIT, false)?,
            memory_request: read(annotations, ann::MEMORY_REQUEST, true)?,
            memory_limit: read(annotations, ann::MEMORY_LIMIT, true)?,
        };
        for (req, lim, rk, lk) in [
            (
                &s.cpu_request,
                &s.cpu_limit,
                ann::CPU_REQUEST,
                ann::CPU_LIMIT,
            ),
            (
                &s.memory_request,
                &s.memory_limit,
                ann::MEMORY_REQUEST,
                ann::MEMORY_LIMIT,
            ),
        ] {
            if let (Some(r), Some(l)) = (req, lim)
                && r.value > l.value
            {
                return Err(Denial(format!(
                    "annotation {rk}={:?} is more than {lk}={:?}: a request must not exceed its \
                     limit; lower {rk} or raise {lk}",
                    r.text, l.text
                )));
            }
        }
        Ok(s)
    }
}

fn default_amount(text: &str) -> Amount {
    parse_quantity(text).expect("the built-in defaults are valid quantities")
}

/// Whether a container would count for Guaranteed QoS: CPU and memory limits set, and requests
/// absent (the API server copies the limits) or equal to them.
fn guaranteed(c: &Container) -> bool {
    let r = c.resources.as_ref();
    let get = |m: Option<&BTreeMap<String, Quantity>>, k: &str| {
        m.and_then(|m| m.get(k))
            .and_then(|q| ParsedQuantity::try_from(q).ok())
    };
    ["cpu", "memory"].iter().all(|k| {
        let limit = get(r.and_then(|r| r.limits.as_ref()), k);
        let request = get(r.and_then(|r| r.requests.as_ref()), k);
        match (limit, request) {
            (Some(l), None) => l > ParsedQuantity::default(),
            (Some(l), Some(q)) => l.cmp(&q) == Ordering::Equal && l > ParsedQuantity::default(),
            _ => false,
        }
    })
}

/// How the pod budgets CPU and memory, which decides the elector's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodBudget {
    /// `spec.resources` (pod-level resources, beta since Kubernetes 1.34): the containers share
    /// the pod's budget, the QoS class comes from it, and the API server refuses containers whose
    /// requests add up to more than the pod's, so the elector takes no default amounts.
    PodLevel,
    /// Every container and init container (the elector aside) is Guaranteed.
    Guaranteed,
    /// Anything else (Burstable or BestEffort).
    PerContainer,
}

/// The pod's [`PodBudget`] today.
pub fn pod_budget(spec: &PodSpec) -> PodBudget {
    let pod_level = spec.resources.as_ref().is_some_and(|r| {
        r.requests.as_ref().is_some_and(|m| !m.is_empty())
            || r.limits.as_ref().is_some_and(|m| !m.is_empty())
    });
    if pod_level {
        return PodBudget::PodLevel;
    }
    let mut all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name != contract::CONTAINER_NAME)
        .peekable();
    if all.peek().is_some() && all.all(guaranteed) {
        PodBudget::Guaranteed
    } else {
        PodBudget::PerContainer
    }
}

/// The elector's `resources`. Defaults adapt to what the user set on the other side (a lower
/// limit lowers the default request, a higher request raises the default limit). In a
/// Guaranteed pod requests equal limits, so the pod keeps its QoS class. Under pod-level
/// resources only what the annotations say is set.
pub fn elector_resources(
    s: &ResourceSettings,
    budget: PodBudget,
) -> Result<ResourceRequirements, Denial> {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let q = |a: &Amount| Quantity(a.text.clone());
    if budget == PodBudget::PodLevel {
        for (name, req, lim) in [
            ("cpu", &s.cpu_request, &s.cpu_limit),
            ("memory", &s.memory_request, &s.memory_limit),
        ] {
            if let Some(r) = req {
                requests.insert(name.to_string(), q(r));
            }
            if let Some(l) = lim {
                limits.insert(name.to_string(), q(l));
            }
        }
        return Ok(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..ResourceRequirements::default()
        });
    }
    let guaranteed_pod = budget == PodBudget::Guaranteed;
    // (resource, request, limit, default request, default limit, annotation names)
    let cpu = (
        "cpu",
        &s.cpu_request,
        &s.cpu_limit,
        defaults::CPU_REQUEST,
        None,
        (ann::CPU_REQUEST, ann::CPU_LIMIT),
    );
    let memory = (
        "memory",
        &s.memory_request,
        &s.memory_limit,
        defaults::MEMORY_REQUEST,
        Some(defaults::MEMORY_LIMIT),
        (ann::MEMORY_REQUEST, ann::MEMORY_LIMIT),
    );
    for (name, req, lim, def_req, def_lim, (rk, lk)) in [cpu, memory] {
        if guaranteed_pod {
            let value = match (req, lim) {
                (Some(r), Some(l)) if r.value != l.value => {
                    return Err(Denial(format!(
                        "every container of this pod is Guaranteed (requests = limits), so the \
                         elector must be too, or the pod drops to Burstable QoS: annotation \
                         {rk}={:?} differs from {lk}={:?}; set them equal, or set only one",
                        r.text, l.text
                    )));
                }
                (_, Some(l)) => l.clone(),
                (Some(r), None) => r.clone(),
                (None, None) => default_amount(def_lim.unwrap_or(def_req)),
            };
            requests.insert(name.to_string(), q(&value));
            limits.insert(name.to_string(), q(&value));
            continue;
        }
        let request = match (req, lim) {
            (Some(r), _) => r.clone(),
            (None, Some(l)) => {
                let d = default_amount(def_req);
                if d.value > l.value { l.clone() } else { d }
            }
            (None, None) => default_amount(def_req),
        };
        let limit = match (lim, def_lim) {
            (Some(l), _) => Some(l.clone()),
            (None, Some(d)) => {
                let d = default_amount(d);
                Some(if request.value > d.value {
                    request.clone()
                } else {
                    d
                })
            }
            (None, None) => None,
        };
        requests.insert(name.to_string(), q(&request));
        if let Some(l) = limit {
            limits.insert(name.to_string(), q(&l));
        }
    }
    Ok(ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..ResourceRequirements::default()
    })
}

/// The `resources` object as JSON for the patch.
pub fn to_json(r: &ResourceRequirements) -> Value {
    let map = |m: &Option<BTreeMap<String, Quantity>>| {
        Value::Object(
            m.iter()
                .flatten()
                .map(|(k, v)| (k.clone(), json!(v.0)))
                .collect::<Map<_, _>>(),
        )
    };
    let mut out = Map::new();
    if r.requests.as_ref().is_some_and(|m| !m.is_empty()) {
        out.insert("requests".into(), map(&r.requests));
    }
    if r.limits.as_ref().is_some_and(|l| !l.is_empty()) {
        out.insert("limits".into(), map(&r.limits));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_syntax() {
        for ok in [
            "10m", "0.5", "1", "+1", "1.", ".5", "16Mi", "1e3", "1E-2", "2Gi", "100k", "5n",
        ] {
            assert!(parse_quantity(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "m", "Mi", "inf", "nan", "1.2.3", "10 m", "10mi", "1KB", "-1", "0", "0Mi", "1e",
            "e3", "1Kii", "one",
        ] {
            assert!(parse_quantity(bad).is_none(), "{bad}");
        }
        assert!(parse_quantity("1Gi").unwrap().value > parse_quantity("1000Mi").unwrap().value);
        assert_eq!(
            parse_quantity("0.5").unwrap().value,
            parse_quantity("500m").unwrap().value
        );
    }

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_budget_table() {
        let g = json!({"requests": {"cpu": "1", "memory": "1Gi"},
                       "limits": {"cpu": "1", "memory": "1Gi"}});
        let cases = [
            (
                json!({"containers": [{"name": "a"}]}),
                PodBudget::PerContainer,
            ),
            (
                json!({"containers": [{"name": "a", "resources": g}]}),
                PodBudget::Guaranteed,
            ),
            (
                json!({"containers": [{"name": "a", "resources": g},
                                      {"name": "b"}]}),
                PodBudget::PerContainer,
            ),
            // The elector itself (re-invocation) does not count.
            (
                json!({"containers": [{"name": "a", "resources": g},
                                      {"name": contract::CONTAINER_NAME}]}),
                PodBudget::Guaranteed,
            ),
            (
                json!({"resources": {"limits": {"memory": "1Gi"}},
                       "containers": [{"name": "a", "resources": g}]}),
                PodBudget::PodLevel,
            ),
            // An empty pod-level object budgets nothing.
            (
                json!({"resources": {}, "containers": [{"name": "a"}]}),
                PodBudget::PerContainer,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(pod_budget(&spec(v.clone())), want, "{v}");
        }
    }

    #[test]
    fn under_pod_level_resources_only_annotated_amounts_are_set() {
        let none = ResourceSettings::default();
        let r = elector_resources(&none, PodBudget::PodLevel).unwrap();
        assert_eq!(to_json(&r), json!({}));
        let some = ResourceSettings {
            cpu_limit: parse_quantity("50m"),
            memory_request: parse_quantity("8Mi"),
            ..ResourceSettings::default()
        };
        let r = elector_resources(&some, PodBudget::PodLevel).unwrap();
        assert_eq!(
            to_json(&r),
            json!({"requests": {"memory": "8Mi"}, "limits": {"cpu": "50m"}})
        );
        // Elsewhere the defaults apply.
        let r = elector_resources(&none, PodBudget::PerContainer).unwrap();
        assert_eq!(
            to_json(&r),
            json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}})
        );
    }
}
