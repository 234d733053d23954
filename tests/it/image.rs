//! The image: the Dockerfile's runtime stage on the locally imported Debian base with the
//! binary cargo built (scripts/image.sh), run as a container the way deploy/base's Deployment
//! runs it (its user, read-only root, capabilities, environment and mounts, with the Secrets'
//! and the ConfigMap's contents as files), reconciling an environment with a SOPS Secret into
//! the real apiserver.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli_api::certificates;
use crate::deploy::rendered;
use crate::keys::{identity, password, repository, sealed_secret};
use crate::service::eventually;
use crate::support::cluster::cluster;
use crate::support::git::git;
use crate::support::git_http::GitHttpServer;

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The image under test: `STAGEHAND_TEST_IMAGE` (scripts/test.sh builds it once per run), else
/// built here by scripts/image.sh from this build's binary. Fails, saying so, without Docker.
pub(crate) fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let info = Command::new("docker").args(["info"]).output();
        assert!(
            info.as_ref().is_ok_and(|o| o.status.success()),
            "the image tests need a Docker engine, and `docker info` failed: {}",
            info.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_else(|e| e.to_string())
        );
        if let Ok(tag) = std::env::var("STAGEHAND_TEST_IMAGE") {
            docker_ok(&["image", "inspect", &tag]);
            return tag;
        }
        let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh"))
            .arg(env!("CARGO_BIN_EXE_stagehand"))
            .arg("stagehand:it")
            .output()
            .expect("scripts/image.sh runs");
        assert!(
            out.status.success(),
            "scripts/image.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned()
    })
}

