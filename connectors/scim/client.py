"""HTTP for the SCIM connector: one httpx client, error mapping, discovery documents, known versions."""

from __future__ import annotations

import json as _json
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from connectors.scim.config import ScimConnectorConfig
from connectors.scim.errors import map_response, map_transport
from connectors.scim.paths import get_ci
from schemas.errors import DataError, FatalError, IdsyncError

SCIM_JSON = "application/scim+json"
#: Versions (ETags) remembered per resource, oldest forgotten first.
VERSION_CACHE_SIZE = 100_000
#: Attempts of one import or discovery read that the server throttles (each waits its Retry-After).
PATIENT_ATTEMPTS = 3

EventHooks = Mapping[str, Sequence[Callable[..., Any]]]


def is_ok(status: int) -> bool:
    return 200 <= status < 300


class ScimClient:
    """The connection to one SCIM service provider, shared by import and export (thread-safe).

    Every request goes through ``send``, which maps failures to idsync errors; the discovery documents
    (/ServiceProviderConfig, /ResourceTypes, /Schemas) are read once and kept.
    """

    def __init__(self, config: ScimConnectorConfig, *, event_hooks: EventHooks | None = None) -> None:
        self.config = config
        secrets = (config.token, config.password)
        #: Scrubbed from every error message.
        self.secrets = tuple(s.get_secret_value() for s in secrets if s is not None)
        self._event_hooks = {k: list(v) for k, v in (event_hooks or {}).items()}
        self._client: httpx.Client | None = None
        self._lock = threading.RLock()
        self._spc: dict[str, Any] | None = None
        self._resource_types: dict[str, dict[str, Any]] | None = None
        self._schemas: dict[str, Any] | None = None
        self._versions: OrderedDict[str, str] = OrderedDict()

    def _httpx(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                cfg = self.config
                verify: ssl.SSLContext | bool = cfg.verify_tls
                if cfg.verify_tls and cfg.ca_file is not None:
                    try:
                        verify = ssl.create_default_context(cafile=str(cfg.ca_file))
                    except (OSError, ssl.SSLError) as exc:
                        raise FatalError(
                            f"Cannot load ca_file {str(cfg.ca_file)!r}: {exc}", error_type="no-start-tls"
                        ) from None
                headers = {"Accept": f"{SCIM_JSON}, application/json"}
                if cfg.token is not None:
                    headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"
                auth = None
                if cfg.username is not None and cfg.password is not None:
                    auth = httpx.BasicAuth(cfg.username, cfg.password.get_secret_value())
                self._client = httpx.Client(
                    headers=headers,
                    auth=auth,
                    verify=verify,
                    timeout=httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s),
                    follow_redirects=False,  # never replay the credentials against another host
                    event_hooks=self._event_hooks,
                )
            return self._client

    def send(
        self,
        method: str,
        path: str,
        *,
        target: str,
        body: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        tolerate: frozenset[int] = frozenset(),
        starting: bool = False,
        patient: bool = False,
    ) -> httpx.Response:
        """One request: a 2xx or ``tolerate``d response is returned; anything else raised as idsync error."""
        url = self.config.base_url + path
        sent_headers = dict(headers or {})
        content: bytes | None = None
        if body is not None:
            content = _json.dumps(body).encode()
            sent_headers["Content-Type"] = SCIM_JSON
        attempts = PATIENT_ATTEMPTS if patient else 1
        for attempt in range(attempts):
            try:
                response = self._httpx().request(
                    method, url, params=params, content=content, headers=sent_headers
                )
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, method, target, starting) from None
            if is_ok(response.status_code) or response.status_code in tolerate:
                return response
            error = self.error(response, method, target, starting)
            # Reads at a run start wait out a short Retry-After; exports leave it to the export worker.
            wait = getattr(error, "retry_after_s", None)
            if attempt == attempts - 1 or wait is None or wait > self.config.import_max_retry_after_s:
                raise error
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _transport_error(self, exc: httpx.HTTPError, method: str, target: str, starting: bool) -> IdsyncError:
        return map_transport(
            exc,
            operation=method,
            target=target,
            base_url=self.config.base_url,
            starting=starting,
            secrets=self.secrets,
        )

    def error(
        self, response: httpx.Response, method: str, target: str, starting: bool = False
    ) -> IdsyncError:
        return map_response(
            response,
            operation=method,
            target=target,
            base_url=self.config.base_url,
            starting=starting,
            secrets=self.secrets,
        )

    def json(self, response: httpx.Response, what: str, *, starting: bool = False) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            message = f"The SCIM server {self.config.base_url} sent no JSON object for {what}"
            if starting:
                raise FatalError(message, error_type="no-start-bad-base-url")
            raise DataError(message, error_type="scim-bad-response")
        return body

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ================================================================== discovery
    def service_provider_config(self, *, starting: bool = False, fresh: bool = False) -> dict[str, Any]:
        with self._lock:
            if self._spc is not None and not fresh:
                return self._spc
        tolerate = frozenset() if starting else frozenset({404, 501})
        response = self.send(
            "GET",
            "/ServiceProviderConfig",
            target="/ServiceProviderConfig",
            tolerate=tolerate,
            starting=starting,
            patient=True,
        )
        if response.status_code in tolerate:
            # Not served (test_connection says so): assume no optional feature: GET + PUT, no ETags, no Bulk.
            spc: dict[str, Any] = {}
        else:
            spc = self.json(response, "/ServiceProviderConfig", starting=True)
        with self._lock:
            self._spc = spc
        return spc

    def feature(self, name: str) -> dict[str, Any]:
        feature = get_ci(self.service_provider_config(), name)
        return feature if isinstance(feature, dict) else {}

    def supports(self, name: str) -> bool:
        return get_ci(self.feature(name), "supported") is True

    def _list(self, endpoint: str, *, starting: bool) -> list[dict[str, Any]] | None:
        """The resources of a discovery endpoint (/ResourceTypes, /Schemas); None when not served."""
        response = self.send(
            "GET", endpoint, target=endpoint, tolerate=frozenset({404, 501}), starting=starting, patient=True
        )
        if response.status_code in (404, 501):
            return None
        try:
            body = response.json()
        except ValueError:
            return None
        items = get_ci(body, "Resources") if isinstance(body, dict) else body
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else None

    def discovered(self, *, starting: bool) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        with self._lock:
            if self._resource_types is not None and self._schemas is not None:
                return self._resource_types, self._schemas
        types = {
            str(t.get("name", "")).lower(): t for t in self._list("/ResourceTypes", starting=starting) or []
        }
        schemas = {str(s.get("id", "")).lower(): s for s in self._list("/Schemas", starting=starting) or []}
        with self._lock:
            self._resource_types, self._schemas = types, schemas
        return types, schemas

    # ================================================================== versions (ETags)
    def etags(self) -> bool:
        return self.supports("etag")

    def remember(self, locator: str, version: Any) -> None:
        """Keep ``version`` (an ETag) as the last known one of the resource at ``locator``; None forgets."""
        with self._lock:
            if isinstance(version, str) and version:
                self._versions[locator] = version
                self._versions.move_to_end(locator)
                while len(self._versions) > VERSION_CACHE_SIZE:
                    self._versions.popitem(last=False)
            else:
                self._versions.pop(locator, None)

    def version(self, locator: str) -> str | None:
        with self._lock:
            return self._versions.get(locator)

    @staticmethod
    def version_of(response: httpx.Response, body: Mapping[str, Any] | None = None) -> str | None:
        etag = response.headers.get("ETag")
        if isinstance(etag, str) and etag:
            return etag
        meta = get_ci(body, "meta") if body is not None else None
        version = get_ci(meta, "version") if isinstance(meta, Mapping) else None
        return version if isinstance(version, str) else None
