"""Crash a real ``unimodel train`` over and over, and check what each crash leaves (run by test_checkpoint_safety).

One Python process imports torch and unimodel once, then forks every training process from
itself: each child runs ``unimodel train`` (``unimodel.cli.main``) as the command line would,
and is ended by an injected ``os._exit`` at a save point, by a file-size limit, or by SIGKILL
at a random moment. Forking spares the import time of thirty-odd processes; the children are
real, separate processes, killed as a user's would be.

The driver itself never trains, so it never starts a library thread (tqdm's monitor, the
tokenizers pool, an OpenMP team): a fork copies only the forking thread, and a lock another
thread held at that moment would stay locked in the child forever.

Usage: ``python crash_driver.py SPEC.json``; prints one JSON report as its last line.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import re
import resource
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)  # no OpenMP pool exists when the children fork: they cannot inherit a broken one

import unimodel.training.trainer  # noqa: E402,F401 - imported once, here, for every child
from unimodel import cli  # noqa: E402
from unimodel.checkpoint import RUN_CHECKPOINTS_DIR, RUN_LATEST, read_run_pointer  # noqa: E402
from unimodel.registry import get_registry  # noqa: E402
from unimodel.training.runfolder import (  # noqa: E402
    FAULT_ENV,
    LOCK_FILE,
    SAVE_POINTS,
    checkpoint_problem,
    find_resume_checkpoint,
    is_temporary,
    step_folders,
)


def warm_up() -> None:
    """What every run imports on first use, imported here once for all children without starting a thread:
    the optimizer's first step pulls in torch's compiler stack (some 800 modules, about 2 s), accelerate
    about 200 more; building a model imports its family's modules."""
    import accelerate  # noqa: F401

    import unimodel as um
    import unimodel.generation.text

    um.build_model("gpt2-tiny")
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param])
    param.sum().backward()
    optimizer.step()


HUNG_SECONDS = 120.0  # a child that is not meant to be killed and runs this long is hung (see run())
RESUMED = re.compile(r"resuming from .* at step (\d+)")


def spawn(args: list[str], log: Path, *, env: dict[str, str] | None = None, fsize: int | None = None) -> int:
    if threading.active_count() != 1:  # see the module docstring
        raise RuntimeError(f"the driver must not fork with threads running: {threading.enumerate()}")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 99
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung child's stacks, into its log
        os.environ.update(env or {})
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        code = cli.main(args)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


CPU_SECONDS: list[float] = []  # of each child


def wait(pid: int, timeout: float | None = None) -> int | str:
    """The child's exit code, or "killed" after SIGKILL at ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, 0 if deadline is None else os.WNOHANG)
        if done:
            CPU_SECONDS.append(usage.ru_utime + usage.ru_stime)
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            if timeout == HUNG_SECONDS:
                os.kill(pid, signal.SIGUSR1)  # its stacks go to its log before it dies
                time.sleep(1.0)
            os.kill(pid, signal.SIGKILL)
            _, _, usage = os.wait4(pid, 0)
            CPU_SECONDS.append(usage.ru_utime + usage.ru_stime)
            return "killed"
        time.sleep(0.005)


def temporaries(out: Path) -> list[str]:
    return sorted(
        str(p.relative_to(out))
        for folder in (out, out / RUN_CHECKPOINTS_DIR)
        if folder.is_dir()
        for p in folder.iterdir()
        if is_temporary(p.name)
    )


def resume_step(out: Path) -> int | None:
    ref = find_resume_checkpoint(out, lambda message: None)
    return None if ref is None else ref.step


def resumed_at(log: Path) -> int | None:
    found = RESUMED.search(log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out, config, logs = Path(spec["out"]), spec["config"], Path(spec["logs"])
    logs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec["seed"])
    get_registry()  # plugins loaded once, before the children fork
    warm_up()
    report: dict[str, Any] = {"faults": [], "kills": [], "hung_children": 0}
    n = 0

    def run(args: list[str], **kw: Any) -> tuple[int | str, Path, float]:
        nonlocal n
        timeout = kw.pop("timeout", None)
        for _attempt in range(2):
            n += 1
            log = logs / f"{n:02d}.log"
            started = time.monotonic()
            pid = spawn(["train", config, *args], log, **kw)
            code = wait(pid, timeout if timeout is not None else HUNG_SECONDS)
            if timeout is not None or code != "killed":
                return code, log, time.monotonic() - started
            report["hung_children"] += 1  # its stacks are in its log (SIGUSR1 before the kill)
        raise RuntimeError(f"a training child hung twice running {args}:\n{log.read_text(errors='replace')[-4000:]}")

    # the first checkpoint
    code, _, _ = run(["--set", "train.max_steps=1"])
    report["initial"] = {"code": code, "step": resume_step(out)}

    # 1. os._exit at every point of the save sequence; the next start resumes from what is there
    reached = []
    for point in SAVE_POINTS:
        before = resume_step(out)
        assert before is not None
        code, log, elapsed = run(
            ["--resume", "--set", f"train.max_steps={before + 1}"], env={FAULT_ENV: f"{point}:exit"}
        )
        reached.append(elapsed)
        report["faults"].append(
            {
                "point": point,
                "code": code,
                "before": before,
                "resumed_at": resumed_at(log),
                "after": resume_step(out),
                "temporaries": temporaries(out),
            }
        )

    # 2. a file-size limit below the weights' size: one clear error, the previous checkpoint kept
    before = resume_step(out)
    assert before is not None
    code, log, _ = run(["--resume", "--set", f"train.max_steps={before + 1}"], fsize=spec["fsize"])
    text = log.read_text(errors="replace")
    report["fsize"] = {
        "code": code,
        "before": before,
        "after": resume_step(out),
        "error": [line for line in text.splitlines() if line.startswith("error:")],
        "traceback": "Traceback" in text,
        "temporaries": temporaries(out),
    }

    # 3. SIGKILL at random moments of a long run, restarted with --resume each time
    typical = sorted(reached)[len(reached) // 2]  # start-up + one step + a save, as measured just now
    for _ in range(spec["kills"]):
        before = resume_step(out)
        delay = rng.uniform(0.0, 1.2 * typical)
        code, log, _ = run(["--resume", "--set", "train.max_steps=1000000"], timeout=delay)
        report["kills"].append(
            {
                "delay": round(delay, 3),
                "code": code,
                "before": before,
                "resumed_at": resumed_at(log),
                "after": resume_step(out),
                "temporaries": temporaries(out),
                "tail": log.read_text(errors="replace").splitlines()[-3:] if code != "killed" else [],
            }
        )

    # 4. a last resume runs to its end and leaves a clean folder
    before = resume_step(out)
    assert before is not None
    code, log, _ = run(["--resume", "--set", f"train.max_steps={before + 1}"])
    pointed = read_run_pointer(out)
    folders = step_folders(out)
    link = out / RUN_LATEST
    report["final"] = {
        "code": code,
        "before": before,
        "resumed_at": resumed_at(log),
        "pointer": None if pointed is None else pointed[0],
        "folders": [r.step for r in folders],
        "link": os.readlink(link) if link.is_symlink() else None,
        "problems": [checkpoint_problem(r) for r in folders],
        "temporaries": temporaries(out),
        "lock_left": (out / LOCK_FILE).exists(),
    }
    own = resource.getrusage(resource.RUSAGE_SELF)
    report["cpu_seconds"] = {
        "driver": round(own.ru_utime + own.ru_stime, 2),
        "children": [round(c, 2) for c in CPU_SECONDS],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
