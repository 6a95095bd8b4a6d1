#!/usr/bin/env python3
"""Static checks of Herald's deployment files, for .ci/run.

No container engine is needed (.ci/container builds and runs the image): this reads the Dockerfile, compose.yaml, the
Prometheus, OpenTelemetry collector and Grafana files under config/ and the
systemd unit, and checks that they agree with each other and with the code:

- the Dockerfile's dependency layer comes from cargo-chef, its sources from
  the whole context, and .dockerignore leaves out nothing cargo reads; the
  image keeps its contract (/data volume, non-root user, HEALTHCHECK on
  /health, EXPOSE, listening on 0.0.0.0);
- the Grafana dashboard parses, uses only the provisioned data sources, and
  queries only the shared Prometheus metric names, all of them (and notes
  names the Rust sources do not record, or record but the dashboard lacks);
- compose.yaml pins its images, mounts files that exist, points Herald at
  PostgreSQL and the collector, and gives it time to shut down gracefully;
- the collector's pipelines use defined components, Prometheus scrapes
  herald:8080/metrics, Grafana's provisioning points where compose mounts;
- the systemd unit has its hardening and a stop timeout that covers
  server.shutdown_timeout.

With --promql-rules FILE it also writes the dashboard's queries as a
Prometheus rules file, for `promtool check rules`.

Exits 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# The metric names Herald records, shared by the code, the dashboard and
# whoever scrapes Herald (name -> type).
METRICS = {
    "herald_build_info": "gauge",
    "herald_scans_total": "counter",
    "herald_scan_duration_seconds": "histogram",
    "herald_changes_found_total": "counter",
    "herald_events_created_total": "counter",
    "herald_deliveries_total": "counter",
    "herald_delivery_duration_seconds": "histogram",
    "herald_outbox_depth": "gauge",
    "herald_breaker_state": "gauge",
    "herald_apps_disabled": "gauge",
    "herald_inbound_hooks_total": "counter",
    "herald_http_requests_total": "counter",
    "herald_http_request_duration_seconds": "histogram",
}

PROVISIONED_DASHBOARDS_DIR = "/etc/grafana/dashboards"

problems: list[str] = []
notes: list[str] = []


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


def load_yaml(rel: str):
    path = ROOT / rel
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        problem(rel, f"cannot be read as YAML: {err}")
        return None


def seconds(text: str) -> float:
    """A humantime/systemd duration such as "30s", "1m 30s", "75s", "2min"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    if not parts:
        raise ValueError(f"not a duration: {text!r}")
    for number, unit in parts:
        if unit not in units and unit != "":
            raise ValueError(f"unknown unit in {text!r}")
        total += float(number) * units.get(unit, 1)
    return total


def shutdown_timeout() -> float:
    defaults = tomllib.loads((ROOT / "config/default.toml").read_text())
    return seconds(defaults["server"]["shutdown_timeout"])


# --- Dockerfile ---------------------------------------------------------------


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns (Go's filepath.Match over the path
    from the context root, `**` for any depth, `!` to re-include, the last
    match winning) leave `path` out of the build context."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if re.fullmatch(regex + "(/.*)?", path):
            excluded = not negate
    return excluded


