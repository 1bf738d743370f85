"""The real node's derived network and the configs it writes (no containerd, no kubelet run)."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

from e2e.harness.node import NODE_KIND_LABEL, NodeNetwork, RealNode
from e2e.harness.pki import ensure_pki


def _node(tmp_path: Path, base: int = 5000) -> RealNode:
    pki = ensure_pki(tmp_path / "pki")
    node = RealNode(state=tmp_path, bin_dir=tmp_path / "bin", pki=pki, base=base,
                    api_service_ip="10.0.0.1", api_port=6443 + base)
    for d in ("cni/net.d", "pki"):
        (node.dir / d).mkdir(parents=True, exist_ok=True)
    return node


def test_network_rule_distinct_per_base() -> None:
    nets = {b: NodeNetwork.for_base(b) for b in range(0, 25000, 100)}
    assert len({n.subnet for n in nets.values()}) == len(nets)
    assert len({n.bridge for n in nets.values()}) == len(nets)
    net = nets[5000]
    assert (net.bridge, net.subnet, net.node_ip) == ("ppnode51", "10.213.51.0/24", "10.213.51.1")
    assert all(len(n.bridge) <= 15 for n in nets.values())        # IFNAMSIZ
    assert all(ipaddress.ip_address(n.node_ip) in ipaddress.ip_network(n.subnet)
               for n in nets.values())


def test_cni_config_has_no_default_route_and_no_masquerade(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node._write_cni_config()
    conf = json.loads((node.dir / "cni" / "net.d" / "10-perfpilot.conflist").read_text())
    (bridge,) = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "ppnode51"
    assert bridge["isGateway"] and bridge["hairpinMode"] and not bridge["ipMasq"]
    assert "isDefaultGateway" not in bridge
    ipam = bridge["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.213.51.0/24", "gateway": "10.213.51.1"}]]
    # The only route besides the /24: the kubernetes Service IP, via the node.
    assert ipam["routes"] == [{"dst": "10.0.0.1/32", "gw": "10.213.51.1"}]
    assert ipam["dataDir"].startswith(str(node.dir))


def test_containerd_config(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node._write_containerd_config("localhost/perfpilot/pause:3.10.1")
    conf = tomllib.loads((node.dir / "containerd.toml").read_text())
    assert conf["grpc"]["address"] == node.containerd_address
    assert conf["root"].startswith(str(node.dir)) and conf["state"].startswith(str(node.dir))
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "localhost/perfpilot/pause:3.10.1"
    assert cri["restrict_oom_score_adj"] is True      # mandatory without CAP_SYS_RESOURCE
    assert cri["netns_mounts_under_state_dir"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is False
    assert cri["cni"]["conf_dir"] == str(node.dir / "cni" / "net.d")


def test_kubelet_config_authenticates_and_is_placed_apart(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node._write_kubelet_files("https://127.0.0.1:11443")
    cfg = json.loads((node.dir / "kubelet.yaml").read_text())
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authentication"]["webhook"]["enabled"] is True
    assert cfg["authentication"]["x509"]["clientCAFile"] == str(node.pki.ca_crt)
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["readOnlyPort"] == 0
    assert (cfg["address"], cfg["port"]) == ("10.213.51.1", 15250)
    assert cfg["cgroupDriver"] == "cgroupfs" and cfg["cgroupRoot"] == "/perfpilot-node-51"
    assert cfg["registerWithTaints"] == [{"key": NODE_KIND_LABEL, "value": "real",
                                          "effect": "NoSchedule"}]
    assert f"--node-labels={NODE_KIND_LABEL}=real" in node._kubelet_args()
    kubeconfig = json.loads((node.dir / "kubelet.kubeconfig").read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:11443"


def test_kubelet_identity_certificates(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    node = _node(tmp_path)
    node._write_kubelet_files("https://127.0.0.1:11443")
    kubeconfig = json.loads((node.dir / "kubelet.kubeconfig").read_text())
    client = x509.load_pem_x509_certificate(
        Path(kubeconfig["users"][0]["user"]["client-certificate"]).read_bytes())
    subject = client.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:real-node"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    cfg = json.loads((node.dir / "kubelet.yaml").read_text())
    serving = x509.load_pem_x509_certificate(Path(cfg["tlsCertFile"]).read_bytes())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.213.51.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert serving.issuer == x509.load_pem_x509_certificate(node.pki.ca_crt.read_bytes()).subject
