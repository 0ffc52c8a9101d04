"""One error family. Its text is what the user reads: the cause, then what to do."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2


class HydraError(Exception):
    """A mistake the user can fix. The CLI prints it as one line and exits non-zero."""

    exit_code = EXIT_ERROR

    def __init__(self, cause: str, fix: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.cause} — {self.fix}" if self.fix else self.cause


class ConfigError(HydraError):
    """cluster.yaml cannot be read or does not describe a valid cluster."""


class ModelError(HydraError):
    """A GGUF file is missing, unreadable or of a kind we cannot plan."""


class PlanError(HydraError):
    """The model does not fit the cluster as asked."""


class RenderError(HydraError):
    """The inventory cannot be turned into images and compose files."""


class OutputError(HydraError):
    """Generated files cannot be written."""


class UsageError(HydraError):
    exit_code = EXIT_USAGE


class ClusterError(HydraError):
    """A stack could not be started, stopped or inspected."""


class BenchError(HydraError):
    """The endpoint did not answer as a benchmark needs."""


class PowerError(HydraError):
    """A power limit cannot be read, set or restored."""
