"""A client that knows nothing of Stagehand's protos: it learns the API by gRPC server
reflection, as grpcurl or a release tool would, or parses /metrics with the Prometheus client
library's own parser. Prints one JSON document.

Usage:
  generic_client.py HOST:PORT call METHOD JSON           one unary call
  generic_client.py HOST:PORT stream METHOD JSON COUNT   the first COUNT messages of a stream
  generic_client.py URL metrics                          the metric families /metrics serves

A token in the STAGEHAND_TOKEN variable is sent as `authorization: Bearer TOKEN`.
"""
import json
import os
import sys
import urllib.request


def rpc(target, method, request, count=None):
    import grpc
    from google.protobuf import json_format, message_factory
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    service_name, method_name = method.rsplit("/", 1)
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        found = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_type = message_factory.GetMessageClass(found.input_type)
        response_type = message_factory.GetMessageClass(found.output_type)
        message = json_format.Parse(request, request_type())
        path = f"/{service_name}/{method_name}"
        to_dict = lambda m: json_format.MessageToDict(m)
        token = os.environ.get("STAGEHAND_TOKEN")
        metadata = [("authorization", f"Bearer {token}")] if token else None
        if count is None:
            call = channel.unary_unary(
                path,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            return to_dict(call(message, timeout=30, metadata=metadata))
        call = channel.unary_stream(
            path,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        stream = call(message, timeout=60, metadata=metadata)
        out = []
        for item in stream:
            out.append(to_dict(item))
            if len(out) >= count:
                stream.cancel()
                break
        return out


def metrics(url):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = [
            {"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples
        ]
    return families


target, verb = sys.argv[1], sys.argv[2]
if verb == "call":
    result = rpc(target, sys.argv[3], sys.argv[4])
elif verb == "stream":
    result = rpc(target, sys.argv[3], sys.argv[4], int(sys.argv[5]))
elif verb == "metrics":
    result = metrics(target)
else:
    sys.exit(f"unknown verb {verb!r}")
print(json.dumps(result))
