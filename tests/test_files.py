"""rmeeto._files.write_atomic: the one temp-file + rename writer behind checkpoints, tables and JSON outputs."""

import os
import stat

import pytest

from rmeeto._files import write_atomic


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")

    def half_then_fail(f):
        f.write(b"new, half written")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_content_kinds_permissions_parents_and_links(tmp_path):
    old = os.umask(0o027)
    try:
        out = write_atomic(tmp_path / "a" / "b" / "x.json", "é\n")  # parents made, text as UTF-8
    finally:
        os.umask(old)
    assert out.read_bytes() == "é\n".encode()
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # not mkstemp's 0600: what a new file would get
    real = tmp_path / "real.bin"
    real.write_bytes(b"1")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    assert write_atomic(link, b"22") == real
    assert link.is_symlink() and real.read_bytes() == b"22"
    with pytest.raises(OSError, match="a folder; give a path to a file"):
        write_atomic(tmp_path / "a", b"x")
