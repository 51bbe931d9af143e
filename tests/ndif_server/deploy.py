"""Deploy local model directories on the test stack's NDIF controller (run in the server venv).

``ndif deploy`` names a model through the Hugging Face Hub, which knows no local path (and is
offline here). So the key is minted the way the nnsight client mints it for a local
directory (the path is its own repo id, no revision, task text-generation) and passed in,
with the size on disk, so the controller asks the Hub nothing.
Usage: python deploy.py DIR [DIR ...]; exit 0 when every deployment is READY.
"""
import json
import os
import sys

from ndif.cli.lib.deploy import deploy


def spec(path: str) -> dict:
    path = os.path.abspath(path)
    key = "nnsight.modeling.transformers.TransformersModel:" + json.dumps(
        {"repo_id": path, "revision": None, "task": "text-generation"})
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return {"checkpoint": path, "model_key": key, "dtype": "float32", "size_bytes": size,
            "padding_bias": 16 * 1024 * 1024, "actor_class": "cpu_actor.CPUModelActor", "pinned": True}


if __name__ == "__main__":
    result = deploy([spec(p) for p in sys.argv[1:]], on_message=print)
    states = [d["status"] for d in result["deployments"]]
    print("deployments:", states)
    sys.exit(0 if states and all(s == "READY" for s in states) else 1)
