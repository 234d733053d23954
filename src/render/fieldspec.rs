//! Field specs: which field of which kinds a transformer touches, kustomize's built-in table of
//! them, the `configurations:` files that extend it, and walking an object along a spec's path.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::resource::Gvk;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct FieldSpec {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub path: String,
    #[serde(rename = "create")]
    pub create: bool,
    /// `path` split into segments once: transformers walk the same spec over every object.
    #[serde(skip)]
    segs: std::sync::OnceLock<Vec<Seg>>,
}

impl FieldSpec {
    /// Whether this spec applies to objects of `gvk`: every non-empty part of it must match.
    pub fn selects(&self, gvk: &Gvk) -> bool {
        (self.group.is_empty() || self.group == gvk.group)
            && (self.version.is_empty() || self.version == gvk.version)
            && (self.kind.is_empty() || self.kind == gvk.kind)
    }

    /// The segments of `path`.
    pub fn segs(&self) -> &[Seg] {
        self.segs.get_or_init(|| parse_path(&self.path))
    }

    pub fn gvk(&self) -> Gvk {
        Gvk {
            group: self.group.clone(),
            version: self.version.clone(),
            kind: self.kind.clone(),
        }
    }

    /// `kind` as `Kind`, `Kind@group/version`, `Kind@version` or `Kind@group`.
    pub(crate) fn new(kind: &str, path: &str, create: bool) -> Self {
        let (kind, group, version) = split_kind(kind);
        Self {
            group,
            version,
            kind,
            path: path.to_owned(),
            create,
            segs: Default::default(),
        }
    }
}

/// `Kind` or `Kind@group/version` or `Kind@version` in the tables below.
fn split_kind(s: &str) -> (String, String, String) {
    match s.split_once('@') {
        None => (s.to_owned(), String::new(), String::new()),
        Some((k, gv)) => match gv.split_once('/') {
            Some((g, v)) => (k.to_owned(), g.to_owned(), v.to_owned()),
            None if is_version(gv) => (k.to_owned(), String::new(), gv.to_owned()),
            None => (k.to_owned(), gv.to_owned(), String::new()),
        },
    }
}

/// `v1`, `v2beta1`: a version rather than a group.
fn is_version(s: &str) -> bool {
    s.strip_prefix('v')
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// A kind that is referred to by name, and the fields that refer to it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NameBackRef {
    pub group: String,
    pub version: String,
    pub kind: String,
    #[serde(rename = "fieldSpecs")]
    pub referrers: Vec<FieldSpec>,
}

impl NameBackRef {
    pub fn gvk(&self) -> Gvk {
        Gvk {
            group: self.group.clone(),
            version: self.version.clone(),
            kind: self.kind.clone(),
        }
    }
}

/// The field specs of every built-in transformer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TransformerConfig {
    pub name_prefix: Vec<FieldSpec>,
    pub name_suffix: Vec<FieldSpec>,
    /// `namespace`, as kustomize spells it (not `nameSpace`).
    #[serde(rename = "namespace")]
    pub name_space: Vec<FieldSpec>,
    pub common_labels: Vec<FieldSpec>,
    pub template_labels: Vec<FieldSpec>,
    pub labels: Vec<FieldSpec>,
    pub common_annotations: Vec<FieldSpec>,
    pub name_reference: Vec<NameBackRef>,
    pub var_reference: Vec<FieldSpec>,
    pub images: Vec<FieldSpec>,
    pub replicas: Vec<FieldSpec>,
}

/// kustomize's `FsSlice.MergeOne`, for each of `incoming`: a spec is left out when one already
/// there on the same path is of a kind it selects (a spec for all kinds after specific ones adds
/// nothing), and it is an error when those two disagree on `create`. Together with the sorting
/// below, this is how a `configurations:` spec for one kind narrows the default for all kinds.
pub(crate) fn merge_all(into: &mut Vec<FieldSpec>, incoming: &[FieldSpec]) -> Result<(), String> {
    for x in incoming {
        match into
            .iter()
            .find(|s| s.path == x.path && x.selects(&s.gvk()))
        {
            Some(s) if s.create != x.create => {
                return Err(format!(
                    "conflicting fieldspecs: path '{}' for {} has create: {}, for {} create: {}",
                    x.path,
                    describe(&s.gvk()),
                    s.create,
                    describe(&x.gvk()),
                    x.create
                ));
            }
            Some(_) => {}
            None => into.push(x.clone()),
        }
    }
    Ok(())
}

