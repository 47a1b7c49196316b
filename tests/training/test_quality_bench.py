"""`make bench-quality`'s command line (the grid itself is a benchmark, not a test)."""

import pytest

from bench.quality_bench import main


@pytest.mark.parametrize("scale", ["0", "-1"])
def test_a_budget_scale_that_is_not_positive_is_refused_before_any_training(
    scale, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main(["--budget-scale", scale, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--budget-scale must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
