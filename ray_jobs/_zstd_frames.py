"""Follow the frame structure of a zstd stream as its bytes go by.

python-zstandard's ``stream_reader`` returns a clean end of stream when its source ends in
the middle of a frame, so a truncated file would pass for a short one. ``FrameTracker``
walks the frame and block headers (RFC 8878) of the compressed bytes, which costs a few
operations per 128 KiB block, and says at the end whether the last frame was complete. On
the way it reads each frame's declared window and content size, so frames that need more
memory than allowed are refused before any of their data is decompressed.
"""

from __future__ import annotations

from celeray.errors import DecompressionError, InputTooLargeError
from celeray.sizes import format_size

__all__ = ["ZSTD_MAGIC", "FrameTracker", "is_skippable_magic"]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50

# What the tracker is waiting for; each state needs a fixed number of bytes.
_MAGIC = "magic"  # 4 bytes: the next frame's magic number (or the clean end)
_FHD = "frame header descriptor"  # 1 byte
_HEADER_REST = "frame header"  # window descriptor, dictionary id, content size
_SKIP_SIZE = "skippable frame size"  # 4 bytes
_BLOCK_HEADER = "block header"  # 3 bytes
_CHECKSUM = "checksum"  # 4 bytes


def is_skippable_magic(magic: bytes) -> bool:
    """True if ``magic`` starts a zstd skippable frame (``50..5F 2A 4D 18``)."""
    return len(magic) >= 4 and int.from_bytes(magic[:4], "little") & _SKIPPABLE_MASK == (
        _SKIPPABLE_MAGIC
    )


class FrameTracker:
    """Feed it the compressed bytes in order; ``complete`` tells if the stream ended cleanly.

    Raises ``InputTooLargeError`` (from :meth:`feed`) when a frame declares a content size
    over ``max_content`` or a window over ``max_window``, and ``DecompressionError`` when
    the bytes are not a zstd frame at all (other corruption is left to the decompressor).
    """

    def __init__(self, *, url: str, max_content: int, max_window: int) -> None:
        self._url = url
        self._max_content = max_content
        self._max_window = max_window
        self._state = _MAGIC
        self._need = 4
        self._buf = bytearray()
        self._skip = 0  # payload bytes to pass over before the next header
        self._after_skip = _MAGIC
        self._fhd = 0
        self._last_block = False
        self._frames = 0

    @property
    def complete(self) -> bool:
        """True when every frame seen so far is finished and at least one was seen."""
        return self._frames > 0 and self._state == _MAGIC and not self._buf and self._skip == 0

    @property
    def where(self) -> str:
        """What the tracker was reading, for the message about a truncated stream."""
        return "block data" if self._skip else self._state

    def feed(self, data: bytes) -> None:
        """Account for the next compressed bytes."""
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                if not self._skip:
                    self._enter(self._after_skip)
                continue
            take = min(self._need - len(self._buf), end - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                header = bytes(self._buf)
                self._buf.clear()
                self._on_header(header)

    def _enter(self, state: str) -> None:
        self._state = state
        self._need = {_MAGIC: 4, _FHD: 1, _SKIP_SIZE: 4, _BLOCK_HEADER: 3, _CHECKSUM: 4}.get(
            state, self._need
        )

    def _on_header(self, header: bytes) -> None:
        if self._state == _MAGIC:
            self._on_magic(header)
        elif self._state == _FHD:
            self._on_fhd(header[0])
        elif self._state == _HEADER_REST:
            self._on_header_rest(header)
        elif self._state == _SKIP_SIZE:
            self._skip = int.from_bytes(header, "little")
            self._after_skip = _MAGIC
            if not self._skip:
                self._enter(_MAGIC)
        elif self._state == _BLOCK_HEADER:
            self._on_block_header(int.from_bytes(header, "little"))
        elif self._state == _CHECKSUM:
            self._end_frame()

    def _on_magic(self, header: bytes) -> None:
        if header == ZSTD_MAGIC:
            self._enter(_FHD)
        elif is_skippable_magic(header):
            self._frames += 1
            self._enter(_SKIP_SIZE)
        else:
            raise DecompressionError(
                f"not zstd data after frame {self._frames}: unknown frame magic {header.hex(' ')}",
                url=self._url,
            )

    def _on_fhd(self, fhd: int) -> None:
        if fhd & 0x08:
            raise DecompressionError("corrupt zstd frame header (reserved bit set)", url=self._url)
        self._fhd = fhd
        fcs_flag = fhd >> 6
        single_segment = (fhd >> 5) & 1
        fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
        did_size = (0, 1, 2, 4)[fhd & 3]
        rest = (0 if single_segment else 1) + did_size + fcs_size
        self._need = rest
        self._state = _HEADER_REST
        if rest == 0:  # impossible by the format (single segment implies a size), but safe
            self._on_header_rest(b"")

    def _on_header_rest(self, rest: bytes) -> None:
        fhd = self._fhd
        single_segment = (fhd >> 5) & 1
        fcs_flag = fhd >> 6
        did_size = (0, 1, 2, 4)[fhd & 3]
        window: int | None = None
        pos = 0
        if not single_segment:
            descriptor = rest[0]
            base = 1 << (10 + (descriptor >> 3))
            window = base + (base // 8) * (descriptor & 7)
            pos = 1
        pos += did_size
        fcs_bytes = rest[pos:]
        content: int | None = None
        if fcs_bytes:
            content = int.from_bytes(fcs_bytes, "little")
            if fcs_flag == 1:
                content += 256  # the 2-byte field is stored minus 256
        if single_segment:
            window = content
        if content is not None and content > self._max_content:
            raise InputTooLargeError(
                f"zstd frame declares {format_size(content)} of content, over the cap of "
                f"{format_size(self._max_content)} (max_decompressed_bytes)",
                url=self._url,
            )
        if window is not None and window > self._max_window:
            raise InputTooLargeError(
                f"zstd frame needs a {format_size(window)} window, over the cap of "
                f"{format_size(self._max_window)} (zstd_max_window_bytes)",
                url=self._url,
            )
        self._enter(_BLOCK_HEADER)

    def _on_block_header(self, value: int) -> None:
        self._last_block = bool(value & 1)
        block_type = (value >> 1) & 3
        size = value >> 3
        if block_type == 3:
            raise DecompressionError("corrupt zstd block (reserved block type)", url=self._url)
        payload = 1 if block_type == 1 else size  # an RLE block stores one byte
        after = _BLOCK_HEADER
        if self._last_block:
            after = _CHECKSUM if self._fhd & 0x04 else _MAGIC
        if payload:
            self._skip = payload
            self._after_skip = after
            if after == _MAGIC:
                self._frames += 1
        else:
            if after == _MAGIC:
                self._frames += 1
            self._enter(after)

    def _end_frame(self) -> None:
        self._frames += 1
        self._enter(_MAGIC)
