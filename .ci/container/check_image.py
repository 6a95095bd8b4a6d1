#!/usr/bin/env python3
"""Runs Herald's container image as an operator would, and checks it.

    check_image.py IMAGE

- what the image holds: its size, and nothing over its base but what the
  runtime needs (no toolchain, no build-time CA);
- it runs as uid 10001; /health and /ready answer 200; `podman healthcheck
  run` reports it healthy;
- a repository registered through its API is delivered to a receiver on the
  host, every webhook signed;
- SIGTERM during a delivery ends it with exit code 0 within its shutdown
  timeout; a new container on the same volume keeps the registration, the
  admin token and the encryption key, and delivers every remaining event;
- bad input (a wrong database URL, a data volume owned by another uid, a port
  already taken) ends it non-zero with one clear line, no panic.

Exits 1 naming the first expectation that failed.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    CheckFailed, GitServer, Herald, Receiver, expect, free_port, onboard_and_deliver, podman, request, sh, status_of,
    step, wait_for,
)

NAME = "herald-ci-image"
VOLUME = "herald-ci-image-data"
SHUTDOWN_TIMEOUT = 10  # seconds, given to the container below
ENV = {
    # The receiver and the git server are on the host, a private address.
    "HERALD__SECURITY__ALLOW_PRIVATE_TARGETS": "true",
    "HERALD__SECURITY__ALLOW_HTTP_TARGETS": "true",
    "HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN": "0",
    "HERALD__SERVER__SHUTDOWN_TIMEOUT": f"{SHUTDOWN_TIMEOUT}s",
}
# What the runtime stage adds to its base image, and nothing else.
ADDED_ALLOWED = (
    "usr/local/bin/herald",
    "usr/local/bin/busybox",
    "etc/ssl/certs/ca-certificates.crt",
    "etc/herald/default.toml",
    "data",
    # groupadd / useradd
    "etc/passwd", "etc/passwd-", "etc/group", "etc/group-", "etc/shadow", "etc/shadow-",
    "etc/gshadow", "etc/gshadow-", "etc/subuid", "etc/subuid-", "etc/subgid", "etc/subgid-",
    "var/log/lastlog", "var/log/faillog",
)

# Files a build engine mounts over during RUN and leaves behind, empty.
ENGINE_MOUNT_POINTS = ("etc/hosts", "etc/resolv.conf", "etc/hostname")


def run_args(image: str, *extra: str) -> list[str]:
    args = ["run", "-d", "--name", NAME, "-v", f"{VOLUME}:/data", *extra]
    for key, value in ENV.items():
        args += ["-e", f"{key}={value}"]
    return [*args, image]


def remove_container() -> None:
    podman("rm", "--force", "--time", "0", NAME, check=False)


def file_list(image: str) -> dict[str, tuple]:
    """path -> (mode, size, link target) of every entry of `image`'s file
    system, read from the image itself (`podman image mount`), not from a
    container, which would add its own hosts and resolv.conf."""
    root = Path(podman("image", "mount", image).stdout.strip())
    try:
        entries = {}
        for path in root.rglob("*"):
            info = path.lstat()
            link = os.readlink(path) if path.is_symlink() else ""
            size = info.st_size if path.is_file() and not path.is_symlink() else 0
            entries[str(path.relative_to(root))] = (info.st_mode, size, link)
        return entries
    finally:
        podman("image", "unmount", image, check=False)


def check_contents(image: str) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    base = podman("image", "inspect", "--format", "{{.Size}}", "docker.io/library/debian:trixie-slim").stdout.strip()
    binary = podman("run", "--rm", "--entrypoint", "/usr/local/bin/busybox", image,
                    "stat", "-c", "%s", "/usr/local/bin/herald").stdout.strip()
    step(f"image size {int(size) / 1e6:.1f} MB: base {int(base) / 1e6:.1f} MB + herald {int(binary) / 1e6:.1f} MB "
         f"+ BusyBox, CA bundle, configuration")
    base_files = file_list("docker.io/library/debian:trixie-slim")
    image_files = file_list(image)
    added = sorted(p for p, d in image_files.items() if base_files.get(p) != d)
    # A RUN step leaves the engine's empty mount points behind.
    added = [p for p in added if not (p in ENGINE_MOUNT_POINTS and image_files[p][1] == 0)]
    extra = [p for p in added if not any(p == a or p.startswith(a + "/") for a in ADDED_ALLOWED)
             and not any(a.startswith(p + "/") for a in ADDED_ALLOWED)]
    expect(not extra, f"the image adds files the runtime does not need: {extra[:20]}")
    step(f"over its base the image adds only: {', '.join(p for p in added if p.count('/') < 4)}")
    # The build may have read a TLS-inspecting proxy's CA (a build secret):
    # it must not be in the image's bundle.
    bundle = podman("run", "--rm", "--entrypoint", "/usr/local/bin/busybox", image,
                    "cat", "/etc/ssl/certs/ca-certificates.crt").stdout
    for local_ca in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        body = "".join(local_ca.read_text().split("-----")[2].split())
        expect(body not in "".join(bundle.split()), f"the image trusts the build machine's {local_ca.name}")


def check_runs(image: str, git: GitServer, receiver: Receiver) -> tuple[Herald, dict, str]:
    port = free_port()
    podman("volume", "create", VOLUME)
    podman(*run_args(image, "-p", f"127.0.0.1:{port}:8080"))
    base = f"http://127.0.0.1:{port}"
    wait_for("/health to answer 200", lambda: status_of(base + "/health") == 200)
    wait_for("/ready to answer 200", lambda: status_of(base + "/ready") == 200)
    step("/health and /ready answer 200")

    pid = podman("inspect", "--format", "{{.State.Pid}}", NAME).stdout.strip()
    uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    expect(uids.split()[1:] == ["10001"] * 4, f"herald runs as {uids}, not uid 10001")
    step("herald runs as uid 10001")

    health = podman("healthcheck", "run", NAME, check=False)
    expect(health.returncode == 0, f"podman healthcheck run: {health.stdout}{health.stderr}")
    status = podman("inspect", "--format", "{{.State.Health.Status}}", NAME).stdout.strip()
    expect(status == "healthy", f"the health check reports {status!r}")
    step("podman healthcheck run: healthy")

    herald, app, repository, files = onboard_and_deliver(
        NAME, base, "ci-image", {f"docs/{i:03}.md": f"document {i}\n" for i in range(20)},
        "twenty documents", git, receiver)
    step(f"a repository registered through the API: {len(files)} files delivered to the host, signatures verified")
    return herald, app, repository


def check_sigterm_and_restart(image: str, herald: Herald, app: dict, repository: str,
                              git: GitServer, receiver: Receiver) -> None:
    key_before = podman("exec", NAME, "cat", "/data/encryption.key").stdout
    delivered_before = len(receiver.ids("ci-image"))
    receiver.delay = 0.05
    files = git.commit({f"bulk/{i:03}.txt": f"line {i}\n" * 20 for i in range(300)}, "three hundred files")
    herald.scan(app["token"], repository)
    wait_for("the delivery of the push to start",
             lambda: len(receiver.ids("ci-image")) >= delivered_before + 20, timeout=60, interval=0.05)
    started = time.monotonic()
    podman("stop", "--time", "75", NAME)  # SIGTERM, then 75 s before SIGKILL
    elapsed = time.monotonic() - started
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", NAME).stdout.strip()
    in_flight = len(receiver.files("ci-image")) - delivered_before
    expect(exit_code == "0", f"SIGTERM ended herald with exit code {exit_code}")
    expect(elapsed <= SHUTDOWN_TIMEOUT, f"SIGTERM took {elapsed:.1f}s, over the {SHUTDOWN_TIMEOUT}s shutdown timeout")
    expect(in_flight < len(files), "the whole push was delivered before SIGTERM: nothing was in flight")
    step(f"SIGTERM during a delivery ({in_flight}/{len(files)} sent): exit code 0 after {elapsed:.1f}s "
         f"(shutdown timeout {SHUTDOWN_TIMEOUT}s)")

    # A new container on the same volume, as after an upgrade.
    podman("rm", NAME)
    receiver.delay = 0
    port = free_port()
    podman(*run_args(image, "-p", f"127.0.0.1:{port}:8080"))
    herald.base = f"http://127.0.0.1:{port}"
    wait_for("/ready after the restart", lambda: status_of(herald.base + "/ready") == 200)
    token_after = podman("exec", NAME, "cat", "/data/admin.token").stdout.strip()
    key_after = podman("exec", NAME, "cat", "/data/encryption.key").stdout
    expect(token_after == herald.admin_token, "the admin token changed over a restart")
    expect(key_after == key_before, "the encryption key changed over a restart")
    status, _ = herald.admin("GET", "/admin/api/apps")
    expect(status == 200, f"the admin token from before the restart is refused ({status})")
    status, body = request("GET", f"{herald.base}/api/repositories/{repository}", app["token"])
    expect(status == 200, f"the registration did not survive the restart ({status}: {body})")
    receiver.wait_for_files("ci-image", files)
    ids = receiver.ids("ci-image")
    step(f"after a restart on the volume: token, key and registration kept; all {len(files)} files delivered, "
         f"signed with the secrets sealed before ({len(ids) - len(set(ids))} redelivered under the same webhook-id)")


def check_bad_input(image: str) -> None:
    def refused(what: str, expected: str, *args: str) -> None:
        started = time.monotonic()
        result = podman("run", "--rm", *args, image, check=False, timeout=120)
        elapsed = time.monotonic() - started
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        expect(result.returncode != 0, f"{what}: herald exited 0")
        expect("panicked" not in result.stderr and "stack backtrace" not in result.stderr,
               f"{what}: herald panicked: {result.stderr[-1000:]}")
        expect(last.startswith("herald: ") and expected in last, f"{what}: the last line is {last!r}")
        step(f"{what}: exit {result.returncode} after {elapsed:.1f}s, {last!r}")

    refused("a wrong HERALD__DATABASE__URL", "database",
            "-e", "HERALD__DATABASE__URL=postgres://herald:secret@127.0.0.1:1/herald")
    with tempfile.TemporaryDirectory() as foreign:
        sh("chown", "4242:4242", foreign)
        sh("chmod", "0700", foreign)
        refused("a data volume owned by uid 4242", "/data", "-v", f"{foreign}:/data")
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused("a port already taken", str(port), "--network", "host", "-v", f"{VOLUME}:/data",
                "-e", f"HERALD__SERVER__PORT={port}")


def main() -> int:
    image = sys.argv[1]
    print(f"==> the image {image}, run as an operator would", flush=True)
    remove_container()
    podman("volume", "rm", "--force", VOLUME, check=False)
    git, receiver = GitServer(), Receiver()
    try:
        check_contents(image)
        herald, app, repository = check_runs(image, git, receiver)
        check_sigterm_and_restart(image, herald, app, repository, git, receiver)
        remove_container()
        check_bad_input(image)
    except CheckFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        logs = podman("logs", "--tail", "30", NAME, check=False)
        if logs.returncode == 0:
            print(f"--- the container's last log lines ---\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        return 1
    finally:
        remove_container()
        podman("volume", "rm", "--force", VOLUME, check=False)
        git.close()
        receiver.close()
    print("the image checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
