"""The front door (issue 21): nothing a user owns is lost, every user mistake ends in one line
naming the option or file with exit 2, and nothing is written before the checks pass."""

import json
import os
import stat

from ml3_robotics.cli import main
from ml3_robotics.runs import RUN_MARKER
from ml3_robotics.serialization import atomic_write_bytes


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ml3r: error: ") and "\n" not in err, err
    return err


def _sine(out, *extra: str) -> list[str]:
    return ["run", "sine", "--smoke", "--set", "outer_steps=2", "--out", str(out), *extra]


def _tree(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- run folders -------------------------------------------------------------------------------


def test_overwrite_never_empties_a_folder_ml3r_did_not_write(capsys, tmp_path):
    project = tmp_path / "thesis"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("paper: draft 3\n")
    (project / "results.json").write_text("{}\n")
    (project / "thesis.tex").write_text("\\section{Results}\n")
    (project / "src" / "main.py").write_text("print('hi')\n")
    before = _tree(project)
    for extra in ((), ("--overwrite",)):
        err = _error(capsys, _sine(project, *extra))
        assert "is not an ml3r run folder" in err and str(project) in err
        assert _tree(project) == before


def test_overwrite_removes_only_what_the_run_wrote(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(_sine(out)) == 0
    marker = json.loads((out / RUN_MARKER).read_text())
    assert {"config.yaml", "results.json", "metrics.csv", "loss.safetensors", "loss.json",
            "checkpoints"} <= set(marker["written"])  # fmt: skip
    (out / "notes.txt").write_text("mine\n")  # a user's file added after the run
    (out / ".results.json.abc.tmp").write_bytes(b"half")  # a killed write's temporary
    (out / "mse_vs_step.png").unlink()
    err = _error(capsys, _sine(out))
    assert "holds another run" in err and "--overwrite" in err
    capsys.readouterr()
    assert main(_sine(out, "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine\n"
    assert not (out / ".results.json.abc.tmp").exists()
    assert (out / "mse_vs_step.png").is_file() and (out / "results.json").is_file()


def test_out_under_a_regular_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    err = _error(capsys, _sine(tmp_path / "f" / "run"))
    assert "--out" in err and "is a file" in err
    err = _error(capsys, _sine(tmp_path / "f"))
    assert "--out" in err and "is a file" in err


def test_atomic_writes_follow_the_umask_and_clear_stale_temporaries(tmp_path):
    stale = tmp_path / ".a.json.x1y2.tmp"
    stale.write_bytes(b"half a file from a killed write")
    other = tmp_path / ".b.json.x1y2.tmp"
    other.write_bytes(b"another file's temporary")
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert not stale.exists() and other.exists()
    assert (tmp_path / "a.json").read_bytes() == b"{}"

