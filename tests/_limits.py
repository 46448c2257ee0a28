"""Input caps for the ray_jobs tests: the ``limits`` dict a plan carries."""

MiB = 1024**2


def limits(max_bytes: int = 256 * MiB, max_row_bytes: int = 64 * 1024) -> dict[str, int]:
    """Caps small enough to test, with zstd's own default window limit."""
    return {
        "max_file_bytes": max_bytes,
        "max_decompressed_bytes": max_bytes,
        "max_row_bytes": max_row_bytes,
        "zstd_max_window_bytes": 128 * MiB,
    }
