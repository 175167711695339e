"""Records of finished files that outlive the removal of a job's outputs (`--kept-dir DIR`).

Snakemake removes a job's outputs before it runs the job, and so does the job-side Snakemake of a
requeued Slurm submission (it runs with --force) for every job of a group, finished or not; it
also removes the outputs of every job of a failed group. A generation command given `--kept-dir
DIR` therefore hard-links each finished file into DIR (`keep`): DIR/<its path relative to the
working folder>, or DIR/_abs/<its absolute path> for a file outside the working folder. A hard link
is the same file (no copy), and it stays when the output's name is removed. At its start the
command links a missing output back from its record (`restore`); the command then checks the
restored file as any file it finds at its output (a sample set made with other settings is made
again, a result of another set is measured again) and records what it finishes, replacing the
older record (a link to a temporary name, renamed onto the record).

Records are regular files inside DIR: a symbolic link, or a path that leads out of DIR, is never
followed. Hard links cannot cross file systems: DIR must be on the outputs' file system.
Nothing removes records: delete DIR to give the space back.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import UserError

ABSOLUTE = "_abs"  # records of files outside the working folder: DIR/_abs/<absolute path>


def record_path(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Where the record of `path` lives in `folder`: its path relative to the working folder."""
    full = os.path.abspath(path)
    rel = os.path.relpath(full, os.getcwd())
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        rel = os.path.join(ABSOLUTE, full.lstrip(os.sep))
    return Path(folder) / rel


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Is `path`, with every symbolic link resolved, inside `folder` (resolved)?"""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real != root and real.startswith(root.rstrip(os.sep) + os.sep)


def _existing(path: str | os.PathLike) -> str:
    """`path`, or its nearest existing parent."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    return p


def check_kept_dir(folder: str | os.PathLike, files: Sequence[str | os.PathLike], option: str = "--kept-dir"
                   ) -> Path:
    """UserErrors, before any work, for a record folder that cannot hold records of `files`: a file
    that is not a folder, a folder that holds one of the files, or another file system."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is not a folder")
    device = os.stat(_existing(folder)).st_dev
    for f in files:
        if os.path.realpath(f) == os.path.realpath(folder) or _inside(f, folder):
            raise UserError(f"{option} {folder} holds the output {f}; give the records a folder of their own")
        if os.stat(_existing(os.path.dirname(os.path.abspath(f)))).st_dev != device:
            raise UserError(f"{option} {folder} is on another file system than {f}: the records are hard links, "
                            "which cannot cross file systems; choose a folder next to the outputs")
    return folder


def _record(folder: Path, path: str | os.PathLike) -> Path | None:
    """The record of `path` when there is a usable one: a regular file, inside `folder`."""
    rec = record_path(folder, path)
    try:
        st = os.lstat(rec)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not _inside(rec, folder):
        return None
    return rec


def restore(folder: str | os.PathLike, sets: Sequence[Sequence[str | os.PathLike]],
            log: Callable[[str], None] | None = None) -> list[list[Path]]:
    """For each set (its files, e.g. (X.npz, X.json)), link every missing file back from its record
    in `folder`; one line per set that got any. Returns, per set, the files restored."""
    log = log or (lambda s: print(s, flush=True))
    folder = Path(folder)
    restored: list[list[Path]] = []
    for files in sets:
        done: list[Path] = []
        for f in map(Path, files):
            if os.path.lexists(f):
                continue
            rec = _record(folder, f)
            if rec is None:
                continue
            try:
                f.parent.mkdir(parents=True, exist_ok=True)
                os.link(rec, f, follow_symlinks=False)
            except OSError as exc:
                log(f"warning: cannot restore {f} from its record {rec}: {exc.strerror or exc}; it is made again")
                continue
            done.append(f)
        if done:
            log(f"restored {' and '.join(map(str, done))} from {folder} (finished in an earlier run of this job)")
        restored.append(done)
    return restored


def keep(folder: str | os.PathLike, files: Sequence[str | os.PathLike],
         log: Callable[[str], None] | None = None) -> bool:
    """Make each of `files` (finished) its record in `folder`, replacing an older record at once (a
    hard link to a temporary name, renamed onto the record). A file that cannot be recorded is a
    warning, not an error: the finished file itself stays. Returns whether every file is recorded."""
    log = log or (lambda s: print(s, flush=True))
    folder = Path(folder)
    ok = True
    for f in map(Path, files):
        rec = record_path(folder, f)
        try:
            st = os.stat(f)
            with contextlib.suppress(OSError):
                old = os.lstat(rec)
                if (old.st_dev, old.st_ino) == (st.st_dev, st.st_ino):
                    continue  # already its record (a restored file)
            rec.parent.mkdir(parents=True, exist_ok=True)
            if not _inside(rec.parent, folder) and os.path.realpath(rec.parent) != os.path.realpath(folder):
                raise OSError(f"{rec.parent} leads out of {folder}")
            tmp = rec.parent / f".{rec.name}.{uuid.uuid4().hex[:12]}.tmp"
            os.link(f, tmp, follow_symlinks=False)
            try:
                os.replace(tmp, rec)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        except OSError as exc:
            ok = False
            log(f"warning: cannot keep a record of {f} in {folder}: {exc.strerror or exc}")
    return ok
