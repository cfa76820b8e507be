"""Start the desktop app: `bertdesk gui`, `bertdesk-gui` or
`python -m bertdesk_gui [FILE]`."""

import os
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # In-process work (previews, single predictions) uses PyTorch unless the
    # user chose otherwise; each training run picks its own backend.
    os.environ.setdefault("KERAS_BACKEND", "torch")
    from PySide6.QtWidgets import QApplication

    from bertdesk_gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("bertdesk")
    window = MainWindow()
    window.show()
    if argv:
        window.data_page.open(argv[0])
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