def check_dockerfile() -> None:
    where = "Dockerfile"
    text = (ROOT / where).read_text()
    root = tomllib.loads((ROOT / "Cargo.toml").read_text())
    # The dependency layer comes from cargo-chef's recipe (every manifest and
    # target, found by cargo), and the sources from the whole context: no
    # target or member is listed by hand. Only `[patch]` crates outside the
    # workspace are copied before the cook, since the recipe holds none.
    for needle, why in [
        ("cargo chef prepare", "cargo-chef's recipe step"),
        ("cargo chef cook", "cargo-chef's dependency step"),
        ("COPY . .", "the whole build context copied"),
    ]:
        if needle not in text:
            problem(where, f"lacks {why} ({needle})")
    cook_part = text.split("cargo chef cook", 1)[0]
    for patched in root.get("patch", {}).get("crates-io", {}).values():
        if isinstance(patched, dict) and "path" in patched and f"COPY {patched['path']} " not in cook_part:
            problem(where, f"the patched crate {patched['path']} is not copied before the dependency step")
    # Nothing cargo reads may be left out of the context.
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    inputs = ["Cargo.toml", "Cargo.lock", "config/default.toml"]
    inputs += [f"{m}/{part}" if m != "." else part for m in root["workspace"]["members"]
               for part in ("Cargo.toml", "src")]
    inputs += [p["path"] for p in root.get("patch", {}).get("crates-io", {}).values() if "path" in p]
    inputs += [str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("*.rs")]
    inputs += [str(path.relative_to(ROOT)) for path in (ROOT / "benches").rglob("*.rs")]
    for path in inputs:
        if dockerignored(path, patterns):
            problem(".dockerignore", f"leaves {path} out of the build context, and the build reads it")
    for needle, why in [
        ("USER 10001", "a non-root USER"),
        ('VOLUME ["/data"]', "the /data volume"),
        ("EXPOSE 8080", "EXPOSE 8080"),
        ("HERALD__DATA_DIR=/data", "HERALD__DATA_DIR=/data"),
        ("HERALD__SERVER__HOST=0.0.0.0", "HERALD__SERVER__HOST=0.0.0.0"),
        ("org.opencontainers.image.source", "the OCI labels"),
        ("STOPSIGNAL SIGTERM", "STOPSIGNAL SIGTERM"),
    ]:
        if needle not in text:
            problem(where, f"lacks {why} ({needle})")
    healthcheck = re.search(r"^HEALTHCHECK .*?(?<!\\)\n", text, re.S | re.M)
    if not healthcheck or "/health" not in healthcheck.group(0):
        problem(where, "has no HEALTHCHECK on /health")
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I))
    for line in text.splitlines():
        m = re.match(r"FROM\s+(\S+)", line)
        if m and m.group(1) not in stages and (":" not in m.group(1) or m.group(1).endswith(":latest")):
            problem(where, f"base image {m.group(1)} is not pinned to a tag")


# --- Grafana dashboard --------------------------------------------------------


def walk_panels(panels: list) -> list:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(walk_panels(panel.get("panels", [])))
    return out


