"""GATEWAY_TRITON_URL as gRPC reads it. Its own module, below both readers: settings checks
the URL with it and model_server connects with it, and settings importing model_server (which
imports tracing, which reads Settings) was an import circle."""

import ipaddress


def grpc_target(url: str) -> str:
    """The gRPC target for GATEWAY_TRITON_URL.

    "host:port" and "dns:///name:port" pass through; a comma-separated list of
    "ip:port" replicas becomes gRPC's multi-address "ipv4:" (or "ipv6:") target,
    which one channel balances round robin. Names are refused in a list: gRPC
    resolves them only through "dns:///", which is the way to use several names.
    """
    endpoints = [e.strip() for e in url.split(",") if e.strip()]
    if not endpoints:
        raise ValueError("the Triton URL is empty")
    if len(endpoints) == 1:
        return endpoints[0]
    families = set()
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ValueError(
                f"{endpoint!r}: a list of Triton replicas takes ip:port only "
                "(use dns:///name:port for a name with several addresses)"
            ) from None
        if not port.isdigit():
            raise ValueError(f"{endpoint!r}: no port")
        families.add(address.version)
    if len(families) > 1:
        raise ValueError("a list of Triton replicas must be all IPv4 or all IPv6")
    return f"ipv{families.pop()}:" + ",".join(endpoints)