fn describe(gvk: &Gvk) -> String {
    let gv = [gvk.group.as_str(), gvk.version.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    match (gvk.kind.as_str(), gv.as_str()) {
        ("", "") => "every kind".into(),
        ("", gv) => format!("every kind of {gv}"),
        (kind, "") => format!("kind {kind}"),
        (kind, gv) => format!("kind {kind} of {gv}"),
    }
}

/// kustomize keeps every list of a configuration sorted by Gvk (stable here; Go's sort only
/// reorders specs of the same Gvk, which does not change what they select).
fn sort_specs(specs: &mut [FieldSpec]) {
    specs.sort_by_cached_key(|fs| fs.gvk().order_key());
}

impl TransformerConfig {
    /// kustomize's `TransformerConfig.Merge`: `other`'s specs merge in field by field, back
    /// references of the same kind merge their referrers, and every list ends sorted. The error
    /// names the field whose specs conflict.
    pub fn merge(&mut self, other: &TransformerConfig) -> Result<(), String> {
        let mut other = other.clone();
        other.sort();
        let fields: [(&str, &mut Vec<FieldSpec>, &[FieldSpec]); 10] = [
            ("namePrefix", &mut self.name_prefix, &other.name_prefix),
            ("nameSuffix", &mut self.name_suffix, &other.name_suffix),
            ("namespace", &mut self.name_space, &other.name_space),
            (
                "commonLabels",
                &mut self.common_labels,
                &other.common_labels,
            ),
            (
                "templateLabels",
                &mut self.template_labels,
                &other.template_labels,
            ),
            ("labels", &mut self.labels, &other.labels),
            (
                "commonAnnotations",
                &mut self.common_annotations,
                &other.common_annotations,
            ),
            (
                "varReference",
                &mut self.var_reference,
                &other.var_reference,
            ),
            ("images", &mut self.images, &other.images),
            ("replicas", &mut self.replicas, &other.replicas),
        ];
        for (name, into, from) in fields {
            merge_all(into, from).map_err(|e| format!("{name}: {e}"))?;
        }
        for br in &other.name_reference {
            match self.name_reference.iter_mut().find(|b| b.gvk() == br.gvk()) {
                Some(existing) => merge_all(&mut existing.referrers, &br.referrers)
                    .map_err(|e| format!("nameReference: {e}"))?,
                None => self.name_reference.push(br.clone()),
            }
        }
        self.sort();
        Ok(())
    }

    fn sort(&mut self) {
        for list in [
            &mut self.name_prefix,
            &mut self.name_suffix,
            &mut self.name_space,
            &mut self.common_labels,
            &mut self.template_labels,
            &mut self.labels,
            &mut self.common_annotations,
            &mut self.var_reference,
            &mut self.images,
            &mut self.replicas,
        ] {
            sort_specs(list);
        }
        self.name_reference
            .sort_by_cached_key(|br| br.gvk().order_key());
    }

    /// kustomize's built-in defaults, from `defaults.yaml`.
    pub fn builtin() -> &'static TransformerConfig {
        static CONFIG: std::sync::LazyLock<TransformerConfig> = std::sync::LazyLock::new(|| {
            let mut tc = TransformerConfig::default();
            for doc in read_configurations(include_str!("defaults.yaml"))
                .expect("the embedded defaults are valid: a unit test reads them")
            {
                tc.append(doc);
            }
            // Sorted, as kustomize sorts every configuration it reads.
            tc.sort();
            tc
        });
        &CONFIG
    }

    /// Every list of `other` after this one's, without merging: the built-in table is one
    /// configuration whose specs must all stay, even those a merge would fold together.
    fn append(&mut self, other: TransformerConfig) {
        self.name_prefix.extend(other.name_prefix);
        self.name_suffix.extend(other.name_suffix);
        self.name_space.extend(other.name_space);
        self.common_labels.extend(other.common_labels);
        self.template_labels.extend(other.template_labels);
        self.labels.extend(other.labels);
        self.common_annotations.extend(other.common_annotations);
        self.name_reference.extend(other.name_reference);
        self.var_reference.extend(other.var_reference);
        self.images.extend(other.images);
        self.replicas.extend(other.replicas);
    }
}

