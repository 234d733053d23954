//! A real container registry for the tests: Debian's `docker-registry` on loopback with
//! htpasswd (bcrypt) auth, started by `scripts/registry.sh`, and images pushed into it by the
//! real `skopeo`.
//!
//! `registry()` is shared by every test of a run: `scripts/test.sh` starts one and exports its
//! URL as `STAGEHAND_TEST_REGISTRY`; without it, the first test of the process starts a private
//! one whose watchdog stops it when this process ends. Tests that share it push under
//! repositories of their own. `TestRegistry::start` starts one for a single test (without auth,
//! or sending its push notifications to a webhook), stopped when dropped.
//!
//! An image pushed here is tiny: one layer holding one small file, in an OCI layout written
//! for each push, with the tag and a creation time in its config so every push has a digest of
//! its own. `skopeo copy` pushes it as `docker push` would (it compresses the layer), so a
//! push costs a few tens of milliseconds and a test can push dozens of tags.
//!
//! This file uses only std and the crate's own dependencies (no other support module), so
//! benches include it with `#[path]`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};

/// The variable that holds the shared registry's URL.
pub const URL_VARIABLE: &str = "STAGEHAND_TEST_REGISTRY";

pub struct TestRegistry {
    /// `127.0.0.1:PORT`, the registry's host as image references name it.
    pub address: String,
    /// `Some((user, password))` when the registry asks for basic auth.
    pub credentials: Option<(String, String)>,
    /// Set for a registry this value started and stops when dropped.
    owned_dir: Option<PathBuf>,
}

/// How `TestRegistry::start` configures a private registry.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// No htpasswd: anyone may pull and push.
    pub no_auth: bool,
    /// Where the registry POSTs its notification envelopes (pushes), e.g. a webhook URL.
    pub notify: Option<String>,
    /// With `notify`: the token the registry sends as `Authorization: Bearer <token>` with each
    /// envelope (its endpoint's `headers`).
    pub notify_token: Option<String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/registry.sh")
}

/// The registry shared by the tests of this run.
pub fn registry() -> &'static TestRegistry {
    static REGISTRY: OnceLock<TestRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        if let Ok(url) = std::env::var(URL_VARIABLE)
            && !url.is_empty()
        {
            return TestRegistry::from_url(&url, None);
        }
        let dir = std::env::temp_dir().join(format!("stagehand-registry-{}", std::process::id()));
        let url = up(&dir, &Options::default(), true);
        TestRegistry::from_url(&url, None)
    })
}

