"""Real servers for the store handlers' tests, on free loopback ports: PostgreSQL, an S3 store (moto), Label Studio.

Each is started once per test session by the fixtures in tests/process/conftest.py
and stopped (its files removed) at the end. No mocks: the handlers talk to these
with their real client libraries.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LS_VENV = REPO / ".venv-ls"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Until `url` answers at all (any HTTP status); AssertionError with the log's tail if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"{url} did not come up in {timeout:g}s\n{tail}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


# ---- PostgreSQL: a throwaway cluster (initdb + pg_ctl), run as the `postgres` user when we are root ----


class PostgresServer:
    SUPERUSER = "postgres"
    SUPERUSER_PASSWORD = "super-secret-pw"
    USER = "spoold"
    PASSWORD = "spoold-pw-for-tests"
    DATABASE = "results"

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        if not bins and not shutil.which("initdb"):
            raise AssertionError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = Path(bins[-1]).parent if bins else Path(shutil.which("initdb") or "").parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="spoold-pg-"))  # not under pytest's 0700 root-owned basetemp
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def start(self) -> PostgresServer:
        pwfile = self.root / "pw"
        pwfile.write_text(self.SUPERUSER_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        run = dict(check=True, capture_output=True, timeout=120)
        subprocess.run(
            self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.SUPERUSER, "--auth=scram-sha-256",
                           f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--no-instructions"),
            **run,
        )  # fmt: skip
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        subprocess.run(
            self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start"), **run
        )
        import psycopg

        with psycopg.connect(self.dsn(self.SUPERUSER, self.SUPERUSER_PASSWORD, "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {self.USER} LOGIN PASSWORD '{self.PASSWORD}'")
            conn.execute(f"CREATE DATABASE {self.DATABASE} OWNER {self.USER}")
        return self

    def dsn(self, user: str | None = None, password: str | None = None, database: str | None = None) -> str:
        return (
            f"host=127.0.0.1 port={self.port} dbname={database or self.DATABASE} user={user or self.USER}"
            f" password={password or self.PASSWORD}"
        )

    def stop(self) -> None:
        subprocess.run(
            self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"), capture_output=True, timeout=60
        )
        shutil.rmtree(self.root, ignore_errors=True)


# ---- S3: moto's standalone server ----


class MotoServer:
    ACCESS_KEY = "AKIATESTSPOOLD000000"
    SECRET_KEY = "moto-secret-key-for-tests-only"

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="spoold-moto-"))
        self.log = self.root / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        wait_http(self.url + "/moto-api/", 60, self.proc, self.log)
        return self

    def client(self):  # noqa: ANN201 (a boto3 client; boto3 ships no types)
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.ACCESS_KEY, aws_secret_access_key=self.SECRET_KEY, region_name="us-east-1"
        )

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


# ---- Label Studio: its own venv (heavy, conflicting dependencies), a SQLite database in a temp dir ----


class LabelStudioServer:
    USERNAME = "spoold-tests@example.org"
    PASSWORD = "ls-password-for-tests"
    TOKEN = "spoold0test0token0for0label0studio0"

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="spoold-ls-"))
        self.log = self.root / "label-studio.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> LabelStudioServer:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self, nice: int = 0) -> None:
        """Start the server and return at once (wait_ready waits for it). `nice` > 0: its start-up (database
        migrations, a minute or more of CPU) takes only the CPU the tests running meanwhile leave idle."""
        exe = LS_VENV / "bin" / "label-studio"
        if not (LS_VENV / ".installed").exists():  # `make label-studio-venv` is the one recipe (make test runs it first)
            subprocess.run(["make", "-s", "-C", str(REPO), "label-studio-venv"], check=True, timeout=1200)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))},
            "HOME": str(self.root),
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.root / "data"),
            "HTTPS_PROXY": "http://127.0.0.1:9",  # its start-up version check would call pypi.org: refuse it at once
            "NO_PROXY": "127.0.0.1,localhost",
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--host", self.url, "-p", str(self.port),
                 "--data-dir", str(self.root / "data"), "--username", self.USERNAME, "--password", self.PASSWORD,
                 "--user-token", self.TOKEN, "--enable-legacy-api-token"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env, start_new_session=True,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 300) -> LabelStudioServer:
        wait_http(self.url + "/health", timeout, self.proc, self.log)
        return self

    def client(self):  # noqa: ANN201
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.TOKEN)

    def new_project(self, title: str) -> int:
        config = '<View><Text name="p" value="$prompt"/><Text name="a" value="$answer"/><TextArea name="note" toName="a"/></View>'
        return int(self.client().projects.create(title=title, label_config=config).id)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=20)
        shutil.rmtree(self.root, ignore_errors=True)


# ---- a TCP proxy that cuts every connection once a byte budget is spent (a network failure mid-upload) ----


class CuttingProxy:
    """Forwards 127.0.0.1:port to `target`; after `budget` bytes upstream it drops every connection and refuses new ones until heal()."""

    def __init__(self, target_port: int, budget: int) -> None:
        import threading

        self.target_port = target_port
        self.budget = budget
        self.sent = 0
        self.down = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def heal(self) -> None:
        with self._lock:
            self.down, self.budget = False, 1 << 62

    def close(self) -> None:
        self._listener.close()
        self._cut()

    def _cut(self) -> None:
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._sockets.clear()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self.down:
                    client.close()
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                        if self.sent > self.budget and not self.down:
                            self.down = True
                            self._cut()
                            return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
