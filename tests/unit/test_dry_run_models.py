"""A missing local model folder is refused before any work, --dry-run included (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefleet.jobs import generate
from tests.helpers import tiny_job, write_config, write_prompts


def test_missing_local_model_fails_the_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    missing = tmp_path / "no-such-model"
    cfg = write_config(tmp_path / "job.yaml", tiny_job(src, missing, str(tmp_path / "out")))
    assert generate.main([str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "local model folder" in err[0] and str(missing) in err[0]


def _hub_job(tmp_path: Path, model: str, address: str = "local") -> Path:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    raw = tiny_job(src, model, str(tmp_path / "out"))
    raw["cluster"]["address"] = address
    return write_config(tmp_path / "job.yaml", raw)


def _cache(root: Path, repo: str, files: tuple[str, ...] = ("model_index.json",)) -> None:
    """A Hugging Face cache holding `repo` at main, laid out as huggingface_hub lays it out."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    for name in files:
        (folder / "snapshots" / ("0" * 40)).mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / ("0" * 40) / name).write_text("{}")


def test_an_uncached_hub_model_fails_the_dry_run_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, this machine's Ray would load `org/sd` from this cache: not there is one line now, not an actor
    failure a minute after Ray starts. Cached, or on a cluster (its nodes' caches are their own), it passes."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = _hub_job(tmp_path, "org/sd")
    assert generate.main([str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generators.tiny.model: org/sd@main is not in the Hugging Face cache" in err[0]
    _cache(tmp_path / "hf", "org/sd")
    assert generate.main([str(cfg), "--dry-run"]) == 0
    from imagefleet.configs import load_config
    from imagefleet.jobs.model_check import check_hub_models

    assert check_hub_models(load_config(cfg)) == {"tiny": "0" * 40}  # the commit `main` is: model_version
    from imagefleet.jobs.model_check import hub_status

    assert hub_status("k", "org/elsewhere", "main", "model_index.json", local_cluster=False) == ("", "")


def test_a_hub_model_or_revision_that_doesnt_exist_fails_the_dry_run_online(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, the hub is asked (here a stand-in for its answers: the suite never leaves the machine)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    def error(kind: type[Exception]) -> Exception:  # as the hub client raises them (their HTTP response aside)
        made = kind.__new__(kind)
        made.args = ("404",)
        return made

    answers = {"org/typo": error(RepositoryNotFoundError), "org/sd": error(RevisionNotFoundError)}

    def model_info(self: HfApi, repo: str, **kwargs: object) -> object:
        raise answers.get(repo, ConnectionError("no network"))

    monkeypatch.setattr(HfApi, "model_info", model_info)
    assert generate.main([str(_hub_job(tmp_path, "org/typo")), "--dry-run"]) == 2
    assert "no model 'org/typo' on the Hugging Face hub" in capsys.readouterr().err
    assert generate.main([str(_hub_job(tmp_path / "r", "org/sd")), "--dry-run"]) == 2
    assert "has no revision 'main'" in capsys.readouterr().err
    # unreachable: this machine's actors could not download it either (before: passed, and failed a minute into
    # the run); a cluster's nodes reach the hub on their own, and an answer like a 5xx or a rate limit may pass
    assert generate.main([str(_hub_job(tmp_path / "n", "org/unreachable")), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "org/unreachable@main is not in the Hugging Face cache" in err[0], err
    assert "the hub can't be reached (ConnectionError: no network)" in err[0]
    from imagefleet.jobs.model_check import hub_status

    assert hub_status("k", "org/unreachable", "main", "model_index.json", local_cluster=False) == ("", "")
    answers["org/busy"] = RuntimeError("429 Too Many Requests")
    assert hub_status("k", "org/busy", "main", "model_index.json", local_cluster=True) == ("", "")


def test_a_hub_that_refuses_the_connection_is_unreachable_through_the_real_client(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub client's own error for a connection nobody accepts (a loopback port where nothing listens) is told
    apart from an answer the hub gave: this machine's run would fail to download, so the dry run refuses."""
    from huggingface_hub import constants

    from imagefleet.jobs.model_check import hub_status
    from imagefleet.jobs.seaweed import pick_ports

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{pick_ports()['master']}")
    problem, commit = hub_status("generators.main.model", "org/sd", "main", "model_index.json", local_cluster=True)
    assert "org/sd@main is not in the Hugging Face cache" in problem and "the hub can't be reached" in problem
    assert commit == "" and "\n" not in problem
