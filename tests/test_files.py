"""``files``: a file a setting names is read only if it is a regular file, and that is known without waiting."""

import os

import pytest

from simplelb.files import open_regular, read_regular


def test_a_regular_file_is_read_whole(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"x" * 100_000)
    assert read_regular(str(path)) == b"x" * 100_000
    with open_regular(str(path)) as file:
        assert file.read(3) == b"xxx"


def test_a_fifo_is_refused_at_once_though_nobody_writes_to_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as info:
        read_regular(str(fifo))  # (a plain open() waits here for a writer, for ever)
    assert info.value.strerror == "not a regular file (a FIFO)" and info.value.filename == str(fifo)


def test_a_device_is_refused_and_a_directory_keeps_its_own_error(tmp_path):
    with pytest.raises(OSError, match=r"not a regular file \(a character device\)"):
        read_regular("/dev/null")
    with pytest.raises(IsADirectoryError) as info:
        read_regular(str(tmp_path))
    assert info.value.strerror == "Is a directory"
    with pytest.raises(FileNotFoundError):
        read_regular(str(tmp_path / "missing"))
