"""Speech from the eSpeak NG engine that the espeakng-loader wheel ships, through its C API (no network)."""

import ctypes
import threading

import numpy as np

from variants.errors import MbsbenchError

AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_AUTO = 0
PARAMETERS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """One process-wide engine: synthesize(text, voice, rate, pitch) -> (int16 samples, sample rate)."""

    _lock = threading.Lock()
    _instance: "Espeak | None" = None

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            message = "the synth corpus needs the espeakng-loader package: pip install espeakng-loader"
            raise MbsbenchError(message) from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        rate = self.lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
        )
        if rate <= 0:
            raise MbsbenchError("eSpeak NG failed to initialise from the espeakng-loader data folder")
        self.sample_rate = rate
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: the C side holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> "Espeak":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def seed(self, value: int) -> None:
        """Seed eSpeak NG's own random generator and the C library's rand() it also uses."""
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(value))
        ctypes.CDLL(None).srand(ctypes.c_uint(value))

    def _collect(self, wav, count, _events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50) -> np.ndarray:
        """int16 samples of text spoken by voice (e.g. 'en+m3') at rate (words/min) and pitch (0-99)."""
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise MbsbenchError(f"eSpeak NG has no voice {voice!r}")
            for name, value in (("rate", rate), ("pitch", pitch), ("range", pitch_range)):
                self.lib.espeak_SetParameter(PARAMETERS[name], value, 0)
            self._chunks = []
            data = text.encode() + b"\0"
            status = self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_AUTO, None, None)
            self.lib.espeak_Synchronize()
            if status != 0 or not self._chunks:
                raise MbsbenchError(f"eSpeak NG could not synthesize {text!r} with voice {voice!r}")
            return np.concatenate(self._chunks)
