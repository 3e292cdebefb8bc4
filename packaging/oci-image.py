#!/usr/bin/env python3
"""Builds a container image archive from release binaries, with no engine.

scripts/release runs it (ADR 0036) for tetherd and tether-agent:

  oci-image.py --image tetherd --binaries DIR --version 0.1.0 --arch amd64 \\
      --revision COMMIT --out dist/tetherd-0.1.0-amd64.image.tar

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/)
that also carries Docker's manifest.json, so one file loads everywhere:
`docker load -i` (manifest.json), `podman load -i`, `skopeo copy
oci-archive:FILE ...` or `docker-archive:FILE`, `ctr -n k8s.io images import`
(index.json's io.containerd.image.name). One uncompressed layer, as `docker
save` writes them (registries get it compressed by whoever pushes it).

The images are what the Containerfiles build on distroless/static:
the same paths, user, entrypoint, ports and volumes
(images::the_image_archives_load_run_offline_and_match_their_containerfiles
compares them). Nothing else is in them: the binaries are static and
verify TLS with the roots tether configures, never the system's, so there
is no CA bundle, no libc, no shell.

Reproducible: every mtime is SOURCE_DATE_EPOCH (0 if unset), entries are
sorted, owners are numeric and names empty; the same binaries give the
same bytes. Python 3.11's standard library only.
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import sys
import tarfile

NONROOT = 65532
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# distroless's users and groups: the images run as nonroot (65532).
PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
# A static glibc build reads it to resolve names (files, then DNS); musl
# ignores it.
NSSWITCH = "hosts: files dns\n"

# What each image holds and how it runs: the final stage of its
# Containerfile, field by field.
IMAGES = {
    "tetherd": {
        "title": "tetherd",
        "description": "tether's controller: devices' MQTT endpoint, the HTTPS API and web console",
        "binaries": {"tetherd": "/usr/bin/tetherd"},
        # The config is mounted here (the Containerfile's header).
        "dirs": {"/etc/tether": (0, 0o755), "/var/lib/tether": (NONROOT, 0o700)},
        "entrypoint": [
            "/usr/bin/tetherd",
            "--config",
            "/etc/tether/tetherd.toml",
            "--data-dir",
            "/var/lib/tether",
        ],
        "env": [],
        "ports": ["8443/tcp", "8883/tcp"],
        "volumes": ["/var/lib/tether"],
    },
    "tether-agent": {
        "title": "tether-agent",
        "description": "tether's device agent, as the Kubernetes join manifest runs it",
        "binaries": {
            "tether-agent": "/usr/local/bin/tether-agent",
            "tether-agent-restore": "/usr/local/bin/tether-agent-restore",
            "tether-agent-render": "/usr/local/bin/tether-agent-render",
            "tether-agent-shell": "/usr/local/bin/tether-agent-shell",
        },
        "dirs": {"/var/lib/tether-agent": (NONROOT, 0o700)},
        "entrypoint": ["/usr/local/bin/tether-agent"],
        "env": ["TETHER_AGENT_STATE_DIR=/var/lib/tether-agent"],
        "ports": [],
        "volumes": [],
    },
}


class Failure(Exception):
    pass


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def add(archive, name, mtime, data=None, mode=0o644, uid=0, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = uid
    info.uname = info.gname = ""
    info.mtime = mtime
    if data is None:
        archive.addfile(info)
    else:
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def dynamic(data):
    """Whether an ELF file names a program interpreter (is not static)."""
    # Shorter than an ELF64 header: not an ELF file the image could run.
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    order = "little" if data[5] == 1 else "big"

    def number(offset, size):
        return int.from_bytes(data[offset : offset + size], order)

    table, entry_size, count = number(32, 8), number(54, 2), number(56, 2)
    return any(number(table + i * entry_size, 4) == 3 for i in range(count))  # PT_INTERP


def layer(spec, binaries, extra, mtime):
    """The root file system: one uncompressed tar, parents before children."""
    files = {}
    for name, path in spec["binaries"].items():
        source = os.path.join(binaries, name)
        try:
            with open(source, "rb") as f:
                files[path] = (f.read(), 0o755, 0)
        except OSError as e:
            raise Failure(f"failed to read the binary {source} for {spec['title']}'s image: {e.strerror}")
        # Tests package debug builds; a release's binaries are static.
        if dynamic(files[path][0]):
            print(
                f"warning: {source} is dynamically linked: the image has no C library, "
                "it starts only with one mounted in",
                file=sys.stderr,
            )
    for path, source in extra.items():
        try:
            with open(source, "rb") as f:
                files[path] = (f.read(), 0o755, 0)
        except OSError as e:
            raise Failure(f"failed to read {source} (for {path}): {e.strerror}")
    files["/etc/passwd"] = (PASSWD.encode(), 0o644, 0)
    files["/etc/group"] = (GROUP.encode(), 0o644, 0)
    files["/etc/nsswitch.conf"] = (NSSWITCH.encode(), 0o644, 0)
    dirs = {"/tmp": (0, 0o1777), "/home/nonroot": (NONROOT, 0o700)}
    dirs.update(spec["dirs"])
    for path in list(files) + list(dirs):
        parent = os.path.dirname(path)
        while parent != "/":
            dirs.setdefault(parent, (0, 0o755))
            parent = os.path.dirname(parent)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(set(files) | set(dirs)):
            name = path.lstrip("/")
            if path in dirs:
                uid, mode = dirs[path]
                add(archive, name + "/", mtime, mode=mode, uid=uid, kind=tarfile.DIRTYPE)
            else:
                data, mode, uid = files[path]
                add(archive, name, mtime, data, mode=mode, uid=uid)
    return buffer.getvalue()


def blob(digest):
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def rfc3339(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(args):
    spec = IMAGES[args.image]
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or "0"
    if not (epoch.isascii() and epoch.isdigit()):
        raise Failure(f"SOURCE_DATE_EPOCH is {epoch!r}: it must be seconds since 1970, a non-negative integer")
    mtime = int(epoch)
    extra = {}
    if args.kubectl:
        extra["/usr/local/bin/kubectl"] = args.kubectl
    rootfs = layer(spec, args.binaries, extra, mtime)
    layer_digest = sha256(rootfs)
    config = {
        "architecture": args.arch,
        "os": "linux",
        "created": rfc3339(mtime),
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Env": [f"PATH={PATH}"] + spec["env"],
            "Entrypoint": spec["entrypoint"],
            "WorkingDir": "/home/nonroot",
            "Labels": {
                "org.opencontainers.image.title": spec["title"],
                "org.opencontainers.image.description": spec["description"],
                "org.opencontainers.image.version": args.version,
                "org.opencontainers.image.revision": args.revision,
                "org.opencontainers.image.source": args.source,
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": rfc3339(mtime), "created_by": "packaging/oci-image.py"}],
    }
    if spec["ports"]:
        config["config"]["ExposedPorts"] = {port: {} for port in spec["ports"]}
    if spec["volumes"]:
        config["config"]["Volumes"] = {volume: {} for volume in spec["volumes"]}
    config_bytes = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(rootfs),
            }
        ],
    }
    manifest_bytes = canonical(manifest)
    # The full reference everywhere: containerd (k3s) and podman name the
    # image by it, and it is what the join manifest's default
    # `tether-agent:VERSION` normalises to.
    reference = f"docker.io/library/{args.image}:{args.version}"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": args.arch, "os": "linux"},
                "annotations": {
                    "org.opencontainers.image.ref.name": reference,
                    "io.containerd.image.name": reference,
                },
            }
        ],
    }
    docker_manifest = [
        {
            "Config": blob(sha256(config_bytes)),
            "RepoTags": [f"{args.image}:{args.version}"],
            "Layers": [blob(layer_digest)],
        }
    ]
    entries = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
        "manifest.json": canonical(docker_manifest),
        blob(sha256(config_bytes)): config_bytes,
        blob(sha256(manifest_bytes)): manifest_bytes,
        blob(layer_digest): rootfs,
    }
    temporary = args.out + ".partial"
    try:
        with tarfile.open(temporary, mode="w", format=tarfile.PAX_FORMAT) as archive:
            add(archive, "blobs/", mtime, mode=0o755, kind=tarfile.DIRTYPE)
            add(archive, "blobs/sha256/", mtime, mode=0o755, kind=tarfile.DIRTYPE)
            for name in sorted(entries):
                add(archive, name, mtime, entries[name])
        os.replace(temporary, args.out)
    except OSError as e:
        # A full disk leaves no half archive for a later step to ship.
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise Failure(f"failed to write the image archive {args.out}: {e.strerror}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, choices=sorted(IMAGES))
    parser.add_argument("--binaries", required=True, help="the directory of the static binaries")
    parser.add_argument("--version", required=True)
    parser.add_argument("--arch", required=True, choices=["amd64", "arm64"], help="the binaries' architecture")
    parser.add_argument("--revision", required=True, help="the source's commit")
    parser.add_argument("--source", default="https://tether.invalid/source", help="where the source is published")
    parser.add_argument("--kubectl", help="a kubectl binary to add (tether-agent; send-kubectl runs it)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.kubectl and args.image != "tether-agent":
        parser.error("--kubectl is for the tether-agent image only")
    try:
        build(args)
    except Failure as e:
        print(e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
