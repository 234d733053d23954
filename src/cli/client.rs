//! Talking to a running `stagehand serve`: where it is, the bearer token every call carries,
//! TLS (and mTLS) for `https://` servers, and how a failed call reads and exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Where the server is and how to prove who we are to it.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// URL of a running `stagehand serve`; `https://` uses TLS. A bearer token is only sent
    /// over `https://` or to a loopback address (127.0.0.0/8, ::1, localhost): over plain
    /// `http://` to any other host, anyone on the network path could read it, so the CLI refuses
    /// (exit code 2, as for other usage errors).
    #[arg(
        long,
        env = "STAGEHAND_SERVER",
        default_value = "http://127.0.0.1:7420"
    )]
    server: String,
    /// A file holding the bearer token sent with every call (surrounding whitespace is
    /// ignored); without it, the token in the STAGEHAND_TOKEN variable, if any.
    #[arg(long, env = "STAGEHAND_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate; without it the system's roots.
    #[arg(long, env = "STAGEHAND_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// PEM certificate presented to a server that requires client certificates (mTLS).
    #[arg(long, env = "STAGEHAND_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, env = "STAGEHAND_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

/// The variable holding a bearer token when no `--token-file` is given. Not a flag: a token on
/// the command line would show in `ps` and shell history.
const TOKEN_VARIABLE: &str = "STAGEHAND_TOKEN";

/// A connection every generated client can be built on (`EnvironmentServiceClient::new`).
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bearer token from {origin} is empty")]
    EmptyToken { origin: String },
    #[error("the bearer token from {origin} holds characters an HTTP header cannot carry")]
    InvalidToken { origin: String },
    #[error("--server {server:?} is not a URL like http://127.0.0.1:7420")]
    InvalidUrl {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("--ca-file, --client-cert and --client-key need an https:// --server, not {server}")]
    TlsWithoutHttps { server: String },
    #[error(
        "refusing to send the bearer token from {origin} over plain http:// to {server}, which is \
         not a loopback address: anyone on the network path could read it; use an https:// \
         --server (with --ca-file for a private CA)"
    )]
    PlaintextToken { server: String, origin: String },
    #[error("cannot set up TLS for {server}")]
    Tls {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot reach stagehand at {server}")]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl Error {
    /// Whether the command line itself is wrong (exit code 2, as clap's own usage errors), rather
    /// than a file it names or the server it reaches.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::InvalidUrl { .. } | Self::TlsWithoutHttps { .. } | Self::PlaintextToken { .. }
        )
    }
}

/// Adds `authorization: Bearer …` to every call when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects to the server (a TLS handshake included), ready for any service's client.
pub async fn connect(args: &ServerArgs) -> Result<Channel, Error> {
    let (bearer, origin) = bearer(args)?;
    let server = args.server.clone();
    let mut endpoint =
        Endpoint::from_shared(server.clone()).map_err(|source| Error::InvalidUrl {
            server: server.clone(),
            source,
        })?;
    let https = server.starts_with("https://");
    if let Some(origin) = origin.filter(|_| !https && !is_loopback(endpoint.uri())) {
        return Err(Error::PlaintextToken { server, origin });
    }
    if https {
        endpoint = endpoint
            .tls_config(tls(args)?)
            .map_err(|source| Error::Tls {
                server: server.clone(),
                source,
            })?;
    } else if args.ca_file.is_some() || args.client_cert.is_some() {
        return Err(Error::TlsWithoutHttps { server });
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| Error::Connect { server, source })?;
    Ok(InterceptedService::new(channel, bearer))
}

fn tls(args: &ServerArgs) -> Result<ClientTlsConfig, Error> {
    let mut config = ClientTlsConfig::new();
    config = match &args.ca_file {
        Some(file) => config.ca_certificate(Certificate::from_pem(read("CA file", file)?)),
        None => config.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        config = config.identity(Identity::from_pem(
            read("client certificate", cert)?,
            read("client key", key)?,
        ));
    }
    Ok(config)
}

