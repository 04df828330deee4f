"""Files a command writes where the user says (``compare --out``, ``watch --record``): checked before the work.

A path no file can be written to is named with the reason before anything is played or read
(:func:`unwritable`); a file already there is kept unless the user asks to replace it
(:func:`refuse_existing`); a name the command picks itself never replaces one (:func:`claim_new`).
"""

from __future__ import annotations

from pathlib import Path

from gymlab.errors import GymlabError, describe


def unwritable(path: Path, *, probe: bool = False) -> str | None:
    """Why no file can be written at ``path``, as far as can be told before the work (None: none known).

    A folder (or a link to one) at the path, or a file where one of its folders should be; a name the
    file system refuses shows as its OS reason. With ``probe``, where the folder exists the file is
    opened for appending (and removed again if that created it), so a read-only place or a missing
    permission shows too (for writers such as ffmpeg that would say so only on their own stderr).
    """
    try:
        if path.is_dir():  # follows a link: a link to a folder is a folder here
            return "it is a link to a folder" if path.is_symlink() else "it is a folder"
        for parent in path.parents:
            if parent.is_dir():
                break
            if parent.exists():
                return f"{parent} is a file, not a folder"
        if probe and path.parent.is_dir():
            created = not path.exists()
            with path.open("ab"):  # appending: nothing already there is lost
                pass
            if created:
                path.unlink()
    except OSError as exc:
        return exc.strerror or describe(exc)
    return None


def refuse_existing(path: Path, flag: str, overwrite: bool) -> None:
    """Refuse, in one line, an output file that exists, unless the user asked to replace it.

    With ``overwrite``, a symbolic link at the path is removed, so the new file replaces the link and
    never the file it points to (a link to a checkpoint must not become a video).
    """
    if not overwrite and (path.exists() or path.is_symlink()):
        raise GymlabError(f"{flag} {path}: the file exists; pass --overwrite to replace it, or give another {flag}")
    if path.is_symlink():
        path.unlink()


def claim_new(path: Path) -> Path:
    """Create ``path`` empty, or ``name.1.ext``, ``name.2.ext``, ... if taken: a default name never overwrites."""
    for attempt in range(1000):
        target = path if attempt == 0 else path.with_name(f"{path.stem}.{attempt}{path.suffix}")
        try:
            target.open("xb").close()
            return target
        except FileExistsError:
            continue
    raise GymlabError(f"cannot find a free name beside {path}: 1,000 are taken; remove some")