/// Why a `configurations:` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    /// The file is not YAML.
    #[error("not YAML")]
    Yaml(#[source] crate::yaml::ParseError),
    /// A document is YAML but not a transformer configuration; serde's message names the field.
    #[error("{0}")]
    Shape(serde_json::Error),
}

/// The transformer configurations of a `configurations:` file, one per YAML document.
pub fn read_configurations(text: &str) -> Result<Vec<TransformerConfig>, ConfigurationError> {
    crate::yaml::parse_documents(text)
        .map_err(ConfigurationError::Yaml)?
        .into_iter()
        .map(|doc| serde_json::from_value(doc).map_err(ConfigurationError::Shape))
        .collect()
}

/// Where the pod spec sits in each workload kind.
const POD_SPEC_AT: &[(&str, &str)] = &[
    ("Pod@v1", "spec"),
    ("PodTemplate", "template/spec"),
    ("Deployment", "spec/template/spec"),
    ("ReplicaSet", "spec/template/spec"),
    ("DaemonSet", "spec/template/spec"),
    ("StatefulSet", "spec/template/spec"),
    ("Job", "spec/template/spec"),
    ("CronJob", "spec/jobTemplate/spec/template/spec"),
    ("ReplicationController", "spec/template/spec"),
];

fn pod_refs(kinds: &[&str], fields: &[&str]) -> Vec<FieldSpec> {
    let mut out = Vec::new();
    for (kind, at) in POD_SPEC_AT {
        let bare = kind.split('@').next().unwrap_or(kind);
        if !kinds.contains(&bare) {
            continue;
        }
        for f in fields {
            out.push(FieldSpec::new(kind, &format!("{at}/{f}"), false));
        }
    }
    out
}

fn specs(list: &[(&str, &str)], create: bool) -> Vec<FieldSpec> {
    list.iter()
        .map(|(k, p)| FieldSpec::new(k, p, create))
        .collect()
}

fn back_ref(kind: &str, referrers: Vec<FieldSpec>) -> NameBackRef {
    let (kind, group, version) = split_kind(kind);
    NameBackRef {
        group,
        version,
        kind,
        referrers,
    }
}

