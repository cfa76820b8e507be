"""A `QAbstractTableModel` over a pandas DataFrame that hands rows to the view
in chunks (`canFetchMore`/`fetchMore`), so a 100k-row file previews at once
and scrolls without building a widget per cell (Spyder's dataframe editor
does the same)."""

import pandas as pd
from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt
from PySide6.QtGui import Qt as QtText

CHUNK = 500


def plain_tip(text):
    """`text` as a tooltip that shows it as it is: Qt takes a tooltip that
    looks like HTML (`Qt.mightBeRichText`) as rich text, so a cell holding
    `<img src=...>` would draw an image; escaped, and wrapped as rich text
    is (a plain tooltip is one line however long)."""
    return QtText.convertFromPlainText(str(text), Qt.WhiteSpaceNormal)


class FrameModel(QAbstractTableModel):
    def __init__(self, frame=None, parent=None, highlight_rows=None):
        super().__init__(parent)
        self.frame = pd.DataFrame() if frame is None else frame
        self.loaded = min(CHUNK, len(self.frame))
        self.highlight_rows = set(highlight_rows or ())  # 1-based data rows shown in red

    def set_frame(self, frame, highlight_rows=None):
        self.beginResetModel()
        self.frame = frame
        self.loaded = min(CHUNK, len(frame))
        self.highlight_rows = set(highlight_rows or ())
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()):
        return 0 if parent.isValid() else self.loaded

    def columnCount(self, parent=QModelIndex()):
        return 0 if parent.isValid() else len(self.frame.columns)

    def canFetchMore(self, parent=QModelIndex()):
        return not parent.isValid() and self.loaded < len(self.frame)

    def fetchMore(self, parent=QModelIndex()):
        n = min(CHUNK, len(self.frame) - self.loaded)
        self.beginInsertRows(QModelIndex(), self.loaded, self.loaded + n - 1)
        self.loaded += n
        self.endInsertRows()

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        value = self.frame.iat[index.row(), index.column()]
        if role == Qt.DisplayRole:
            text = "" if value is None else str(value)
            return text if len(text) <= 300 else text[:300] + "…"
        if role == Qt.ToolTipRole:
            text = str(value)
            return plain_tip(text if len(text) <= 2000 else text[:2000] + "…")
        if role == Qt.ForegroundRole and index.row() + 1 in self.highlight_rows:
            from PySide6.QtGui import QColor

            return QColor("#c0392b")
        if role == Qt.UserRole:  # raw value, for sorting
            return value
        return None

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if role != Qt.DisplayRole:
            return None
        if orientation == Qt.Horizontal:
            return str(self.frame.columns[section])
        return str(section + 1)
