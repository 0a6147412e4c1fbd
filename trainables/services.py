"""Real services that the tests and benchmarks/bench_cluster.py start on this machine, each on free
ports, in a folder of its own, and stopped at the end: a Ray cluster of several nodes, PostgreSQL,
an MLflow tracking server.

Ray's nodes are started the way a user starts them, `ray start --head` and `ray start --address`,
each with its own --temp-dir (so the `ray_current_cluster` file that a plain `ray.init()` would
join lies there, never in /tmp/ray) and with token authentication on: the cluster's token is a
file that every node and every driver names with RAY_AUTH_TOKEN_PATH.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 60
# The cluster tests' and benchmark's search space: TRADES's beta (no teacher to train), ASHA's
# grace period past the last epoch, so no trial is stopped early and each runs all its epochs.
CLUSTER_SPACE = """description: TRADES's beta on a cluster
kind: tune
metric: val/pgd_acc
base: {method: trades}
search:
  beta: {distribution: loguniform, low: 0.5, high: 20.0}
asha: {grace_period: 100}
"""
# smaller still than --smoke-test: 500 training and 200 validation images, 32 test images
SMALL_RUN = ("--set", "train_size=700", "--set", "val_size=200", "--attacks", "clean,pgd20",
             "--eval-n", "32")


# Ports for the test servers come from below the kernel's ephemeral range: every outgoing
# connection on the machine takes its local port from that range (as bind(0) does), so a port
# found free there can be taken by some connection before the server binds it. Ray's worker ports
# (10002-19999 by default) lie below this floor.
PORT_FLOOR = 20000


def ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports(n: int) -> list[int]:
    """n distinct ports nobody listens on now on any interface (all held open together, then
    released), drawn at random between PORT_FLOOR and the ephemeral range."""
    rng, top = random.SystemRandom(), ephemeral_start()
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket()
            try:
                s.bind(("", rng.randrange(PORT_FLOOR, top)))
            except OSError:  # in use (or just left by a closed connection)
                s.close()
                continue
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 10) -> None:
    """End a process started with start_new_session=True and everything it forked."""
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


class RayCluster:
    """A head node and worker nodes on this machine; `env` is what a driver needs to join it."""

    def __init__(self, *, head_cpus: int = 1, worker_cpus: tuple[int, ...] = (1,),
                 system_env: dict | None = None):
        # a short folder: Ray's socket paths under it must stay within 107 characters
        self.root = Path(tempfile.mkdtemp(prefix="smaraad-ray-", dir="/tmp"))
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        self.env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                base.get("PYTHONPATH")]))}
        self.node_env = {**self.env, **(system_env or {})}
        self.procs: dict[str, subprocess.Popen] = {}
        self.address = ""
        try:
            port = free_port()
            self._start("head", head_cpus, ["--head", "--port", str(port),
                                            "--include-dashboard", "false",
                                            "--dashboard-port", str(free_port())])
            self.address = (self.root / "head" / "ray_current_cluster").read_text().strip()
            for i, cpus in enumerate(worker_cpus):
                self._start(f"worker{i}", cpus, ["--address", self.address])
            self.node_ids = self.wait_for_nodes()
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, cpus: int, args: list[str]) -> None:
        written = self.root / name / "ray_current_cluster"  # ray start writes it once up
        written.unlink(missing_ok=True)  # a node of that name started before
        agent, grpc, metrics, runtime_env = free_ports(4)
        cmd = [RAY, "start", *args, "--temp-dir", str(self.root / name), "--num-cpus", str(cpus),
               "--object-store-memory", str(256 * 2**20), "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
               str(grpc), "--metrics-export-port", str(metrics), "--runtime-env-agent-port",
               str(runtime_env), "--block"]
        log = open(self.root / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(cmd, env=self.node_env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not written.exists():
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n"
                                   + (self.root / f"{name}.log").read_text()[-3000:])
            time.sleep(0.3)

    def wait_for_nodes(self) -> dict[str, str]:
        """{node name: Ray node id}, once the nodes alive in the cluster's node table are exactly
        those started and not killed (asked by a driver of its own, as a user's script would)."""
        script = ("import json, ray, time\n"
                  f"ray.init(address={self.address!r}, log_to_driver=False)\n"
                  f"for _ in range({START_TIMEOUT_S}):\n"
                  "    nodes = [n for n in ray.nodes() if n['Alive']]\n"
                  f"    if len(nodes) == {len(self.procs)}: break\n"
                  "    time.sleep(1)\n"
                  "print(json.dumps({n['NodeID']: n['ObjectStoreSocketName'] for n in nodes}))\n")
        out = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True,
                             text=True, timeout=2 * START_TIMEOUT_S)
        if out.returncode:
            raise RuntimeError(f"cannot list the cluster's nodes:\n{out.stderr[-3000:]}")
        sockets = json.loads(out.stdout.strip().splitlines()[-1])
        ids = {name: node_id for node_id, sock in sockets.items() for name in self.procs
               if sock.startswith(str(self.root / name) + os.sep)}
        if len(ids) != len(self.procs) or len(sockets) != len(self.procs):
            raise RuntimeError(f"{len(sockets)} nodes alive ({sorted(ids)} of ours) after "
                               f"{START_TIMEOUT_S} s; expected {sorted(self.procs)}")
        return ids

    def add_worker(self, name: str, cpus: int = 1) -> None:
        self._start(name, cpus, ["--address", self.address])
        self.node_ids = self.wait_for_nodes()

    @contextmanager
    def workers_paused(self, name: str):
        """The node's worker processes (its trials) SIGSTOPped while the block runs, then
        continued; its raylet, in the node's own process group, goes on answering Ray's health
        checks. A test that looks at a trial's progress this way sees it standing still."""
        node = self.procs[name]
        workers = [p for p in process_tree(node.pid) if _group(p) not in (node.pid, None)]
        for pid in workers:
            _signal(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in workers:
                _signal(pid, signal.SIGCONT)

    def freeze(self, name: str) -> list[int]:
        """SIGSTOP every process of a node (freeze_tree)."""
        return freeze_tree(self.procs[name])

    def kill(self, name: str) -> None:
        """SIGKILL a node and every process on it (raylet, its trial workers): lost as a machine
        that loses power, with no chance to say goodbye."""
        kill_tree(self.procs.pop(name))

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.kill(name)
        shutil.rmtree(self.root, ignore_errors=True)


def freeze_tree(proc: subprocess.Popen) -> list[int]:
    """SIGSTOP a process started with start_new_session=True and every process descended from
    it; return their ids. Its process group goes first (a raylet in it can then start no
    worker), then the descendants: Ray gives each worker process a process group of its own, so
    a signal to the group misses them, and a trial on a "lost" node (or of a killed driver's
    local instance) would go on training, and could finish."""
    try:
        os.killpg(proc.pid, signal.SIGSTOP)
    except ProcessLookupError:
        return []  # it ended by itself (a failed start)
    frozen: list[int] = []
    while new := [p for p in process_tree(proc.pid) if p not in frozen]:
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        frozen += new
    return frozen


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL what freeze_tree froze, and wait until none of it runs."""
    frozen = freeze_tree(proc)
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    stop_group(proc, signal.SIGKILL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while any(_alive(pid) for pid in frozen) and time.monotonic() < deadline:
        time.sleep(0.05)  # a killed process runs no more code, but is not gone at once


def process_tree(pid: int) -> list[int]:
    """pid and every process descended from it, read from /proc (Linux)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += parents.get(tree[-1], [])
    return tree


def _alive(pid: int) -> bool:
    """Neither ended nor a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def postgres_bin() -> Path | None:
    """The folder of Debian's (or any) PostgreSQL server binaries, or None."""
    found = shutil.which("pg_ctl")
    if found and Path(found).with_name("initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    return versions[-1].parent if versions else None


class Postgres:
    """A PostgreSQL server of its own: `initdb` into a fresh folder, listening on 127.0.0.1 only
    (and on a socket in that folder), password authentication, one database for MLflow.

    PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user that
    Debian's package creates."""

    def __init__(self, bindir: Path, *, user: str = "smaraad", db: str = "mlflow"):
        self.bindir, self.user, self.db = bindir, user, db
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="smaraad-pg-", dir="/tmp"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self._started = False
        try:
            pwfile = self.root / "pw"
            pwfile.write_text(self.password)
            if self.as_user:
                shutil.chown(pwfile, "postgres")
            self._run("initdb", "-D", str(self.data), "-U", user, "--auth=scram-sha-256",
                      f"--pwfile={pwfile}", "-E", "UTF8")
            pwfile.unlink()
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                      "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} "
                            f"-c unix_socket_directories={self.root}", "start")
            self._started = True
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", user, db)
        except BaseException:
            self.stop()
            raise

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.db}"

    def _run(self, tool: str, *args: str) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        out = subprocess.run([*self.as_user, str(self.bindir / tool), *args], env=env,
                             cwd=self.root, capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"{tool} failed: {out.stdout[-1500:]}{out.stderr[-1500:]}")

    def stop(self) -> None:
        if self._started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)


def get(base: str, endpoint: str) -> bytes:
    with urllib.request.urlopen(f"{base}{endpoint}", timeout=10) as r:
        return r.read()


@contextmanager
def mlflow_server(backend_uri: str, *, artifact_root: str | None = None):
    """`mlflow server` on 127.0.0.1, the low-memory way (one worker, no job runner); yields its
    http:// address once /health answers, raises RuntimeError if it never does."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    if artifact_root:
        cmd += ["--default-artifact-root", artifact_root]
    # the store's URI (a database password in it) goes by environment, not on the command line
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_BACKEND_STORE_URI": backend_uri}
    # its own process group: the server forks a uvicorn worker, and both must go at the end
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if get(base, "/health") == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"mlflow server did not answer within {START_TIMEOUT_S} s "
                                   f"(exit code {proc.poll()}): {log.read()[-2000:].decode()}")
            time.sleep(0.5)
        yield base
    finally:
        stop_group(proc)
        log.close()
