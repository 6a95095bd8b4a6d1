#!/usr/bin/env python3
"""Runs compose.yaml with podman-compose and checks it as an operator would.

    check_compose.py DASHBOARD_QUERIES.yml

The image must already be built and tagged `herald:local` (the name
compose.yaml gives it), and the stand-ins for postgres and prometheus must
exist (standins.sh).

- Herald on PostgreSQL: ready, a registered repository delivered to a
  receiver on the host;
- Prometheus, run as compose runs it: it scrapes Herald, and the Grafana
  dashboard's queries return data;
- the `replicas` profile: both instances ready and listed, a change
  delivered exactly once;
- `down -v` leaves no container, volume or network behind.

The OpenTelemetry collector, Jaeger and Grafana have no image here (none in
Debian either); compose starts the others with --no-deps.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from pathlib import Path

import yaml

from harness import (
    CheckFailed, GitServer, Herald, Receiver, expect, podman, request, sh, status_of, step, wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "herald"
PROMETHEUS = "http://127.0.0.1:9090"
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
    token = podman("exec", herald_container, "cat", "/data/admin.token").stdout.strip()
    herald = Herald(base, token)
    app = herald.onboard("ci-compose", receiver.base_url("ci-compose"))
    receiver.expect_app("ci-compose", app)
    files = git.commit({f"guide/{i:02}.md": f"chapter {i}\n" for i in range(10)}, "ten chapters")
    repository = herald.register(app["token"], git.url_from_container)
    receiver.wait_for_files("ci-compose", files)
    step(f"herald on PostgreSQL: ready, healthy, {len(files)} files delivered to the host")
    return herald, app, repository


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
    for expr in empty:
        step(f"no data yet (nothing of that kind happened in this run): {expr}")
    # Every metric the run exercised must be on the dashboard with data.
    for needed in ("herald_build_info", "herald_scans_total", "herald_deliveries_total",
                   "herald_events_created_total", "herald_http_requests_total", "herald_outbox_depth"):
        expect(any(needed in rule["expr"] for rule in rules if rule["expr"] not in empty),
               f"no dashboard query on {needed} returns data")


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
