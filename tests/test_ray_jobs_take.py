"""``ray_jobs._take``: the head of a batch stream, and small batches joined into larger ones."""

import pyarrow as pa

from ray_jobs._take import groups, rebatch, take


def batch(start: int, n: int) -> pa.RecordBatch:
    return pa.record_batch({"i": list(range(start, start + n)), "s": [f"v{j}" for j in
                                                                       range(start, start + n)]})


def stream(sizes: list[int]) -> list[pa.RecordBatch]:
    out, start = [], 0
    for n in sizes:
        out.append(batch(start, n))
        start += n
    return out


def ids(batches: list[pa.RecordBatch]) -> list[int]:
    return [i for b in batches for i in b.column("i").to_pylist()]


def test_take_returns_the_head_its_size_and_the_rest() -> None:
    head, rest, size = take(stream([3, 3, 3, 3]), 5, size=lambda b: b.num_rows)
    assert [b.num_rows for b in head] == [3, 3] and size == 6
    assert rest is not None and ids(list(rest)) == list(range(6, 12))


def test_take_of_a_stream_within_the_limit_has_no_rest() -> None:
    head, rest, size = take(stream([2, 2]), 10, size=lambda b: b.num_rows)
    assert rest is None and size == 4 and ids(head) == [0, 1, 2, 3]


def test_rebatch_joins_runs_of_small_batches_in_order() -> None:
    out = list(rebatch(stream([3] * 10), 7, nbytes=1 << 30, small=5))
    assert [b.num_rows for b in out] == [9, 9, 9, 3]
    assert ids(out) == list(range(30))
    assert all(b.schema == out[0].schema for b in out)


def test_rebatch_passes_large_batches_on_unchanged_and_ends_a_run_before_them() -> None:
    batches = stream([2, 10, 2, 2, 10, 3])
    out = list(rebatch(batches, 7, nbytes=1 << 30, small=5))
    # each 10 passes as it came (no copy); the runs of small ones before it are joined
    assert [b.num_rows for b in out] == [2, 10, 4, 10, 3]
    assert out[1] is batches[1] and out[3] is batches[4]
    assert ids(out) == list(range(29))


def test_rebatch_of_nothing_is_nothing() -> None:
    assert list(rebatch([], 5, nbytes=1 << 30, small=2)) == []


def test_rebatch_ends_a_run_at_its_bytes_too() -> None:
    batches = stream([3] * 6)
    per_batch = batches[0].get_total_buffer_size()
    out = list(rebatch(batches, 1000, nbytes=2 * per_batch, small=5))
    assert [b.num_rows for b in out] == [6, 6, 6]
    assert ids(out) == list(range(18))


def test_groups_hand_batches_on_uncopied_in_runs_of_rows_or_bytes() -> None:
    batches = stream([3, 3, 3, 10, 2])
    runs = list(groups(batches, 6, nbytes=1 << 30))
    assert [[b.num_rows for b in run] for run in runs] == [[3, 3], [3, 10], [2]]
    assert all(a is b for a, b in zip([b for run in runs for b in run], batches, strict=True))
    per_batch = batches[0].get_total_buffer_size()
    by_bytes = list(groups(stream([3] * 5), 1000, nbytes=2 * per_batch))
    assert [len(run) for run in by_bytes] == [2, 2, 1]
    assert list(groups([], 5, nbytes=1)) == []
