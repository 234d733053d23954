# Stagehand's image: `stagehand serve` on a small Debian with git, ssh and CA certificates,
# as a non-root user, with nothing that needs a shell at run time.
#
#   docker build -t stagehand .                      # builds the binary here (the default target)
#   docker build --target prebuilt -f Dockerfile \
#     --build-arg RUNTIME_BASE=stagehand-base:bookworm DIR   # DIR holds a built `stagehand`
#
# The stages are in this order so that `--target prebuilt` never builds the Rust stage, even with
# the classic builder, which builds every stage up to its target. See docs/deploy.md.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${RUNTIME_BASE} AS runtime
# git fetches and pushes (over ssh too); CA certificates verify HTTPS remotes and apiservers.
# A base that has them already (scripts/image.sh makes one with debootstrap) needs no network.
RUN if ! command -v git >/dev/null || ! command -v ssh >/dev/null \
        || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           git openssh-client ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    # A fixed numeric user, so that runAsNonRoot can check it and volumes can be given to it.
    && echo 'stagehand:x:65532:65532:Stagehand:/var/lib/stagehand:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'stagehand:x:65532:' >> /etc/group \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/stagehand \
    # No set-user-ID or set-group-ID programs: nothing in the container can gain privileges.
    && find / -xdev -type f -perm /6000 -exec chmod ug-s {} +
# The state directory is created by the service inside whatever is mounted here (a volume's
# root may belong to root; the directory the service makes is its own, mode 0700).
ENV STAGEHAND_STATE_DIR=/var/lib/stagehand/state \
    STAGEHAND_PIPELINE=/etc/stagehand/pipeline/pipeline.yaml \
    STAGEHAND_LOG_FORMAT=json
WORKDIR /var/lib/stagehand
USER 65532:65532
EXPOSE 7420 7421 7422
ENTRYPOINT ["/usr/local/bin/stagehand", "serve"]
LABEL org.opencontainers.image.title="stagehand" \
      org.opencontainers.image.description="GitOps environment promotion: render, decrypt, reconcile and promote" \
      org.opencontainers.image.licenses="Apache-2.0"

# The runtime with a binary built elsewhere (`cargo build --release`), taken from the build
# context's root.
FROM runtime AS prebuilt
COPY stagehand /usr/local/bin/stagehand

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin stagehand \
    && cp target/release/stagehand /stagehand

# The default target: the runtime with the binary built in the stage above.
FROM runtime
COPY --from=build /stagehand /usr/local/bin/stagehand