fn build_defaults() -> TransformerConfig {
    const WORKLOADS: &[&str] = &[
        "Pod",
        "PodTemplate",
        "Deployment",
        "ReplicaSet",
        "DaemonSet",
        "StatefulSet",
        "Job",
        "CronJob",
    ];
    const POD_OWNERS: &[&str] = &[
        "Pod",
        "StatefulSet",
        "Deployment",
        "ReplicationController",
        "CronJob",
        "Job",
        "DaemonSet",
    ];
    let template_meta = |field: &str| -> Vec<(String, String)> {
        let mut v = vec![
            (
                "ReplicationController@v1".to_owned(),
                format!("spec/template/metadata/{field}"),
            ),
            (
                "Deployment".to_owned(),
                format!("spec/template/metadata/{field}"),
            ),
            (
                "ReplicaSet".to_owned(),
                format!("spec/template/metadata/{field}"),
            ),
            (
                "DaemonSet".to_owned(),
                format!("spec/template/metadata/{field}"),
            ),
            (
                "StatefulSet@apps".to_owned(),
                format!("spec/template/metadata/{field}"),
            ),
            (
                "Job@batch".to_owned(),
                format!("spec/template/metadata/{field}"),
            ),
            (
                "CronJob@batch".to_owned(),
                format!("spec/jobTemplate/metadata/{field}"),
            ),
            (
                "CronJob@batch".to_owned(),
                format!("spec/jobTemplate/spec/template/metadata/{field}"),
            ),
        ];
        v.insert(0, (String::new(), format!("metadata/{field}")));
        v
    };
    let owned = |v: Vec<(String, String)>, create: bool| -> Vec<FieldSpec> {
        v.iter()
            .map(|(k, p)| FieldSpec::new(k, p, create))
            .collect()
    };
    let claim_template_labels = FieldSpec::new(
        "StatefulSet@apps",
        "spec/volumeClaimTemplates[]/metadata/labels",
        true,
    );
    let mut metadata_labels = owned(template_meta("labels"), true);
    metadata_labels.push(claim_template_labels.clone());

    let mut common_labels = specs(
        &[
            ("Service@v1", "spec/selector"),
            ("ReplicationController@v1", "spec/selector"),
            ("Deployment", "spec/selector/matchLabels"),
            ("ReplicaSet", "spec/selector/matchLabels"),
            ("DaemonSet", "spec/selector/matchLabels"),
            ("StatefulSet@apps", "spec/selector/matchLabels"),
        ],
        true,
    );
    let affinity = [
        "spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels",
        "spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels",
        "spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels",
        "spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels",
        "spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels",
    ];
    for kind in ["Deployment@apps", "StatefulSet@apps"] {
        for p in affinity {
            common_labels.push(FieldSpec::new(kind, p, false));
        }
    }
    common_labels.extend(specs(
        &[
            ("Job@batch", "spec/selector/matchLabels"),
            (
                "CronJob@batch",
                "spec/jobTemplate/spec/selector/matchLabels",
            ),
            ("PodDisruptionBudget@policy", "spec/selector/matchLabels"),
            (
                "NetworkPolicy@networking.k8s.io",
                "spec/podSelector/matchLabels",
            ),
            (
                "NetworkPolicy@networking.k8s.io",
                "spec/ingress/from/podSelector/matchLabels",
            ),
            (
                "NetworkPolicy@networking.k8s.io",
                "spec/egress/to/podSelector/matchLabels",
            ),
        ],
        false,
    ));
    common_labels.extend(metadata_labels.iter().cloned());

    let image_paths: Vec<FieldSpec> = [
        "spec/containers[]/image",
        "spec/initContainers[]/image",
        "spec/volumes[]/image/reference",
        "spec/template/spec/containers[]/image",
        "spec/template/spec/initContainers[]/image",
        "spec/template/spec/volumes[]/image/reference",
    ]
    .iter()
    .map(|p| FieldSpec::new("", p, true))
    .collect();

    let config_map_fields = [
        "volumes/configMap/name",
        "containers/env/valueFrom/configMapKeyRef/name",
        "initContainers/env/valueFrom/configMapKeyRef/name",
        "containers/envFrom/configMapRef/name",
        "initContainers/envFrom/configMapRef/name",
        "volumes/projected/sources/configMap/name",
    ];
    let mut config_map_refs = pod_refs(WORKLOADS, &config_map_fields);
    config_map_refs.extend(specs(
        &[
            ("Node", "spec/configSource/configMap"),
            ("Role", "rules/resourceNames"),
            ("ClusterRole", "rules/resourceNames"),
            (
                "Ingress",
                "metadata/annotations/nginx.ingress.kubernetes.io\\/fastcgi-params-configmap",
            ),
        ],
        false,
    ));
    let secret_fields = [
        "volumes/secret/secretName",
        "containers/env/valueFrom/secretKeyRef/name",
        "initContainers/env/valueFrom/secretKeyRef/name",
        "containers/envFrom/secretRef/name",
        "initContainers/envFrom/secretRef/name",
        "imagePullSecrets/name",
        "volumes/projected/sources/secret/name",
    ];
    let mut secret_refs = pod_refs(WORKLOADS, &secret_fields);
    secret_refs.extend(specs(
        &[
            ("Ingress", "spec/tls/secretName"),
            (
                "Ingress",
                "metadata/annotations/ingress.kubernetes.io\\/auth-secret",
            ),
            (
                "Ingress",
                "metadata/annotations/nginx.ingress.kubernetes.io\\/auth-secret",
            ),
            (
                "Ingress",
                "metadata/annotations/nginx.ingress.kubernetes.io\\/auth-tls-secret",
            ),
            ("ServiceAccount", "imagePullSecrets/name"),
            ("StorageClass", "parameters/secretName"),
            ("StorageClass", "parameters/adminSecretName"),
            ("StorageClass", "parameters/userSecretName"),
            ("StorageClass", "parameters/secretRef"),
            ("Role", "rules/resourceNames"),
            ("ClusterRole", "rules/resourceNames"),
            (
                "Service@serving.knative.dev/v1",
                "spec/template/spec/containers/env/valueFrom/secretKeyRef/name",
            ),
            ("PersistentVolume", "spec/azureFile/secretName"),
        ],
        false,
    ));
    let mut service_account_refs = specs(
        &[
            ("RoleBinding@rbac.authorization.k8s.io", "subjects"),
            ("ClusterRoleBinding@rbac.authorization.k8s.io", "subjects"),
        ],
        false,
    );
    service_account_refs.extend(pod_refs(POD_OWNERS, &["serviceAccountName"]));
    let hpa = || {
        specs(
            &[("HorizontalPodAutoscaler", "spec/scaleTargetRef/name")],
            false,
        )
    };
    let mut storage_class_refs = specs(
        &[
            ("PersistentVolume", "spec/storageClassName"),
            ("PersistentVolumeClaim", "spec/storageClassName"),
            (
                "StatefulSet",
                "spec/volumeClaimTemplates/spec/storageClassName",
            ),
        ],
        false,
    );
    storage_class_refs.dedup();

    let name_reference = vec![
        back_ref("Deployment", hpa()),
        back_ref("ReplicationController", hpa()),
        back_ref("ReplicaSet", hpa()),
        back_ref("StatefulSet", hpa()),
        back_ref("ConfigMap@v1", config_map_refs),
        back_ref("Secret@v1", secret_refs),
        back_ref(
            "Service@v1",
            specs(
                &[
                    ("StatefulSet@apps", "spec/serviceName"),
                    ("Ingress", "spec/rules/http/paths/backend/serviceName"),
                    ("Ingress", "spec/backend/serviceName"),
                    ("Ingress", "spec/rules/http/paths/backend/service/name"),
                    ("Ingress", "spec/defaultBackend/service/name"),
                    ("APIService@apiregistration.k8s.io", "spec/service/name"),
                    (
                        "ValidatingWebhookConfiguration@admissionregistration.k8s.io",
                        "webhooks/clientConfig/service",
                    ),
                    (
                        "MutatingWebhookConfiguration@admissionregistration.k8s.io",
                        "webhooks/clientConfig/service",
                    ),
                ],
                false,
            ),
        ),
        back_ref(
            "Role@rbac.authorization.k8s.io",
            specs(
                &[("RoleBinding@rbac.authorization.k8s.io", "roleRef/name")],
                false,
            ),
        ),
        back_ref(
            "ClusterRole@rbac.authorization.k8s.io",
            specs(
                &[
                    ("RoleBinding@rbac.authorization.k8s.io", "roleRef/name"),
                    (
                        "ClusterRoleBinding@rbac.authorization.k8s.io",
                        "roleRef/name",
                    ),
                ],
                false,
            ),
        ),
        back_ref("ServiceAccount@v1", service_account_refs),
        back_ref(
            "PersistentVolumeClaim@v1",
            pod_refs(POD_OWNERS, &["volumes/persistentVolumeClaim/claimName"]),
        ),
        back_ref(
            "PersistentVolume@v1",
            specs(
                &[
                    ("PersistentVolumeClaim", "spec/volumeName"),
                    ("ClusterRole", "rules/resourceNames"),
                ],
                false,
            ),
        ),
        back_ref("StorageClass@storage.k8s.io/v1", storage_class_refs),
        back_ref(
            "PriorityClass@scheduling.k8s.io/v1",
            pod_refs(POD_OWNERS, &["priorityClassName"]),
        ),
        back_ref(
            "ValidatingAdmissionPolicy@admissionregistration.k8s.io",
            specs(
                &[(
                    "ValidatingAdmissionPolicyBinding@admissionregistration.k8s.io",
                    "spec/policyName",
                )],
                false,
            ),
        ),
    ];

    let mut var_reference = pod_refs(
        &[
            "Pod",
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "StatefulSet",
            "Job",
            "CronJob",
            "ReplicationController",
        ],
        &[
            "containers/args",
            "containers/command",
            "containers/env/value",
            "containers/volumeMounts/mountPath",
            "initContainers/args",
            "initContainers/command",
            "initContainers/env/value",
            "initContainers/volumeMounts/mountPath",
            "volumes/nfs/server",
        ],
    );
    var_reference.extend(specs(
        &[
            ("Ingress", "spec/rules/host"),
            ("Ingress", "spec/tls/hosts"),
            ("Ingress", "spec/tls/secretName"),
            ("Service", "spec/ports/port"),
            ("Service", "spec/ports/targetPort"),
            ("StatefulSet", "spec/volumeClaimTemplates/spec/nfs/server"),
            ("PersistentVolume", "spec/nfs/server"),
            ("", "spec/template/metadata/annotations"),
            ("", "metadata/labels"),
            ("", "metadata/annotations"),
        ],
        false,
    ));

    TransformerConfig {
        name_prefix: vec![FieldSpec::new("", "metadata/name", false)],
        name_suffix: vec![FieldSpec::new("", "metadata/name", false)],
        name_space: specs(
            &[
                ("Namespace", "metadata/name"),
                (
                    "APIService@apiregistration.k8s.io",
                    "spec/service/namespace",
                ),
            ],
            true,
        )
        .into_iter()
        .chain([FieldSpec::new(
            "CustomResourceDefinition@apiextensions.k8s.io",
            "spec/conversion/webhook/clientConfig/service/namespace",
            false,
        )])
        .collect(),
        common_labels,
        template_labels: metadata_labels,
        labels: Vec::new(),
        common_annotations: owned(template_meta("annotations"), true),
        name_reference,
        var_reference,
        images: image_paths,
        replicas: specs(
            &[
                ("Deployment", "spec/replicas"),
                ("ReplicationController", "spec/replicas"),
                ("ReplicaSet", "spec/replicas"),
                ("StatefulSet", "spec/replicas"),
            ],
            true,
        ),
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Field(String),
    /// `field[]`: every element of the sequence at `field`.
    Each(String),
    /// `field[key=value]`: the elements of the sequence whose `key` equals `value`.
    Match {
        field: String,
        key: String,
        value: String,
    },
}

/// Splits `a/b\/c/d[]` into segments; `\/` is a slash inside a field name.
pub fn parse_path(path: &str) -> Vec<Seg> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'/') => {
                cur.push('/');
                chars.next();
            }
            '/' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            if let Some(f) = p.strip_suffix("[]") {
                Seg::Each(f.to_owned())
            } else if let (Some(open), true) = (p.find('['), p.ends_with(']')) {
                let inner = &p[open + 1..p.len() - 1];
                match inner.split_once('=') {
                    Some((k, v)) => Seg::Match {
                        field: p[..open].to_owned(),
                        key: k.to_owned(),
                        value: v.to_owned(),
                    },
                    None => Seg::Field(p),
                }
            } else {
                Seg::Field(p)
            }
        })
        .collect()
}