/// A container removed when dropped.
pub(crate) struct Container {
    pub(crate) name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

impl Container {
    fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The port of the address the service printed after `prefix` ("listening on").
    fn port(&self, prefix: &str) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs = self.logs();
            let found = logs.lines().find_map(|l| {
                l.strip_prefix(prefix)
                    .and_then(|addr| addr.trim().rsplit_once(':'))
                    .and_then(|(_, port)| port.parse().ok())
            });
            if let Some(port) = found {
                return port;
            }
            let running = docker_ok(&["inspect", "-f", "{{.State.Running}}", &self.name]);
            assert!(
                running.trim() == "true" && Instant::now() < deadline,
                "no {prefix:?} line; the container's output:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }
}

/// Files as the kubelet mounts a Secret or ConfigMap for the Deployment's `fsGroup`: owned by
/// root, readable by the group only.
fn mounted(dir: &Path, group: u32, files: &[(&str, &[u8])]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, content) in files {
        let file = dir.join(name);
        std::fs::write(&file, content).expect("write");
        std::os::unix::fs::chown(&file, Some(0), Some(group)).expect("chown");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).expect("chmod");
    }
    std::os::unix::fs::chown(dir, Some(0), Some(group)).expect("chown");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    dir.to_owned()
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// `docker run` arguments that run `image` as `deployment`'s first container runs in its pod:
/// its user, groups, read-only root, dropped capabilities, no privilege escalation (Docker's
/// default seccomp profile is the runtime default), its environment (with `env` overriding
/// values and standing for the downward API), and its volume mounts from `volumes` (a host
/// directory per Secret, ConfigMap or claim; emptyDirs as tmpfs).
fn run_args(
    deployment: &Value,
    env: &[(&str, &str)],
    volumes: &[(&str, &Path)],
    name: &str,
) -> Vec<String> {
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let security = &pod["securityContext"];
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.into()];
    // The apiserver and the Git server are on this host's loopback.
    args.extend(["--network".into(), "host".into()]);
    args.extend([
        "--user".into(),
        format!("{}:{}", security["runAsUser"], security["runAsGroup"]),
        "--group-add".into(),
        security["fsGroup"].to_string(),
    ]);
    let own = &container["securityContext"];
    if own["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if own["allowPrivilegeEscalation"] == false {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    for cap in own["capabilities"]["drop"].as_array().into_iter().flatten() {
        args.extend(["--cap-drop".into(), cap.as_str().expect("a name").into()]);
    }
    for var in container["env"].as_array().expect("env") {
        let key = var["name"].as_str().expect("a name");
        let value = match env.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => (*v).to_owned(),
            None => var["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{key} comes from the pod; give it a value"))
                .to_owned(),
        };
        args.extend(["--env".into(), format!("{key}={value}")]);
    }
    for (key, value) in env {
        if !container["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|v| v["name"] == *key)
        {
            args.extend(["--env".into(), format!("{key}={value}")]);
        }
    }
    for mount in container["volumeMounts"].as_array().expect("mounts") {
        let (volume, path) = (
            mount["name"].as_str().expect("name"),
            mount["mountPath"].as_str().expect("path"),
        );
        let source = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == volume)
            .expect("every mount has its volume");
        if source.get("emptyDir").is_some() {
            args.extend([
                "--tmpfs".into(),
                format!("{path}:rw,nosuid,nodev,mode=1777"),
            ]);
            continue;
        }
        let host = volumes
            .iter()
            .find(|(v, _)| *v == volume)
            .unwrap_or_else(|| panic!("no contents for volume {volume}"))
            .1;
        let mode = if mount["readOnly"] == true { ":ro" } else { "" };
        args.extend([
            "--volume".into(),
            format!("{}:{path}{mode}", host.display()),
        ]);
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_as_the_deployment_says_non_root_on_a_read_only_root_and_reconciles_a_sops_secret()
 {
    let image = image();
    let kube = cluster().client().await;
    let ns = cluster().namespace(&kube, "image").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();

    // The GitOps repository, served over HTTP as a Git host would.
    let (key, recipient) = identity(root, "web");
    let files: Vec<(&str, String)> = vec![
        (
            "db.sops.yaml",
            sealed_secret(root, &ns, "db", "hunter2-image", &recipient),
        ),
        (
            "config.yaml",
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web, namespace: {ns}}}\ndata: {{greeting: hello}}\n"
            ),
        ),
    ];
    let name = format!("image{}", std::process::id());
    let pipeline = repository(root, &name, &[("web", "", &files)]);
    git(
        root,
        &["clone", "-q", "--bare", "gitops", "served/gitops.git"],
    );
    let server = GitHttpServer::start(&root.join("served"), None);
    let token = "image-test-token";
    let text = std::fs::read_to_string(&pipeline)
        .expect("pipeline")
        .replace(
            &root.join("gitops").display().to_string(),
            &server.url("gitops.git"),
        )
        + "  access:\n    - {groups: [viewers], environments: [\"*\"], permissions: [view]}\n";

    // What the Deployment mounts, as files for its group.
    let deployment = rendered(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base"))
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("deploy/base has a Deployment");
    let group: u32 = deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"]
        .as_u64()
        .and_then(|g| u32::try_from(g).ok())
        .expect("fsGroup");
    // A server certificate for 127.0.0.1 signed by a CA of the test's, as a cert-manager
    // Issuer would make it.
    let certs = root.join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    certificates(&certs);
    let cert = std::fs::read(certs.join("server.pem")).expect("cert");
    let tls_key = std::fs::read(certs.join("server.key")).expect("key");
    let tokens = format!(
        "apiVersion: stagehand.dev/v1alpha1\nkind: Tokens\nidentities:\n  - {{name: ci, groups: [viewers], tokenSha256: [{}]}}\n",
        sha256_hex(token)
    );
    let kubeconfig = std::fs::read(&cluster().kubeconfig).expect("kubeconfig");
    let mounts = root.join("mounts");
    let volumes = [
        (
            "pipeline",
            mounted(
                &mounts.join("pipeline"),
                group,
                &[("pipeline.yaml", text.as_bytes())],
            ),
        ),
        (
            "tls",
            mounted(
                &mounts.join("tls"),
                group,
                &[("tls.crt", &cert), ("tls.key", &tls_key)],
            ),
        ),
        (
            "tokens",
            mounted(
                &mounts.join("tokens"),
                group,
                &[("tokens.yaml", tokens.as_bytes())],
            ),
        ),
        (
            "webhook",
            mounted(
                &mounts.join("webhook"),
                group,
                &[("secret", b"webhook-secret")],
            ),
        ),
        (
            "age-keys",
            mounted(
                &mounts.join("age"),
                group,
                &[("web.agekey", key.as_bytes())],
            ),
        ),
        (
            "kube",
            mounted(&mounts.join("kube"), group, &[("config", &kubeconfig)]),
        ),
        // The claim: a directory of the volume's own, as a provisioner and fsGroup leave it.
        ("state", mounted(&mounts.join("state"), group, &[])),
    ];
    std::fs::set_permissions(
        mounts.join("state"),
        std::fs::Permissions::from_mode(0o2770),
    )
    .expect("chmod");
    let volumes: Vec<(&str, &Path)> = volumes.iter().map(|(v, p)| (*v, p.as_path())).collect();

    // In a pod the service account's token stands where this kubeconfig is; ports are picked
    // free, since the container shares the host's network.
    let mut deployment = deployment;
    let mounts_of = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .expect("mounts");
    mounts_of.push(
        serde_json::json!({"name": "kube", "mountPath": "/etc/stagehand/kube", "readOnly": true}),
    );
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_array_mut()
        .expect("volumes")
        .push(serde_json::json!({"name": "kube", "secret": {"secretName": "kube"}}));
    let container = Container {
        name: format!("stagehand-it-{}", std::process::id()),
    };
    let env = [
        ("STAGEHAND_LISTEN", "0.0.0.0:0"),
        ("STAGEHAND_HTTP_LISTEN", "127.0.0.1:0"),
        ("STAGEHAND_HEALTH_LISTEN", "127.0.0.1:0"),
        ("STAGEHAND_NAMESPACE", ns.as_str()),
        ("KUBECONFIG", "/etc/stagehand/kube/config"),
    ];
    let mut args = run_args(&deployment, &env, &volumes, &container.name);
    args.push(image.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _ = docker(&["rm", "-f", &container.name]);
    docker_ok(&args);

    let grpc = container.port("listening on ");
    let http = container.port("http listening on ");
    let health = container.port("health listening on ");

    // The kubelet's view: gRPC health in plain HTTP/2.
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{health}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the health listener answers");
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The API over TLS with the mounted tokens.
    std::fs::write(root.join("token"), token).expect("write");
    let status = |token: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stagehand"));
        command
            .args(["status", "web", "-o", "json"])
            .args(["--server", &format!("https://127.0.0.1:{grpc}")])
            .arg("--ca-file")
            .arg(certs.join("ca.pem"));
        if token {
            command.arg("--token-file").arg(root.join("token"));
        }
        command.output().expect("the CLI runs")
    };
    let refused = status(false);
    assert_eq!(
        refused.status.code(),
        Some(36),
        "UNAUTHENTICATED without a token: {refused:?}"
    );
    eventually("web succeeds in the container", || async {
        let out = status(true);
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        doc["status"]["reason"] == "succeeded"
    })
    .await;
    assert_eq!(
        password(&kube, &ns, "db").await.as_deref(),
        Some("hunter2-image")
    );

    // /metrics on the HTTP listener.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http)).expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: stagehand\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Non-root, no capabilities, no privilege escalation, read-only root: as Docker set it up
    // and as the service's process sees it.
    let config = docker_ok(&[
        "inspect",
        "-f",
        "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
        &container.name,
    ]);
    assert_eq!(config.trim(), "65532:65532 true");
    let default_user = docker_ok(&["image", "inspect", "-f", "{{.Config.User}}", image]);
    assert_eq!(
        default_user.trim(),
        "65532:65532",
        "the image itself runs as non-root"
    );
    let out = container.exec(&["cat", "/proc/1/status"]);
    let proc_status = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no {name} in {proc_status}"))
    };
    assert_eq!(field("Name"), "stagehand");
    assert_eq!(field("Uid"), "65532 65532 65532 65532");
    assert_eq!(field("Gid"), "65532 65532 65532 65532");
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    let write = container.exec(&["touch", "/probe"]);
    assert!(!write.status.success(), "wrote to /");
    assert!(
        String::from_utf8_lossy(&write.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&write.stderr)
    );
    // The state directory the service made on the volume is its own and private.
    let state = container.exec(&["stat", "-c", "%u %a", "/var/lib/stagehand/state"]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "65532 700");
}
