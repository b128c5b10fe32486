"""Stand-ins for the Ray executor's tests: loaders that leave traces in files, since they run in
Ray worker processes (imported there by name: this folder is on the workers' PYTHONPATH)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from helpers import tiny_model, tiny_tokens

from csae_bench.pipeline import Resources, load_sae


class CountingModelLoader:
    """The tiny model, appending the loading process's pid to ``log`` each time it is built."""

    def __init__(self, log: Path) -> None:
        self.log = str(log)

    def __call__(self, name, device, dtype):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return tiny_model()


class StallFirstEval:
    """``load_sae``, except that the first eval to call it records its pid in ``flags/pid`` and
    stalls until the test kills its process (the test creates ``flags/killed`` first)."""

    def __init__(self, flags: Path) -> None:
        self.flags = str(flags)

    def __call__(self, folder, device):
        flags = Path(self.flags)
        if not (flags / "killed").exists():
            try:
                fd = os.open(flags / "pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass  # another eval is the one being killed
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                deadline = time.time() + 120
                while time.time() < deadline:  # killed long before this ends
                    time.sleep(0.1)
        return load_sae(folder, device)


class BadEvalTokens:
    """Tokens, except the eval split, which fails like a corpus without a held-out split; every
    call for it is appended to ``attempts`` (a retried job would add a line)."""

    def __init__(self, attempts: Path) -> None:
        self.attempts = str(attempts)

    def __call__(self, model, cfg, split, n_contexts, seed):
        if split == "eval":
            from csae_bench.data import DataError

            with open(self.attempts, "a") as f:
                f.write(f"{os.getpid()}\n")
            raise DataError("The corpus has no eval split; give --corpus a file with one.")
        return tiny_tokens(model, cfg, split, n_contexts, seed)


def ray_resources(cfg, model_log: Path | None = None, **seams) -> Resources:
    """``tiny_resources`` with picklable callables (they travel to Ray workers)."""
    from helpers import fast_train

    loader = CountingModelLoader(model_log) if model_log else CountingModelLoader(os.devnull)
    return Resources(cfg, model_loader=loader, token_loader=seams.pop("token_loader", tiny_tokens),
                     train_fn=fast_train, **seams)
