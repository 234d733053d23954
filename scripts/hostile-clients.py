"""Hostile clients against a real `stagehand serve` on loopback, printing the server's resident
memory (VmRSS) and the size of /metrics after each round, to show both stay flat. Each round:
2,000 calls to random gRPC paths, 500 calls with bad tokens, 300 watch streams, 100 slow
clients (half an HTTP/2 preface, half an HTTP/1 request) and 200 connections from one address,
held past the header timeout. Bounded in count and time; it stops the server at the end.

Usage (the Python of scripts/setup.sh has grpcio):
  cargo build --bin stagehand
  $STAGEHAND_PYTHON scripts/hostile-clients.py target/debug/stagehand ROUNDS"""
import hashlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import grpc

binary, rounds = sys.argv[1], int(sys.argv[2])
VERA = "vera-token-hostile"
h = lambda t: hashlib.sha256(t.encode()).hexdigest()
d = tempfile.mkdtemp()
open(f"{d}/pipeline.yaml", "w").write("""apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {name: shop}
spec:
  environments:
    - name: dev
      source: {overlay: environments/dev}
    - name: staging
      promotesFrom: dev
      source: {overlay: environments/staging}
  access:
    - {groups: [viewers], environments: ["*"], permissions: [view]}
""")
open(f"{d}/tokens.yaml", "w").write(f"""apiVersion: stagehand.dev/v1alpha1
kind: Tokens
identities:
  - {{name: vera, email: vera@example.test, groups: [viewers], tokenSha256: [{h(VERA)}]}}
""")
server = subprocess.Popen(
    [binary, "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
     "--pipeline", f"{d}/pipeline.yaml", "--state-dir", f"{d}/state",
     "--tokens-file", f"{d}/tokens.yaml", "--log-format", "json"],
    stdout=subprocess.PIPE, stderr=open(f"{d}/server.log", "w"), text=True)
grpc_addr = http_addr = None
while grpc_addr is None or http_addr is None:
    line = server.stdout.readline().strip()
    if line.startswith("http listening on "):
        http_addr = line.split()[-1]
    elif line.startswith("listening on "):
        grpc_addr = line.split()[-1]


def rss():
    for line in open(f"/proc/{server.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def hostport(a):
    host, port = a.rsplit(":", 1)
    return host, int(port)


def metrics_size():
    s = socket.create_connection(hostport(http_addr))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return len(data)


ident = lambda b: b
token = [("authorization", f"Bearer {VERA}")]


def one_round(r):
    t0 = time.time()
    with grpc.insecure_channel(grpc_addr) as channel:
        for i in range(2000):
            call = channel.unary_unary(f"/r{r}x{i}.Random/M{i}", request_serializer=ident,
                                       response_deserializer=ident)
            try:
                call(b"", metadata=token, timeout=5)
            except grpc.RpcError:
                pass
        for i in range(500):
            call = channel.unary_unary("/stagehand.v1.EnvironmentService/GetEnvironment",
                                       request_serializer=ident, response_deserializer=ident)
            try:
                call(b"\x0a\x03dev", metadata=[("authorization", f"Bearer bad-{i}")], timeout=5)
            except grpc.RpcError:
                pass
        print(f"  calls done at {time.time() - t0:.0f} s", flush=True)
        watches = []
        for i in range(300):
            call = channel.unary_stream("/stagehand.v1.EnvironmentService/WatchEnvironments",
                                        request_serializer=ident, response_deserializer=ident)
            stream = call(b"", metadata=token, timeout=60)
            try:
                next(stream)
                watches.append(stream)
            except grpc.RpcError:
                pass
        opened = len(watches)
        for stream in watches:
            stream.cancel()
    print(f"  watches done at {time.time() - t0:.0f} s", flush=True)
    slow = []
    for i in range(50):
        s = socket.create_connection(hostport(grpc_addr))
        s.sendall(b"PRI * HTTP/2.0\r\n")
        slow.append(s)
        s = socket.create_connection(hostport(http_addr))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
    flood = []
    for i in range(200):
        try:
            flood.append(socket.create_connection(hostport(grpc_addr)))
        except OSError:
            pass
    time.sleep(12)  # past the header timeout: the server closed them
    for s in slow + flood:
        s.close()
    time.sleep(1)
    return opened


print(f"start: RSS {rss()} KiB, /metrics {metrics_size()} bytes")
for r in range(rounds):
    opened = one_round(r)
    print(f"round {r + 1}: 2000 random paths, 500 bad tokens, 300 watches ({opened} opened), "
          f"100 slow clients, 200 flood connections: RSS {rss()} KiB, /metrics {metrics_size()} bytes",
          flush=True)
server.kill()
server.wait()
lines = open(f"{d}/server.log").read().count("refused")
print(f"log lines mentioning a refusal: {lines}")
shutil.rmtree(d)
