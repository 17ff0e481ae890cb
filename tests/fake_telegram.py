"""
A fake Bot API server on loopback: getMe, getUpdates, sendMessage.

``getUpdates`` behaves as Telegram documents it: updates with an id below the
``offset`` asked for are confirmed and forgotten; with none waiting, the call
waits up to ``timeout`` seconds for one. ``sendMessage`` records what was sent.
A failure (a 429 with ``parameters.retry_after``, a 500) can be programmed for
the next calls of any method.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:fake-secret-token"
BOT_USERNAME = "tally_bot"


@dataclass(slots=True)
class Request:
    method: str
    payload: dict[str, Any]
    # loop.time() when it arrived.
    at: float


@dataclass(slots=True)
class FakeBotApi:
    token: str = TOKEN
    # Where the server listens, set by ``start_fake_bot_api``.
    base_url: str = ""
    updates: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    next_update_id: int = 1
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self.handle)
        return app

    # -- programming it ------------------------------------------------------

    def add_message(self, chat_id: int | str, text: str) -> int:
        """Queue a text message from *chat_id*; return its update id."""
        update_id = self.next_update_id
        self.next_update_id += 1
        self.updates.append(
            {
                "update_id": update_id,
                "message": {
                    "message_id": update_id,
                    "date": 0,
                    "chat": {"id": int(chat_id), "type": "private"},
                    "from": {"id": int(chat_id), "is_bot": False, "first_name": "A"},
                    "text": text,
                },
            }
        )
        self._notify()
        return update_id

    def fail_next(
        self,
        method: str,
        status: int = 429,
        *,
        retry_after: int | None = 1,
        times: int = 1,
    ) -> None:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": status,
            "description": "Too Many Requests" if status == 429 else "Server Error",
        }
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        self.failures.setdefault(method, []).extend([(status, body)] * times)

    async def wait_sent(self, count: int, timeout_s: float = 20.0) -> None:
        """Wait until at least *count* messages were sent."""
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: len(self.sent) >= count)

    def calls(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]

    def _notify(self) -> None:
        async def notify() -> None:
            async with self.changed:
                self.changed.notify_all()

        # Called from sync test code too: the waiters are woken on the loop.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(notify())

    # -- the API -------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"},
                status=401,
            )
        payload = await request.json() if request.can_read_body else {}
        self.requests.append(
            Request(method, payload, asyncio.get_running_loop().time())
        )
        queued = self.failures.get(method)
        if queued:
            status, body = queued.pop(0)
            return web.json_response(body, status=status)
        if method == "getMe":
            return ok({"id": 123456, "is_bot": True, "username": BOT_USERNAME})
        if method == "getUpdates":
            return ok(await self.get_updates(payload))
        if method == "sendMessage":
            self.sent.append(payload)
            self._notify()
            return ok(
                {"message_id": len(self.sent), "chat": {"id": payload["chat_id"]}}
            )
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    async def get_updates(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(payload.get("offset", 0))
        timeout_s = float(payload.get("timeout", 0))
        # Asking from an offset confirms everything before it.
        self.updates = [u for u in self.updates if u["update_id"] >= offset]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self.changed:
                await self.changed.wait_for(lambda: bool(self.updates))
        return list(self.updates)


async def start_fake_bot_api(aiohttp_server: Any) -> FakeBotApi:
    """Serve a fresh fake on loopback with pytest-aiohttp's ``aiohttp_server``."""
    fake = FakeBotApi()
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/")).rstrip("/")
    return fake


def ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})
