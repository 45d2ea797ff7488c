"""Predictions of the fake server, as a mixin of ``FakeReplicate``: create (and start the worker that
takes it ``starting`` -> ``processing`` -> terminal), ``Cancel-After`` deadlines, cancel, seeded
(web) predictions, faults drawn per request, and the JSON the API shows (data removal, official echo).

Billing as Replicate does it (https://replicate.com/docs/topics/predictions/lifecycle): a prediction
ended before it started (``aborted``, or canceled while ``starting``) has no ``predict_time`` and costs
nothing; one canceled while running has the ``predict_time`` it ran, which GPU-second models bill.
"""

from __future__ import annotations

import string
import threading
import time
from typing import TYPE_CHECKING, Any

from pipeline_tests.fake_replicate.state import FAKE_MODELS, FAULT_KINDS, FakePrediction, Fault, canonical, \
    is_official, official_echo

if TYPE_CHECKING:
    from pipeline_tests.fake_replicate.server import FakeReplicate

TERMINAL = ("succeeded", "failed", "canceled", "aborted")


class PredictionsMixin:
    """The prediction behaviour of a ``FakeReplicate``."""

    # --- drawing times and faults ----------------------------------------------------------------

    def _seconds(self: "FakeReplicate", spec: Any) -> float:
        if callable(spec):
            return float(spec())
        if isinstance(spec, (tuple, list)):
            with self._lock:
                return self._rng.uniform(*spec)
        return float(spec)

    def _fault(self: "FakeReplicate", phase: str, model: str | None) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.kind in FAULT_KINDS[phase] and f.take(model):
                    return f
        return None

    def _outcome_faults(self: "FakeReplicate", model: str) -> dict[str, Fault]:
        out: dict[str, Fault] = {}
        with self._lock:
            for f in self.faults:
                if f.kind in FAULT_KINDS["outcome"] and f.kind not in out and f.take(model):
                    out[f.kind] = f
        return out

    def _new_id(self: "FakeReplicate") -> str:
        with self._lock:
            return "".join(self._rng.choice(string.ascii_lowercase + "0123456789") for _ in range(26))

    def _fault_for(self: "FakeReplicate", model: str, inp: dict[str, Any]) -> Fault | None:
        """The ``fault_for`` fault of one create request (counting the request), or None."""
        with self._lock:
            n = self.create_requests_by_input[(model, canonical(inp))]
            self.create_requests_by_input[(model, canonical(inp))] += 1
        if self.fault_for is None:
            return None
        decided = self.fault_for(model, inp, n)
        if decided is None:
            return None
        kind, options = (decided, {}) if isinstance(decided, str) else decided
        if not any(kind in kinds for kinds in FAULT_KINDS.values()):
            raise ValueError(f"fault_for returned an unknown fault {kind!r}")
        return Fault(kind, 0, model, dict(options))

    # --- the JSON shown --------------------------------------------------------------------------

    def prediction_json(self: "FakeReplicate", pred: FakePrediction) -> dict[str, Any]:
        """``pred`` as the API shows it now (data removed after ``retention_s``). Hold the lock."""
        return pred.to_json(self.base_url, now=self.now(), retention_s=self.retention_s)

    # --- create, deadline, cancel ----------------------------------------------------------------

    def create(self: "FakeReplicate", model: str, version: str, inp: dict[str, Any], extra: Fault | None = None,
               cancel_after_s: float | None = None) -> FakePrediction:
        """Create a prediction (a paid attempt) and start its worker. ``cancel_after_s``: its
        ``Cancel-After`` deadline, seconds from now (aborted if still starting, else canceled).
        An official model shows another model name and a ``dp-`` version when ``official_echo``."""
        outcome = self._outcome_faults(model)
        if extra is not None and extra.kind in FAULT_KINDS["outcome"]:
            outcome[extra.kind] = extra
        now = self.now()
        shown = official_echo(model) if self.official_echo and is_official(model) else (None, None)
        pred = FakePrediction(id=self._new_id(), model=model, version=version, input=inp, created_at=now,
                              outcome=outcome, deadline_at=None if cancel_after_s is None else now + cancel_after_s,
                              shown_model=shown[0], shown_version=shown[1])
        with self._lock:
            self.predictions[pred.id] = pred
            self.creates[(model, canonical(inp))] += 1
            pred.created_json = self.prediction_json(pred)  # before the worker can move it on
        threading.Thread(target=self._work, args=(pred,), daemon=True, name=f"fake-pred-{pred.id[:6]}").start()
        if cancel_after_s is not None:
            timer = threading.Timer(cancel_after_s, self._deadline, args=(pred,))
            timer.daemon = True
            timer.start()
        return pred

    def _end(self: "FakeReplicate", pred: FakePrediction, status: str, log: str) -> None:
        """End a live prediction at ``status`` now, charging only the time it ran. Hold the lock."""
        now = self.now()
        pred.status, pred.completed_at = status, now
        pred.logs += log
        pred.metrics = {"total_time": round(now - pred.created_at, 3)}
        if pred.started_at is not None:
            pred.metrics["predict_time"] = round(now - pred.started_at, 3)
        pred.cancel.set()
        pred.done.set()

    def _deadline(self: "FakeReplicate", pred: FakePrediction) -> None:
        with self._lock:
            if pred.status in TERMINAL or self._stop.is_set():
                return
            self._end(pred, "aborted" if pred.status == "starting" else "canceled",
                      "Prediction deadline (Cancel-After) reached.\n")
            self.deadline_cancels.append(pred.id)

    def sweep_deadlines(self: "FakeReplicate") -> None:
        """End every live prediction whose ``Cancel-After`` deadline has passed on the server clock
        (after ``advance_clock``; the timers cover real time)."""
        now = self.now()
        with self._lock:
            due = [p for p in self.predictions.values()
                   if p.deadline_at is not None and p.status not in TERMINAL and now >= p.deadline_at]
        for p in due:
            self._deadline(p)

    def cancel(self: "FakeReplicate", pred: FakePrediction) -> None:
        with self._lock:
            self.cancels.append(pred.id)
            if pred.status not in TERMINAL:
                self._end(pred, "canceled", "Prediction canceled.\n")
            pred.cancel.set()

    # --- the worker ------------------------------------------------------------------------------

    def _work(self: "FakeReplicate", pred: FakePrediction) -> None:
        run = None
        if "slow" in pred.outcome:
            run = pred.outcome["slow"].options.get("seconds", 5.0)
        elif self.run_seconds_for is not None:
            run = self.run_seconds_for(pred.model, pred.input)
        if run is None:
            run = self._seconds(self.run_seconds)
        run = float(run)
        pred.run_s = run
        if "queued" in pred.outcome:  # waiting for hardware: stays starting until released
            while not pred.release.wait(0.05):
                if pred.cancel.is_set() or self._stop.is_set():
                    return
        started = time.monotonic()
        if pred.cancel.wait(min(run * 0.2, 0.5)):
            return
        with self._lock:
            if pred.status != "starting":
                return
            pred.status, pred.started_at = "processing", self.now()
            pred.logs += "Loading model...\nRunning prediction...\n"
        if "never_finish" in pred.outcome:
            pred.cancel.wait()
            return
        if "hold" in pred.outcome:
            while not pred.release.wait(0.05):
                if pred.cancel.is_set() or self._stop.is_set():
                    return
        rendered = None
        if self.render_during_run and not ({"fail", "abort", "never_finish", "hold", "queued"} & pred.outcome.keys()):
            rendered = self._render_result(pred)
        if "hold" not in pred.outcome and pred.cancel.wait(max(0.0, started + run - time.monotonic())):
            return
        output, error, metrics = None, None, {}
        status = "succeeded"
        if rendered is not None:
            status, output, error, metrics = rendered
        elif "fail" in pred.outcome:
            status, error = "failed", pred.outcome["fail"].options.get(
                "error", "The input or output was flagged as sensitive. Please try again with different inputs. (E005)")
        elif "abort" in pred.outcome:
            status = "aborted"
        else:
            status, output, error, metrics = self._render_result(pred)
        with self._lock:
            if pred.status != "processing":
                return
            now = self.now()
            pred.status, pred.output, pred.error, pred.completed_at = status, output, error, now
            pred.metrics = {"predict_time": round(now - (pred.started_at or now), 3),
                            "total_time": round(now - pred.created_at, 3), **metrics}
            pred.logs += "Done.\n" if status == "succeeded" else f"{status}\n"
            pred.done.set()

    def _render_result(self: "FakeReplicate", pred: FakePrediction) -> tuple[str, Any, str | None, dict[str, Any]]:
        """(status, output, error, metrics) of rendering ``pred``'s output now."""
        try:
            output, metrics = self._render(pred)
            return "succeeded", output, None, metrics
        except Exception as exc:  # a bad input the schema check let through
            return "failed", None, f"{type(exc).__name__}: {exc}", {}

    def _render(self: "FakeReplicate", pred: FakePrediction) -> tuple[Any, dict[str, Any]]:
        from pipeline_tests.fake_replicate.render import render

        return render(self, pred)

    # --- seeded predictions ----------------------------------------------------------------------

    def seed_predictions(self: "FakeReplicate", n: int, *, source: str = "web",
                         model: str = "black-forest-labs/flux-schnell", input: dict[str, Any] | None = None,
                         status: str = "succeeded", ago_s: float = 0.0, spacing_s: float = 1.0) -> list[str]:
        """Add ``n`` finished predictions made outside this test's API calls, oldest first: ``source``
        ``web`` (made on replicate.com; listed, never data-removed) or ``api`` (another client's).
        The newest was created ``ago_s`` seconds ago, each ``spacing_s`` after the one before; each
        ran 1 s (0.5 s starting). Their output is a tiny placeholder file, not real media. They are
        not counted as creates. Returns their ids, oldest first."""
        if source not in ("web", "api") or status not in TERMINAL or model not in FAKE_MODELS:
            raise ValueError(f"cannot seed {source!r} predictions of {model!r} with status {status!r}")
        newest = self.now() - ago_s
        ids = []
        for i in range(n):
            created = newest - (n - 1 - i) * spacing_s
            pred = FakePrediction(id=self._new_id(), model=model, version=(FAKE_MODELS[model].get("versions")
                                                                          or ["hidden"])[0],
                                  input=dict(input or {"prompt": f"seeded {source} prediction {i}"}),
                                  created_at=created, status=status, source=source, seeded=True,
                                  started_at=created + 0.5, completed_at=created + 1.0,
                                  logs="Seeded.\n", metrics={"predict_time": 0.5, "total_time": 1.0})
            if status == "succeeded":
                pred.output = [self._add_file(pred, "out-0.webp", b"RIFF\x00\x00\x00\x00WEBP", "image/webp")]
            pred.done.set()
            with self._lock:
                self.predictions[pred.id] = pred
            ids.append(pred.id)
        return ids
