"""The fake Replicate server (pipeline_tests.fake_replicate) in its own process, with the
benchmark's latency model and fault selection, controlled over a pipe.

Its own process keeps the server's threads (HTTP, fake rendering) out of the process that forks
the pipeline's workers, and its CPU use visible as a separate process.
"""

from __future__ import annotations

import multiprocessing
from typing import Any


def _bench_server_class():
    """FakeReplicate whose music is a plain tone: the fake's synthesizer costs seconds of CPU per
    track on the machine under test, which is the fake's cost, not the pipeline's."""
    import wave

    import numpy as np

    from pipeline import media
    from pipeline_tests.fake_replicate import FAKE_MODELS, FakeReplicate

    class BenchFakeReplicate(FakeReplicate):
        def _render(self, pred):
            spec = FAKE_MODELS[pred.model]
            if spec["kind"] != "audio":
                return super()._render(pred)
            import tempfile
            from pathlib import Path

            seconds = float(pred.input.get(spec["duration"][0], spec["duration"][1]))
            rate = 22050
            t = np.arange(int(seconds * rate)) / rate
            samples = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.75 + 0.25 * np.sin(2 * np.pi * 0.25 * t))
            work = Path(tempfile.mkdtemp(dir=self._tmp.name))
            wav = work / "output.wav"
            with wave.open(str(wav), "wb") as wf:
                wf.setnchannels(1)
                wf.setsampwidth(2)
                wf.setframerate(rate)
                wf.writeframes((samples * 32767).astype("<i2").tobytes())
            fmt = str(pred.input.get(spec.get("format_field", ""), spec["format"]))
            if fmt == "mp3":
                mp3 = work / "output.mp3"
                media.run_ffmpeg(["-i", str(wav), "-c:a", "libmp3lame", "-b:a", "64k", str(mp3)], what="encode mp3")
                return self._add_file(pred, "output.mp3", mp3.read_bytes(), "audio/mpeg"), {}
            return self._add_file(pred, "output.wav", wav.read_bytes(), "audio/wav"), {}

    return BenchFakeReplicate


def _serve(conn, config: dict[str, Any]) -> None:
    import sys

    sys.path[:0] = config["sys_path"]
    from _workload import draw_seconds, key_of_input

    FakeReplicate = _bench_server_class()

    seed, scale = config["seed"], config["scale"]
    failed: set[str] = set(config.get("failed") or ())
    fault_kind = config.get("fault_kind")
    fault_options = config.get("fault_options") or {}
    unknown: list[str] = []

    def run_seconds_for(model: str, inp: dict[str, Any]) -> float:
        return draw_seconds(seed, key_of_input(model, inp), scale)

    def fault_for(model: str, inp: dict[str, Any], n: int):
        if fault_kind and n == 0 and key_of_input(model, inp) in failed:
            return fault_kind, fault_options
        return None

    server = FakeReplicate(run_seconds=0.0, run_seconds_for=run_seconds_for, fault_for=fault_for,
                           render_during_run=True, render_scale=config.get("render_scale", 0.25),
                           latency=config.get("latency", 0.0), seed=seed,
                           rate_window_s=config.get("rate_window_s", 60.0)).start()
    conn.send({"base_url": server.base_url, "origin": server.origin, "token": server.token})
    try:
        while True:
            cmd = conn.recv()
            if cmd == "stats":
                with server._lock:
                    preds = [{"id": p.id, "model": p.model, "key": key_of_input(p.model, p.input),
                              "status": p.status, "created_at": p.created_at, "started_at": p.started_at,
                              "completed_at": p.completed_at, "run_s": p.run_s}
                             for p in server.predictions.values()]
                    conn.send({"predictions": preds, "create_requests": server.create_requests,
                               "creates": sum(server.creates.values()), "cancels": list(server.cancels),
                               "requests": len(server.requests), "unknown": unknown})
            elif cmd == "stop":
                break
    except (KeyboardInterrupt, EOFError):  # Ctrl-C reaches the whole process group; the parent stops it
        pass
    finally:
        server.close()
        conn.close()


class ServerProcess:
    """``with ServerProcess(seed=..., scale=..., failed=..., fault_kind=...) as s:`` -> s.base_url,
    s.origin, s.token, s.stats(), s.pid. Optional: ``rate_window_s`` (the fake's rate-limit window,
    seconds, default 60: 600 creates and 3000 reads per window), ``render_scale``, ``latency``."""

    def __init__(self, **config: Any):
        import sys

        self.config = {**config, "sys_path": list(sys.path)}
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self.config), daemon=True, name="fake-replicate")

    def __enter__(self) -> "ServerProcess":
        self._proc.start()
        info = self._conn.recv()
        self.base_url, self.origin, self.token = info["base_url"], info["origin"], info["token"]
        return self

    @property
    def pid(self) -> int | None:
        """The server process's pid (None before it started)."""
        return self._proc.pid

    def stats(self) -> dict[str, Any]:
        self._conn.send("stats")
        return self._conn.recv()

    def __exit__(self, *exc: object) -> None:
        try:
            self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
