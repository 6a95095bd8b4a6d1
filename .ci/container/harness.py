"""What the container checks share: podman, a git server and a webhook
receiver on the host, and Herald's HTTP API as an operator and an app use it.

Standard library only; the checks run with the CI's Python.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# What a container on podman's default network calls the host.
HOST_FROM_CONTAINER = "host.containers.internal"


class CheckFailed(Exception):
    """One operator-visible expectation that does not hold."""


def step(text: str) -> None:
    print(f"  - {text}", flush=True)


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def wait_for(what: str, probe, timeout: float = 60.0, interval: float = 0.5):
    """Polls `probe` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - a probe may fail until ready
            last_error = err
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last_error})" if last_error else ""))


def sh(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise CheckFailed(f"`{' '.join(args)}` exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return sh("podman", *args, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- HTTP ---------------------------------------------------------------------


def request(method: str, url: str, token: str | None = None, body=None, timeout: float = 10):
    """(status, parsed JSON or text) of one request."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def status_of(url: str) -> int:
    try:
        return request("GET", url, timeout=3)[0]
    except OSError:
        return 0


class Herald:
    """Herald's API at `base`, as the operator (admin token) and one app use it."""

    def __init__(self, base: str, admin_token: str):
        self.base = base.rstrip("/")
        self.admin_token = admin_token

    def admin(self, method: str, path: str, body=None):
        return request(method, self.base + path, self.admin_token, body)

    def onboard(self, name: str, base_url: str) -> dict:
        status, body = self.admin(
            "POST", "/admin/api/apps/onboard", {"app_name": name, "base_url": base_url, "email": "ci@example.com"}
        )
        expect(status == 201, f"onboarding {name} answered {status}: {body}")
        return body["data"]

    def register(self, app_token: str, url: str, branch: str = "main") -> str:
        status, body = request("POST", self.base + "/api/repositories", app_token, {"url": url, "branch": branch})
        expect(status == 201, f"registering {url} answered {status}: {body}")
        return body["repository_id"]

    def scan(self, app_token: str, repository_id: str) -> None:
        """Asks for a scan, waiting out the scan cooldown if need be."""

        def ask():
            status, body = request("POST", f"{self.base}/api/repositories/{repository_id}/scan", app_token)
            if status == 429:
                return False
            expect(status == 202, f"scan of {repository_id} answered {status}: {body}")
            return True

        wait_for(f"a scan of {repository_id} to be accepted", ask, timeout=30)


def onboard_and_deliver(container: str, base: str, app_name: str, files: dict[str, str], message: str,
                        git: "GitServer", receiver: "Receiver") -> tuple[Herald, dict, str, dict[str, str]]:
    """As an operator and then an app would: the admin token read from the
    container's volume, an app onboarded with the host's receiver, `files`
    committed and the repository registered, every file delivered signed.
    Returns Herald, the app, the repository id and the files' hashes."""
    token = podman("exec", container, "cat", "/data/admin.token").stdout.strip()
    herald = Herald(base, token)
    app = herald.onboard(app_name, receiver.base_url(app_name))
    receiver.expect_app(app_name, app)
    hashes = git.commit(files, message)
    repository = herald.register(app["token"], git.url_from_container)
    receiver.wait_for_files(app_name, hashes)
    return herald, app, repository, hashes


# --- A git repository served by `git daemon` ----------------------------------


class GitServer:
    """A repository served over git:// on every address of the host, so that
    a container reaches it at host.containers.internal."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="herald-ci-git-"))
        self.work = self.root / "work"
        self.port = free_port()
        env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
               "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com"}
        self.env = env
        sh("git", "init", "-q", "-b", "main", str(self.work))
        sh("git", "init", "-q", "--bare", str(self.root / "repo.git"))
        self.daemon = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={self.root}",
             "--listen=0.0.0.0", f"--port={self.port}", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for("git daemon", lambda: socket.create_connection(("127.0.0.1", self.port), 1).close() or True)

    @property
    def url_from_container(self) -> str:
        return f"git://{HOST_FROM_CONTAINER}:{self.port}/repo.git"

    def commit(self, files: dict[str, str], message: str) -> dict[str, str]:
        """Writes `files` (path -> text), commits and pushes; returns the
        SHA-256 of each file's bytes."""
        hashes = {}
        for path, text in files.items():
            target = self.work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            hashes[path] = hashlib.sha256(text.encode()).hexdigest()
        sh("git", "-C", str(self.work), "add", "-A", env=self.env)
        sh("git", "-C", str(self.work), "commit", "-q", "-m", message, env=self.env)
        sh("git", "-C", str(self.work), "push", "-q", str(self.root / "repo.git"), "main", env=self.env)
        return hashes

    def close(self) -> None:
        self.daemon.terminate()
        self.daemon.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


# --- A webhook receiver -------------------------------------------------------


class Receiver:
    """Accepts Herald's webhooks on every address of the host, checks both
    signatures of each, and keeps them in arrival order. `delay` slows every
    answer (a slow app); the apps in `failing` are answered 500."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.failing: set[str] = set()
        self.secrets: dict[str, tuple[bytes, bytes]] = {}
        self.received: list[dict] = []
        self.problems: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer._accept(self.path, dict(self.headers.items()), body)
                if outer.delay:
                    time.sleep(outer.delay)
                failing = self.path.strip("/").partition("/")[0] in outer.failing
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def base_url(self, app: str) -> str:
        return f"http://{HOST_FROM_CONTAINER}:{self.port}/{app}"

    def expect_app(self, app: str, onboarded: dict) -> None:
        """Verifies this app's webhooks with the secrets onboarding returned."""
        secret = onboarded["webhook_secret"].removeprefix("whsec_")
        self.secrets[app] = (base64.b64decode(secret), onboarded["client_auth_key"].encode())

    def _accept(self, path: str, headers: dict, body: bytes) -> None:
        headers = {k.lower(): v for k, v in headers.items()}
        app, _, endpoint = path.strip("/").partition("/")
        problem = None
        if app not in self.secrets:
            problem = f"a webhook for an unknown app: {path}"
        else:
            std_key, docora_key = self.secrets[app]
            signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
            expected = base64.b64encode(hmac.new(std_key, signed, hashlib.sha256).digest()).decode()
            offered = [s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split() if "," in s]
            if expected not in offered:
                problem = f"{path}: webhook-signature does not verify"
            docora_signed = f"{headers.get('x-docora-timestamp')}.".encode() + body
            docora = hmac.new(docora_key, docora_signed, hashlib.sha256).hexdigest()
            if headers.get("x-docora-signature", "").removeprefix("sha256=") != docora:
                problem = f"{path}: X-Docora-Signature does not verify"
        event = {"app": app, "endpoint": endpoint, "id": headers.get("webhook-id"), "body": json.loads(body)}
        with self.lock:
            if problem:
                self.problems.append(problem)
            self.received.append(event)

    def files(self, app: str, endpoint: str = "create") -> dict[str, str]:
        """path -> sha of every `endpoint` webhook the app received."""
        with self.lock:
            return {
                e["body"]["file"]["path"]: e["body"]["file"]["sha"]
                for e in self.received
                if e["app"] == app and e["endpoint"] == endpoint
            }

    def ids(self, app: str) -> list[str]:
        with self.lock:
            return [e["id"] for e in self.received if e["app"] == app]

    def wait_for_files(self, app: str, expected: dict[str, str], timeout: float = 120) -> None:
        def arrived():
            got = self.files(app)
            return all(got.get(path) == sha for path, sha in expected.items())

        wait_for(f"{len(expected)} files delivered to {app}", arrived, timeout=timeout)
        expect(not self.problems, "; ".join(self.problems[:5]))

    def close(self) -> None:
        self.server.shutdown()
