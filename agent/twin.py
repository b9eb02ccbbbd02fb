"""The device's side of the twin exchange: POST what it reports, get back what the hub desires.

One request per poll (`protocol/twin.py` has the contract). The device starts every exchange, so
a device that was offline reconciles on the first exchange after it returns. Errors never
escape as library exceptions: an unreachable hub, an HTTP error or a body that does not parse
are a `TwinError` naming the hub URL and why; the caller keeps serving and asks again later.
"""

from __future__ import annotations

import json

import httpx

from protocol import ManifestError
from protocol.twin import Desired, Reported

from .errors import AgentError


class TwinError(AgentError):
    def __init__(self, url: str, why: str) -> None:
        self.url = url
        self.why = why
        super().__init__(f"Twin exchange with {url} failed: {why}")


class TwinClient:
    def __init__(self, hub_url: str, tenant: str, device: str, *, client: httpx.AsyncClient, timeout: float = 30.0) -> None:
        self.url = f"{hub_url.rstrip('/')}/v1/twin/{tenant}/{device}"
        self._client = client
        self._timeout = timeout
        self.exchanges = 0
        self.failures = 0

    async def exchange(self, reported: Reported) -> Desired:
        try:
            r = await self._client.post(
                self.url, content=json.dumps(reported.to_dict()).encode(),
                headers={"content-type": "application/json"}, timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            self.failures += 1
            raise TwinError(self.url, f"{type(exc).__name__}: {exc or 'no answer'}") from exc
        if r.status_code != 200:
            self.failures += 1
            raise TwinError(self.url, f"the hub answered HTTP {r.status_code}: {r.text[:300]}")
        try:
            desired = Desired.from_json(r.content)
        except ManifestError as exc:
            self.failures += 1
            raise TwinError(self.url, f"the hub's answer does not parse: {exc}") from exc
        self.exchanges += 1
        return desired
