"""Reloading the models folder in place, in one worker, while it serves.

Each reload scans the folder again with the start-up check (manifest, sha256) and compares every export with
the model serving its name: the same export (manifest and file) is kept as it is; a new or changed one is
loaded and warmed up beside the one serving, fully, before anything changes; then every change is swapped in
at once (`Registry.models` is replaced by a new dict) and each model taken out is closed once the requests
holding it have let go (`Registry.retire`). An export that fails any step (its manifest, its sha256, ONNX Runtime
refusing it, its warm-up) changes nothing: the model it would have replaced keeps serving, and the report says
why. Reloads are serialized by `Registry.changing`; `follow` merges the SIGHUPs that arrive during one into
one more. Settings are not re-read: they need a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.errors import Misconfigured
from engine.exports import MANIFEST, export_names
from engine.manifest import ManifestError, load_verified, sha256_of
from engine.registry import LoadedModel, Registry

log = logging.getLogger(__name__)
STATUSES = ("unchanged", "added", "replaced", "removed", "failed")
RETIRE_TIMEOUT_S = 120.0  # far beyond any request: a retired model still held then is closed anyway
ERROR_CHARS = 500  # ONNX Runtime's messages can be long; the report keeps their start


@dataclass(frozen=True)
class Outcome:
    """What one reload did to one model name; `sha256` is the export serving it afterwards (None: none)."""

    status: str
    sha256: str | None
    previous_sha256: str | None
    error: str | None = None

    def to_dict(self) -> dict:
        return {"status": self.status, "sha256": self.sha256, "previous_sha256": self.previous_sha256,
                "error": self.error}  # fmt: skip


@dataclass(frozen=True)
class Report:
    models: dict[str, Outcome]

    @property
    def failed(self) -> list[str]:
        return [name for name, outcome in self.models.items() if outcome.status == "failed"]

    def to_dict(self) -> dict:
        return {"models": {name: outcome.to_dict() for name, outcome in self.models.items()}}


class Reloader:
    """`reload()` now, in the calling thread; `follow(event)` reloads in a thread each time the event is set."""

    def __init__(self, registry: Registry, on_outcome: Callable[[str, str], None] | None = None,
                 retire_timeout: float = RETIRE_TIMEOUT_S):  # fmt: skip
        self.registry = registry
        self.on_outcome = on_outcome  # (model name, status) per model per reload, e.g. for metrics
        self.retire_timeout = retire_timeout

    def reload(self) -> Report:
        """Rescan the models folder and apply what changed (module docstring); one reload at a time."""
        self.registry.wait_loaded()
        with self.registry.changing:
            report = self._reload()
        for name, outcome in report.models.items():
            if self.on_outcome is not None:
                self.on_outcome(name, outcome.status)
        counts = {status: sum(o.status == status for o in report.models.values()) for status in STATUSES}
        log.info("models reloaded: %s", ", ".join(f"{count} {status}" for status, count in counts.items() if count))
        return report

    def follow(self, requested: threading.Event) -> threading.Thread:
        """Reload whenever `requested` is set (a SIGHUP handler sets it, and may have before this call): those
        set during a reload make one more reload after it, never a concurrent one."""

        def loop() -> None:
            while not self.registry.closing:
                requested.wait()
                requested.clear()
                if self.registry.closing:
                    return
                try:
                    self.reload()
                except Exception:  # never let the thread die: the next SIGHUP must still work
                    log.exception("reloading models failed")

        thread = threading.Thread(target=loop, name="model-reloader", daemon=True)
        thread.start()
        return thread

    # --- one reload, under Registry.changing ----------------------------------------------------------------

    def _reload(self) -> Report:
        registry = self.registry
        serving = registry.models
        try:
            found, broken = _scan(registry.settings.models_dir)
        except Misconfigured as exc:  # the folder itself: missing or empty; nothing changes
            before = {name: model.manifest.onnx.sha256 for name, model in serving.items()}
            outcomes = {name: Outcome("failed", sha256, sha256, exc.detail) for name, sha256 in before.items()}
            return self._record(serving, serving, outcomes)
        models: dict[str, LoadedModel] = {}
        outcomes: dict[str, Outcome] = {}
        retired: list[LoadedModel] = []
        for name in sorted({*serving, *found, *broken}):
            old = serving.get(name)
            outcomes[name], model = self._one(old, found.get(name), broken.get(name))
            if model is not None:
                models[name] = model
            if old is not None and model is not old:
                retired.append(old)
        if registry.closing:  # Registry.close is waiting for this reload: leave it the models it knows
            for name, model in models.items():
                if model is not serving.get(name):
                    model.close()
            return Report(outcomes)
        report = self._record(serving, models, outcomes)
        for model in retired:
            registry.retire(model, self.retire_timeout)
        return report

    def _one(
        self, old: LoadedModel | None, export: tuple | None, broken: str | None
    ) -> tuple[Outcome, LoadedModel | None]:
        """One name's outcome and the model serving it afterwards (None: none), from the model serving it now and
        what the folder holds: a sound export (manifest, path), a broken one (why), or nothing."""
        before = old.manifest.onnx.sha256 if old is not None else None
        if broken is not None:
            return Outcome("failed", before, before, broken), old
        if export is None:
            return Outcome("removed", None, before), None
        if old is not None and old.runtime is not None and (old.manifest, old.path) == export:
            return Outcome("unchanged", before, before), old
        if self.registry.closing:
            return Outcome("failed", before, before, "the worker is stopping"), old
        new, error = self._start(*export)
        if new is None:
            return Outcome("failed", before, before, error), old
        return Outcome("added" if old is None else "replaced", new.manifest.onnx.sha256, before), new

    def _record(self, serving: dict, models: dict, outcomes: dict[str, Outcome]) -> Report:
        """Note each outcome on the model serving its name, swap the new dict in, then log what changed or failed."""
        at = _now()  # when the changes take effect: after loading, before the old models are retired
        for name, outcome in outcomes.items():
            model = models.get(name)
            if model is not None and (outcome.status != "unchanged" or _last_status(model) == "failed"):
                model.last_reload = {"status": outcome.status, "at": at, "error": outcome.error}
        if models is not serving:
            self.registry.models = models  # one assignment: readers see the old dict or the new one
        if not self.registry.ready.is_set() and all(m.runtime is not None for m in models.values()):
            self.registry.failure = None  # a first load that failed is repaired by a reload that succeeds
            self.registry.ready.set()
        for name, outcome in outcomes.items():
            if outcome.status == "failed":
                keeps = f"still serving {outcome.sha256[:12]}…" if outcome.sha256 else "not served"
                log.error("reloading model %s failed, %s: %s", name, keeps, outcome.error)
            elif outcome.status != "unchanged":
                log.info("model %s %s (sha256 %s → %s)", name, outcome.status, _short(outcome.previous_sha256),
                         _short(outcome.sha256))  # fmt: skip
        return Report(outcomes)

    def _start(self, manifest, path: Path) -> tuple[LoadedModel | None, str | None]:
        """A new model loaded and warmed up, or None and why not. The file is hashed again once loaded: one
        replaced while it loaded is not served under the manifest's sha256."""
        model = LoadedModel(manifest, path)
        try:
            self.registry.start(model)
            if sha256_of(path) != manifest.onnx.sha256:
                raise ManifestError(f"{path} changed while it was loading; reload again once it is in place")
        except Exception as exc:
            model.close()
            return None, _message(exc)
        return model, None


def _scan(models_dir: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """Every export of the folder checked like at start-up: {name: (manifest, onnx path)} for the sound ones,
    {folder name: why} for the broken ones. Misconfigured when the folder is missing or holds no export."""
    found, broken = {}, {}
    for folder in export_names(models_dir):
        try:
            manifest, path = load_verified(Path(models_dir) / folder / MANIFEST)
        except ManifestError as exc:
            broken[folder] = exc.detail
            continue
        found[manifest.name] = (manifest, path)
    return found, broken


def _last_status(model: LoadedModel) -> str | None:
    return model.last_reload["status"] if model.last_reload else None


def _message(exc: Exception) -> str:
    detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
    return detail if len(detail) <= ERROR_CHARS else detail[:ERROR_CHARS] + "…"


def _short(sha256: str | None) -> str:
    return f"{sha256[:12]}…" if sha256 else "none"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