/// Whether `uri` names this host: a loopback address, or `localhost`, which resolves to one
/// (RFC 6761).
fn is_loopback(uri: &tonic::transport::Uri) -> bool {
    let host = uri.host().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The interceptor, and where its token came from (none without a token).
fn bearer(args: &ServerArgs) -> Result<(Bearer, Option<String>), Error> {
    let (token, origin) = match &args.token_file {
        Some(file) => (
            String::from_utf8_lossy(&read("token file", file)?).into_owned(),
            file.display().to_string(),
        ),
        None => match std::env::var(TOKEN_VARIABLE) {
            Ok(token) => (token, TOKEN_VARIABLE.to_owned()),
            Err(_) => return Ok((Bearer(None), None)),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::EmptyToken { origin });
    }
    let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| Error::InvalidToken {
            origin: origin.clone(),
        })?;
    // Keeps the token out of any debug output of the request.
    value.set_sensitive(true);
    Ok((Bearer(Some(value)), Some(origin)))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A call the server answered with an error status, or that failed on the way (then the
/// connection's own error is the cause).
#[derive(Debug, thiserror::Error)]
#[error("{rpc}: {code_name}: {message}{hint}", code_name = code_name(self.code), hint = hint(self.code, self.cause.is_some()))]
pub struct RpcError {
    rpc: &'static str,
    code: tonic::Code,
    message: String,
    #[source]
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl RpcError {
    /// The process's exit code for this status; see [`exit_code`].
    pub fn exit_code(&self) -> ExitCode {
        exit_code(self.code)
    }
}

/// Turns a failed call into an error naming the call, the status code and the server's message.
pub fn rpc_error(rpc: &'static str, status: tonic::Status) -> RpcError {
    // A status tonic made up from a broken connection carries what broke (a TLS alert, a
    // reset); one the server sent has no source.
    let cause = std::error::Error::source(&status).map(|source| {
        let chain = stagehand::error_chain::ErrorChain(source).to_string();
        Box::<dyn std::error::Error + Send + Sync>::from(chain)
    });
    RpcError {
        rpc,
        code: status.code(),
        message: status.message().to_owned(),
        cause,
    }
}

/// Exit code 20 + the gRPC status code (NOT_FOUND 5 → 25, UNAUTHENTICATED 16 → 36), clear of
/// clap's 2 and sops's 51 and 128; a server that cannot be reached exits as UNAVAILABLE (34).
pub fn exit_code(code: tonic::Code) -> ExitCode {
    ExitCode::from(20 + code as u8)
}

/// The exit code of [`Error::Connect`]: the server is unavailable.
pub fn unreachable_exit_code() -> ExitCode {
    exit_code(tonic::Code::Unavailable)
}

/// The name gRPC documents for the code (`NOT_FOUND`), which is what people search for.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What to do next, for the codes where the server's message cannot know it.
fn hint(code: tonic::Code, broken_connection: bool) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => {
            " (give a token with --token-file or the STAGEHAND_TOKEN variable)"
        }
        tonic::Code::Unimplemented => " (the server is older than this client)",
        // With TLS 1.3 a server that wants a client certificate closes the connection after
        // the handshake, without a status; this is all the client sees of it.
        _ if broken_connection => {
            " (the server closed the connection; one that requires client certificates does so \
             without --client-cert and --client-key)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_are_the_addresses_of_this_host_and_localhost() {
        for (url, loopback) in [
            ("http://127.0.0.1:7420", true),
            ("http://127.8.9.10:7420", true),
            ("http://[::1]:7420", true),
            ("http://[::ffff:127.0.0.1]:7420", true),
            ("http://LocalHost:7420", true),
            ("http://10.0.0.1:7420", false),
            ("http://0.0.0.0:7420", false),
            ("http://[::]:7420", false),
            ("http://stagehand.example.com:7420", false),
            ("http://localhost.example.com:7420", false),
            ("http://127.0.0.1.example.com:7420", false),
        ] {
            let uri: tonic::transport::Uri = url.parse().expect("a URI");
            assert_eq!(is_loopback(&uri), loopback, "{url}");
        }
    }

    #[test]
    fn a_status_reads_as_call_code_and_message_and_exits_20_plus_its_code() {
        let error = rpc_error(
            "GetEnvironment",
            tonic::Status::not_found("no environment \"qa\" in pipeline shop"),
        );
        assert_eq!(
            error.to_string(),
            "GetEnvironment: NOT_FOUND: no environment \"qa\" in pipeline shop"
        );
        assert_eq!(error.exit_code(), ExitCode::from(25));
        let error = rpc_error(
            "SyncEnvironment",
            tonic::Status::unauthenticated("no token"),
        );
        assert_eq!(
            error.to_string(),
            "SyncEnvironment: UNAUTHENTICATED: no token \
             (give a token with --token-file or the STAGEHAND_TOKEN variable)"
        );
        assert_eq!(error.exit_code(), ExitCode::from(36));
    }
}
