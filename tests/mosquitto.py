"""A real mosquitto broker for tests and benchmarks, on a free 127.0.0.1 port.

```python
broker = Mosquitto(tmp_path)                       # plain, anonymous, no persistence
broker = Mosquitto(tmp_path, tls=BrokerTls.make(tmp_path, require_certificate=True))
broker = Mosquitto(tmp_path, password_file=make_password_file(tmp_path, {"edge": "s3cret"}))
broker.start(); broker.url; broker.stop(); broker.kill(); broker.start()   # same port again
```

No skip: a missing mosquitto is a failure that says how to get it (``make test`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
INSTALL_HINT = (
    "mosquitto is not installed: run `make test` (it installs it via "
    "scripts/install-system-deps.sh), or `apt-get install mosquitto`"
)


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_CANDIDATES if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_password_file(directory: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (``mosquitto_passwd -b``) for ``users``."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(tool, os.X_OK):
        raise RuntimeError(INSTALL_HINT)
    path = directory / "mosquitto.passwd"
    path.touch()
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
    return path


@dataclass(frozen=True)
class BrokerTls:
    """Certificates made with trustme: a CA, a server cert for 127.0.0.1, a client cert."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    require_certificate: bool = False

    @classmethod
    def make(
        cls,
        directory: Path,
        *,
        require_certificate: bool = False,
        server_names: tuple[str, ...] = ("127.0.0.1",),
    ) -> BrokerTls:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert(*server_names)
        client = ca.issue_cert("edge-agent@example.test")
        d = directory / "tls"
        d.mkdir(exist_ok=True)
        files = {
            "ca_file": d / "ca.pem",
            "server_cert": d / "server.pem",
            "server_key": d / "server.key",
            "client_cert": d / "client.pem",
            "client_key": d / "client.key",
        }
        ca.cert_pem.write_to_path(files["ca_file"])
        server.cert_chain_pems[0].write_to_path(files["server_cert"])
        for pem in server.cert_chain_pems[1:]:
            pem.write_to_path(files["server_cert"], append=True)
        server.private_key_pem.write_to_path(files["server_key"])
        client.cert_chain_pems[0].write_to_path(files["client_cert"])
        client.private_key_pem.write_to_path(files["client_key"])
        return cls(require_certificate=require_certificate, **files)


class Mosquitto:
    """One mosquitto process with a generated config; restartable on the same port."""

    def __init__(
        self,
        tmp_path: Path,
        port: int | None = None,
        tls: BrokerTls | None = None,
        password_file: Path | None = None,
        persistence: bool = False,
        extra_config: str = "",
    ) -> None:
        self.dir = Path(tmp_path) / f"mosquitto-{id(self):x}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.password_file = password_file
        self.persistence = persistence
        self.extra_config = extra_config
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def config_text(self) -> str:
        lines = [f"listener {self.port} {self.host}"]
        if os.geteuid() == 0:
            # Else mosquitto drops to the "mosquitto" user and cannot read files in tmp_path.
            lines.append("user root")
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.dir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines += [
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 1000000",
            self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.proc is not None and self.proc.poll() is None:
            return self
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.config_text())
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}: {err}{self.log()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"mosquitto did not listen on {self.port} within {timeout} s{self.log()}"
        )

    def stop(self) -> None:
        """SIGTERM and wait: clean shutdown (the persistence file is written)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes; ``start()`` brings it back on the same port."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def log(self) -> str:
        try:
            return "\n--- mosquitto.log ---\n" + self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Subscriber:
    """A paho subscriber on its own thread (an independent client, as a cloud consumer would be).

    ``clean=False`` with a fixed ``client_id`` keeps a persistent QoS 1 session, so messages
    published while it reconnects (a broker restart) are queued for it, not lost.
    """

    def __init__(
        self,
        broker: Mosquitto,
        topic: str,
        *,
        client_id: str | None = None,
        clean: bool = True,
        protocol: str = "3.1.1",
    ) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = topic
        self.messages: list[tuple[str, bytes, bool]] = []  # list.append is atomic: no lock
        self._subscribed = False
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or "",
            clean_session=clean if protocol != "5" else None,
            protocol=paho.MQTTv5 if protocol == "5" else paho.MQTTv311,
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.broker = broker
        if broker.tls is not None:
            self.client.tls_set(
                ca_certs=str(broker.tls.ca_file),
                certfile=str(broker.tls.client_cert),
                keyfile=str(broker.tls.client_key),
            )

    def _on_connect(self, client, userdata, flags, reason, properties):  # type: ignore[no-untyped-def]
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reasons, properties):  # type: ignore[no-untyped-def]
        self._subscribed = True

    def _on_message(self, client, userdata, message):  # type: ignore[no-untyped-def]
        self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def start(self, timeout: float = 5.0) -> Subscriber:
        self.client.connect(self.broker.host, self.broker.port, keepalive=5)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._subscribed:
            if time.monotonic() > deadline:
                raise RuntimeError(f"subscriber: no SUBACK within {timeout} s{self.broker.log()}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in list(self.messages) if t == topic]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
