"""Readers for the deployment files (unit, Dockerfile, compose) used by the tests.

Small and strict on purpose: each understands only the subset of its format
that this repository writes, and fails loudly on anything else, so a test
never passes because a parser skipped what it did not understand.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "daemon" / "drainpool"  # the import package's source (src layout)
UNIT = REPO / "systemd" / "drainpool.service"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "compose.yaml"
DEMO_CONFIG = REPO / "config" / "drainpool.toml"

# README (Configuration): shutdown.grace_seconds defaults to 10 s.
DEFAULT_GRACE_SECONDS = 10.0
# What a stop needs past the grace: release the jobs, close the queue and the
# metrics server. The unit and compose.yaml must leave at least this much.
MIN_STOP_MARGIN_SECONDS = 5.0

_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds in "30", "30s", "1m30s", "1min 30s" (systemd.time(7), compose)."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    if not parts or re.sub(r"[\d.\s]+[a-z]+", "", text).strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNITS[unit] for n, unit in parts)


def grace_seconds() -> float:
    """shutdown.grace_seconds of the demo config, else the documented default."""
    if not DEMO_CONFIG.exists():
        return DEFAULT_GRACE_SECONDS
    config = tomllib.loads(DEMO_CONFIG.read_text())
    return float(config.get("shutdown", {}).get("grace_seconds", DEFAULT_GRACE_SECONDS))


def read_unit(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line or line.endswith("\\"):
            raise ValueError(f"{path}:{number}: cannot read {raw!r}")
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_argv(value: str) -> list[str]:
    """The argv of an Exec*= line, without the "-@:+!" prefixes."""
    argv = shlex.split(value)
    argv[0] = argv[0].lstrip("-@:+!")
    return argv


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, None for shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            # HEALTHCHECK [--interval=...] CMD [...]: the command follows CMD.
            text = text.partition(" CMD ")[2].strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(item) for item in value]


def read_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        pending.append(stripped.removesuffix("\\").strip())
        if stripped.endswith("\\"):
            continue
        keyword, _, args = " ".join(pending).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    if pending:
        raise ValueError(f"{path}: dangling continuation from line {start}")
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions after the last FROM: what the image is made of."""
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    return instructions[starts[-1] :]


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV of the final stage (only the KEY=VALUE form, as written here)."""
    env: dict[str, str] = {}
    for instruction in final_stage(instructions):
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                key, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"line {instruction.line}: ENV without '=': {word!r}")
                env[key] = value
    return env


def dockerignored(relative: str, path: Path = DOCKERIGNORE) -> bool:
    """Whether .dockerignore keeps `relative` (or a parent of it) out of the context.

    Only the pattern forms used here: names and globs, "**/" prefixes, no "!".
    """
    patterns = [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if any(p.startswith("!") for p in patterns):
        raise ValueError("negated .dockerignore patterns are not understood here")
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, bare):
                return True
            tail = prefix.rsplit("/", 1)[-1]
            if bare.startswith("**/") and fnmatch.fnmatchcase(tail, bare[3:]):
                return True
    return False
