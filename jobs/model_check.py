"""Hub models checked before the run (`--dry-run` too): every Hugging Face model id an actor would load must
resolve, so a typo or an uncached model is one line in seconds, not an actor failure a minute after Ray starts."""

from __future__ import annotations

import logging
import os

from imagefleet.configs.job import JobConfig

logger = logging.getLogger(__name__)

HUB_TIMEOUT_S = 10.0
"""How long the hub may take to answer one model lookup (a slow or absent network: the run finds out itself)."""


def hub_models(cfg: JobConfig) -> list[tuple[str, str, str, str]]:
    """(config key, repo id, revision, a file the model must have) of every hub model the run's actors load: the
    generators routing uses and the scorer. Local folders and s3:// models are checked elsewhere (preflight)."""
    found = []
    for name in cfg.routing.used(list(cfg.generators)):
        hub = cfg.generators[name].needs().hub_model
        if hub:
            found.append((f"generators.{name}.model", hub[0], hub[1], hub[2]))
    scorer_model = getattr(cfg.scorer, "model", "") if cfg.scorer is not None else ""
    if scorer_model and _is_hub_id(scorer_model):
        found.append(("scorer.model", scorer_model, "main", "config.json"))
    return found


def _is_hub_id(model: str) -> bool:
    """`org/name` (or a bare `name`) rather than a path or a URI."""
    return not model.startswith(("/", "./", "../", "~", "s3://")) and "://" not in model and model.count("/") <= 1


def hub_status(key: str, repo: str, revision: str, marker: str, local_cluster: bool) -> tuple[str, str]:
    """(why the model can't be loaded, the commit `revision` is now): ('', commit) when it can, ('', '') when that
    can't be known from here.

    Cached (the snapshot of `revision` has `marker`): fine, at that snapshot's commit. Offline (HF_HUB_OFFLINE):
    refused when the run's Ray is this machine's (its actors read this cache); a cluster's nodes have caches of
    their own. Online: the hub is asked (HUB_TIMEOUT_S): no such model or revision is refused; a hub that can't be
    reached is refused too when this machine's actors would download from it, else (a cluster, or an error the hub
    answered with: a rate limit, a 5xx) left to the run, with a warning."""
    from pathlib import Path

    from huggingface_hub import constants, try_to_load_from_cache

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    try:
        found = try_to_load_from_cache(repo, marker, cache_dir=cache, revision=revision)
    except ValueError:  # the hub's id rules (HFValidationError)
        return (f"{key}: {repo!r} is neither a folder here nor a Hugging Face model id (org/name); give an "
                f"existing folder, a hub id or an s3:// folder"), ""
    if isinstance(found, str):
        return "", Path(found).parent.name  # snapshots/<commit>/<marker>
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline:
        if not local_cluster:
            return "", ""
        return (f"{key}: {repo}@{revision} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: "
                f"download it first (hf download {repo} --revision {revision}) or unset HF_HUB_OFFLINE"), ""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo, revision=revision, timeout=HUB_TIMEOUT_S)
    except RevisionNotFoundError:
        return f"{key}: {repo} has no revision {revision!r} on the Hugging Face hub; fix the revision", ""
    except RepositoryNotFoundError:
        return (f"{key}: no model {repo!r} on the Hugging Face hub (or it is private or gated: set HF_TOKEN); "
                f"fix the id, or give a local folder or an s3:// folder"), ""
    except Exception as exc:  # noqa: BLE001 - a rate limit, a server error: can't know from here
        if unreachable(exc) and local_cluster:  # nor can this machine's actors download it
            return (f"{key}: {repo}@{revision} is not in the Hugging Face cache ({cache}) and the hub can't be "
                    f"reached ({type(exc).__name__}: {str(exc)[:120]}): download it where the hub answers "
                    f"(hf download {repo} --revision {revision}), or check the network / HF_ENDPOINT"), ""
        logger.warning("%s: could not ask the hub about %s (%s); the run will find out", key, repo,
                       type(exc).__name__)
        return "", ""
    return "", str(getattr(info, "sha", "") or "")


def unreachable(exc: BaseException) -> bool:
    """Whether a hub lookup failed for want of a connection (no route, DNS, a refused or timed-out connection:
    requests', httpx's and the socket's own errors) rather than an answer the hub gave."""
    names = {c.__name__ for c in type(exc).__mro__}
    return isinstance(exc, OSError) or bool(names & {"TransportError", "ConnectionError", "Timeout",
                                                     "TimeoutException"})


def check_hub_models(cfg: JobConfig) -> dict[str, str]:
    """The commit each generator's hub model revision is now (generator name → commit; unknown ones left out).
    Raises ValueError with one line for the first model the run would fail to load."""
    local = cfg.cluster.address == "local"
    commits = {}
    for key, repo, revision, marker in hub_models(cfg):
        problem, commit = hub_status(key, repo, revision, marker, local_cluster=local)
        if problem:
            raise ValueError(problem)
        if commit and key.startswith("generators."):
            commits[key.split(".")[1]] = commit
    return commits
