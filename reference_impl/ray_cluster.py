"""Joining a Ray cluster (the optional `ray` extra): the install hint, and a driver connection.

Ray is imported only by the code that asks for it (`--executor ray`, `--launcher ray`), never on the
default path; without Ray installed those options end with one line saying how to install it.

`connect(address)` joins the cluster at `address` (host:port of its head, as printed by `ray start
--head`), or starts a private one on this machine when `address` is None, and leaves it on exit. A
cluster on the loopback address stays there: Ray turns "127.0.0.1" into the address this machine is
seen at from outside (the route to a public address) before connecting, which a head listening on
127.0.0.1 does not answer; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes that lookup answer 127.0.0.1 (it
also keeps `ray start --address` from adding nodes from this process's environment, which a driver
never does). A private cluster listens on 127.0.0.1 only and has no dashboard.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
from collections.abc import Iterator

from reference_impl.errors import ConfigError

RAY_VERSION = "2.60.0"  # the release the `ray` extra pins (pyproject.toml)
INSTALL_HINT = f"pip install 'lamina-bench[ray]' (Ray {RAY_VERSION})"
ROLES = ("compute", "attention")  # the roles a device type is named for (--ray-devices)
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def require_ray(what: str) -> None:
    """Imports Ray; ConfigError (one line, exit 2) naming how to install it when that fails."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{what} needs Ray, which is not installed; install it with: {INSTALL_HINT}"
        ) from None


def is_loopback(address: str | None) -> bool:
    """Whether a head address (host:port) is on this machine's loopback (None: a private cluster)."""
    if address is None:
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(address: str | None, option: str = "--address") -> None:
    """ConfigError unless `address` is None or HOST:PORT with a port number."""
    if address is None:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{option} must be HOST:PORT of the Ray head (e.g. 127.0.0.1:6379), got {address!r}"
        )


def parse_devices(text: str | None, option: str = "--ray-devices") -> dict[str, str]:
    """The Ray custom resource naming each role's device type: "compute=H100,attention=H20" ->
    {"compute": "H100", "attention": "H20"} (None: no device types, {})."""
    if text is None:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        role, _, name = (s.strip() for s in part.partition("="))
        if role not in ROLES or not name or role in out:
            raise ConfigError(
                f"{option} must be ROLE=RESOURCE pairs with roles {', '.join(ROLES)} "
                f"(e.g. compute=H100,attention=H20), got {text!r}"
            )
        out[role] = name
    return out


def stay_on_loopback() -> None:
    """Ray in this process takes 127.0.0.1 for this machine's address (module docstring)."""
    os.environ[_LOOPBACK_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray was imported before: the constant was read at import time
        constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def connect(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    """This process as the driver of the cluster at `address` (None: a private cluster on 127.0.0.1 with
    `num_cpus` CPUs, default all); already connected: that connection, left as it is."""
    check_address(address)
    require_ray("Ray")
    if is_loopback(address):
        stay_on_loopback()
    import ray

    if ray.is_initialized():
        yield
        return
    options = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": False}
    if address is None:
        options |= {"_node_ip_address": "127.0.0.1", "num_cpus": num_cpus or os.cpu_count() or 1}
    try:
        ray.init(address=address, **options)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
    try:
        yield
    finally:
        ray.shutdown()
