"""Quick in-process work (reading a file, one prediction) off the GUI
thread: `run_async(fn, on_done, on_error)` runs `fn()` on Qt's thread pool
and delivers the result or the exception back on the GUI thread."""

import traceback

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

_alive = set()  # keeps each job's signal object alive until it has reported


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(object, str)


class _Job(QRunnable):
    def __init__(self, fn, signals):
        super().__init__()
        self.fn = fn
        self.signals = signals

    def run(self):
        try:
            result = self.fn()
        except Exception as e:  # reported to the GUI, which shows it
            self.signals.failed.emit(e, traceback.format_exc())
        else:
            self.signals.done.emit(result)


def run_async(fn, on_done, on_error=None):
    signals = _Signals()
    _alive.add(signals)

    def finish(*_):
        _alive.discard(signals)

    signals.done.connect(on_done)
    if on_error is not None:
        signals.failed.connect(on_error)
    signals.done.connect(finish)
    signals.failed.connect(finish)
    QThreadPool.globalInstance().start(_Job(fn, signals))
    return signals


def wait_idle(msecs=30000):
    """Wait for background jobs (closing the app, tests)."""
    return QThreadPool.globalInstance().waitForDone(msecs)
