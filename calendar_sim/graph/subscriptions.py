"""Change-notification subscriptions on mailbox events, as Graph documents them.

``POST /subscriptions`` validates first: Graph POSTs to ``notificationUrl?validationToken=...``
(and to ``lifecycleNotificationUrl`` when given) and the endpoint must answer 200 with the
token, URL-decoded, as ``text/plain`` within 10 s, or the subscription is refused (400). Then
every created/updated/deleted event in the mailbox is POSTed as ``{"value": [{subscriptionId,
changeType, resource, resourceData, clientState, tenantId, ...}]}``; lifecycle notifications
(``reauthorizationRequired``, ``subscriptionRemoved``, ``missed``) go to the lifecycle URL.
Outlook resources allow at most 10,080 minutes (under 7 days) to ``expirationDateTime``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import ssl
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from device_sim.clock import SimClock

from .directory import ChangeType, Directory
from .model import GraphError, Mailbox

log = logging.getLogger(__name__)

MAX_EXPIRATION = timedelta(minutes=10080)
CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
QUEUE_LIMIT = 10_000
RESOURCE = re.compile(r"/?(?:users|Users)/([^/]+)/(?:calendar/)?events$")


@dataclass
class Subscription:
    id: str
    resource: str
    mailbox: str
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: datetime
    application_id: str
    needs_reauthorization: bool = False

    def json(self) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": self.expiration.isoformat().replace("+00:00", "Z"),
            "creatorId": str(uuid.uuid5(uuid.NAMESPACE_URL, "sp:" + self.application_id)),
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


@dataclass
class Delivery:
    """One POST the simulator made (kept for tests, the last ``QUEUE_LIMIT``)."""

    subscription_id: str
    kind: str  # "validation", "created"/"updated"/"deleted", or a lifecycle event
    url: str
    status: int | None
    error: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


def _parse_expiration(value: Any, now: datetime) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise GraphError(
            400, "InvalidRequest", f"expirationDateTime '{value}' is not a date."
        ) from None
    if moment.tzinfo is None:
        raise GraphError(400, "InvalidRequest", "expirationDateTime needs a UTC offset.")
    if moment <= now:
        raise GraphError(
            400, "ExtensionError", "Subscription expiration can only be in the future."
        )
    if moment - now > MAX_EXPIRATION:
        raise GraphError(
            400,
            "ExtensionError",
            "Subscription expiration can only be 10080 minutes in the future.",
        )
    return moment


class Subscriptions:
    def __init__(
        self,
        directory: Directory,
        clock: SimClock,
        tenant_id: str,
        *,
        ssl_context: ssl.SSLContext | None,
        allow_http: bool = False,
        validation_timeout_s: float = 10.0,
        notification_timeout_s: float = 10.0,
    ) -> None:
        self.directory = directory
        self.clock = clock
        self.tenant_id = tenant_id
        self.ssl_context = ssl_context
        self.allow_http = allow_http
        self.validation_timeout_s = validation_timeout_s
        self.notification_timeout_s = notification_timeout_s
        self.items: dict[str, Subscription] = {}
        self.deliveries: deque[Delivery] = deque(maxlen=QUEUE_LIMIT)
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[Subscription, str, dict[str, Any], str]] = asyncio.Queue(
            QUEUE_LIMIT
        )
        self._session: aiohttp.ClientSession | None = None
        self.delivered = asyncio.Condition()
        directory.listeners.append(self._on_change)

    def _ssl(self, url: str) -> ssl.SSLContext | bool:
        if not url.startswith("https:"):
            return False
        return self.ssl_context if self.ssl_context is not None else True

    # ---- the worker --------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver queued notifications one by one until cancelled (safe to cancel)."""
        self._client()
        try:
            while True:
                sub, kind, body, url = await self._queue.get()
                await self._post(sub.id, kind, url, body)
        finally:
            if self._session is not None:
                await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: a subscription can be created before the worker's first step.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _post(self, sub_id: str, kind: str, url: str, body: dict[str, Any]) -> None:
        status: int | None = None
        error: str | None = None
        try:
            async with self._client().post(
                url,
                json=body,
                ssl=self._ssl(url),
                timeout=aiohttp.ClientTimeout(total=self.notification_timeout_s),
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error or (status is not None and status >= 300):
            log.warning("graph-sim: notification %s to %s failed: %s", kind, url, error or status)
        await self._record(Delivery(sub_id, kind, url, status, error, body))

    async def _record(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        async with self.delivered:
            self.delivered.notify_all()

    async def wait_deliveries(self, n: int, kind: str | None = None) -> list[Delivery]:
        """Until ``n`` deliveries (of ``kind``) were made; they are returned (tests)."""

        def done() -> bool:
            return sum(1 for d in self.deliveries if kind is None or d.kind == kind) >= n

        async with self.delivered:
            await self.delivered.wait_for(done)
        return [d for d in self.deliveries if kind is None or d.kind == kind]

    # ---- Graph's side ------------------------------------------------------------------------

    def _check_url(self, url: Any, name: str) -> str:
        if not isinstance(url, str) or not url:
            raise GraphError(400, "InvalidRequest", f"'{name}' is required.")
        scheme = urlsplit(url).scheme
        if scheme != "https" and not (self.allow_http and scheme == "http"):
            raise GraphError(
                400, "InvalidRequest", f"Invalid '{name}': it must be an https URL: {url}"
            )
        return url

    async def _validate(self, url: str, sub_id: str) -> None:
        token = (
            f"Validation: Testing client application reachability for subscription "
            f"Request-Id: {uuid.uuid4()}"
        )
        target = url + ("&" if "?" in url else "?") + "validationToken=" + quote(token, safe="")
        status: int | None = None
        error: str | None = None
        try:
            async with self._client().post(
                target,
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
                ssl=self._ssl(url),
                timeout=aiohttp.ClientTimeout(total=self.validation_timeout_s),
            ) as resp:
                status = resp.status
                text = await resp.text()
                kind = resp.headers.get("Content-Type", "")
                if status != 200 or text != token or not kind.startswith("text/plain"):
                    error = f"answered {status} {kind!r} {text[:80]!r}, not 200 text/plain token"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        await self._record(Delivery(sub_id, "validation", url, status, error))
        if error:
            raise GraphError(
                400,
                "ValidationError",
                "Subscription validation request failed. Notification "
                f"endpoint must respond with 200 OK to validation request. ({error})",
            )

    async def create(self, body: dict[str, Any], application_id: str) -> Subscription:
        now = self.clock.now()
        resource = str(body.get("resource", ""))
        match = RESOURCE.fullmatch(resource)
        if match is None:
            raise GraphError(
                400,
                "InvalidRequest",
                f"The simulator subscribes to users/{{id}}/events, not '{resource}'.",
            )
        box = self.directory.mailbox(match.group(1))
        changes = tuple(c.strip() for c in str(body.get("changeType", "")).split(",") if c.strip())
        if not changes or any(c not in CHANGE_TYPES for c in changes):
            raise GraphError(
                400, "InvalidRequest", f"changeType must be some of {', '.join(CHANGE_TYPES)}."
            )
        client_state = body.get("clientState")
        if client_state is not None and len(str(client_state)) > 128:
            raise GraphError(400, "InvalidRequest", "clientState is at most 128 characters.")
        sub = Subscription(
            id=str(uuid.uuid4()),
            resource=resource,
            mailbox=box.address.lower(),
            change_types=changes,
            notification_url=self._check_url(body.get("notificationUrl"), "notificationUrl"),
            lifecycle_url=(
                self._check_url(body["lifecycleNotificationUrl"], "lifecycleNotificationUrl")
                if body.get("lifecycleNotificationUrl")
                else None
            ),
            client_state=None if client_state is None else str(client_state),
            expiration=_parse_expiration(body.get("expirationDateTime"), now),
            application_id=application_id,
        )
        await self._validate(sub.notification_url, sub.id)
        if sub.lifecycle_url:
            await self._validate(sub.lifecycle_url, sub.id)
        self.items[sub.id] = sub
        return sub

    def get(self, sub_id: str) -> Subscription:
        sub = self.items.get(sub_id)
        if sub is None or sub.expiration <= self.clock.now():
            self.items.pop(sub_id, None)
            raise GraphError(
                404, "ResourceNotFound", f"The object was not found: subscription '{sub_id}'."
            )
        return sub

    def renew(self, sub_id: str, body: dict[str, Any]) -> Subscription:
        sub = self.get(sub_id)
        if "expirationDateTime" in body:
            sub.expiration = _parse_expiration(body["expirationDateTime"], self.clock.now())
        if "notificationUrl" in body:
            sub.notification_url = self._check_url(body["notificationUrl"], "notificationUrl")
        sub.needs_reauthorization = False
        return sub

    def reauthorize(self, sub_id: str) -> Subscription:
        sub = self.get(sub_id)
        sub.needs_reauthorization = False
        return sub

    def delete(self, sub_id: str) -> None:
        self.get(sub_id)
        del self.items[sub_id]

    def active(self) -> list[Subscription]:
        now = self.clock.now()
        for gone in [s.id for s in self.items.values() if s.expiration <= now]:
            del self.items[gone]
        return list(self.items.values())

    # ---- notifications -----------------------------------------------------------------------

    def _enqueue(self, sub: Subscription, kind: str, body: dict[str, Any], url: str) -> None:
        try:
            self._queue.put_nowait((sub, kind, body, url))
        except asyncio.QueueFull:
            self.dropped += 1

    def _on_change(self, box: Mailbox, change: ChangeType, event_id: str) -> None:
        for sub in self.active():
            if sub.mailbox != box.address.lower() or change not in sub.change_types:
                continue
            if sub.needs_reauthorization:
                continue
            resource = f"Users/{box.id}/Events/{event_id}"
            note = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": sub.expiration.isoformat(),
                "changeType": change,
                "resource": resource,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Event",
                    "@odata.id": resource,
                    "@odata.etag": f'W/"{secrets.token_hex(8)}"',
                    "id": event_id,
                },
                "clientState": sub.client_state,
                "tenantId": self.tenant_id,
            }
            self._enqueue(sub, change, {"value": [note]}, sub.notification_url)

    def lifecycle(self, sub_id: str, event: str) -> None:
        """Send a lifecycle notification; ``subscriptionRemoved`` also deletes it."""
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"lifecycle event must be one of {', '.join(LIFECYCLE_EVENTS)}")
        sub = self.get(sub_id)
        note = {
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": sub.expiration.isoformat(),
            "tenantId": self.tenant_id,
            "clientState": sub.client_state,
            "lifecycleEvent": event,
        }
        if event == "reauthorizationRequired":
            sub.needs_reauthorization = True
        if event == "subscriptionRemoved":
            del self.items[sub.id]
        if sub.lifecycle_url:
            self._enqueue(sub, event, {"value": [note]}, sub.lifecycle_url)
