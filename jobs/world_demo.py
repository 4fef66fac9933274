"""The demo on the shapes world (bench/world): prompts whose images can be graded exactly, an adaptive draft →
score → redraw → escalate cascade of the world's trained tiny models scored by its trained fact verifier, and the
world's oracle (on the run and on draft-only and heavy-only runs of the same prompts) written next to the manifest
as evaluations the report shows per route and against cost. The world and its oracle live in bench/ (a benchmark
tool, not the runtime path): this demo runs them as `python -m bench.world.demo` in the repository, and imports
nothing from there."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "bench" / "world" / "models"
CONFIG = REPO / "configs" / "world_cascade.yaml"
PROMPT_SEED = 4242  # demo prompts: not the training or the benchmark's held-out seed


def available() -> bool:
    """Whether the world's models are in this checkout (the demo falls back to the random tiny model if not)."""
    return all((MODELS / name / "model_index.json").exists() for name in ("draft", "heavy")) and \
        all((MODELS / name / "config.json").exists() for name in ("clip", "verifier"))


def write_prompts(path: Path, n: int = 96) -> Path:
    """n prompts of the world (objects, counts, colours, positions) as a prompt table, each with its world facts
    (a `facts` column: the config's `facts` scorer asks the verifier about each)."""
    _world("prompts", str(path), str(n), str(PROMPT_SEED))
    return path


def overrides(home: Path) -> list[str]:
    """--set arguments pointing the shipped config at this checkout's models and the demo's prompts."""
    return [f"--set=source.uri={home / 'prompts' / 'world.parquet'}",
            f"--set=generators.draft.model={MODELS / 'draft'}", f"--set=generators.heavy.model={MODELS / 'heavy'}",
            f"--set=scorer.model={MODELS / 'verifier'}"]


def grade(config_args: list[str]) -> str:
    """Grade every final image and kept draft of the committed run with the oracle, and draft-only and heavy-only
    runs of the same prompts; store the grades as evaluations/oracle.parquet and baselines.parquet, rewrite the
    report, and return a one-screen summary per route."""
    return _world("grade", str(CONFIG), *config_args)


def _world(*args: str) -> str:
    """`python -m bench.world.demo ARGS` in this checkout (the world and its oracle live in bench/, which the
    runtime packages don't import); its output, or RuntimeError with its last lines."""
    import subprocess

    run = subprocess.run([sys.executable, "-m", "bench.world.demo", *args], cwd=REPO, capture_output=True,
                         text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"bench.world.demo {args[0]} failed: {run.stderr.strip()[-2000:]}")
    return run.stdout.strip()
