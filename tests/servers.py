"""Real servers for the tests, on 127.0.0.1 only: a PostgreSQL cluster and `mlflow server` processes.

PostgreSQL's initdb and pg_ctl refuse to run as root: as root they run as the `postgres` user
(runuser), in a temp folder that user owns, on a free port, with fsync off. Every server a test
starts is stopped by it. Where a server cannot run, the tests skip, except under CI=true, where
a missing server is a failure.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true (CI installs every server these tests need)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _pg_bin() -> Path | None:
    try:
        folder = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(folder) if (Path(folder) / "initdb").is_file() else None


class PostgresServer:
    """A throwaway PostgreSQL cluster; `database()` makes a fresh database and returns its URL."""

    def __init__(self) -> None:
        binaries = _pg_bin()
        if binaries is None:
            unavailable("PostgreSQL is not installed (pg_config --bindir has no initdb)")
        self.bin, self.port = binaries, free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mbsbench-pg-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb and pg_ctl refuse root
            shutil.chown(self.root, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self.options = options
        self.start()
        self.count = 0

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-o", self.options, "-l", str(self.root / "log"), "-w", "start")

    def halt(self) -> None:
        """An outage: the server gone at once (its data kept; start() brings it back)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run([*self.prefix, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed: {proc.stderr.strip() or proc.stdout.strip()}")

    def database(self) -> str:
        """A new empty database: postgresql://postgres@127.0.0.1:PORT/dbN."""
        import psycopg

        self.count += 1
        name = f"db{self.count}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on a free port of 127.0.0.1, backed by a database URL, artifacts in a folder."""

    def __init__(self, backend: str, artifacts: Path, log: Path):
        if shutil.which("mlflow", path=str(Path(sys.executable).parent)) is None:
            unavailable("the full mlflow is not installed (pip install -e '.[server]')")
        from bench.tracking.store import database_url

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                   database_url(backend), "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_healthy(log)

    def _wait_healthy(self, log: Path, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy in {timeout} s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
