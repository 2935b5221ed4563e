"""The code point -> id lookup: one-byte code points two at a time give exactly the ids of
a plain lookup, wherever the input and the output start."""
import numpy as np
import pytest

from data_prep.tokenize.id_table import PAIRS_FROM, IdTable


def table(dtype, size: int) -> np.ndarray:
    """Ids for code points below `size` (every third one outside), the outside value last."""
    outside = np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else -1
    ids = (np.arange(size) * 7 % 250 + 1).astype(dtype)
    ids[::3] = outside
    return np.append(ids, np.array(outside, dtype))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32])
@pytest.mark.parametrize("size", [60, 256])  # a table that ends below 255: the rest is outside
@pytest.mark.parametrize("in_at, out_at", [(0, 0), (1, 0), (0, 1), (1, 1), (3, 2)])
@pytest.mark.parametrize("n", [PAIRS_FROM, PAIRS_FROM + 1, 3 * PAIRS_FROM + 7, 100])
def test_pairs_give_the_ids_of_a_plain_lookup(dtype, size, in_at, out_at, n):
    cps = np.random.default_rng(n).integers(0, 256, in_at + n, dtype=np.uint8)[in_at:]
    lut = table(dtype, size)
    out = np.zeros(out_at + n + 1, dtype)
    IdTable(lut).into(cps, out[out_at : out_at + n])
    assert np.array_equal(out[out_at : out_at + n], lut.take(cps, mode="clip"))
    assert not out[:out_at].any() and out[-1] == 0  # nothing written outside its place


def test_wider_code_points_are_looked_up_one_by_one():
    cps = np.array([0, 5, 59, 60, 70_000], np.uint32)
    lut = table(np.uint16, 60)
    out = np.empty(len(cps), np.uint16)
    IdTable(lut).into(cps, out)
    assert out.tolist() == lut.take(cps, mode="clip").tolist()


@pytest.mark.parametrize("dtype", [np.uint16, np.uint64])
def test_strided_arrays_and_wide_ids_are_looked_up_one_by_one(dtype):
    cps = np.arange(4 * PAIRS_FROM, dtype=np.uint8)
    lut = table(dtype, 256)
    out = np.zeros(4 * PAIRS_FROM, dtype)
    IdTable(lut).into(cps[::2], out[::2])
    assert np.array_equal(out[::2], lut.take(cps[::2], mode="clip")) and not out[1::2].any()
