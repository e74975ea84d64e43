"""Read a Dockerfile's instructions: enough to check what deploy/docker/*.Dockerfile
install, copy and run as (tests/test_deploy.py)."""

import re
import shlex
from pathlib import Path


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def instruction(dockerfile: Path, keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction, in order."""
    return [rest for kw, rest in instructions(dockerfile) if kw == keyword]


def copy_sources(dockerfile: Path) -> list[str]:
    """The build-context paths that COPY instructions read (not --from stages)."""
    sources = []
    for rest in instruction(dockerfile, "COPY"):
        words = shlex.split(rest)
        if any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def env_of(dockerfile: Path) -> dict[str, str]:
    """ENV key=value pairs (the last one wins)."""
    env = {}
    for rest in instruction(dockerfile, "ENV"):
        for word in shlex.split(rest):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def args_of(dockerfile: Path) -> dict[str, str]:
    """ARG defaults."""
    return dict(a.split("=", 1) if "=" in a else (a, "") for a in instruction(dockerfile, "ARG"))


def final_user(dockerfile: Path) -> tuple[int, int]:
    """The numeric uid:gid of the last USER; ValueError if it is not numeric."""
    user = instruction(dockerfile, "USER")[-1]
    match = re.fullmatch(r"(\d+):(\d+)", user)
    if not match:
        raise ValueError(f"{dockerfile.name}: USER {user} is not a numeric uid:gid")
    return int(match.group(1)), int(match.group(2))