fn up(dir: &Path, options: &Options, watch: bool) -> String {
    let mut command = Command::new(script());
    command.arg("up").arg(dir);
    if options.no_auth {
        command.arg("--no-auth");
    }
    if let Some(url) = &options.notify {
        command.arg("--notify").arg(url);
        if let Some(token) = &options.notify_token {
            // docker-registry takes a whole setting from REGISTRY_<PATH> in its environment,
            // which registry.sh passes on: this endpoint, with its header, replaces the file's.
            command.env(
                "REGISTRY_NOTIFICATIONS_ENDPOINTS",
                format!(
                    "[{{name: stagehand, url: {url:?}, headers: {{Authorization: [\"Bearer {token}\"]}}, \
                     timeout: 2s, threshold: 3, backoff: 200ms}}]"
                ),
            );
        }
    }
    if watch {
        command.arg("--watch").arg(std::process::id().to_string());
    }
    let out = command.output().expect("scripts/registry.sh runs");
    assert!(
        out.status.success(),
        "the local registry did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("the URL is UTF-8")
        .trim()
        .to_owned()
}

impl TestRegistry {
    /// A registry of its own, configured by `options`, with its storage under `dir`; stopped
    /// when the value is dropped (and by the watchdog if this process dies first).
    pub fn start(dir: &Path, options: Options) -> Self {
        let url = up(dir, &options, true);
        TestRegistry::from_url(&url, Some(dir.to_owned()))
    }

    /// From the URL `scripts/registry.sh up` prints: `http://[USER:PASSWORD@]127.0.0.1:PORT`.
    fn from_url(url: &str, owned_dir: Option<PathBuf>) -> Self {
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("{URL_VARIABLE} is not an http:// URL: {url}"));
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((userinfo, address)) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .unwrap_or_else(|| panic!("no password in the registry URL {url}"));
                (Some((user.to_owned(), password.to_owned())), address)
            }
            None => (None, rest),
        };
        TestRegistry {
            address: address.trim_end_matches('/').to_owned(),
            credentials,
            owned_dir,
        }
    }

    /// The base URL of the registry's API, `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A docker `config.json` with this registry's credentials (`auths` with `auth`), as the
    /// `docker login` writes it; an empty `auths` for a registry without auth.
    pub fn docker_config(&self) -> Vec<u8> {
        let auths = match &self.credentials {
            Some((user, password)) => serde_json::json!({
                self.address.clone(): {"auth": base64_encode(format!("{user}:{password}").as_bytes())}
            }),
            None => serde_json::json!({}),
        };
        serde_json::to_vec(&serde_json::json!({ "auths": auths })).expect("JSON")
    }

    /// The `--creds`/`--dest-creds` value for skopeo, if the registry asks for any.
    fn skopeo_creds(&self) -> Option<String> {
        self.credentials
            .as_ref()
            .map(|(user, password)| format!("{user}:{password}"))
    }

    /// Pushes a tiny image as `repository:tag` and returns its manifest digest as the registry
    /// stores it (`sha256:...`). Its config's creation time is 2026-01-01T00:00:00Z.
    pub fn push(&self, repository: &str, tag: &str) -> String {
        self.push_created(repository, tag, "2026-01-01T00:00:00Z")
    }

    /// `push` with the image config's `created` (RFC 3339) set to `created`.
    pub fn push_created(&self, repository: &str, tag: &str, created: &str) -> String {
        let scratch = tempdir();
        let layout = scratch.join("layout");
        write_layout(&layout, tag, created);
        let digest_file = scratch.join("digest");
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"]);
        command.arg(&digest_file);
        if let Some(creds) = self.skopeo_creds() {
            command.arg("--dest-creds").arg(creds);
        }
        command
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{}/{repository}:{tag}", self.address));
        let out = command
            .output()
            .expect("skopeo runs (Debian's skopeo, installed by scripts/setup.sh)");
        assert!(
            out.status.success(),
            "skopeo copy to {repository}:{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let digest = std::fs::read_to_string(&digest_file).expect("skopeo wrote the digest");
        let _ = std::fs::remove_dir_all(&scratch);
        digest.trim().to_owned()
    }

    /// The manifest digest of `repository:tag` as `skopeo inspect` reports it.
    pub fn skopeo_digest(&self, repository: &str, tag: &str) -> String {
        let mut command = Command::new("skopeo");
        command.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
        if let Some(creds) = self.skopeo_creds() {
            command.arg("--creds").arg(creds);
        }
        command.arg(format!("docker://{}/{repository}:{tag}", self.address));
        let out = command.output().expect("skopeo runs");
        assert!(
            out.status.success(),
            "skopeo inspect {repository}:{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned()
    }

    /// The tags of `repository` as `skopeo list-tags` reports them.
    pub fn skopeo_tags(&self, repository: &str) -> Vec<String> {
        let mut command = Command::new("skopeo");
        command.args(["list-tags", "--tls-verify=false"]);
        if let Some(creds) = self.skopeo_creds() {
            command.arg("--creds").arg(creds);
        }
        command.arg(format!("docker://{}/{repository}", self.address));
        let out = command.output().expect("skopeo runs");
        assert!(
            out.status.success(),
            "skopeo list-tags {repository}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        listed["Tags"]
            .as_array()
            .expect("Tags is a list")
            .iter()
            .map(|t| t.as_str().expect("a tag is a string").to_owned())
            .collect()
    }
}

impl TestRegistry {
    /// Points each of `tags` at the manifest `repository:from` already has, with one HTTP `PUT`
    /// of that manifest per tag (16 at a time): thousands of tags in seconds, for listing
    /// tests and benchmarks. The tags share `from`'s digest.
    pub async fn retag(&self, repository: &str, from: &str, tags: &[String]) {
        use futures::StreamExt as _;
        // reqwest is built without a crypto provider of its own; the binary installs ring's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let with_auth = |request: reqwest::RequestBuilder| match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        };
        let base = format!("{}/v2/{repository}/manifests", self.base_url());
        let response = with_auth(client.get(format!("{base}/{from}")))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .expect("the registry answers");
        assert!(
            response.status().is_success(),
            "GET {repository}:{from}: {}",
            response.status()
        );
        let media_type = response
            .headers()
            .get("content-type")
            .expect("a manifest has a content type")
            .clone();
        let manifest = response.bytes().await.expect("the manifest's body");
        let puts = futures::stream::iter(tags).map(|tag| {
            let request = with_auth(client.put(format!("{base}/{tag}")))
                .header("content-type", media_type.clone())
                .body(manifest.clone());
            async move {
                let response = request.send().await.expect("the registry answers");
                assert!(
                    response.status().is_success(),
                    "PUT {repository}:{tag}: {}",
                    response.status()
                );
            }
        });
        puts.buffer_unordered(16).collect::<Vec<()>>().await;
    }
}

/// A front for a registry that pages tag lists as the distribution spec describes (`n`,
/// `last`, a `Link` to the next page) and passes every other request through unchanged, auth
/// challenges included. Debian's docker-registry (distribution 2.8) ignores `n` on tag lists and
/// answers every tag at once; distribution 3, Docker Hub, GHCR and others page them, so
/// pagination is tested against the real registry's answers cut into pages here.
pub struct PagingFront {
    /// `127.0.0.1:PORT` of the front; image names use it in place of the registry's.
    pub address: String,
    task: tokio::task::JoinHandle<()>,
}

impl PagingFront {
    /// Starts a front for `registry` on a free loopback port (needs a tokio runtime).
    pub async fn start(registry: &TestRegistry) -> Self {
        let upstream = registry.base_url();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("an address").to_string();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (client, upstream) = (client.clone(), upstream.clone());
            async move { page(&client, &upstream, request).await }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the front serves");
        });
        PagingFront { address, task }
    }
}

