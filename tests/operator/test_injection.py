import copy
import json

from perfpilot_operator.logic.injection import (
    ANNOTATION_INJECTED, DEFAULT_SHARED_MEMORY, SHM_VOLUME, SIDECAR_NAME, SIDECAR_UID, SOCKET_VOLUME,
    SidecarTemplate, choose_profile, inject,
    selector_matches,
)

PROFILE = {
    "metadata": {"name": "agents", "namespace": "ai", "generation": 3,
                 "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "resources": {
            "app": {"container": "agent", "requests": {"cpu": "500m", "memory": "512Mi"},
                    "limits": {"cpu": "2", "memory": "2Gi"}},
            "sidecar": {"requests": {"cpu": "50m"}, "limits": {"cpu": "500m"}},
        },
    },
}
POD = {
    "metadata": {"name": "agent-1", "labels": {"app": "agent", "perfpilot.io/inject": "true"}},
    "spec": {"containers": [{"name": "log", "image": "busybox"},
                            {"name": "agent", "image": "agent:1", "env": [{"name": "A", "value": "1"}]}]},
}


def apply(pod: dict, changes: dict) -> dict:
    out = copy.deepcopy(pod)
    for path, value in changes.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return out


def test_native_sidecar_with_resources_socket_and_labels() -> None:
    inj = inject(POD, PROFILE, SidecarTemplate())
    pod = apply(POD, inj.changes)
    sidecar = pod["spec"]["initContainers"][-1]
    assert sidecar["name"] == SIDECAR_NAME and sidecar["restartPolicy"] == "Always"
    assert sidecar["resources"] == {"requests": {"cpu": "50m"}, "limits": {"cpu": "500m"}}
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "agent")
    assert app["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert {"name": SOCKET_VOLUME, "mountPath": "/var/run/perfpilot"} in app["volumeMounts"]
    assert {e["name"] for e in app["env"]} >= {"A", "PERFPILOT_SOCKET", "PERFPILOT_PROFILE"}
    assert "resources" not in pod["spec"]["containers"][0]   # the other container untouched
    assert pod["metadata"]["labels"]["perfpilot.io/profile"] == "agents"
    assert pod["metadata"]["labels"]["app"] == "agent"
    assert pod["metadata"]["annotations"][ANNOTATION_INJECTED] == "true"
    assert pod["metadata"]["annotations"]["perfpilot.io/profile-generation"] == "3"
    assert inj.warnings == ()
    assert POD["spec"]["containers"][1].get("resources") is None   # input not mutated


def test_reinjection_changes_nothing() -> None:
    pod = apply(POD, inject(POD, PROFILE, SidecarTemplate()).changes)
    assert inject(pod, PROFILE, SidecarTemplate()).empty


def test_regular_container_when_native_sidecars_are_unsupported() -> None:
    pod = apply(POD, inject(POD, PROFILE, SidecarTemplate(native_sidecar=False)).changes)
    assert "initContainers" not in pod["spec"]
    assert pod["spec"]["containers"][-1]["name"] == SIDECAR_NAME
    assert "restartPolicy" not in pod["spec"]["containers"][-1]


def test_unknown_app_container_warns_and_uses_the_first() -> None:
    profile = copy.deepcopy(PROFILE)
    profile["spec"]["resources"]["app"]["container"] = "missing"
    inj = inject(POD, profile, SidecarTemplate())
    assert "missing" in inj.warnings[0]
    assert inj.changes["spec.containers"][0]["resources"]["limits"]["cpu"] == "2"


def test_selectors() -> None:
    labels = {"app": "agent", "tier": "gpu"}
    assert selector_matches({"matchLabels": {"app": "agent"}}, labels)
    assert not selector_matches({"matchLabels": {"app": "web"}}, labels)
    assert selector_matches({"matchExpressions": [{"key": "tier", "operator": "In",
                                                   "values": ["gpu", "cpu"]}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "tier", "operator": "NotIn",
                                                       "values": ["gpu"]}]}, labels)
    assert selector_matches({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)
    assert not selector_matches({}, labels)


def test_choose_profile_prefers_the_oldest_and_warns() -> None:
    newer = copy.deepcopy(PROFILE)
    newer["metadata"].update(name="newer", creationTimestamp="2026-02-01T00:00:00Z")
    chosen, warnings = choose_profile([newer, PROFILE], {"app": "agent"})
    assert chosen is PROFILE and "newer" in warnings[0]
    assert choose_profile([PROFILE], {"app": "web"}) == (None, [])


def test_sidecar_starts_with_the_profiles_live_config() -> None:
    """PERFPILOT_CONFIG carries the live sections in CRD field names; the sidecar's own parser
    accepts it, so a new pod never runs on defaults while waiting for Configure."""
    import json

    from perfpilot_agent.liveconfig import proto_from_dict

    profile = copy.deepcopy(PROFILE)
    profile["spec"]["pools"] = {"processWorkers": 3, "maxQueue": 50}
    profile["spec"]["cache"] = {"ttl": "30s"}
    pod = apply(POD, inject(POD, profile, SidecarTemplate()).changes)
    env = {e["name"]: e.get("value") for e in pod["spec"]["initContainers"][-1]["env"]}
    data = json.loads(env["PERFPILOT_CONFIG"])
    assert data == {"pools": {"processWorkers": 3, "maxQueue": 50}, "cache": {"ttl": "30s"}}
    msg = proto_from_dict(data)
    assert msg.pools.process_workers == 3 and msg.cache.ttl.seconds == 30


RESTRICTED_CONTAINER = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]}}


