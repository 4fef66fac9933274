"""A local model folder is keyed by its content (issue #31): the same weights at another path keep their image
keys (no regeneration), retrained weights in place get new ones; the digest is computed once per file version."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagefleet.actors import model_digest
from imagefleet.actors.model_digest import folder_digest


def _folder(root: Path) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00weights\x01" * 3)
    (root / "README.md").write_text("a model card")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.lock").write_text("download bookkeeping")
    return root


def test_the_digest_is_the_contents_not_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a = _folder(tmp_path / "a")
    digest = folder_digest(a)
    # golden: a change to how folders are hashed re-keys every image made with a local model (README migration)
    assert digest == "sha256:b215db3e030430d2b4d1cdf4f3635a104c1f40daed6038eb933b590eb611f3ce"
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert folder_digest(b) == digest  # another path, the same weights
    (b / "README.md").write_text("an edited card")
    assert folder_digest(b) == digest  # the card doesn't make images
    (b / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"retrained")
    assert folder_digest(b) != digest  # new weights in place: new keys


def test_each_file_is_read_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = _folder(tmp_path / "m")
    reads: list[str] = []
    real = model_digest.file_sha256

    def counting(path: Path) -> str:
        reads.append(path.name)
        return real(path)

    monkeypatch.setattr(model_digest, "file_sha256", counting)
    first = folder_digest(folder)
    assert sorted(reads) == ["diffusion_pytorch_model.safetensors", "model_index.json"]
    assert folder_digest(folder) == first and len(reads) == 2  # cached: nothing read again
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "v": 2}')
    assert folder_digest(folder) != first and reads[-1] == "model_index.json" and len(reads) == 3


def test_a_moved_model_folder_makes_nothing_again(tmp_path: Path, tiny_model: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's image keys follow the weights: the same tiny model copied elsewhere finds every image present."""
    import imagefleet
    from tests.helpers import tiny_job, write_prompts

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_prompts(tmp_path / "p.parquet", {"prompt": ["a fox", "an owl"]})
    raw = tiny_job(tmp_path / "p.parquet", tiny_model, str(tmp_path / "out"))
    raw["cluster"]["executor"] = "in_process"
    raw["generators"]["tiny"]["defaults"].update(width=32, height=32)
    assert imagefleet.run(raw, echo=None).summary.num_written == 2  # type: ignore[union-attr]
    moved = tmp_path / "moved-model"
    shutil.copytree(tiny_model, moved)
    raw["generators"]["tiny"]["model"] = str(moved)
    again = imagefleet.run(raw, echo=None).summary
    assert again is not None and again.num_already_present == 2 and again.num_written == 0
    from imagefleet.configs.storage import StoreSpec
    from imagefleet.pipelines.manifest import read_manifest_columns

    versions = read_manifest_columns(str(tmp_path / "out"), StoreSpec(kind="local"), ["model_version"]).column(0)
    assert set(versions.to_pylist()) == {folder_digest(tiny_model)}  # what the model was, in the manifest
