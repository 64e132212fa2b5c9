#!/usr/bin/env python3
"""Packs a function unikernel into an OCI image, written as an OCI image-layout
tarball that `ctr image import` (or any OCI tool) loads without a registry.

    resources/function-image.py echo echo.tar [--name ember.dev/fn/echo:latest]
        [--kernel PATH] [--vcpus N] [--memory-mib N] [--port N]

The first argument names the `unikernel-<name>` artifact, found through
resources/guests.sh unless --kernel gives the file. The image follows the
convention of `containerd-shim-ember-v2` (see README.md, "Function images"):
its root filesystem holds the unikernel at /function, the entrypoint names it,
and EMBER_VCPUS, EMBER_MEMORY_MIB and EMBER_PORT in its environment say how to
run it. The same settings are repeated as `io.ember.*` labels for people and
tools that inspect the image. The output is byte-for-byte reproducible.
"""

import argparse
import hashlib
import io
import json
import pathlib
import subprocess
import sys
import tarfile

HERE = pathlib.Path(__file__).resolve().parent
KERNEL_IN_IMAGE = "function"


def artifact(name):
    out = subprocess.run(
        ["bash", str(HERE / "guests.sh")], check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        key, _, path = line.partition("=")
        if key == f"unikernel-{name}":
            return pathlib.Path(path)
    sys.exit(f"function-image: no artifact unikernel-{name} in resources/guests.sh's output")


def tar_bytes(members):
    """A tar archive of (name, bytes, mode) members with fixed owners and times."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def blob(blobs, media_type, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def to_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("function", help="the artifact unikernel-<function>")
    parser.add_argument("output", help="the OCI image-layout tarball to write")
    parser.add_argument("--name", help="image reference (default ember.dev/fn/<function>:latest)")
    parser.add_argument("--kernel", type=pathlib.Path, help="the unikernel, instead of the artifact")
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--memory-mib", type=int, default=64)
    parser.add_argument("--port", type=int, default=1024)
    args = parser.parse_args()

    kernel = (args.kernel or artifact(args.function)).read_bytes()
    name = args.name or f"ember.dev/fn/{args.function}:latest"
    settings = {"vcpus": args.vcpus, "memory-mib": args.memory_mib, "port": args.port}
    blobs = {}
    layer_data = tar_bytes([(KERNEL_IN_IMAGE, kernel, 0o755)])
    layer = blob(blobs, "application/vnd.oci.image.layer.v1.tar", layer_data)
    config = blob(
        blobs,
        "application/vnd.oci.image.config.v1+json",
        to_json(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Entrypoint": [f"/{KERNEL_IN_IMAGE}"],
                    "Env": [
                        f"EMBER_VCPUS={args.vcpus}",
                        f"EMBER_MEMORY_MIB={args.memory_mib}",
                        f"EMBER_PORT={args.port}",
                    ],
                    "Labels": {f"io.ember.{k}": str(v) for k, v in settings.items()}
                    | {"io.ember.function": args.function},
                },
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ),
    )
    manifest = blob(
        blobs,
        "application/vnd.oci.image.manifest.v1+json",
        to_json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config,
                "layers": [layer],
            }
        ),
    )
    manifest["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
    }
    index = {"schemaVersion": 2, "manifests": [manifest]}
    members = [("oci-layout", to_json({"imageLayoutVersion": "1.0.0"}), 0o644)]
    members += [("index.json", to_json(index), 0o644)]
    members += [
        (f"blobs/sha256/{digest.split(':')[1]}", data, 0o644)
        for digest, data in sorted(blobs.items())
    ]
    pathlib.Path(args.output).write_bytes(tar_bytes(members))
    print(f"{name} {manifest['digest']}")


if __name__ == "__main__":
    main()
