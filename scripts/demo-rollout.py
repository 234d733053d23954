"""Stands in for the kube-controller-manager and kubelet that the demo's local kube-apiserver
lacks: every Deployment whose status is behind its spec is reported rolled out, so that health
checks, promotions and their verification can complete. Demo only; runs until killed.

Usage: demo-rollout.py KUBECTL
"""
import json
import subprocess
import sys
import time

kubectl = sys.argv[1]
while True:
    listed = subprocess.run(
        [kubectl, "get", "deployments", "-A", "-o", "json"], capture_output=True, text=True
    )
    if listed.returncode == 0:
        for d in json.loads(listed.stdout)["items"]:
            generation = d["metadata"].get("generation", 1)
            if d.get("status", {}).get("observedGeneration") == generation:
                continue
            n = d["spec"].get("replicas", 1)
            status = {
                "observedGeneration": generation,
                "replicas": n,
                "updatedReplicas": n,
                "readyReplicas": n,
                "availableReplicas": n,
            }
            subprocess.run(
                [kubectl, "patch", "deployment", d["metadata"]["name"],
                 "-n", d["metadata"]["namespace"], "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": status})],
                capture_output=True,
            )
    time.sleep(0.5)
