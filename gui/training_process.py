"""Training in a child process (`python -m bertdesk finetune --events jsonl`)
that streams progress events as JSON lines. QProcess delivers its output
through the event loop, so the GUI thread never waits on it; Cancel
terminates the child and kills it if it has not gone a few seconds later.
The child writes checkpoints atomically, so a cancelled run's last saved
model stays usable."""

import json
import os
import sys

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

KILL_AFTER_MS = 3000


class TrainingProcess(QObject):
    """Signals: `event(dict)` for each progress event, `log(str)` for other
    output, `finished(status, message)` with status finished | cancelled |
    failed (message: the child's error, or its last lines of output)."""

    event = Signal(dict)
    log = Signal(str)
    finished = Signal(str, str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.process = None
        self._buffer = b""
        self._tail = []
        self._error = None
        self._cancelled = False
        self._got_result = False

    def is_running(self):
        return self.process is not None and self.process.state() != QProcess.NotRunning

    def start(self, args, env=None, program=None):
        """Run `python -m bertdesk *args` (or `program`, a command line, for
        tests) with `env` added to the environment."""
        if self.is_running():
            raise RuntimeError("a run is already in progress")
        self._buffer, self._tail, self._error = b"", [], None
        self._cancelled = self._got_result = False
        p = QProcess(self)
        environment = QProcessEnvironment.systemEnvironment()
        environment.insert("PYTHONUNBUFFERED", "1")
        environment.insert("TF_CPP_MIN_LOG_LEVEL", "2")
        for k, v in (env or {}).items():
            environment.insert(k, v)
        p.setProcessEnvironment(environment)
        p.readyReadStandardOutput.connect(self._read_stdout)
        p.readyReadStandardError.connect(self._read_stderr)
        p.finished.connect(self._on_finished)
        p.errorOccurred.connect(self._on_error)
        self.process = p
        # -P: the app's working folder is not put on the child's import path
        # (a keras.py or json.py there would be imported in place of the real one)
        command = program or [sys.executable, "-P", "-m", "bertdesk", *args]
        p.start(command[0], command[1:])

    def pid(self):
        return int(self.process.processId()) if self.is_running() else None

    def cancel(self):
        """Ask the child to stop (SIGTERM), and kill it if it is still there
        after KILL_AFTER_MS. Nothing once the child has sent its result: the
        run has finished (its metrics, predictions and model are written) and
        the process is only exiting; a SIGTERM then made it a cancelled run."""
        if not self.is_running() or self._got_result:
            return
        self._cancelled = True
        p = self.process
        p.terminate()
        killer = QTimer(p)  # owned by the process object: it goes when the process does
        killer.setSingleShot(True)
        killer.timeout.connect(lambda: p.state() != QProcess.NotRunning and p.kill())
        killer.start(KILL_AFTER_MS)

    def wait_stopped(self, msecs=10000):
        """For closing the app: block until the child is gone."""
        p = self.process
        if p is not None and p.state() != QProcess.NotRunning:
            self.cancel()
            if not p.waitForFinished(msecs) and p.state() != QProcess.NotRunning:
                p.kill()
                p.waitForFinished(2000)

    # --- child output ---

    def _read_stdout(self):
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self._remember(line)
                self.log.emit(line)
                continue
            if not isinstance(event, dict) or "event" not in event:
                self.log.emit(line)
                continue
            if event["event"] == "error":
                self._error = event.get("text", "")
            if event["event"] == "result":
                self._got_result = True
            self.event.emit(event)

    def _read_stderr(self):
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self._remember(line)
                self.log.emit(line)

    def _remember(self, line):
        self._tail = (self._tail + [line])[-30:]

    def _on_error(self, error):
        if error == QProcess.FailedToStart and self.process is not None:
            self.finished.emit("failed", f"could not start {sys.executable}: "
                                         f"{self.process.errorString()}")

    def _on_finished(self, code, status):
        self._read_stdout()
        if self._buffer.strip():  # a last line without its newline
            self._buffer += b"\n"
            self._read_stdout()
        self._read_stderr()
        p, self.process = self.process, None
        p.deleteLater()
        if code == 0 and status == QProcess.NormalExit and self._got_result:
            # (a Cancel that came after the result: the run had finished, and
            # its metrics and model are on disk)
            self.finished.emit("finished", "")
        elif self._cancelled:
            self.finished.emit("cancelled", "cancelled")
        else:
            how = (f"exit code {code}" if status == QProcess.NormalExit
                   else "the training process was killed or crashed")
            message = self._error or "\n".join(self._tail[-15:] + [how])
            self.finished.emit("failed", message)


def child_env(backend):
    """Environment for a run on `backend`, with the threads the machine has."""
    env = {"KERAS_BACKEND": backend}
    if "OMP_NUM_THREADS" not in os.environ and os.cpu_count():
        env["OMP_NUM_THREADS"] = str(os.cpu_count())
    return env