pub type VisitResult = Result<(), String>;

/// Calls `f` on each node at `path` in `obj`. Sequences met on the way are walked element by
/// element. With `create`, missing maps on the way and a missing final field (as `Null`) are
/// created first.
pub fn visit(
    obj: &mut Map<String, Value>,
    path: &[Seg],
    create: bool,
    f: &mut dyn FnMut(&mut Value) -> VisitResult,
) -> VisitResult {
    let Some((first, rest)) = path.split_first() else {
        return Ok(());
    };
    let name = match first {
        Seg::Field(n) | Seg::Each(n) | Seg::Match { field: n, .. } => n,
    };
    let mut created = false;
    if !obj.contains_key(name.as_str()) {
        if !create || matches!(first, Seg::Match { .. }) {
            return Ok(());
        }
        let fresh = if rest.is_empty() {
            Value::Null
        } else if matches!(first, Seg::Each(_)) {
            return Ok(());
        } else {
            Value::Object(Map::new())
        };
        obj.insert(name.clone(), fresh);
        created = true;
    }
    let node = obj
        .get_mut(name.as_str())
        .expect("inserted above if missing");
    let result = visit_here(first, rest, node, create, f);
    // A map made on the way to a field that never came to be is not kept.
    let unused = match obj.get(name.as_str()) {
        Some(Value::Object(m)) => m.is_empty() && !rest.is_empty(),
        Some(Value::Null) => true,
        _ => false,
    };
    if created && unused {
        obj.remove(name.as_str());
    }
    result
}

