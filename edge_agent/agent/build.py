"""Builders: the sinks, the calendar clients and the rooms a configuration names.

Apart from the running agent because ``check-config --connect`` and ``edge-agent webhook``
build the very same sinks and clients (a pass there means the agent's code connects), and
because they are plain functions of the configuration: nothing here runs or holds state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.clock import Clock, system_clock
from edge_agent.config import AgentConfig, DeviceSettings, Secrets, device_settings
from edge_agent.forward.base import Sink

if TYPE_CHECKING:
    import httpx

    from edge_agent.calendars.google.auth import ServiceAccountTokens
    from edge_agent.calendars.google.client import GoogleClient
    from edge_agent.calendars.graph.auth import ClientCredentials
    from edge_agent.calendars.graph.client import GraphClient
    from edge_agent.calendars.graph.poller import CalendarRoom
    from edge_agent.forward.mqtt import MqttSink
    from edge_agent.forward.mqtt.commands import RoomInUseSender
    from edge_agent.forward.webhook import WebhookSink


def devices_by_id(cfg: AgentConfig, secrets: Secrets) -> dict[str, DeviceSettings]:
    """The configured devices' settings (``[defaults]`` merged), by device id."""
    return {d.id: d for d in device_settings(cfg, secrets)}


def build_webhook_sink(cfg: AgentConfig, secrets: Secrets) -> WebhookSink:
    """The ``[webhook]`` sink (``check-config --connect`` probes this very sink)."""
    from edge_agent.forward.webhook import WebhookSink

    assert cfg.webhook is not None
    w = cfg.webhook
    return WebhookSink(
        w.url,
        [s.get_secret_value() for s in secrets.webhook_secrets],
        timeout_s=w.timeout_s,
        ca_file=str(w.ca_file) if w.ca_file else None,
        batch_max=w.batch_max,
        max_connections=w.max_in_flight,
    )


def build_mqtt_sink(
    cfg: AgentConfig,
    secrets: Secrets,
    health: Callable[[], dict[str, Any]],
    room_in_use: RoomInUseSender | None = None,
    clock: Clock = system_clock,
) -> MqttSink:
    """The ``[mqtt]`` sink (``check-config --connect`` probes this very sink)."""
    from edge_agent.forward.mqtt import MqttSink
    from edge_agent.forward.mqtt.commands import SensorCommands

    assert cfg.mqtt is not None
    m = cfg.mqtt
    return MqttSink(
        url=m.url,
        client_id=cfg.mqtt_client_id,
        username=m.username,
        password=secrets.mqtt_password.get_secret_value() if secrets.mqtt_password else None,
        password_source=(
            f"password_file {m.password_file}"
            if m.password_file
            else f"password_env {m.password_env}"
            if m.password_env
            else None
        ),
        ca_file=str(m.ca_file) if m.ca_file else None,
        cert_file=str(m.cert_file) if m.cert_file else None,
        key_file=str(m.key_file) if m.key_file else None,
        keepalive=m.keepalive,
        base_topic=cfg.mqtt_base_topic,
        protocol=m.protocol,
        site=cfg.site,
        health=health,
        health_interval_s=m.health_interval_s,
        discovery=m.discovery,
        discovery_prefix=m.discovery_prefix,
        commands=(
            None
            if room_in_use is None
            else lambda base: SensorCommands(base, room_in_use)  # occupancy/set, see .commands
        ),
        clock=clock,
    )


def build_sinks(
    cfg: AgentConfig,
    secrets: Secrets,
    health: Callable[[], dict[str, Any]],
    room_in_use: RoomInUseSender | None = None,
    clock: Clock = system_clock,
) -> list[tuple[Sink, dict[str, Any]]]:
    """The configured sinks, each with its drainer options (``ttl_s``, ``max_in_flight``)."""
    sinks: list[tuple[Sink, dict[str, Any]]] = []
    if cfg.webhook is not None:
        w = cfg.webhook
        sinks.append(
            (
                build_webhook_sink(cfg, secrets),
                {"ttl_s": float(w.ttl_s), "max_in_flight": w.max_in_flight},
            )
        )
    if cfg.mqtt is not None:
        m = cfg.mqtt
        sinks.append(
            (
                build_mqtt_sink(cfg, secrets, health, room_in_use, clock),
                {"ttl_s": float(m.ttl_s), "max_in_flight": 32},
            )
        )
    return sinks


def zone(name: str | None, fallback: str) -> Any:
    """The time zone ``name``, else ``fallback`` (both IANA names)."""
    from zoneinfo import ZoneInfo

    return ZoneInfo(name or fallback)


def graph_rooms(cfg: AgentConfig) -> list[CalendarRoom]:
    """The Graph rooms the config names: each linked device (room id = device id, the device's
    time zone) and each ``[[rooms]]`` entry (its ``time_zone``, else ``[microsoft]``'s, else
    ``[defaults]``'s)."""
    from edge_agent.calendars.graph.poller import CalendarRoom

    ms = cfg.microsoft
    default_tz = (ms.time_zone if ms else None) or cfg.defaults.time_zone or "UTC"
    rooms: list[CalendarRoom] = []
    for dev in cfg.devices:
        if dev.calendar is not None and (dev.calendar_source or "microsoft") == "microsoft":
            tz = zone(dev.time_zone or cfg.defaults.time_zone, "UTC")
            rooms.append(CalendarRoom(dev.id, dev.calendar, tz, device_id=dev.id))
    for r in cfg.rooms:
        if r.source == "microsoft":
            rooms.append(CalendarRoom(r.id, r.calendar, zone(r.time_zone, default_tz)))
    return rooms


