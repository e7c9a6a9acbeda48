"""Policy files that are not plain UTF-8 text in the directory are refused with file and
reason (issue 10, item 8), and the watcher's status follows the files on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from policies.cli import app
from policies.errors import PolicyInvalid
from policies.schema import load_policy
from policies.watch import PolicyWatcher
from tests.unit.policies.helpers import policy_data, write

runner = CliRunner()


def _refused(directory: Path) -> PolicyInvalid:
    with pytest.raises(PolicyInvalid) as info:
        load_policy(directory)
    return info.value


def test_non_utf8_file_is_refused_with_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": policy_data()})
    (tmp_path / "b.yaml").write_bytes(
        b"allowlist:\n  - ip_address: 192.0.2.1\n    label: caf\xe9\n"
    )
    err = _refused(tmp_path)
    assert err.location == f"{tmp_path / 'b.yaml'}:3"
    assert "not UTF-8" in err.message and "0xe9" in err.message
    # lint: one clean line, exit 1, no traceback
    result = runner.invoke(app, ["lint", str(tmp_path)])
    assert result.exit_code == 1 and result.exception is not None
    assert isinstance(result.exception, SystemExit)
    assert f"{tmp_path / 'b.yaml'}:3: not UTF-8" in result.output


def test_binary_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": policy_data()})
    (tmp_path / "blob.yaml").write_bytes(b"settings: {}\n\x00\x01\x02\xff")
    err = _refused(tmp_path)
    assert err.location == f"{tmp_path / 'blob.yaml'}:2" and "NUL byte" in err.message


@pytest.mark.parametrize(
    ("bom", "name"), [(b"\xef\xbb\xbf", "UTF-8"), (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")]
)
def test_byte_order_mark_is_refused(tmp_path: Path, bom: bytes, name: str) -> None:
    write(tmp_path, {"a.yaml": policy_data()})
    (tmp_path / "b.yaml").write_bytes(bom + b"allowlist:\n  - ip_address: 192.0.2.1\n")
    err = _refused(tmp_path)
    assert err.location == f"{tmp_path / 'b.yaml'}:1"
    assert f"{name} byte-order mark" in err.message


def test_symlink_out_of_the_directory_is_refused_and_never_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("s3cr3t: the first line of a file that must never be shown\n")
    pdir = write(tmp_path / "policy", {"a.yaml": policy_data()})
    (pdir / "b.yaml").symlink_to(outside)
    err = _refused(pdir)
    assert "s3cr3t" not in str(err)  # was: "b.yaml:1: s3cr3t: Extra inputs are not permitted"
    assert "leads outside the policy directory" in err.message
    assert err.location == str(pdir / "b.yaml")
    # a link to a file inside the directory is fine; a dangling one is refused
    (pdir / "b.yaml").unlink()
    (pdir / "shared").mkdir()
    (pdir / "shared" / "allow.txt").write_text("allowlist:\n  - ip_address: 192.0.2.9\n")
    (pdir / "b.yaml").symlink_to(pdir / "shared" / "allow.txt")
    assert len(load_policy(pdir).allowlist) == 1
    (pdir / "c.yaml").symlink_to(pdir / "missing.txt")
    assert "does not exist" in _refused(pdir).message


def test_watcher_refuses_bad_bytes_and_clears_the_error_when_the_file_goes(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": policy_data()})
    watcher = PolicyWatcher(tmp_path)
    good = watcher.current
    (tmp_path / "b.yaml").write_bytes(b"\xef\xbb\xbfallowlist: []\n")
    bad = watcher.poll()  # was: UnicodeDecodeError / a BOM accepted
    assert bad is not None and bad.policy is None and bad.error is not None
    assert "byte-order mark" in bad.error.message
    assert watcher.poll() is None and watcher.current is good
    (tmp_path / "b.yaml").unlink()
    back = watcher.poll()  # was: None, so the old error stayed shown
    assert back is not None and back.restored and back.error is None
    assert back.policy is good
    assert watcher.poll() is None