fn visit_here(
    first: &Seg,
    rest: &[Seg],
    node: &mut Value,
    create: bool,
    f: &mut dyn FnMut(&mut Value) -> VisitResult,
) -> VisitResult {
    match first {
        Seg::Field(_) if rest.is_empty() => f(node),
        Seg::Match {
            key: k, value: v, ..
        } => {
            if let Value::Array(items) = node {
                for item in items.iter_mut() {
                    let hit = item.get(k).and_then(Value::as_str) == Some(v.as_str());
                    if hit {
                        visit_node(item, rest, create, f)?;
                    }
                }
            }
            Ok(())
        }
        _ => visit_node(node, rest, create, f),
    }
}

fn visit_node(
    node: &mut Value,
    rest: &[Seg],
    create: bool,
    f: &mut dyn FnMut(&mut Value) -> VisitResult,
) -> VisitResult {
    if rest.is_empty() {
        return f(node);
    }
    match node {
        Value::Object(m) => visit(m, rest, create, f),
        Value::Array(items) => {
            for item in items.iter_mut() {
                match item {
                    Value::Object(m) => visit(m, rest, create, f)?,
                    Value::Null => {}
                    other => return Err(not_a_container(other)),
                }
            }
            Ok(())
        }
        Value::Null if create => {
            *node = Value::Object(Map::new());
            visit(
                node.as_object_mut().expect("just made an object"),
                rest,
                create,
                f,
            )
        }
        Value::Null => Ok(()),
        // kustomize refuses a field path that runs into a scalar before its end.
        other => Err(not_a_container(other)),
    }
}

fn not_a_container(v: &Value) -> String {
    let what = match v {
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        _ => "a scalar",
    };
    format!("expected a map or a list on the way, found {what}")
}

/// Names the field spec and the object in an error met while visiting it, as kustomize does.
pub fn in_context(fs: &FieldSpec, obj: &Map<String, Value>, gvk: &Gvk, e: String) -> String {
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("field '{}' of {} '{name}': {e}", fs.path, gvk.kind)
}

/// Applies `f` along every spec in `specs` that selects `gvk`.
pub fn apply_specs(
    obj: &mut Map<String, Value>,
    gvk: &Gvk,
    specs: &[FieldSpec],
    f: &mut dyn FnMut(&mut Value) -> VisitResult,
) -> VisitResult {
    for fs in specs {
        if !fs.selects(gvk) {
            continue;
        }
        visit(obj, fs.segs(), fs.create, f).map_err(|e| in_context(fs, obj, gvk, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod defaults_as_yaml {
    use super::*;

    #[test]
    fn the_embedded_defaults_are_the_table_they_replace() {
        let mut old = build_defaults();
        old.sort();
        assert_eq!(
            format!("{:?}", TransformerConfig::builtin()),
            format!("{old:?}")
        );
    }
}
