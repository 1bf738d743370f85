"""The scale benchmark's webhook burst (`scale_webhook_added_ms_p99_burst`): 1,000 pod CREATEs
with perfpilot's webhook, without any, and through a floor webhook making the same change; the
webhooks' timing by the API server and by the operator. Run by bench/scale_bench.py."""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.common import Entry, entry, free_port, median, percentile

if TYPE_CHECKING:
    from e2e.harness.scale import Scale


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """q-quantile of the observations between two scrapes of a cumulative histogram, linearly
    interpolated inside its bucket (PromQL's histogram_quantile); nan without observations."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, cum in zip(bounds, counts):
        if cum >= rank:
            if math.isinf(bound):
                return lower        # in the +Inf bucket: its lower bound, as PromQL does
            return lower + (bound - lower) * (rank - below) / max(cum - below, 1e-12)
        lower, below = bound, cum
    return lower


class Admission:
    """The pod webhook's timing between two scrapes: the API server's own view of each call
    (apiserver_admission_webhook_admission_duration_seconds: network, TLS, queueing, handling)
    and the operator's (perfpilot_operator_webhook_duration_seconds: handling only)."""

    API = "apiserver_admission_webhook_admission_duration_seconds"
    OPERATOR = "perfpilot_operator_webhook_duration_seconds"

    def __init__(self, sc: Scale) -> None:
        from perfpilot_operator.logic.webhooks import POD_HANDLER_ID, POD_WEBHOOK

        self.sc = sc
        self.api_labels = {"name": POD_WEBHOOK, "operation": "CREATE", "type": "admit"}
        self.floor_labels = {**self.api_labels, "name": FLOOR_WEBHOOK}
        self.op_labels = {"webhook": POD_HANDLER_ID}
        self.before = self._scrape()

    def _scrape(self) -> dict[str, Any]:
        from e2e.harness.scale import parse_counter, parse_histogram

        api, op = self.sc.apiserver_metrics(), self.sc.operator_metrics()
        out: dict[str, Any] = {}
        for view, text, name, labels in (("api", api, self.API, self.api_labels),
                                         ("floor", api, self.API, self.floor_labels),
                                         ("op", op, self.OPERATOR, self.op_labels)):
            out[view] = parse_histogram(text, name, labels)
            out[view + "_sum"] = parse_counter(text, name + "_sum", labels)
        return out

    def summary(self) -> dict[str, float]:
        """p50/p99/mean in ms of the three views since construction, and the call counts."""
        a, b = self.before, self._scrape()
        out: dict[str, float] = {}
        for view in ("api", "floor", "op"):
            n = b[view].get(math.inf, 0.0) - a[view].get(math.inf, 0.0)
            out[f"{view}_n"] = n
            out[f"{view}_mean"] = 1000 * (b[view + "_sum"] - a[view + "_sum"]) / n if n else math.nan
            for q in (0.5, 0.99):
                out[f"{view}_p{round(q * 100)}"] = 1000 * bucket_quantile(a[view], b[view], q)
        return out


