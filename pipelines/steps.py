"""A small step runner: each step is cached by the content hash of its inputs and parameters.

A step's key is a hash of (its own inputs, the code of the packages it uses, the keys of the steps it
depends on). A re-run with nothing changed skips every step; a changed input re-runs that step and
what depends on it; ``force_from`` re-runs a step and everything after it. The cache record of a step
is written only after it succeeds, so a failure leaves earlier outputs and records as they were.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from features.workspace import REPO_ROOT, Workspace, atomic_write


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_hash(*packages: str) -> str:
    """Hash of the Python sources of the given top-level packages (a code change re-runs the step)."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class StepFailed(RuntimeError):
    def __init__(self, step: str, cause: BaseException):
        super().__init__(f"step '{step}' failed: {cause.__class__.__name__}: {cause}")
        self.step = step
        self.cause = cause


@dataclass
class Step:
    """One unit of the pipeline. ``run(context)`` returns a JSON-able summary of what it produced."""

    name: str
    run: Callable[[dict], dict]
    inputs: Callable[[dict], Any] = lambda ctx: None
    after: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    outputs: Callable[[dict], list[Path]] = lambda ctx: []
    always: bool = False  # run every time (e.g. serve)


@dataclass
class StepResult:
    name: str
    status: str  # "ran", "cached", "failed", "skipped"
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


class Pipeline:
    def __init__(self, workspace: Workspace, steps: list[Step]):
        self.workspace = workspace
        self.steps = steps
        self.cache_path = workspace.root / "pipeline_cache.json"

    def _cache(self) -> dict:
        return json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}

    def _save(self, cache: dict) -> None:
        atomic_write(self.cache_path, lambda tmp: tmp.write_text(json.dumps(cache, indent=2, default=str)))

    def key(self, step: Step, ctx: dict, keys: dict[str, str]) -> str:
        return content_hash(
            {
                "inputs": step.inputs(ctx),
                "code": code_hash(*step.code) if step.code else None,
                "after": [keys[name] for name in step.after],
            }
        )

    def run(
        self,
        ctx: dict,
        force_from: str | None = None,
        until: str | None = None,
        on_start: Callable[[Step], None] = lambda step: None,
        on_end: Callable[[StepResult], None] = lambda result: None,
    ) -> list[StepResult]:
        names = [s.name for s in self.steps]
        if force_from is not None and force_from not in names:
            raise ValueError(f"unknown step {force_from!r}; steps are {', '.join(names)}")
        forced = False
        keys: dict[str, str] = {}
        results: list[StepResult] = []
        cache = self._cache()
        for step in self.steps:
            forced = forced or step.name == force_from
            on_start(step)
            key = self.key(step, ctx, keys)
            keys[step.name] = key
            record = cache.get(step.name)
            fresh = (
                record is not None
                and record["key"] == key
                and all(Path(p).exists() for p in step.outputs(ctx))
            )
            if fresh and not forced and not step.always:
                ctx[step.name] = record["summary"]
                result = StepResult(step.name, "cached", 0.0, record["summary"])
            else:
                started = time.perf_counter()
                try:
                    summary = step.run(ctx) or {}
                except Exception as exc:  # noqa: BLE001 - reported with the step's name, then re-raised
                    result = StepResult(step.name, "failed", time.perf_counter() - started, {"error": str(exc)})
                    results.append(result)
                    on_end(result)
                    raise StepFailed(step.name, exc) from exc
                ctx[step.name] = summary
                cache[step.name] = {"key": key, "summary": summary, "finished_at": time.time()}
                self._save(cache)
                result = StepResult(step.name, "ran", time.perf_counter() - started, summary)
            results.append(result)
            on_end(result)
            if step.name == until:
                break
        return results
