"""What a person sees in the terminal: bars on a terminal only, one line per finished run,
the table with the paths of results.md and the figures, and a runnable Command: line."""

import io
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from tests.helpers import tiny_config, write_tiny_npz
from tl_jax import compare
from tl_jax.analysis import report


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return write_tiny_npz(tmp_path_factory.mktemp("data"))


def _comparison(data):
  cfg = tiny_config(data, **{"train.num_epochs": 2, "train.progress": True})
  cfg.compare = ml_collections.ConfigDict({
      "source": {}, "methods": {"scratch": {"transfer": {"strategy": "scratch"}},
                  "scratch_lr": {"optimizer": {"lr": 0.01}}},
      "order": ("scratch", "scratch_lr"), "seeds": (0, 1), "reference": "scratch"})
  return cfg


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_off_a_terminal_no_bars_one_line_per_run_and_the_paths(data, tmp_path, capsys):
  compare.run_comparison(_comparison(data), tmp_path)
  cap = capsys.readouterr()
  assert "\r" not in cap.err and "\r" not in cap.out  # no bar in logs / CI
  runs = [l for l in cap.out.splitlines() if l.startswith("[tl_jax] scratch")]
  assert len(runs) == 4, cap.out  # 2 methods x 2 seeds, one line each
  assert all("test " in l and "best epoch" in l for l in runs)
  assert f"[tl_jax] table: {tmp_path / 'results.md'}" in cap.out
  fig = tmp_path / "figures" / "test_accuracy.png"
  assert f"[tl_jax] figure: {fig}" in cap.out and fig.stat().st_size > 0
  assert "![test_accuracy](figures/test_accuracy.png)" in (tmp_path / "results.md").read_text()
  # a rerun keeps the finished runs and says so once, not once per run
  compare.run_comparison(_comparison(data), tmp_path)
  out = capsys.readouterr().out
  assert out.count("finished earlier") == 1 and "4 of 4 runs" in out


def test_on_a_terminal_a_bar_over_runs_and_one_over_epochs_with_loss(data, tmp_path, capsys,
                                                                     monkeypatch):
  term, out = _Terminal(), _Terminal()
  monkeypatch.setattr(sys, "stderr", term)
  monkeypatch.setattr(sys, "stdout", out)
  compare.run_comparison(_comparison(data), tmp_path)
  err = term.getvalue()
  assert "scratch_lr N=0" in err and "/4" in err      # the bar over the 4 runs
  assert "loss " in err and "val " in err             # the epoch bar's postfix
  # the per-run lines go above the bars, on stdout
  assert out.getvalue().count("[tl_jax] scratch_lr N=0 seed") == 2


def test_bars_need_both_streams_on_a_terminal(monkeypatch):
  from tl_jax import terminal
  monkeypatch.setattr(sys, "stderr", _Terminal())
  monkeypatch.setattr(sys, "stdout", io.StringIO())  # `cmd | tee log`: no bars
  assert not terminal.bars_wanted(True)
  monkeypatch.setattr(sys, "stdout", _Terminal())
  assert terminal.bars_wanted(True) and not terminal.bars_wanted(False)


def test_command_line_is_runnable_as_written(tmp_path, monkeypatch):
  import tl_jax
  main_py = os.path.join(os.path.dirname(tl_jax.__file__), "main.py")
  got = report.runnable_command([main_py, "--config", "configs/quickstart.py",
                                 "--workdir", "/tmp/a b"])
  assert got == "python -m tl_jax.main --config configs/quickstart.py --workdir '/tmp/a b'"
  script = tmp_path / "launch" / "sweep.py"
  script.parent.mkdir()
  script.write_text("")
  monkeypatch.chdir(tmp_path)
  assert report.runnable_command([str(script), "--x=1"]) == "python launch/sweep.py --x=1"
  assert report.runnable_command(["tl-jax", "--x"]) == "tl-jax --x"


def test_main_prints_no_info_lines_and_ends_with_the_paths(data, tmp_path):
  """The command line off a terminal: no absl INFO lines, no bar, the table and the path of
  results.md at the end."""
  cfg = tmp_path / "cfg.py"
  cfg.write_text(
      "import ml_collections\nfrom tests.helpers import tiny_config\n"
      "def get_config():\n"
      f"  c = tiny_config({json.dumps(data)}, **{{'train.num_epochs': 1}})\n"
      "  c.compare = ml_collections.ConfigDict({'methods': {'scratch': {}}, 'seeds': (0,)})\n"
      "  return c\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  p = subprocess.run([sys.executable, "-m", "tl_jax.main", f"--config={cfg}",
                      f"--workdir={tmp_path / 'wd'}"], capture_output=True, text=True, env=env,
                     cwd=root, timeout=300)
  assert p.returncode == 0, p.stderr
  text = p.stdout + p.stderr
  assert not [l for l in text.splitlines() if l.startswith("I") and "]" in l[:40]], text
  assert "\r" not in text
  assert "| scratch | 1 |" in p.stdout
  assert f"[tl_jax] table: {tmp_path / 'wd' / 'results.md'}" in p.stdout
  cmd = (tmp_path / "wd" / "results.md").read_text().splitlines()[0]
  assert cmd.startswith("Command: `python -m tl_jax.main --config=")