def webhook_burst(sc: Scale, n: int, threads: int, log: Callable[[str], None]
                  ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """ms per pod CREATE in a burst of n concurrent creations, with the webhook (opted-in pods a
    profile selects) and without (the same pods without the opt-in label); arms alternate in
    chunks of 100 with a third arm, the floor: the same pod changed by FloorWebhook in the same
    way. Pods are scheduling-gated (never run) and deleted afterwards. Also: the webhooks'
    timing by the API server and by the operator, and the stored pods' sizes."""
    from e2e.harness.kubeapi import create_pod_raw
    from e2e.harness.scale import other_pod, profile_doc

    ns = sc.spec.namespace(0)
    prof = profile_doc("burst")
    sc.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(prof))
    time.sleep(2.0)     # the webhook's profile index sees it
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    sizes: dict[str, int] = {}

    def body(arm: str, name: str) -> dict[str, Any]:
        pod = other_pod(name, "", gated=True, inject=arm == "in")
        pod["metadata"]["labels"]["app"] = "burst"
        if arm == "floor":
            pod["metadata"]["labels"][FLOOR_LABEL] = "true"
        return pod

    def create(arm: str, i: int) -> None:
        t = time.perf_counter()
        out = create_pod_raw(sc.core, ns, body(arm, f"burst-{arm}-{i}"))
        dt = (time.perf_counter() - t) * 1000
        pod = json.loads(out.data)
        injected = (pod["metadata"].get("annotations") or {}).get("perfpilot.io/injected")
        if (injected == "true") != (arm != "out"):
            raise RuntimeError(f"burst pod {pod['metadata']['name']}: injected={injected}")
        times[arm].append(dt)
        sizes.setdefault(f"size_{arm}", len(out.data))

    # The floor's patch: what perfpilot's webhook did to the same pod (a probe, read back).
    probe = json.loads(create_pod_raw(sc.core, ns, body("in", "burst-probe")).data)
    floor = FloorWebhook(sc, ns, [{"op": "add", "path": "/metadata/annotations",
                                   "value": probe["metadata"]["annotations"]},
                                  {"op": "add", "path": "/spec", "value": probe["spec"]}])
    try:
        floor.start()
        create("floor", -1)          # the floor answers (and its connection is up)
        times["floor"].clear()
        admission = Admission(sc)
        t0 = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(create, arm, i) for start in range(0, n, 100)
                       for arm in ARMS for i in range(start, min(n, start + 100))]
            for f in futures:
                f.result()
        info = {**admission.summary(), **sizes, "load": os.getloadavg()[0]}
    finally:
        floor.stop()
    log(f"webhook burst: {len(ARMS) * n} creates ({threads} concurrent) in "
        f"{time.monotonic() - t0:.1f}s; the webhook's calls by the API server: p50 "
        f"{info['api_p50']:.1f} ms, p99 {info['api_p99']:.1f} ms, mean {info['api_mean']:.1f} "
        f"ms (the floor webhook's: p50 {info['floor_p50']:.1f}, p99 {info['floor_p99']:.1f}, "
        f"mean {info['floor_mean']:.1f}); handled by the operator: p50 {info['op_p50']:.2f} ms, "
        f"p99 {info['op_p99']:.2f} ms, mean {info['op_mean']:.2f} ms; pod "
        f"{sizes.get('size_in', 0)} vs {sizes.get('size_out', 0)} bytes; CREATE p99 in/out/"
        f"floor {percentile(times['in'], 0.99):.0f}/{percentile(times['out'], 0.99):.0f}/"
        f"{percentile(times['floor'], 0.99):.0f} ms")
    sc.core.delete_collection_namespaced_pod(ns, label_selector="app=burst",
                                             grace_period_seconds=0)
    sc.custom.delete_namespaced_custom_object("perfpilot.io", "v1alpha1", ns, "perfprofiles",
                                              "burst")
    return times, info


ARMS = ("in", "out", "floor")
FLOOR_WEBHOOK, FLOOR_LABEL, FLOOR_NAME = ("bench-floor.perfpilot.io", "perfpilot.io/bench-floor",
                                          "perfpilot-bench-floor")


