#!/usr/bin/env python3
"""Herald's contract run, for .ci/contract (see there for the knobs).

Sets up what the API needs to answer with real data, all on loopback:

- a git repository with a few files (text, binary, nested) served by
  `git daemon`;
- `herald serve` on SQLite in a temporary data_dir, with an admin token,
  loopback targets allowed, inbound hook secrets set (so the hook endpoints
  verify rather than answer 404) and rate budgets a fuzzer does not exhaust;
- an app onboarded through the admin API, whose webhooks go to
  `herald listen` (the reference receiver), registered on the repository
  with its app token;

then runs schemathesis with both tokens and fails when it finds a problem,
when Herald logged an error (a 500's cause goes to the log) or when Herald
died. Standard library only: it runs in the schemathesis virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MAX_TIME = int(os.environ.get("CONTRACT_MAX_TIME", "240"))
MAX_EXAMPLES = int(os.environ.get("CONTRACT_MAX_EXAMPLES", "25"))
SEED = os.environ.get("CONTRACT_SEED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{process.args[0]} exited ({process.returncode}):\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on 127.0.0.1:{port}:\n{log.read_text()}")


def call(method: str, url: str, token: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def git(env: dict, *args: str) -> None:
    subprocess.run(["git", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--herald", required=True, type=Path)
    parser.add_argument("--schemathesis", required=True)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("extra", nargs="*", help="more schemathesis run arguments")
    args = parser.parse_args()
    herald = args.herald.resolve()

    work = Path(tempfile.mkdtemp(prefix="herald-contract-"))
    processes: list[subprocess.Popen] = []
    try:
        return run(herald, args.schemathesis, args.config.resolve(), args.extra, work, processes)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if os.environ.get("CONTRACT_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def spawn(processes: list, argv: list, log: Path, **kwargs) -> subprocess.Popen:
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT, **kwargs
    )
    processes.append(process)
    return process


def run(herald: Path, st: str, config: Path, extra: list, work: Path, processes: list) -> int:
    # The git remote: no user or system configuration leaks in.
    git_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    git_env.update(GIT_CONFIG_NOSYSTEM="1", HOME=str(work), XDG_CONFIG_HOME=str(work))
    source = work / "source"
    (source / "docs" / "deep").mkdir(parents=True)
    (source / "README.md").write_text("# Widgets\n")
    (source / "docs" / "a.md").write_text("alpha\n")
    (source / "docs" / "deep" / "b.md").write_text("beta\n")
    (source / "blob.dat").write_bytes(b"bin\0ary")
    git(git_env, "init", "-q", "-b", "main", str(source))
    git(git_env, "-C", str(source), "add", "-A")
    git(git_env, "-C", str(source), "-c", "user.name=ci", "-c", "user.email=ci@example.com",
        "commit", "-q", "-m", "init")
    served = work / "served"
    git(git_env, "clone", "-q", "--bare", str(source), str(served / "acme" / "widgets.git"))
    exec_path = subprocess.run(["git", "--exec-path"], env=git_env, check=True,
                               capture_output=True, text=True).stdout.strip()
    git_port = free_port()
    daemon = spawn(processes, [
        f"{exec_path}/git-daemon", "--reuseaddr", "--export-all", f"--base-path={served}",
        "--listen=127.0.0.1", f"--port={git_port}", str(served),
    ], work / "git-daemon.log", env=git_env, cwd=served)
    wait_for_port(git_port, daemon, work / "git-daemon.log")

    admin_token = "contract-admin-" + secrets.token_hex(16)
    herald_port = free_port()
    base = f"http://127.0.0.1:{herald_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD")}
    env.update({
        "HERALD__ADMIN__TOKEN": admin_token,
        "HERALD__SECURITY__ALLOW_PRIVATE_TARGETS": "true",
        "HERALD__SECURITY__ALLOW_HTTP_TARGETS": "true",
        # Fuzzed repository URLs point anywhere: fail fast.
        "HERALD__GIT__FETCH_TIMEOUT": "5s",
        "HERALD__SCHEDULER__TICK": "1s",
        # The app pulls its events: a stream (or long poll) ends this soon, so
        # that each call of GET /api/stream gets a complete answer.
        "HERALD__DELIVERY__STREAM_MAX_AGE": "300ms",
        "HERALD__RATE_LIMIT__PER_IP_PER_MINUTE": "1000000",
        "HERALD__RATE_LIMIT__ONBOARDING_PER_MINUTE": "1000000",
        "HERALD__RATE_LIMIT__PER_APP_PER_MINUTE": "1000000",
        "HERALD__RATE_LIMIT__INBOUND_PER_MINUTE": "1000000",
        "HERALD__INBOUND__GITHUB_SECRET": "contract-github-secret",
        "HERALD__INBOUND__GITLAB_TOKEN": "contract-gitlab-token",
        "HERALD__INBOUND__GITEA_SECRET": "contract-gitea-secret",
        "HERALD__INBOUND__BITBUCKET_SECRET": "contract-bitbucket-secret",
        "HERALD__TELEMETRY__LOG_FORMAT": "json",
        "HERALD__TELEMETRY__LOG_LEVEL": os.environ.get("CONTRACT_LOG_LEVEL", "warn"),
    })
    herald_log = work / "herald.log"
    server = spawn(processes, [
        str(herald), "serve", "--port", str(herald_port), "--data-dir", str(work / "data"),
    ], herald_log, env=env, cwd=work)
    wait_for_port(herald_port, server, herald_log)

    receiver_port = free_port()
    onboarded = call("POST", f"{base}/admin/api/apps/onboard", admin_token, {
        "app_name": "contract",
        "base_url": f"http://127.0.0.1:{receiver_port}/hooks",
        "email": "ci@example.com",
        # GET /api/stream and /api/changes answer 200 (a pull app); fuzzed
        # PATCHes of /api/app switch it to push and back.
        "delivery": "pull",
    })["data"]
    app_token = onboarded["token"]
    receiver = spawn(processes, [
        str(herald), "listen", "--port", str(receiver_port),
        "--secret", onboarded["webhook_secret"],
    ], work / "receiver.log", env=env, cwd=work)
    wait_for_port(receiver_port, receiver, work / "receiver.log")
    call("POST", f"{base}/api/repositories", app_token,
         {"github_url": f"git://127.0.0.1:{git_port}/acme/widgets.git"})
    # The first snapshot's events, so the events API has some to show.
    deadline = time.monotonic() + 30
    while not call("GET", f"{base}/api/events", app_token)["data"]:
        if time.monotonic() > deadline:
            sys.exit(f"no events after registering:\n{herald_log.read_text()}")
        time.sleep(0.2)

    st_env = dict(os.environ)
    st_env.update(HERALD_CONTRACT_ADMIN_TOKEN=admin_token, HERALD_CONTRACT_APP_TOKEN=app_token)
    command = [
        st, "--config-file", str(config), "run", f"{base}/openapi.json",
        "--max-time", str(MAX_TIME), "--max-examples", str(MAX_EXAMPLES),
    ]
    if SEED:
        command += ["--seed", SEED]
    command += extra
    started = time.monotonic()
    # In the work folder: schemathesis keeps a cache in its current folder.
    status = subprocess.run(command, env=st_env, cwd=work).returncode
    print(f"schemathesis finished in {time.monotonic() - started:.0f} s (exit {status})")

    if server.poll() is not None:
        print(f"herald exited during the run ({server.returncode}):", file=sys.stderr)
        print(herald_log.read_text()[-4000:], file=sys.stderr)
        status = status or 1
    errors = [line for line in herald_log.read_text().splitlines() if '"level":"ERROR"' in line]
    if errors:
        print("herald logged errors during the run:", file=sys.stderr)
        print("\n".join(errors[:20]), file=sys.stderr)
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
