"""The output folder of a training run: a run writes only into a new or empty
folder, or continues the run whose checkpoint the folder holds."""

from pathlib import Path

from bertdesk.data.tables import DataError

# What an interrupted write leaves in the folder (bertdesk.io.atomic's
# temporary files, the model folder's staging): a run's own, never the user's.
_LEFTOVER_SUFFIXES = (".tmp", ".partial")


def open_run_folder(out, resume, own=("checkpoint",)):
    """Make `out` ready for a run; True when `resume` finds a checkpoint
    (`checkpoint/state.json`) to continue from.

    Without a checkpoint the run starts over, so the folder must hold nothing
    of the user's: new or empty for a fresh run; with `resume` (an earlier
    attempt stopped before its first checkpoint) only the entries named in
    `own` that a run writes before that, and leftovers of interrupted writes.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --output names a file; it must be a folder (new or empty)")
    if resume and (out / "checkpoint" / "state.json").is_file():
        return True
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not resume and entries:
        raise DataError(f"{out}: output folder is not empty; choose another --output, or "
                        "--resume to continue the run in it")
    foreign = [name for name in entries if name not in own and not is_leftover(name)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise DataError(f"{out}: --resume found no checkpoint to continue from "
                        f"(checkpoint/state.json), and starting over would write over what the "
                        f"folder holds ({shown}); choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    return False


def is_leftover(name):
    """A hidden `.tmp` or `.partial` entry: what an interrupted atomic write left."""
    return name.startswith(".") and name.endswith(_LEFTOVER_SUFFIXES)