def metric_base(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and METRICS.get(name.removesuffix(suffix)) == "histogram":
            return name.removesuffix(suffix)
    return name


def rust_metric_names() -> tuple[set[str], set[str]]:
    """(shared names that appear as string literals in the Rust sources,
    names passed literally to the `metrics` macros)."""
    literals, recorded = set(), set()
    macro = re.compile(r'(?:counter|gauge|histogram)!\s*\(\s*"(herald_[a-z0-9_]+)"')
    for folder in ("src", "actors/src"):
        for path in (ROOT / folder).rglob("*.rs"):
            text = path.read_text()
            literals.update(n for n in re.findall(r'"(herald_[a-z0-9_]+)"', text) if n in METRICS)
            recorded.update(macro.findall(text))
    return literals | recorded, recorded


def check_dashboard(datasource_uids: set[str], rules_out: Path | None) -> None:
    where = "config/grafana/dashboards/herald.json"
    try:
        dashboard = json.loads((ROOT / where).read_text())
    except (OSError, json.JSONDecodeError) as err:
        problem(where, f"is not valid JSON: {err}")
        return
    raw = (ROOT / where).read_text()
    if "${DS_" in raw or "__inputs" in dashboard:
        problem(where, "uses an import-time ${DS_…} input; refer to the provisioned uid instead")
    if not dashboard.get("uid") or not dashboard.get("title"):
        problem(where, "needs a uid and a title")

    exprs: list[tuple[str, str]] = []
    ids = set()
    for panel in walk_panels(dashboard.get("panels", [])):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            problem(where, f"panel id {panel.get('id')} is used twice")
        ids.add(panel.get("id"))
        if "gridPos" not in panel:
            problem(where, f"panel {title!r} has no gridPos")
        if panel.get("type") == "row":
            continue
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
        for source in sources:
            if not isinstance(source, dict) or source.get("uid") not in datasource_uids:
                problem(where, f"panel {title!r} uses data source {source!r}, not a provisioned uid")
        if not panel.get("targets"):
            problem(where, f"panel {title!r} has no query")
        for target in panel.get("targets", []):
            exprs.append((title, target.get("expr", "")))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        ds = variable.get("datasource")
        if variable.get("type") == "query" and (not isinstance(ds, dict) or ds.get("uid") not in datasource_uids):
            problem(where, f"variable {variable.get('name')!r} does not use a provisioned data source")
        exprs.append((f"variable {variable.get('name')}", query))

    used = set()
    for title, expr in exprs:
        if not expr.strip():
            problem(where, f"{title!r} has an empty query")
        for name in re.findall(r"\b(herald_[a-z0-9_]+)", expr):
            base = metric_base(name)
            used.add(base)
            if base not in METRICS:
                problem(where, f"{title!r} queries {name}, which is not a shared metric name")
    for name in sorted(set(METRICS) - used):
        problem(where, f"no panel shows {name}")

    # Notes, not failures: metrics land in the code one part at a time, and a
    # new metric may come before its panel.
    in_code, recorded = rust_metric_names()
    if in_code:
        for name in sorted(used - in_code):
            notes.append(f"{where}: shows {name}, which the Rust sources do not name (yet)")
    for name in sorted(recorded - set(METRICS)):
        notes.append(f"src: records {name}, which the dashboard and the shared list do not know")

    if rules_out is not None:
        rules = []
        for i, (title, expr) in enumerate(exprs):
            if title.startswith("variable "):
                continue  # label_values(...) is Grafana's, not PromQL
            concrete = (
                expr.replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*")
                .replace("$app_id", ".*")
            )
            rules.append({"record": f"herald:dashboard_query_{i}", "expr": concrete})
        rules_out.write_text(yaml.safe_dump({"groups": [{"name": "herald-dashboard", "rules": rules}]}))


# --- compose and the services' configuration ---------------------------------


def check_compose() -> None:
    where = "compose.yaml"
    compose = load_yaml(where)
    if not isinstance(compose, dict):
        return
    services = compose.get("services", {})
    for name in ("herald", "postgres", "otel-collector", "prometheus", "grafana"):
        if name not in services:
            problem(where, f"has no {name} service")
    for name, service in services.items():
        image = service.get("image", "")
        if "build" not in service and (":" not in image or image.endswith(":latest")):
            problem(where, f"service {name} image {image!r} is not pinned to a tag")
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")) and not (ROOT / source).exists():
                problem(where, f"service {name} mounts {source}, which does not exist")
    herald = services.get("herald", {})
    env = herald.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    expected = {
        "HERALD__DATABASE__URL": "@postgres:5432/",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318",
        "OTEL_SERVICE_NAME": "herald",
    }
    for key, fragment in expected.items():
        if fragment not in str(env.get(key, "")):
            problem(where, f"herald's {key} should contain {fragment!r}")
    dockerfile = herald.get("build", {}).get("dockerfile", "Dockerfile")
    if not (ROOT / herald.get("build", {}).get("context", ".") / dockerfile).exists():
        problem(where, "herald's build does not point at the Dockerfile")
    grace = seconds(str(herald.get("stop_grace_period", "10s")))
    if grace <= 2 * shutdown_timeout():
        problem(where, f"herald's stop_grace_period ({grace:.0f}s) does not cover twice server.shutdown_timeout")
    depends = herald.get("depends_on", {})
    if not isinstance(depends, dict) or depends.get("postgres", {}).get("condition") != "service_healthy":
        problem(where, "herald should wait for a healthy postgres")
    if "healthcheck" not in services.get("postgres", {}):
        problem(where, "postgres has no healthcheck")

    grafana = services.get("grafana", {})
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana.get("volumes", []) if isinstance(v, str)}
    if mounts.get(PROVISIONED_DASHBOARDS_DIR) != "./config/grafana/dashboards":
        problem(where, f"grafana should mount ./config/grafana/dashboards at {PROVISIONED_DASHBOARDS_DIR}")
    if mounts.get("/etc/grafana/provisioning") != "./config/grafana/provisioning":
        problem(where, "grafana should mount ./config/grafana/provisioning at /etc/grafana/provisioning")