class FloorWebhook:
    """bench/floor_webhook.py in a process of its own, and a MutatingWebhookConfiguration that
    sends it the burst's pods labelled FLOOR_LABEL (in the burst's namespace only)."""

    def __init__(self, sc: Scale, namespace: str, patch: list[dict[str, Any]]) -> None:
        self.sc, self.namespace, self.patch = sc, namespace, patch
        self.port = free_port()

    def start(self) -> None:
        import base64
        import socket
        import sys

        from e2e.harness import dev
        from e2e.harness.pki import issue_serving_cert
        from e2e.harness.procs import wait_until

        c = self.sc.cluster
        out = c.state / "bench-floor"
        crt, key = issue_serving_cert(c.pki, name="bench-floor", ips=["127.0.0.1"], dns=[],
                                      out_dir=out)
        (out / "patch.json").write_text(json.dumps(self.patch))
        proc = dev.start(c, FLOOR_NAME, [sys.executable, "-m", "bench.floor_webhook",
                                         "--port", str(self.port), "--cert", str(crt),
                                         "--key", str(key), "--patch", str(out / "patch.json")],
                         {})

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the floor webhook exited; see {c.logs / FLOOR_NAME}.log")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_until(listening, f"the floor webhook on port {self.port}", 30, 0.2)
        c.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration", "metadata": {"name": FLOOR_NAME},
            "webhooks": [{
                "name": FLOOR_WEBHOOK, "admissionReviewVersions": ["v1"],
                "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 10,
                "clientConfig": {"url": f"https://127.0.0.1:{self.port}/floor",
                                 "caBundle": base64.b64encode(c.pki.ca_crt.read_bytes())
                                 .decode()},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": self.namespace}},
                "objectSelector": {"matchLabels": {FLOOR_LABEL: "true"}}}]}))
        time.sleep(2.0)      # the API server's webhook informer sees it

    def stop(self) -> None:
        from e2e.harness import dev

        self.sc.cluster.kubectl("delete", "mutatingwebhookconfiguration", FLOOR_NAME,
                                "--ignore-not-found", check=False)
        dev.stop(self.sc.cluster, FLOOR_NAME)


def burst_entry(times: dict[str, list[float]], info: dict[str, float], threads: int) -> Entry:
    p99 = {arm: percentile(v, 0.99) for arm, v in times.items()}
    p50 = {arm: median(v) for arm, v in times.items()}
    return entry(
        p99["in"] - p99["out"], "ms", p99["out"],
        f"a burst of {len(times['in'])} opted-in pod CREATEs (a profile selects them; the "
        f"operator's mutating webhook injects the sidecar) interleaved in chunks of 100 with "
        f"{len(times['out'])} of the same pod without the opt-in label (the objectSelector "
        f"skips the webhook) and {len(times['floor'])} sent to a floor webhook instead "
        f"(bench/floor_webhook.py: aiohttp and TLS like kopf's server, in a process of its own, "
        f"answering at once with the very patch perfpilot made for that pod), {threads} "
        f"concurrent creates; value = p99 with perfpilot's webhook ({p99['in']:.1f} ms) minus "
        f"p99 without ({p99['out']:.1f} ms); baseline = p99 without. p50 {p50['in']:.1f} vs "
        f"{p50['out']:.1f} ms. The floor (any Python webhook making this change: the call, "
        f"the reviews' (de)serialisation, storing the larger pod): p99 {p99['floor']:.1f} ms, "
        f"p50 {p50['floor']:.1f} ms, i.e. {p99['floor'] - p99['out']:+.1f} ms p99 over no "
        f"webhook; perfpilot's beyond the floor: {p99['in'] - p99['floor']:+.1f} ms p99, "
        f"{p50['in'] - p50['floor']:+.1f} ms p50. The API server's own timing of each "
        f"webhook call (apiserver_admission_webhook_admission_duration_seconds, coarse "
        f"buckets): perfpilot's ({info['api_n']:.0f} calls) p50 {info['api_p50']:.1f} ms, p99 "
        f"{info['api_p99']:.1f} ms, mean {info['api_mean']:.1f} ms; the floor's "
        f"({info['floor_n']:.0f}) p50 {info['floor_p50']:.1f} ms, p99 {info['floor_p99']:.1f} "
        f"ms, mean {info['floor_mean']:.1f} ms. The operator's handling of a review "
        f"({info['op_n']:.0f}; perfpilot_operator_webhook_duration_seconds, from the body read "
        f"to the response) p50 {info['op_p50']:.2f} ms, p99 {info['op_p99']:.2f} ms, mean "
        f"{info['op_mean']:.2f} ms. The stored pod is {info.get('size_in', 0):.0f} bytes "
        f"injected vs {info.get('size_out', 0):.0f} without. Pods are scheduling-gated (never "
        f"run); load {info['load']:.1f} at the end of the burst. Target: <= 5 ms added.")
