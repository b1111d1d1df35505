"""Audio for calls in tests: tones the peers play (raw G.711 u-law for sipp's
rtp_stream, WAV for baresip's aufile), a look at recorded WAV files, and
RTP packet counters kept by nftables in a host's namespace."""

from __future__ import annotations

import array
import io
import itertools
import json
import math
import wave
from dataclasses import dataclass
from pathlib import Path

from .netns import Host

RATE = 8000
RTP_PORTS = "10000-10099"  # rtp.conf of the suite


def tone(freq: float, seconds: float, amplitude: float = 0.3) -> list[int]:
    """A sine as 16-bit samples at 8 kHz."""
    n = int(RATE * seconds)
    return [int(32767 * amplitude * math.sin(2 * math.pi * freq * i / RATE)) for i in range(n)]


def ulaw(sample: int) -> int:
    """G.711 u-law of one 16-bit sample (the textbook encoder)."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), clip) + bias
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def write_ulaw(path: Path, samples: list[int]) -> Path:
    """Raw u-law, the format sipp's rtp_stream plays with payload type 0."""
    path.write_bytes(bytes(ulaw(s) for s in samples))
    return path


def write_wav(path: Path, samples: list[int]) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(array.array("h", samples).tobytes())
    return path


@dataclass(frozen=True)
class WavInfo:
    seconds: float
    rms: float            # of 16-bit samples: silence is near 0
    crossings_hz: float   # zero crossings per second / 2: a tone's frequency


def read_wav(data: bytes) -> WavInfo:
    """Length, loudness and rough frequency of a 16-bit mono WAV."""
    with wave.open(io.BytesIO(data), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, (w.getsampwidth(), w.getnchannels())
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    samples = array.array("h", frames)
    if not samples:
        return WavInfo(0.0, 0.0, 0.0)
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    seconds = len(samples) / rate
    return WavInfo(seconds, rms, crossings / seconds / 2)


class RtpCounter:
    """nftables counters in HOST's namespace for RTP to and from PEER's RTP
    ports: what this host really sent and received, counted by its kernel."""

    TABLE = "rtpcount"

    def __init__(self, host: Host, peer: str) -> None:
        self.host = host
        family = "ip6" if ":" in peer else "ip"
        rules = (f"table inet {self.TABLE} {{\n"
                 f" counter rx {{}}\n counter tx {{}}\n"
                 f" chain input {{ type filter hook input priority 0; policy accept;\n"
                 f"  {family} saddr {peer} udp sport {RTP_PORTS} counter name rx\n }}\n"
                 f" chain output {{ type filter hook output priority 0; policy accept;\n"
                 f"  {family} daddr {peer} udp dport {RTP_PORTS} counter name tx\n }}\n}}\n")
        host.run("nft", "-f", "-", input=rules)

    def packets(self) -> dict[str, int]:
        """{"rx": packets received from the peer's RTP ports, "tx": sent to them}"""
        out = self.host.run("nft", "-j", "list", "counters", "table", "inet", self.TABLE).stdout
        return {item["counter"]["name"]: item["counter"]["packets"]
                for item in json.loads(out)["nftables"] if "counter" in item}