def _sidecar(pod: dict) -> dict:
    return next(c for c in pod["spec"]["initContainers"] if c["name"] == SIDECAR_NAME)


def test_sidecar_satisfies_pod_security_restricted() -> None:
    pod = apply(POD, inject(POD, PROFILE, SidecarTemplate()).changes)
    ctx = _sidecar(pod)["securityContext"]
    assert ctx.items() >= RESTRICTED_CONTAINER.items()
    assert ctx["runAsUser"] == SIDECAR_UID != 0
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx["readOnlyRootFilesystem"] is True
    assert "securityContext" not in pod["spec"]          # the pod's own fields are not touched
    # Every volume the sidecar mounts is an emptyDir or the downwardAPI CA file (restricted
    # allows no hostPath etc.).
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for m in _sidecar(pod)["volumeMounts"]:
        assert set(volumes[m["name"]]) in ({"name", "emptyDir"}, {"name", "downwardAPI"}), m


CA = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"


def test_the_pod_gets_the_ca_certificate_and_no_secret() -> None:
    """The CA's public certificate travels in the pod's own annotation, mounted by a downwardAPI
    volume: no Secret, no ConfigMap, no secret env in the app's namespace."""
    pod = apply(POD, inject(POD, PROFILE, SidecarTemplate(ca_bundle=CA)).changes)
    assert pod["metadata"]["annotations"]["perfpilot.io/ca-bundle"] == CA
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "perfpilot-ca")
    assert volume["downwardAPI"]["items"] == [
        {"path": "ca.crt", "fieldRef": {"fieldPath": "metadata.annotations['perfpilot.io/ca-bundle']"}}]
    sidecar = _sidecar(pod)
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["PERFPILOT_CA_FILE"]["value"] == "/var/run/perfpilot-ca/ca.crt"
    assert {"name": "perfpilot-ca", "mountPath": "/var/run/perfpilot-ca", "readOnly": True} in sidecar["volumeMounts"]
    text = json.dumps(pod)
    assert "secretKeyRef" not in text and '"secret"' not in text and "configMap" not in text
    app = pod["spec"]["containers"][0]
    assert all(m["name"] != "perfpilot-ca" for m in app.get("volumeMounts", []))   # the app needs none


def test_probes_use_the_plaintext_health_port() -> None:
    """The kubelet's gRPC probes speak plaintext: never the mutual-TLS control port."""
    sidecar = _sidecar(apply(POD, inject(POD, PROFILE, SidecarTemplate(grpc_port=7000, health_port=7001)).changes))
    assert sidecar["startupProbe"]["grpc"] == {"port": 7001}
    assert sidecar["readinessProbe"]["grpc"] == {"port": 7001}
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]}["pp-grpc"] == 7000


def test_pod_level_seccomp_profile_is_left_to_the_pod() -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["securityContext"] = {"seccompProfile": {"type": "Localhost",
                                                         "localhostProfile": "app.json"},
                                      "runAsUser": 1000}
    out = apply(pod, inject(pod, PROFILE, SidecarTemplate()).changes)
    assert "seccompProfile" not in _sidecar(out)["securityContext"]
    assert out["spec"]["securityContext"] == pod["spec"]["securityContext"]
    # The pod's runAsUser (1000) does not apply to the sidecar: its own uid wins.
    assert _sidecar(out)["securityContext"]["runAsUser"] == SIDECAR_UID


def test_dev_shm_is_one_memory_volume_shared_by_app_and_sidecar() -> None:
    profile = copy.deepcopy(PROFILE)
    profile["spec"]["resources"]["sharedMemory"] = "768Mi"
    pod = apply(POD, inject(POD, profile, SidecarTemplate()).changes)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[SHM_VOLUME]["emptyDir"] == {"medium": "Memory", "sizeLimit": "768Mi"}
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "agent")
    for c in (app, _sidecar(pod)):
        assert {"name": SHM_VOLUME, "mountPath": "/dev/shm"} in c["volumeMounts"], c["name"]
    # The other app container keeps the pod's own /dev/shm.
    assert "volumeMounts" not in pod["spec"]["containers"][0]
    # Without the field: the default size.
    pod = apply(POD, inject(POD, PROFILE, SidecarTemplate()).changes)
    assert {v["name"]: v for v in pod["spec"]["volumes"]}[SHM_VOLUME]["emptyDir"]["sizeLimit"] \
        == DEFAULT_SHARED_MEMORY


