"""A generic gRPC client's view of a server: the services reflection lists, and the health
service's answer. Prints one JSON object. Usage: grpc_probe.py HOST:PORT [SERVICE]"""
import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

target = sys.argv[1]
service = sys.argv[2] if len(sys.argv) > 2 else ""
with grpc.insecure_channel(target) as channel:
    grpc.channel_ready_future(channel).result(timeout=10)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    services = sorted(s.name for a in answers for s in a.list_services_response.service)
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    print(json.dumps({
        "services": services,
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(status.status),
    }))
