//! Secrets the service itself reads through the API (age identities, kubeconfigs of the
//! environments' clusters), held in memory only: the answer is parsed from a [`Zeroizing`]
//! buffer and each entry decoded into one, so nothing of it is written to disk or kept past
//! its use. (The HTTP client's own buffers are not wiped.)

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{ConnectError, Error, api_error};
use crate::secrets;

/// A Secret's entries as read once, with the version they belong to.
pub struct SecretData {
    /// `metadata.resourceVersion`: changes whenever the Secret does.
    pub version: String,
    /// Entry name to its decoded bytes.
    pub entries: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData")
            .field("version", &self.version)
            .field("entries", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct Raw {
    metadata: RawMetadata,
    #[serde(default)]
    data: BTreeMap<String, Wiped>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetadata {
    #[serde(default)]
    resource_version: String,
}

/// A base64 entry of the answer, wiped when dropped.
struct Wiped(Zeroizing<String>);

impl<'de> Deserialize<'de> for Wiped {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Wiped(Zeroizing::new(s)))
    }
}

/// Secret `namespace/name`, or `None` when it does not exist.
pub async fn read(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<SecretData>, Error> {
    let target = format!("Secret {namespace}/{name}");
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{namespace}/secrets"))
        .get(name, &kube::api::GetParams::default())
        .map_err(|e| Error::Api {
            operation: "get",
            target: target.clone(),
            code: None,
            reason: "BadRequest".into(),
            message: e.to_string(),
        })?;
    let text = match client.request_text(request).await {
        Ok(text) => Zeroizing::new(text),
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
        Err(e) => return Err(api_error("get", target, e, None)),
    };
    let invalid = |message: &str| Error::Api {
        operation: "get",
        target: target.clone(),
        code: None,
        reason: "InvalidAnswer".into(),
        message: message.to_owned(),
    };
    // The parser's message could quote the answer: it is replaced by a fixed one.
    let raw: Raw = serde_json::from_str(&text).map_err(|_| invalid("not a Secret"))?;
    let mut entries = BTreeMap::new();
    for (key, Wiped(encoded)) in raw.data {
        let mut bytes = Zeroizing::new(Vec::new());
        base64::engine::general_purpose::STANDARD
            .decode_vec(encoded.as_bytes(), &mut bytes)
            .map_err(|_| invalid(&format!("entry {key} is not base64")))?;
        entries.insert(key, bytes);
    }
    Ok(Some(SecretData {
        version: raw.metadata.resource_version,
        entries,
    }))
}

/// The cluster the service itself runs in (in a pod: its service account) or reaches through
/// `KUBECONFIG`: where it reads its own Secrets. Connected on first use.
pub struct Home {
    namespace: Option<String>,
    client: tokio::sync::OnceCell<(kube::Client, String)>,
}

impl Home {
    /// The service's cluster, its Secrets in `namespace` or, when `None`, in the namespace the
    /// configuration names (the pod's own, or the kubeconfig context's).
    pub fn new(namespace: Option<String>) -> Self {
        Self {
            namespace,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// The client and the namespace of the service's own Secrets.
    pub async fn get(&self) -> Result<&(kube::Client, String), ConnectError> {
        self.client
            .get_or_try_init(|| async {
                let config = kube::Config::infer()
                    .await
                    .map_err(|source| ConnectError::Home { source })?;
                let namespace = self
                    .namespace
                    .clone()
                    .unwrap_or_else(|| config.default_namespace.clone());
                let (client, _) = super::client_of(config)?;
                Ok((client, namespace))
            })
            .await
    }
}

/// The `*.agekey` entries of a Secret read through the API, as a source of a
/// [`secrets::Keyring`].
pub struct SecretKeys {
    client: kube::Client,
    namespace: String,
    name: String,
}

impl SecretKeys {
    /// Secret `namespace/name` read with `client`.
    pub fn new(client: kube::Client, namespace: String, name: String) -> Self {
        Self {
            client,
            namespace,
            name,
        }
    }
}

impl secrets::KeySource for SecretKeys {
    fn describe(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    async fn read(
        &self,
        last: Option<&str>,
    ) -> Result<Option<secrets::keyring::Snapshot>, secrets::Error> {
        let problem = |problem: String| secrets::Error::KeySource {
            source_name: self.describe(),
            problem,
        };
        let data = read(&self.client, &self.namespace, &self.name)
            .await
            .map_err(|e| problem(crate::error_chain::ErrorChain(&e).to_string()))?
            .ok_or_else(|| problem("not found".into()))?;
        if last == Some(data.version.as_str()) {
            return Ok(None);
        }
        Ok(Some(secrets::keyring::Snapshot {
            version: data.version,
            entries: data.entries,
        }))
    }
}
