"""Issue 36, case 1: what a model tool may write over (Utils/files/Outputs.py): never a file it
reads, never an existing file without --overwrite, never a checkpoint or history a stage wrote."""
import shutil

import pytest

import modelTools


def tool(capsys, *argv):
    rc = modelTools.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _refused(capsys, argv, *needles):
    rc, _, err = tool(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.slow
def test_report_never_writes_over_the_checkpoint_it_reads_nor_a_stage_s_files(trained, capsys, tmp_path):
    stu = tmp_path / "stu.mod"
    shutil.copy(trained["stu"], stu)
    before = stu.read_bytes()
    _refused(capsys, ["report", stu, "--json", stu, "--overwrite"], "a file this command reads")
    teacher, history = tmp_path / "tea.mod", tmp_path / "tea.his"
    shutil.copy(trained["tea"], teacher)
    shutil.copy(trained["out"] / "tea.his", history)
    _refused(capsys, ["report", stu, "--json", teacher], "exists", "--overwrite")
    _refused(capsys, ["report", stu, "--json", teacher, "--overwrite"], "a teacher checkpoint", "only its training stage")
    _refused(capsys, ["report", stu, "--json", history, "--overwrite"], "a training history")
    assert stu.read_bytes() == before and teacher.read_bytes() == trained["tea"].read_bytes()
    assert tool(capsys, "report", stu, "--json", tmp_path / "r.json")[0] == 0
    _refused(capsys, ["report", stu, "--json", tmp_path / "r.json"], "--overwrite")
    assert tool(capsys, "report", stu, "--json", tmp_path / "r.json", "--overwrite")[0] == 0


@pytest.mark.slow
def test_export_replaces_an_earlier_export_but_never_a_model_a_stage_wrote(trained, capsys, tmp_path):
    teacher = tmp_path / "tea.mod"
    shutil.copy(trained["tea"], teacher)
    _refused(capsys, ["export", trained["stu"], teacher, "--overwrite"], "a teacher checkpoint")
    assert teacher.read_bytes() == trained["tea"].read_bytes()
    compact = tmp_path / "c.mod"
    assert tool(capsys, "export", trained["stu"], compact)[0] == 0
    assert tool(capsys, "export", trained["stu"], compact, "--overwrite")[0] == 0  # its own kind of file


@pytest.mark.slow
def test_plot_and_curve_keep_earlier_plots_unless_told(trained, capsys, tmp_path):
    his = trained["out"] / "tea.his"
    assert tool(capsys, "plot", his, "--out", tmp_path)[0] == 0
    _refused(capsys, ["plot", his, "--out", tmp_path], "training.png", "--overwrite")
    assert tool(capsys, "plot", his, "--out", tmp_path, "--overwrite")[0] == 0
    assert tool(capsys, "curve", his, "--out", tmp_path)[0] == 0
    _refused(capsys, ["curve", his, "--out", tmp_path], "curve.png", "--overwrite")
