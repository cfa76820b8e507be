"""The output folder of a training run: a run writes only into a new or empty
folder, or continues the run whose checkpoint the folder holds."""

import contextlib
from pathlib import Path

from bertdesk.data.tables import DataError

# What an interrupted write leaves in the folder (bertdesk.io.atomic's
# temporary files, the model folder's staging): a run's own, never the user's.
_LEFTOVER_SUFFIXES = (".tmp", ".partial")


def open_run_folder(out, resume, own=None):
    """Make `out` ready for a run; True when `resume` finds a checkpoint
    (`checkpoint/state.json`) to continue from.

    Without a checkpoint the run starts over, so the folder must hold nothing
    of the user's: new or empty for a fresh run; with `resume` (an earlier
    attempt stopped before its first checkpoint) only leftovers of
    interrupted writes, a `checkpoint/` as a first checkpoint's write leaves
    it, and the entries a run writes before its first checkpoint: `own` maps
    each such name to a test of the entry (a path) that is true only for
    what a run writes there, for the name alone is no proof (a user's
    `data/` folder beside a run's). An empty folder of one of those names
    holds nothing to lose.
    """
    out = Path(out)
    own = {"checkpoint": is_checkpoint_folder, **(own or {})}
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --output names a file; it must be a folder (new or empty)")
    if resume and (out / "checkpoint" / "state.json").is_file():
        return True
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not resume and entries:
        raise DataError(f"{out}: output folder is not empty; choose another --output, or "
                        "--resume to continue the run in it")
    foreign = [p.name for p in entries
               if not is_leftover(p.name) and not (p.name in own and _is_own(p, own[p.name]))]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise DataError(f"{out}: --resume found no checkpoint to continue from "
                        f"(checkpoint/state.json), and starting over would write over what the "
                        f"folder holds ({shown}), which is not what a run writes there; "
                        f"choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    return False


@contextlib.contextmanager
def removed_if_left_empty(out):
    """Within it, a run that fails (an error, a cancel) removes the folders
    it made for `out` (it, and its parents that did not exist on entry)
    where they are still empty: a run refused for its data or its model
    leaves no trace. A folder that holds anything (a checkpoint, a log) is
    kept, and so are those that existed before."""
    made = []
    path = Path(out)
    while not path.exists() and not path.is_symlink() and path != path.parent:
        made.append(path)
        path = path.parent
    try:
        yield
    except BaseException:
        for path in made:  # the innermost first
            try:
                path.rmdir()
            except OSError:  # not empty, or not ours to remove
                break
        raise


def within(path, folder):
    """Whether `path` is `folder` or lies under it, however either is spelt
    (relative, with `..`, through a symbolic link); neither needs to exist."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def _is_own(path, test):
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return True
    try:
        return bool(test(path))
    except (OSError, ValueError):  # unreadable, or not the JSON a run writes
        return False


def is_leftover(name):
    """A hidden `.tmp` or `.partial` entry: what an interrupted atomic write left."""
    return name.startswith(".") and name.endswith(_LEFTOVER_SUFFIXES)


def is_checkpoint_folder(path):
    """A `checkpoint/` as `resume_checkpoints.write` leaves it before its first
    `state.json`: Keras checkpoint folders and leftovers only."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and all(
        is_leftover(p.name) or (p.is_dir() and (p / "model.weights.h5").is_file()
                                and (p / "config.json").is_file())
        for p in path.iterdir())


def records_output(args, out):
    """Whether `args` (a run's arguments, as it recorded them) is a dict whose
    `output` names the folder `out`."""
    output = args.get("output") if isinstance(args, dict) else None
    return isinstance(output, str) and Path(output).resolve() == Path(out).resolve()

