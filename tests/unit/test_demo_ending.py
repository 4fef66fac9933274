"""`make demo` ends on things a user can open from a fresh shell (issue #33): the report copied out of the bucket
to a local file a browser opens (before: an s3:// URL no browser opens), and commands that work without the
venv on PATH and without an `aws` CLI."""

from __future__ import annotations

from pathlib import Path

from imagefleet.jobs.demo import local_report


def test_the_report_is_copied_to_a_local_file_a_browser_opens(tmp_path: Path) -> None:
    out = tmp_path / "bucket" / "world"
    out.mkdir(parents=True)
    (out / "report.html").write_text("<html>the run</html>")
    line = local_report(str(out), tmp_path / "home")
    target = (tmp_path / "home" / "report.html").resolve()
    assert line == f"demo: open the report in a browser: {target.as_uri()}"
    assert target.read_text() == "<html>the run</html>"


def test_a_report_that_cant_be_copied_is_named_where_it_is(tmp_path: Path) -> None:
    line = local_report(str(tmp_path / "nothing"), tmp_path / "home")
    assert line.startswith(f"demo: the report is {tmp_path / 'nothing'}/report.html (not copied here: ")
    assert "\n" not in line


def test_the_demo_names_the_output_the_run_wrote_to() -> None:
    """Both spellings of `--set` move it, as `imagefleet run` reads them (before: only `--set=output.uri=…`)."""
    from imagefleet.jobs.demo import output_uri
    from tests.helpers import REPO

    config = REPO / "configs" / "local_tiny.yaml"
    assert output_uri(config, []) == "s3://imagefleet-demo/local-tiny"
    assert output_uri(config, ["--set", "output.uri=s3://b/x"]) == "s3://b/x"
    assert output_uri(config, ["--set=output.uri=s3://b/y", "--progress", "off"]) == "s3://b/y"
    assert output_uri(config, ["--set", "generators.mian.model=x"]) == "s3://imagefleet-demo/local-tiny"
