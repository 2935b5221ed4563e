"""gpt-prepare's progress bars: on a terminal, not elsewhere, never under --quiet; tqdm is
imported only for a bar that is shown."""
import io
import subprocess
import sys

import pytest

from data_prep.progress import NoBar, progress_bar
from tests.helpers import child_env


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, show, shown", [
    (Terminal, None, True), (io.StringIO, None, False), (Terminal, False, False), (io.StringIO, True, True),
])
def test_a_bar_is_shown_where_asked(monkeypatch, stream, show, shown):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress_bar(10, "B", "reading", show)
    bar.update(4)
    bar.close()
    assert isinstance(bar, NoBar) is not shown
    assert ("reading" in err.getvalue()) is shown


def test_a_quiet_run_does_not_import_tqdm(tmp_path):
    (tmp_path / "t.txt").write_text("some text for both splits\n" * 50)
    script = ("import sys; from data_prep.cli import main; code = main(sys.argv[1:]); "
              "print('tqdm' in sys.modules); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "t.txt"), "--out", str(tmp_path / "data"),
                           "--quiet", "--workers", "1"], capture_output=True, text=True, timeout=60, env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"
