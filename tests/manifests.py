"""Questions about a rendered overlay, as Kubernetes would answer them.

Which pods a selector picks, which container port a Service or probe port
resolves to, what environment a container gets from its ConfigMaps, what a
`$(VAR)` in its arguments expands to, and which traffic the NetworkPolicies
let in. tests/test_deploy_invariants.py checks the overlays with these.
"""

import ipaddress
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]

SIZE_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("2Gi", "500m", "4", 1) as a number."""
    text = str(value)
    if text.endswith("m") and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) / 1000
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not match or match.group(2) not in SIZE_UNITS:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * SIZE_UNITS[match.group(2)]


def selector_matches(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against a label set.
    An empty selector matches everything, as in a NetworkPolicy's podSelector."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def service_selects(service: Manifest, labels: dict[str, str]) -> bool:
    """A Service's plain label map (not a LabelSelector); none selects nothing."""
    wanted = service["spec"].get("selector") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


@dataclass
class Workload:
    """A Deployment's pod template, as the pods it creates will be."""

    deployment: Manifest

    @property
    def name(self) -> str:
        return self.deployment["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.deployment["metadata"].get("namespace", "default")

    @property
    def pod(self) -> Manifest:
        return self.deployment["spec"]["template"]

    @property
    def spec(self) -> Manifest:
        return self.pod["spec"]

    @property
    def labels(self) -> dict[str, str]:
        return self.pod["metadata"].get("labels", {})

    def containers(self) -> list[Manifest]:
        return [*self.spec.get("initContainers", []), *self.spec["containers"]]

    def container(self, name: str | None = None) -> Manifest:
        containers = self.spec["containers"]
        if name is None:
            assert len(containers) == 1, f"{self.name}: name the container"
            return containers[0]
        return next(c for c in containers if c["name"] == name)

    def volume(self, name: str) -> Manifest:
        return next(v for v in self.spec.get("volumes", []) if v["name"] == name)

    def mount(self, container: Manifest, path: str) -> Manifest | None:
        """The volume mounted at `path` in the container, or None."""
        for m in container.get("volumeMounts", []):
            if m["mountPath"] == path:
                return self.volume(m["name"])
        return None


def container_port(container: Manifest, port: int | str) -> int:
    """The container port a name or number (a Service targetPort, a probe's
    port, a NetworkPolicy port) refers to; KeyError when it names none."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise KeyError(f"container {container['name']} has no port named {port!r}")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args; $$(VAR) escapes.
    An undefined $(VAR) is left as is, as Kubernetes does."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$?\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)


class Rendering:
    """The objects of one rendered overlay."""

    def __init__(self, objects: list[Manifest]) -> None:
        self.objects = objects

    def all(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} {kind} named {name}")
        return found[0]

    def workloads(self) -> list[Workload]:
        return [Workload(d) for d in self.all("Deployment")]

    def workload(self, name: str) -> Workload:
        return Workload(self.get("Deployment", name))

    def selected(self, selector: Manifest | None, namespace: str) -> list[Workload]:
        """The workloads whose pods a LabelSelector picks in a namespace."""
        return [
            w
            for w in self.workloads()
            if w.namespace == namespace and selector_matches(selector, w.labels)
        ]

    def backends(self, service: Manifest) -> list[Workload]:
        namespace = service["metadata"].get("namespace", "default")
        return [
            w
            for w in self.workloads()
            if w.namespace == namespace and service_selects(service, w.labels)
        ]

    def env(self, container: Manifest) -> dict[str, str]:
        """The container's environment: envFrom ConfigMaps, then env
        (configMapKeyRef and resourceFieldRef resolved; a secretKeyRef, whose
        value is not in the rendering, as "<secret NAME:KEY>"; envFrom Secrets
        are left out)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                data = self.get("ConfigMap", source["configMapRef"]["name"]).get("data", {})
                prefix = source.get("prefix", "")
                env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "configMapKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["configMapKeyRef"]
                env[var["name"]] = self.get("ConfigMap", ref["name"])["data"][ref["key"]]
            elif "secretKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = f"<secret {ref['name']}:{ref['key']}>"
            elif "resourceFieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = resource_field(container, var["valueFrom"]["resourceFieldRef"])
        return env

    def secret_refs(self, container: Manifest) -> list[Manifest]:
        """Where the container's Secrets come in: envFrom secretRefs and env
        secretKeyRefs, as written (Secrets are not in the rendering)."""
        refs = [s["secretRef"] for s in container.get("envFrom", []) if "secretRef" in s]
        refs += [
            v["valueFrom"]["secretKeyRef"]
            for v in container.get("env", [])
            if "secretKeyRef" in v.get("valueFrom", {})
        ]
        return refs

    def args(self, container: Manifest) -> list[str]:
        """command + args, $(VAR)-expanded from the container's environment."""
        env = self.env(container)
        return [expand(a, env) for a in [*container.get("command", []), *container["args"]]]

    def ingress_allowed(
        self,
        to: Workload,
        port: int,
        from_labels: dict[str, str],
        from_namespace: str,
        namespace_labels: dict[str, str] | None = None,
    ) -> bool:
        """Would the NetworkPolicies let a pod with `from_labels` in
        `from_namespace` (whose labels are `namespace_labels`, by default just
        kubernetes.io/metadata.name) connect to `to`'s pods on TCP `port`?"""
        ns_labels = namespace_labels or {"kubernetes.io/metadata.name": from_namespace}
        container = to.container()
        policies = [
            p
            for p in self.all("NetworkPolicy")
            if p["metadata"].get("namespace", "default") == to.namespace
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
            and selector_matches(p["spec"].get("podSelector"), to.labels)
        ]
        if not policies:
            return True  # not isolated
        for policy in policies:
            for rule in policy["spec"].get("ingress", []):
                if self._port_allowed(rule.get("ports"), container, port) and self._peer_allowed(
                    rule.get("from"), to.namespace, from_labels, from_namespace, ns_labels
                ):
                    return True
        return False

    def egress_allowed(
        self,
        source: Workload,
        port: int,
        to_labels: dict[str, str],
        to_namespace: str,
        protocol: str = "TCP",
        to_namespace_labels: dict[str, str] | None = None,
        to: Workload | None = None,
        to_ip: str | None = None,
    ) -> bool:
        """Would the NetworkPolicies let `source`'s pods connect to a pod with
        `to_labels` in `to_namespace` on `port`/`protocol`? `to`, when the
        destination is a workload of this rendering, resolves named ports.
        `to_ip`: an address outside the cluster instead (judged by ipBlocks
        only; selectors pick pods, never outside hosts)."""
        ns_labels = to_namespace_labels or {"kubernetes.io/metadata.name": to_namespace}
        policies = [
            p
            for p in self.all("NetworkPolicy")
            if p["metadata"].get("namespace", "default") == source.namespace
            and "Egress" in p["spec"].get("policyTypes", [])
            and selector_matches(p["spec"].get("podSelector"), source.labels)
        ]
        if not policies:
            return True  # not isolated for egress
        target = to.container() if to is not None else None
        for policy in policies:
            for rule in policy["spec"].get("egress", []):
                if self._port_allowed(rule.get("ports"), target, port, protocol):
                    peers = rule.get("to")
                    if to_ip is not None:
                        if self._ip_allowed(peers, to_ip):
                            return True
                    elif self._peer_allowed(
                        peers, source.namespace, to_labels, to_namespace, ns_labels
                    ):
                        return True
        return False

    @staticmethod
    def _ip_allowed(peers: list[Manifest] | None, ip: str) -> bool:
        if not peers:
            return True
        address = ipaddress.ip_address(ip)
        for peer in peers:
            block = peer.get("ipBlock")
            if (
                block
                and address in ipaddress.ip_network(block["cidr"])
                and not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
            ):
                return True
        return False

    @staticmethod
    def _port_allowed(
        ports: list[Manifest] | None, container: Manifest | None, port: int, protocol: str = "TCP"
    ) -> bool:
        if not ports:
            return True
        for p in ports:
            if p.get("protocol", "TCP") != protocol:
                continue
            if "port" not in p:
                return True
            if isinstance(p["port"], int):
                if p["port"] == port:
                    return True
                continue
            try:
                if container is not None and container_port(container, p["port"]) == port:
                    return True
            except KeyError:
                continue  # a named port the pod does not have matches nothing
        return False

    @staticmethod
    def _peer_allowed(
        peers: list[Manifest] | None,
        policy_namespace: str,
        from_labels: dict[str, str],
        from_namespace: str,
        ns_labels: dict[str, str],
    ) -> bool:
        if not peers:
            return True  # no `from`: every source
        for peer in peers:
            if "ipBlock" in peer:
                continue  # pod traffic is judged by selectors here
            pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
            if ns_sel is None:
                in_namespace = from_namespace == policy_namespace
            else:
                in_namespace = selector_matches(ns_sel, ns_labels)
            if in_namespace and (pod_sel is None or selector_matches(pod_sel, from_labels)):
                return True
        return False


def resource_field(container: Manifest, ref: Manifest) -> str:
    """A resourceFieldRef's value as the kubelet writes it: the container's
    request or limit divided by `divisor`, rounded up to an integer."""
    kind, _, resource = ref["resource"].partition(".")
    value = quantity(container["resources"][kind][resource])
    return str(math.ceil(value / quantity(ref.get("divisor", "1"))))


def iter_containers(rendering: Rendering) -> Iterator[tuple[Workload, Manifest]]:
    for workload in rendering.workloads():
        for container in workload.containers():
            yield workload, container