impl Drop for PagingFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn page(
    client: &reqwest::Client,
    upstream: &str,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let paging = path.ends_with("/tags/list") && param("n").is_some();
    let target = if paging {
        format!("{upstream}{path}")
    } else {
        format!("{upstream}{}", parts.uri)
    };
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .expect("a request body");
    let mut forward = client.request(parts.method.clone(), target).body(body);
    for (name, value) in &parts.headers {
        if name != "host" {
            forward = forward.header(name, value);
        }
    }
    let answer = forward.send().await.expect("the registry answers");
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.expect("the registry's body");
    let mut response = axum::http::Response::builder().status(status);
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    if !paging || !status.is_success() {
        return response
            .body(axum::body::Body::from(bytes))
            .expect("a response");
    }
    let listed: serde_json::Value = serde_json::from_slice(&bytes).expect("a tag list");
    let mut tags: Vec<String> = listed["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    let n: usize = param("n")
        .and_then(|n| n.parse().ok())
        .expect("n is a number");
    let last = param("last");
    let rest: Vec<String> = tags
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|last| t > last))
        .collect();
    let page: Vec<&String> = rest.iter().take(n).collect();
    if rest.len() > n {
        let next = format!("<{path}?n={n}&last={}>; rel=\"next\"", page[n - 1]);
        response = response.header("link", next);
    }
    let body = serde_json::json!({"name": listed["name"], "tags": page});
    response
        .body(axum::body::Body::from(
            serde_json::to_vec(&body).expect("JSON"),
        ))
        .expect("a response")
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(dir) = &self.owned_dir {
            let _ = Command::new(script()).arg("down").arg(dir).status();
        }
    }
}

fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "stagehand-push-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes an OCI image layout at `dir` holding one image: a layer with the file `/tag` (the
/// tag's name), and a config naming the tag in a label, created at `created`.
fn write_layout(dir: &Path, tag: &str, created: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout directory");
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).expect("blob");
        (format!("sha256:{hex}"), bytes.len())
    };
    let layer = tar_of_one_file("tag", tag.as_bytes());
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Labels": {"stagehand.test.tag": tag}},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .expect("JSON");
    let (config_digest, config_size) = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    }))
    .expect("JSON");
    let (manifest_digest, manifest_size) = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("JSON"),
    )
    .expect("index.json");
}

/// A ustar archive of one regular file (mode 0644, owned by root, mtime 0).
fn tar_of_one_file(name: &str, contents: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: usize| {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], contents.len());
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: usize = header.iter().map(|&b| b as usize).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    let mut archive = header.to_vec();
    archive.extend_from_slice(contents);
    archive.resize(archive.len().div_ceil(512) * 512, 0);
    // Two zero blocks end the archive.
    archive.resize(archive.len() + 1024, 0);
    archive
}
