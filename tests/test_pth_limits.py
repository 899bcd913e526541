"""The .pth reader reads no more than the tensors need and names the file it refuses (issue #10, items 4 and 7)."""

import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest

from flax_squeezenet import UnsafePickleError, load_pth

torch = pytest.importorskip("torch", reason="torch writes the reference .pth files")

BOMB_BYTES = 128 << 20


def read_peak_bytes(path) -> tuple[dict, int]:
    """(state dict, the most memory Python allocated while reading it)."""
    tracemalloc.start()
    try:
        state = load_pth(path)
        return state, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def inflate_storage(source, target, padding: int) -> None:
    """Copy the zip `source` with every tensor storage followed by `padding` zero bytes, deflated."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if "/data/" in info.filename:
                entry_info = zipfile.ZipInfo(info.filename)
                entry_info.compress_type = zipfile.ZIP_DEFLATED
                with out.open(entry_info, "w", force_zip64=True) as entry:
                    entry.write(data)
                    for _ in range(padding >> 20):
                        entry.write(bytes(1 << 20))
            else:
                out.writestr(info, data)


def test_zip_bomb_entry_is_not_read_in_full(tmp_path):
    state = {"weight": torch.randn(64, 32), "bias": torch.randn(64)}
    torch.save(state, tmp_path / "honest.pth")
    honest = tmp_path / "honest.pth"
    bomb = tmp_path / "bomb.pth"
    # Torch wrote each storage's element count into the pickle; the bomb's entries declare 128 MiB more.
    inflate_storage(honest, bomb, BOMB_BYTES)
    assert os.path.getsize(bomb) < BOMB_BYTES // 100
    loaded, peak = read_peak_bytes(bomb)
    for key, tensor in state.items():
        np.testing.assert_array_equal(loaded[key], tensor.numpy())
    assert peak < 16 << 20, f"reading a {os.path.getsize(bomb)}-byte file allocated {peak} bytes"


def test_storage_smaller_than_its_tensor_is_refused(tmp_path):
    torch.save({"weight": torch.randn(64, 32)}, tmp_path / "w.pth")
    with zipfile.ZipFile(tmp_path / "w.pth") as archive, zipfile.ZipFile(tmp_path / "short.pth", "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            out.writestr(info, data[:100] if "/data/" in info.filename else data)
    with pytest.raises(ValueError, match=f"{tmp_path / 'short.pth'} is not a readable PyTorch state dict.*tensors need"):
        load_pth(tmp_path / "short.pth")


def test_legacy_storage_declaring_more_than_the_file_holds_is_refused_before_reading(tmp_path):
    torch.save({"weight": torch.randn(8)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    data = bytearray((tmp_path / "legacy.pth").read_bytes())
    count_at = len(data) - 8 * 4 - 8  # the storage's element count precedes its 8 float32 values
    assert int.from_bytes(data[count_at : count_at + 8], "little") == 8
    data[count_at : count_at + 8] = (1 << 60).to_bytes(8, "little")
    (tmp_path / "huge.pth").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="declares 1152921504606846976 elements"):
        load_pth(tmp_path / "huge.pth")


def test_unsafe_pickle_error_names_the_file_and_is_a_value_error(tmp_path):
    (tmp_path / "eval.pth").write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match=f"{tmp_path / 'eval.pth'}: refusing to unpickle global builtins.eval"):
        load_pth(tmp_path / "eval.pth")
    assert issubclass(UnsafePickleError, ValueError) and issubclass(UnsafePickleError, pickle.UnpicklingError)
