"""The simulated account both dialects share: plans, credits, active limits, tasks.

:class:`SimAccount` creates a task as BFL does (key, OpenAPI rules, credits, the
active-task limits, then the next scripted plan) and signs its result URL. The BFL
routes (``_app``) and the OpenAI-style route (``_openai``) both create their tasks
here, so the two dialects draw on one account.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import deque
from typing import Any

from .._core._clock import Clock
from ._asgi import Request, Response
from ._config import SimulatorConfig
from ._records import SimulatorRecords
from ._signing import Signer
from ._state import Plan, SimState, SimTask
from ._validation import check, output_shape
from ._webhook_sender import WebhookSender

__all__ = ["SimAccount"]


class SimAccount:
    """One simulated account: its tasks, credits and plans (see the module docstring)."""

    def __init__(self, config: SimulatorConfig, clock: Clock, records: SimulatorRecords) -> None:
        self.config = config
        self.clock = clock
        self.records = records
        self.state = SimState(config.credits, config.task_retention)
        self.signer = Signer(config.seed)
        self._rng = random.Random(config.seed)
        self._plans: deque[Plan] = deque()
        self.webhooks = WebhookSender(config, clock, result_for=self.result)

    def plan(self, plan: Plan) -> None:
        """Queue ``plan`` for the next task created."""
        self._plans.append(plan)

    def task(self, task_id: str) -> SimTask:
        """Return the task ``task_id`` (KeyError when unknown or forgotten)."""
        return self.state.tasks[task_id]

    @property
    def credits(self) -> float:
        """Return the credit balance now (moderated tasks refunded once they ended)."""
        self.settle()
        return self.state.credits

    def auth(self, request: Request) -> Response | None:
        """Return the refusal of a request without the right ``x-key`` (None: let it in)."""
        key = request.headers.get("x-key")
        if key is None:
            return Response.json(401, {"detail": "Not authenticated"})
        if key != self.config.api_key:
            return Response.json(403, {"detail": "Invalid API key"})
        return None

    def create(self, request: Request, model: str, body: Any) -> tuple[Response, str | None]:
        """Create a task for a submit of ``body`` to ``model``; return the reply and its id.

        As BFL would: the key, the OpenAPI rules, the credits and the active-task limits
        are checked, in that order (the id is None when refused), then the next plan used.
        """
        refusal = self.auth(request)
        if refusal is not None:
            return refusal, None
        problems = check(model, body)
        if problems:
            return Response.json(422, {"detail": problems}), None
        plan = self._plans[0] if self._plans else Plan()
        cost = self.config.cost_for(model) if plan.cost is None else plan.cost
        key = self.config.api_key
        if self.credits < cost:
            return Response.json(402, {"detail": "Insufficient credits"}), None
        limit = self.config.limit_for(model)
        if self.state.active(key, model) >= limit:
            cap = f"{limit} of {model}"
        elif self.state.active(key) >= self.config.active_limit:
            cap = str(self.config.active_limit)
        else:
            cap = ""
        if cap:
            self.records.rejected_429 += 1
            detail = f"Too many active tasks (at most {cap}); wait for one to finish"
            return Response.json(429, {"detail": detail}), None
        if self._plans:
            self._plans.popleft()
        shape = output_shape(model, body)
        seed = body.get("seed")
        task = SimTask(
            id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            model=model,
            api_key=key,
            prompt=body.get("prompt"),
            seed=seed if isinstance(seed, int) else self._rng.randrange(2**32),
            width=shape.width,
            height=shape.height,
            output_format=shape.output_format,
            cost=cost,
            duration=self._duration(model) if plan.duration is None else plan.duration,
            outcome=plan.status,
            progress=plan.progress,
            submitted_at=self.clock.monotonic(),
            start_time=self.clock.time(),
        )
        self.state.add(task)
        webhook_url, secret = body.get("webhook_url"), body.get("webhook_secret")
        if isinstance(webhook_url, str):
            self.webhooks.schedule(task, webhook_url, secret if isinstance(secret, str) else None)
        self.records.max_active_seen = max(self.records.max_active_seen, self.state.active(key))
        reply = {
            "id": task.id,
            "polling_url": f"{self.config.poll_base}/v1/get_result?id={task.id}",
            "cost": cost,
            "input_mp": float(shape.input_images),
            "output_mp": shape.output_mp,
        }
        return Response.json(200, reply), task.id

    def _duration(self, model: str) -> float:
        median, sigma = self.config.latency_for(model)
        return self._rng.lognormvariate(math.log(median), sigma) if median > 0 else 0.0

    def result(self, task: SimTask) -> dict[str, Any]:
        """Return the ``result`` of a Ready poll of ``task``: its signed URL and its seed."""
        expiry = task.sample_expiry
        now = self.clock.time()
        if expiry is None:
            expiry = float(int(task.end_time + self.config.url_lifetime))
        elif self.config.refresh_url_on_poll and now > expiry:
            expiry = float(int(now + self.config.url_lifetime))
        task.sample_expiry = expiry
        sample = self.signer.url(self.config.delivery_base, task.id, task.output_format, expiry)
        return {
            "sample": sample,
            "prompt": task.prompt,
            "seed": task.seed,
            "start_time": task.start_time,
            "end_time": task.end_time,
            "duration": task.duration,
        }

    def settle(self) -> None:
        """Refund the moderated tasks that ended and forget the expired ones."""
        for task_id in self.state.settle(self.clock.monotonic()):
            self.records.polls_by_task.pop(task_id, None)