def check_prometheus() -> None:
    where = "config/prometheus.yml"
    config = load_yaml(where)
    if not isinstance(config, dict):
        return
    for job in config.get("scrape_configs", []):
        targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
        if "herald:8080" in targets and job.get("metrics_path", "/metrics") == "/metrics":
            return
    problem(where, "no job scrapes herald:8080/metrics")


def check_collector() -> None:
    where = "config/otel-collector.yaml"
    config = load_yaml(where)
    if not isinstance(config, dict):
        return
    protocols = (config.get("receivers", {}).get("otlp") or {}).get("protocols", {})
    for protocol, port in (("http", "4318"), ("grpc", "4317")):
        if not str((protocols.get(protocol) or {}).get("endpoint", "")).endswith(port):
            problem(where, f"the otlp receiver does not listen for {protocol} on {port}")
    service = config.get("service", {})
    for extension in service.get("extensions", []):
        if extension not in config.get("extensions", {}):
            problem(where, f"service uses undefined extension {extension}")
    pipelines = service.get("pipelines", {})
    if "traces" not in pipelines:
        problem(where, "has no traces pipeline")
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                if component not in (config.get(kind) or {}):
                    problem(where, f"pipeline {name} uses undefined {kind[:-1]} {component}")
    if "batch" not in pipelines.get("traces", {}).get("processors", []):
        problem(where, "the traces pipeline does not batch")


def check_grafana_provisioning() -> set[str]:
    where = "config/grafana/provisioning/datasources/datasources.yaml"
    config = load_yaml(where) or {}
    uids = {ds.get("uid") for ds in config.get("datasources", []) if ds.get("uid")}
    if "prometheus" not in uids:
        problem(where, "provisions no Prometheus data source with uid 'prometheus'")
    for ds in config.get("datasources", []):
        if ds.get("type") == "prometheus" and ds.get("url") != "http://prometheus:9090":
            problem(where, "the Prometheus data source should point at http://prometheus:9090")
    where = "config/grafana/provisioning/dashboards/herald.yaml"
    config = load_yaml(where) or {}
    paths = [p.get("options", {}).get("path") for p in config.get("providers", [])]
    if PROVISIONED_DASHBOARDS_DIR not in paths:
        problem(where, f"no provider loads {PROVISIONED_DASHBOARDS_DIR}")
    return uids


# --- systemd ------------------------------------------------------------------


def check_systemd_unit() -> None:
    where = "config/herald.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    try:
        parser.read_string((ROOT / where).read_text())
    except configparser.Error as err:
        problem(where, f"cannot be parsed: {err}")
        return
    service = parser["Service"] if parser.has_section("Service") else {}
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "StateDirectory": "herald",
        "ReadWritePaths": "/var/lib/herald",
    }
    for key, value in expected.items():
        if service.get(key) != value:
            problem(where, f"{key} should be {value}")
    for key in ("User", "EnvironmentFile", "ExecStart", "TimeoutStopSec"):
        if not service.get(key):
            problem(where, f"has no {key}")
    if service.get("User") in (None, "root"):
        problem(where, "should run as a dedicated user")
    if service.get("TimeoutStopSec"):
        stop = seconds(service["TimeoutStopSec"])
        if stop <= 2 * shutdown_timeout():
            problem(where, f"TimeoutStopSec ({stop:.0f}s) does not cover twice server.shutdown_timeout")


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--promql-rules", type=Path, help="write the dashboard's queries to this rules file")
    opts = args.parse_args()

    check_dockerfile()
    uids = check_grafana_provisioning()
    check_dashboard(uids, opts.promql_rules)
    check_compose()
    check_prometheus()
    check_collector()
    check_systemd_unit()
    for line in notes:
        print(f"note: {line}")
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in the deployment files", file=sys.stderr)
        return 1
    print("deployment files: Dockerfile, compose.yaml, config/ consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