def test_app_with_its_own_dev_shm_shares_it_with_the_sidecar() -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["containers"][1]["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    pod["spec"]["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                                            "sizeLimit": "4Gi"}}]
    out = apply(pod, inject(pod, PROFILE, SidecarTemplate()).changes)
    names = [v["name"] for v in out["spec"]["volumes"]]
    assert SHM_VOLUME not in names and names.count("dshm") == 1
    assert {"name": "dshm", "mountPath": "/dev/shm"} in _sidecar(out)["volumeMounts"]
    app = next(c for c in out["spec"]["containers"] if c["name"] == "agent")
    assert [m for m in app["volumeMounts"] if m["mountPath"] == "/dev/shm"] == \
        [{"name": "dshm", "mountPath": "/dev/shm"}]


def test_app_starts_after_the_sidecar_is_serving() -> None:
    """A native sidecar's startupProbe gates the app containers (kubelet ordering); it probes
    the gRPC health service, which reports SERVING only once the warm kernels are compiled."""
    sidecar = _sidecar(apply(POD, inject(POD, PROFILE, SidecarTemplate()).changes))
    probe = sidecar["startupProbe"]
    assert probe["grpc"] == {"port": 50052}      # the plaintext health port
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60


def test_pull_policy_of_the_sidecar_image() -> None:
    tmpl = SidecarTemplate(image="localhost/perfpilot/sidecar:abc", image_pull_policy="Never")
    sidecar = _sidecar(apply(POD, inject(POD, PROFILE, tmpl).changes))
    assert sidecar["image"] == "localhost/perfpilot/sidecar:abc"
    assert sidecar["imagePullPolicy"] == "Never"
    assert "imagePullPolicy" not in _sidecar(apply(POD, inject(POD, PROFILE,
                                                               SidecarTemplate()).changes))


def test_shared_cache_password_comes_from_the_apps_secret_by_reference() -> None:
    """cache.shared.credentialsSecret becomes a secretKeyRef env var of the sidecar (optional: a
    missing Secret degrades the shared tier, it never keeps the pod from starting); the password
    itself never appears in the pod spec or the live config the operator sends."""
    import json

    from perfpilot_contract.sharedcache import PASSWORD_ENV

    profile = copy.deepcopy(PROFILE)
    profile["spec"]["cache"] = {"shared": {"url": "redis://redis:6379/0",
                                           "credentialsSecret": {"name": "redis-auth", "key": "password"}}}
    sidecar = _sidecar(apply(POD, inject(POD, profile, SidecarTemplate()).changes))
    env = {e["name"]: e for e in sidecar["env"]}
    assert env[PASSWORD_ENV] == {"name": PASSWORD_ENV, "valueFrom": {"secretKeyRef": {
        "name": "redis-auth", "key": "password", "optional": True}}}
    assert json.loads(env["PERFPILOT_CONFIG"]["value"])["cache"]["shared"]["credentialsSecret"] == {
        "name": "redis-auth", "key": "password"}
    profile["spec"]["cache"]["shared"].pop("credentialsSecret")
    plain = _sidecar(apply(POD, inject(POD, profile, SidecarTemplate()).changes))
    assert PASSWORD_ENV not in {e["name"] for e in plain["env"]}


def test_shared_cache_ca_comes_from_the_apps_secret_by_reference() -> None:
    """cache.shared.tls.caSecret reaches the sidecar like the password: a secretKeyRef env var
    (optional), alone or next to the password; absent, no variable."""
    import json

    from perfpilot_contract.sharedcache import CA_ENV, PASSWORD_ENV

    profile = copy.deepcopy(PROFILE)
    profile["spec"]["cache"] = {"shared": {"url": "rediss://redis:6380/0",
                                           "credentialsSecret": {"name": "redis-auth", "key": "password"},
                                           "tls": {"caSecret": {"name": "redis-tls", "key": "ca.crt"}}}}
    sidecar = _sidecar(apply(POD, inject(POD, profile, SidecarTemplate()).changes))
    env = {e["name"]: e for e in sidecar["env"]}
    assert env[CA_ENV] == {"name": CA_ENV, "valueFrom": {"secretKeyRef": {
        "name": "redis-tls", "key": "ca.crt", "optional": True}}}
    assert env[PASSWORD_ENV]["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
    assert json.loads(env["PERFPILOT_CONFIG"]["value"])["cache"]["shared"]["tls"] == {
        "caSecret": {"name": "redis-tls", "key": "ca.crt"}}
    profile["spec"]["cache"]["shared"].pop("credentialsSecret")
    only_ca = {e["name"] for e in _sidecar(apply(POD, inject(POD, profile, SidecarTemplate()).changes))["env"]}
    assert CA_ENV in only_ca and PASSWORD_ENV not in only_ca
    profile["spec"]["cache"]["shared"]["tls"] = {}
    plain = {e["name"] for e in _sidecar(apply(POD, inject(POD, profile, SidecarTemplate()).changes))["env"]}
    assert CA_ENV not in plain
