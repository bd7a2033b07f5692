#!/usr/bin/env python3
"""A CI job's build through kilnd, with nothing but the .proto and grpcio.

    pip install grpcio grpcio-tools
    python3 build.py --addr unix:///run/kiln/kilnd.sock --tag app:ci CONTEXT

Generates the client from proto/kiln/control/v1/control.proto at start, sends
the Dockerfile, the build settings in BuildSpec's typed fields (pull policy,
labels, registry caches, insecure registries, push) and the context (a tar
stream, without what .dockerignore's plain patterns exclude), prints kilnd's
progress and notices as plain lines, and exits 0 with the image ID on
stdout, or 1 with kilnd's error.
"""

import argparse
import fnmatch
import importlib
import io
import os
import sys
import tarfile
import tempfile

from grpc_tools import protoc
import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")
CHUNK = 1 << 20


def stubs():
    """control_pb2 and control_pb2_grpc, generated into a temporary dir."""
    out = tempfile.mkdtemp(prefix="kiln-stubs-")
    proto = os.path.join("kiln", "control", "v1", "control.proto")
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}",
                        f"--grpc_python_out={out}", proto])
    if code != 0:
        sys.exit(f"generating the client from {proto} failed")
    sys.path.insert(0, out)
    pb2 = importlib.import_module("kiln.control.v1.control_pb2")
    grpc_pb2 = importlib.import_module("kiln.control.v1.control_pb2_grpc")
    return pb2, grpc_pb2


def ignored(context):
    """Plain .dockerignore patterns (no `!` re-includes): enough for CI."""
    path = os.path.join(context, ".dockerignore")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [p.strip().strip("/") for p in f
                if p.strip() and not p.startswith("#") and not p.startswith("!")]


def context_tar(context):
    patterns = ignored(context)

    def keep(info):
        name = info.name.lstrip("./")
        if name and any(fnmatch.fnmatch(name, p) or name.startswith(p + "/") for p in patterns):
            return None
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(context)):
            tar.add(os.path.join(context, entry), arcname=entry, filter=keep)
    return buf.getvalue()


def requests(pb2, args):
    with open(os.path.join(args.context, args.file)) as f:
        dockerfile = f.read()
    pull = {"missing": pb2.PULL_POLICY_MISSING, "always": pb2.PULL_POLICY_ALWAYS,
            "never": pb2.PULL_POLICY_NEVER}[args.pull]
    spec = pb2.BuildSpec(
        dockerfile=dockerfile, tags=args.tag,
        build_args=dict(a.split("=", 1) for a in args.build_arg),
        dockerignore=ignored(args.context),
        pull_policy=pull,
        labels=dict((l.split("=", 1) + [""])[:2] for l in args.label),
        cache_imports=[pb2.CacheRef(ref=r) for r in args.cache_from],
        cache_exports=[pb2.CacheRef(ref=r) for r in args.cache_to],
        registry=pb2.RegistryOptions(insecure=args.insecure_registry),
        image_output=pb2.ImageOutput(push=args.push))
    yield pb2.BuildInput(spec=spec)
    data = context_tar(args.context)
    for start in range(0, max(len(data), 1), CHUNK):
        chunk = data[start:start + CHUNK]
        yield pb2.BuildInput(context=pb2.ContextChunk(data=chunk, eof=start + CHUNK >= len(data)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default=os.environ.get("KILN_ADDR", "unix:///run/kiln/kilnd.sock"))
    parser.add_argument("--tag", "-t", action="append", default=[])
    parser.add_argument("--build-arg", action="append", default=[])
    parser.add_argument("--file", "-f", default="Dockerfile")
    parser.add_argument("--pull", choices=["missing", "always", "never"], default="missing")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--cache-from", action="append", default=[], help="a registry cache ref")
    parser.add_argument("--cache-to", action="append", default=[], help="a registry cache ref")
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        help="HOST[:PORT]: plain HTTP to it (kilnd must be started with --insecure-registry HOST)",
    )
    parser.add_argument("--push", action="store_true", help="push every tag after the build")
    parser.add_argument("context")
    args = parser.parse_args()

    pb2, grpc_pb2 = stubs()
    target = args.addr.replace("tcp://", "", 1)
    # For unix:// targets grpc would send the socket path as :authority,
    # which HTTP/2 servers such as kilnd's refuse.
    options = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(target, options=options) as channel:
        control = grpc_pb2.ControlStub(channel)
        kinds = pb2.Event.Kind
        try:
            for out in control.Build(requests(pb2, args)):
                if out.HasField("result"):
                    print(out.result.config)
                    for tag in out.result.tags:
                        print(f"naming to {tag} done", file=sys.stderr)
                    return 0
                if out.HasField("notice"):
                    n = out.notice
                    prefix = "warning: " if n.level == pb2.Notice.LEVEL_WARNING else ""
                    print(f"{prefix}{n.text}", file=sys.stderr)
                    continue
                if not out.HasField("event"):
                    continue
                e = out.event
                if e.kind == kinds.KIND_STARTED:
                    print(f"#{e.vertex} {e.text}", file=sys.stderr)
                elif e.kind == kinds.KIND_CACHED:
                    print(f"#{e.vertex} CACHED", file=sys.stderr)
                elif e.kind == kinds.KIND_LOG:
                    print(f"#{e.vertex} {e.text}", file=sys.stderr)
                elif e.kind == kinds.KIND_DONE:
                    print(f"#{e.vertex} DONE {e.seconds:.1f}s", file=sys.stderr)
                elif e.kind == kinds.KIND_FAILED:
                    print(f"#{e.vertex} ERROR: {e.text}", file=sys.stderr)
                elif e.kind == kinds.KIND_WARNING:
                    w = e.warning
                    print(f"WARNING: {w.rule}: {w.message} (line {w.start_line})", file=sys.stderr)
        except grpc.RpcError as err:
            print(f"error: {err.details()}", file=sys.stderr)
            return 1
    print("error: kilnd ended the build without a result", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
