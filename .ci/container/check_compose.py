#!/usr/bin/env python3
"""Runs compose.yaml with podman-compose and checks it as an operator would.

    check_compose.py DASHBOARD_QUERIES.yml

The image must already be built and tagged `herald:local` (the name
compose.yaml gives it), and the stand-ins for postgres and prometheus must
exist (standins.sh).

- Herald on PostgreSQL: ready, a registered repository delivered to a
  receiver on the host;
- Prometheus, run as compose runs it: it scrapes Herald, and every query of
  the Grafana dashboard returns data (an app whose endpoint fails opens its
  breaker, a signed GitHub hook arrives, so that every panel has something);
- the `replicas` profile: both instances ready and listed, a change
  delivered exactly once;
- `down -v` leaves no container, volume or network behind.

The OpenTelemetry collector, Jaeger and Grafana have no image here (none in
Debian either); compose starts the others with --no-deps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from harness import (
    CheckFailed, GitServer, Herald, Receiver, expect, onboard_and_deliver, podman, request, sh, status_of, step,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "herald"
PROMETHEUS = "http://127.0.0.1:9090"
# inbound.github_secret in compose.ci.yaml.
GITHUB_SECRET = "ci-github-hook-secret"
# The compose command: compose.yaml as shipped, plus CI's override.
COMPOSE = ["podman-compose", "-f", str(ROOT / "compose.yaml"), "-f", str(ROOT / ".ci/container/compose.ci.yaml")]


def compose(*args: str, check: bool = True):
    return sh(*COMPOSE, *args, check=check, timeout=600, cwd=ROOT)


def container(service: str) -> str:
    names = podman("ps", "--filter", f"label=com.docker.compose.project={PROJECT}",
                   "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}").stdout.split()
    expect(len(names) == 1, f"expected one {service} container, found {names}")
    return names[0]


def promql(query: str) -> list:
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, body = request("GET", url)
    expect(status == 200 and body.get("status") == "success", f"Prometheus refused {query!r}: {body}")
    return body["data"]["result"]


def leftovers() -> list[str]:
    label = f"label=com.docker.compose.project={PROJECT}"
    found = podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split()
    found += [v for v in podman("volume", "ls", "--format", "{{.Name}}").stdout.split() if v.startswith(f"{PROJECT}_")]
    found += [n for n in podman("network", "ls", "--format", "{{.Name}}").stdout.split() if n.startswith(f"{PROJECT}_")]
    return found


def check_single(git: GitServer, receiver: Receiver) -> tuple[Herald, dict, str]:
    compose("up", "-d", "postgres")
    # podman runs no health-check timer without systemd, and podman 4.3 does
    # not wait for `condition: service_healthy`: run the check as the timer would.
    postgres = container("postgres")
    wait_for("a healthy postgres", lambda: podman("healthcheck", "run", postgres, check=False).returncode == 0,
             timeout=120, interval=1)
    step("postgres (the stand-in, POSTGRES_* honoured) is healthy")
    compose("up", "-d", "--no-deps", "herald", "prometheus")
    base = "http://127.0.0.1:8080"
    wait_for("herald's /ready", lambda: status_of(base + "/ready") == 200, timeout=120)
    herald_container = container("herald")
    health = podman("healthcheck", "run", herald_container, check=False)
    expect(health.returncode == 0, f"herald's health check: {health.stdout}{health.stderr}")
    herald, app, repository, files = onboard_and_deliver(
        herald_container, base, "ci-compose", {f"guide/{i:02}.md": f"chapter {i}\n" for i in range(10)},
        "ten chapters", git, receiver)
    step(f"herald on PostgreSQL: ready, healthy, {len(files)} files delivered to the host")
    return herald, app, repository


def exercise_the_dashboard(herald: Herald, git: GitServer, receiver: Receiver) -> None:
    """What the dashboard shows besides deliveries: an app whose endpoint
    fails until its breaker opens, and a signed push hook."""
    app = herald.onboard("ci-failing", receiver.base_url("ci-failing"))
    receiver.expect_app("ci-failing", app)
    receiver.failing.add("ci-failing")
    herald.register(app["token"], git.url_from_container)

    def breaker_open():
        status, text = request("GET", herald.base + "/metrics")
        return status == 200 and any(
            line.startswith("herald_breaker_state{") and 'breaker="delivery"' in line and line.endswith(" 2")
            for line in str(text).splitlines()
        )

    wait_for("the failing app's delivery breaker to open", breaker_open, timeout=120, interval=1)
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    signature = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    hook = urllib.request.Request(herald.base + "/hooks/github", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "ci-ping-1", "X-Hub-Signature-256": f"sha256={signature}",
    })
    with urllib.request.urlopen(hook, timeout=10) as answer:
        expect(answer.status in (200, 202), f"the signed push hook answered {answer.status}")
    step("an app's endpoint failing until its breaker opened, and a signed GitHub hook")


def check_prometheus(queries_file: Path) -> None:
    def scraped():
        return any(r["value"][1] == "1" for r in promql('up{job="herald",instance="herald:8080"}'))

    wait_for("Prometheus to scrape herald:8080", scraped, timeout=90, interval=2)
    # The dashboard's rates span a minute: let two more scrapes land.
    time.sleep(35)
    rules = yaml.safe_load(queries_file.read_text())["groups"][0]["rules"]
    empty = []
    for rule in rules:
        if not promql(rule["expr"]):
            empty.append(rule["expr"])
    answered = len(rules) - len(empty)
    step(f"Prometheus scrapes herald:8080; {answered} of {len(rules)} dashboard queries return data")
    expect(not empty, "dashboard queries without data: " + "; ".join(empty))


def check_replicas(herald: Herald, app: dict, repository: str, git: GitServer, receiver: Receiver) -> None:
    compose("--profile", "replicas", "up", "-d", "--no-deps", "herald-2")
    second = "http://127.0.0.1:8081"
    wait_for("herald-2's /ready", lambda: status_of(second + "/ready") == 200, timeout=120)
    step("herald and herald-2 are ready")

    def both_listed():
        status, body = herald.admin("GET", "/admin/api/instances")
        return status == 200 and body["data"]["alive"] >= 2

    wait_for("both instances in /admin/api/instances", both_listed, timeout=60)
    # herald-2 opens what herald sealed: the same admin token and key.
    status, _ = request("GET", second + "/admin/api/apps", herald.admin_token)
    expect(status == 200, f"herald-2 refuses the admin token herald generated ({status})")

    before = len(receiver.ids("ci-compose"))
    files = git.commit({f"guide/{i:02}.md": f"chapter {i}, second edition\n" for i in range(5)}, "second edition")
    Herald(second, herald.admin_token).scan(app["token"], repository)
    wait_for("the change delivered", lambda: len(receiver.files("ci-compose", "update")) >= len(files), timeout=120)
    time.sleep(5)  # room for a duplicate, were there one
    ids = receiver.ids("ci-compose")[before:]
    updates = receiver.files("ci-compose", "update")
    expect(updates == files, f"the change arrived as {updates}, not {files}")
    expect(len(ids) == len(set(ids)) == len(files), f"{len(files)} changes arrived as {len(ids)} webhooks")
    expect(not receiver.problems, "; ".join(receiver.problems[:5]))

    def second_scraped():
        return any(r["value"][1] == "1" for r in promql('up{job="herald",instance="herald-2:8080"}'))

    wait_for("Prometheus to scrape herald-2:8080", second_scraped, timeout=60, interval=2)
    step(f"replicas profile: {len(files)} changes delivered once each, Prometheus scrapes both")


def main() -> int:
    queries = Path(sys.argv[1])
    print("==> compose.yaml, run with podman-compose", flush=True)
    compose("--profile", "replicas", "down", "-v", check=False)
    git, receiver = GitServer(), Receiver()
    try:
        herald, app, repository = check_single(git, receiver)
        exercise_the_dashboard(herald, git, receiver)
        check_prometheus(queries)
        check_replicas(herald, app, repository, git, receiver)
        compose("--profile", "replicas", "down", "-v")
        left = leftovers()
        expect(not left, f"`down -v` left {left}")
        step("`down -v` removed every container, volume and network")
    except CheckFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        for service in ("herald", "herald-2", "postgres", "prometheus"):
            logs = compose("logs", "--tail", "20", service, check=False)
            print(f"--- {service} ---\n{logs.stdout[-3000:]}{logs.stderr[-1000:]}", file=sys.stderr)
        compose("--profile", "replicas", "down", "-v", check=False)
        return 1
    finally:
        git.close()
        receiver.close()
    print("the compose checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
