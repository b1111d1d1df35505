"""Read an .apk (v2) back with code of its own: zlib for the gzip streams,
tarfile for the tars, openssl for the signature. Shares nothing with
packaging/apk/apkv2.py, so a mistake there is not repeated here."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

END_OF_ARCHIVE = b"\0" * 1024


@dataclass
class Stream:
    raw: bytes  # the gzip bytes as they are in the file
    tar: bytes  # their content


@dataclass
class Apk:
    streams: list[Stream]

    def members(self, index: int) -> list[tarfile.TarInfo]:
        return list(_open(self.streams[index].tar))

    def read(self, index: int, name: str) -> bytes:
        tar = _open(self.streams[index].tar)
        member = tar.extractfile(name)
        assert member is not None, name
        return member.read()

    @property
    def pkginfo(self) -> dict[str, list[str]]:
        """.PKGINFO's fields; a field given many times (depend) keeps them all."""
        fields: dict[str, list[str]] = {}
        for line in self.read(1, ".PKGINFO").decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition(" = ")
                fields.setdefault(key, []).append(value)
        return fields

    def signature(self) -> tuple[str, bytes]:
        (member,) = self.members(0)
        return member.name, self.read(0, member.name)


def _open(tar: bytes) -> tarfile.TarFile:
    # a cut tar has no end-of-archive blocks: tarfile wants them
    return tarfile.open(fileobj=io.BytesIO(tar if tar.endswith(END_OF_ARCHIVE)
                                           else tar + END_OF_ARCHIVE))


def read(path: Path) -> Apk:
    data = path.read_bytes()
    streams, pos = [], 0
    while pos < len(data):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member
        tar = inflater.decompress(data[pos:]) + inflater.flush()
        assert inflater.eof, f"{path}: gzip stream {len(streams) + 1} is truncated"
        end = len(data) - len(inflater.unused_data)
        streams.append(Stream(data[pos:end], tar))
        pos = end
    return Apk(streams)


def is_cut(tar: bytes) -> bool:
    """True when the tar ends right after its last member's data."""
    return len(tar) % 512 == 0 and not tar.endswith(b"\0" * 512)


def verify(pubkey: Path, signed: bytes, signature: bytes) -> subprocess.CompletedProcess[str]:
    """openssl's verdict on an RSA SHA-1 signature (abuild-sign's type RSA)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").write_bytes(signed)
        (Path(tmp) / "sig").write_bytes(signature)
        return subprocess.run(["openssl", "dgst", "-sha1", "-verify", str(pubkey),
                               "-signature", f"{tmp}/sig", f"{tmp}/data"],
                              capture_output=True, text=True, check=False)


def checksums_match(apk: Apk) -> list[str]:
    """Names whose APK-TOOLS.checksum.SHA1 header is missing or wrong."""
    bad = []
    tar = _open(apk.streams[2].tar)
    for member in tar:
        if member.isfile():
            extracted = tar.extractfile(member)
            assert extracted is not None
            want = hashlib.sha1(extracted.read()).hexdigest()
        elif member.issym():
            want = hashlib.sha1(member.linkname.encode()).hexdigest()
        else:
            continue
        if member.pax_headers.get("APK-TOOLS.checksum.SHA1") != want:
            bad.append(member.name)
    return bad
