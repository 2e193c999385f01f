#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests against the binaries they run.

Usage: check-deploy.py MEDALLION_BINARY DOCKERFILE RENDERED.yaml...

- every container runs `medallion run STAGE` for a stage the binary knows;
- every MEDALLION__ environment variable names a configuration key that stage accepts
  (`medallion config keys STAGE`);
- every probe points at the container port the stage serves its HTTP endpoint on
  (`telemetry.port` of `medallion config defaults STAGE`), and at a path the running binary
  answers (the stage is started and asked: anything but 404 counts);
- the image copies exactly the workspace's release binaries (cargo metadata);
- the custom resources (ScaledObject, ServiceMonitor, PrometheusRule) have the fields their
  controllers need, since no schema for them is available offline.
Exits 1 with one line per problem.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

problems = []


def problem(text):
    problems.append(text)


def stage_keys(binary, stage, cache={}):
    if stage not in cache:
        out = subprocess.run([binary, "config", "keys", stage], check=True,
                             capture_output=True, text=True).stdout
        cache[stage] = set(out.split())
    return cache[stage]


def stage_defaults(binary, stage, cache={}):
    if stage not in cache:
        out = subprocess.run([binary, "config", "defaults", stage], check=True,
                             capture_output=True, text=True).stdout
        cache[stage] = json.loads(out)
    return cache[stage]


def env_key(name):
    """MEDALLION__A__B__C -> a.b.c; under a librdkafka table, the table itself."""
    segments = [s.lower() for s in name[len("MEDALLION__"):].split("__")]
    if len(segments) == 3 and segments[1] == "librdkafka":
        return f"{segments[0]}.librdkafka"
    return ".".join(segments)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_statuses(binary, stage, paths):
    """Starts the stage against an unreachable broker and asks its endpoint for `paths`."""
    port = free_port()
    env = dict(os.environ,
               MEDALLION__TELEMETRY__BIND='"127.0.0.1"',
               MEDALLION__TELEMETRY__PORT=str(port),
               MEDALLION__KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
               MEDALLION__SUMMARY__ENABLED="false")
    # In a directory of its own: a stage may create files there (the audit writer's SQLite store).
    workdir = tempfile.mkdtemp(prefix="medallion-deploy-check-")
    process = subprocess.Popen([os.path.abspath(binary), "run", stage], env=env, cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    statuses = {}
    try:
        deadline = time.time() + 20
        for path in paths:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                        statuses[path] = r.status
                        break
                except urllib.error.HTTPError as error:
                    statuses[path] = error.code
                    break
                except OSError:
                    if time.time() > deadline or process.poll() is not None:
                        statuses[path] = None
                        break
                    time.sleep(0.2)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return statuses


def workspace_binaries():
    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
        check=True, capture_output=True, text=True).stdout)
    names = set()
    for package in metadata["packages"]:
        if package.get("publish") == []:  # tests and benches: not shipped
            continue
        for target in package["targets"]:
            if "bin" in target["kind"]:
                names.add(target["name"])
    return names


def check_deployment(binary, document, source):
    name = document["metadata"]["name"]
    for container in document["spec"]["template"]["spec"]["containers"]:
        args = container.get("args", [])
        stage = args[0] if args else None
        try:
            keys = stage_keys(binary, stage)
        except subprocess.CalledProcessError:
            problem(f"{source}: {name}: `{stage}` is not a stage `medallion run` knows")
            continue
        for variable in container.get("env", []):
            if variable["name"].startswith("MEDALLION__"):
                key = env_key(variable["name"])
                if key not in keys:
                    problem(f"{source}: {name}: {variable['name']} sets `{key}`, which {stage} does not accept")
        port = stage_defaults(binary, stage)["telemetry"]["port"]
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        paths = []
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(probe_name)
            if probe is None:
                if probe_name != "startupProbe":
                    problem(f"{source}: {name}: no {probe_name}")
                continue
            get = probe.get("httpGet") or {}
            target = get.get("port")
            target = ports.get(target, target)
            if target != port:
                problem(f"{source}: {name}: {probe_name} port {get.get('port')} is {target}, the stage serves {port}")
            paths.append(get.get("path"))
        statuses = served_statuses(binary, stage, paths)
        for path, status in statuses.items():
            if status is None or status == 404:
                problem(f"{source}: {name}: the {stage} binary does not serve {path} (status {status})")
        context = container.get("securityContext", {})
        if not context.get("readOnlyRootFilesystem"):
            problem(f"{source}: {name}: the root filesystem is not read-only")
        grace = document["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        drain_ms = stage_defaults(binary, stage)["consumer"]["drain_timeout_ms"]
        if grace * 1000 <= drain_ms:
            problem(f"{source}: {name}: terminationGracePeriodSeconds {grace} is not above the drain timeout")


def check_custom(document, source, deployments):
    kind = document["kind"]
    name = document["metadata"]["name"]
    spec = document.get("spec", {})
    if kind == "ScaledObject":
        target = spec.get("scaleTargetRef", {}).get("name")
        if target not in deployments:
            problem(f"{source}: ScaledObject {name} scales `{target}`, which is not a Deployment here")
        for trigger in spec.get("triggers", []):
            metadata = trigger.get("metadata", {})
            for field in ("consumerGroup", "topic", "lagThreshold"):
                if field not in metadata:
                    problem(f"{source}: ScaledObject {name}: kafka trigger lacks {field}")
        if not isinstance(spec.get("maxReplicaCount"), int):
            problem(f"{source}: ScaledObject {name}: no maxReplicaCount")
    elif kind == "ServiceMonitor":
        for endpoint in spec.get("endpoints", []):
            if endpoint.get("path") != "/metrics" or endpoint.get("port") != "metrics":
                problem(f"{source}: ServiceMonitor {name}: scrapes {endpoint}, not port metrics /metrics")
    elif kind == "PrometheusRule":
        for group in spec.get("groups", []):
            for rule in group.get("rules", []):
                expr = rule.get("expr", "")
                if not rule.get("alert") or not expr:
                    problem(f"{source}: PrometheusRule {name}: a rule without alert or expr")
                for metric in re.findall(r"medallion_[a-z_]+", expr):
                    if metric not in KNOWN_METRICS:
                        problem(f"{source}: PrometheusRule {name}: `{metric}` is not a medallion metric")


def known_metrics():
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "metrics.md")).read()
    return set(re.findall(r"\| `(medallion_[a-z_]+)` \|", text))


def main():
    binary, dockerfile, rendered = sys.argv[1], sys.argv[2], sys.argv[3:]
    for source in rendered:
        documents = [d for d in yaml.safe_load_all(open(source)) if d]
        deployments = {d["metadata"]["name"] for d in documents if d["kind"] == "Deployment"}
        if not deployments:
            problem(f"{source}: no Deployment")
        for document in documents:
            if document["kind"] == "Deployment":
                check_deployment(binary, document, source)
            else:
                check_custom(document, source, deployments)
    copied = set()
    for line in open(dockerfile).read().replace("\\\n", " ").splitlines():
        copied.update(re.findall(r"target/release/([A-Za-z0-9_-]+)", line))
    expected = workspace_binaries()
    if copied != expected:
        problem(f"{dockerfile}: copies {sorted(copied)}, the workspace builds {sorted(expected)}")
    for text in problems:
        print(f"deploy check: {text}")
    if problems:
        sys.exit(1)
    print(f"deploy check: {len(rendered)} overlays, image binaries {sorted(copied)}: ok")


KNOWN_METRICS = known_metrics()

if __name__ == "__main__":
    main()