def google_rooms(cfg: AgentConfig) -> list[CalendarRoom]:
    """The Google rooms the config names: each device linked with ``calendar_source =
    "google"`` (room id = device id, the device's time zone) and each ``[[rooms]]`` entry of
    source google (its ``time_zone``, else ``[google]``'s, else ``[defaults]``'s)."""
    from edge_agent.calendars.poller import CalendarRoom

    g = cfg.google
    default_tz = (g.time_zone if g else None) or cfg.defaults.time_zone or "UTC"
    rooms: list[CalendarRoom] = []
    for dev in cfg.devices:
        if dev.calendar is not None and dev.calendar_source == "google":
            tz = zone(dev.time_zone or cfg.defaults.time_zone, "UTC")
            rooms.append(CalendarRoom(dev.id, dev.calendar, tz, device_id=dev.id))
    for r in cfg.rooms:
        if r.source == "google":
            rooms.append(CalendarRoom(r.id, r.calendar, zone(r.time_zone, default_tz)))
    return rooms


def build_google_client(
    cfg: AgentConfig, *, max_connections: int = 64, **client_options: Any
) -> tuple[GoogleClient, ServiceAccountTokens, httpx.AsyncClient]:
    """The Google client the agent and ``check-config --connect`` use, its token source (the
    service-account JWT grant, impersonating ``[google] subject``) and its HTTP client (the
    caller closes it). The key file is read by google-auth at the first token, in a worker
    thread; ``resolve_secrets`` has checked it already. Raises AuthError / ValueError."""
    from edge_agent.calendars.google.auth import ServiceAccountTokens
    from edge_agent.calendars.google.client import GoogleClient
    from edge_agent.httpclient import http_client

    g = cfg.google
    assert g is not None
    ca = str(g.ca_file) if g.ca_file else None
    tokens = ServiceAccountTokens(
        service_account_file=g.service_account_file, subject=g.subject, ca_file=ca
    )
    http = http_client(timeout_s=30.0, max_connections=max_connections, ca_file=ca)
    client = GoogleClient(
        http,
        tokens,
        subject=g.subject,
        customer=g.customer,
        directory_url=g.directory_url,
        calendar_url=g.calendar_url,
        **client_options,
    )
    return client, tokens, http


def certificate_thumbprint(cert_file: Path) -> str:
    """SHA-1 of the certificate's DER (what Entra ID shows as the thumbprint), hex."""
    import hashlib
    import ssl

    der = ssl.PEM_cert_to_DER_cert(cert_file.read_text(encoding="ascii"))
    return hashlib.sha1(der).hexdigest().upper()  # the platform's thumbprint is SHA-1


def check_rsa_key(key_pem: str) -> None:
    """Raise ValueError unless ``key_pem`` is an unencrypted RSA private key: Entra ID takes
    client assertions signed RS256/PS256 only (msal would fail deep inside PyJWT otherwise)."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"[microsoft] key_file is not a readable unencrypted PEM private key ({exc})"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError(  # noqa: TRY004 - a bad key file is a value error for every caller
            f"[microsoft] key_file is not an RSA key ({type(key).__name__}); Entra ID needs an "
            "RSA key for the certificate credential"
        )


def build_graph_client(
    cfg: AgentConfig, secrets: Secrets, *, max_connections: int = 64
) -> tuple[GraphClient, ClientCredentials, httpx.AsyncClient]:
    """The Graph client the agent and ``check-config --connect`` use, its token source and its
    HTTP client (the caller closes it). Raises ValueError / OSError for an unreadable
    certificate."""
    from edge_agent.calendars.graph.auth import CertificateCredential, ClientCredentials
    from edge_agent.calendars.graph.client import GraphClient
    from edge_agent.httpclient import http_client

    ms = cfg.microsoft
    assert ms is not None
    ca = str(ms.ca_file) if ms.ca_file else None
    cert = None
    if ms.certificate_file is not None:
        assert secrets.microsoft_private_key is not None
        key_pem = secrets.microsoft_private_key.get_secret_value()
        check_rsa_key(key_pem)
        cert = CertificateCredential(
            certificate_thumbprint(ms.certificate_file),
            key_pem,
            # with it msal signs PS256 + x5t#S256 (graph/auth.py CertificateCredential)
            certificate_pem=ms.certificate_file.read_text(encoding="ascii"),
        )
    secret = secrets.microsoft_client_secret
    tokens = ClientCredentials(
        tenant_id=ms.tenant_id,
        client_id=ms.client_id,
        secret=secret.get_secret_value() if secret is not None else None,
        certificate=cert,
        authority_url=ms.authority_url,
        ca_file=ca,
    )
    http = http_client(timeout_s=30.0, max_connections=max_connections, ca_file=ca)
    return GraphClient(http, tokens, graph_url=ms.graph_url), tokens, http


def rooms_key(cfg: AgentConfig) -> Any:
    """What SIGHUP cannot apply to the rooms without a restart."""
    return (
        cfg.microsoft,
        cfg.google,
        tuple(cfg.rooms),
        tuple((d.id, d.calendar, d.calendar_source) for d in cfg.devices if d.calendar),
    )
