"""One layer's attention map as a pyqtgraph heatmap over the tokens, with a
layer and a head chooser ("average of heads" by default). Row = the token
attending, column = the token attended to; each row adds up to 1."""

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QFont, QFontMetrics
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from bertdesk_gui.inspect_views import attention_map

AVERAGE = "average of heads"


class _TokenAxis(pg.AxisItem):
    """Token strings at the cell centres (i + 0.5), every k-th one where the
    axis is too short for all of them, so labels never overlap. A bottom
    axis writes them upwards (rotated), one line of text wide each."""

    def __init__(self, orientation):
        super().__init__(orientation)
        font = QFont()
        font.setPointSizeF(8)
        self.metrics = QFontMetrics(font)
        self.setStyle(tickFont=font, tickLength=-4, autoExpandTextSpace=True)
        self.setPen("k")
        self.setTextPen("k")
        self.enableAutoSIPrefix(False)
        self.tokens, self._values = [], []
        self.extent = 0  # the longest label, in pixels

    def set_tokens(self, tokens):
        self.tokens = list(tokens)
        self.extent = max((self.metrics.horizontalAdvance(t) for t in self.tokens), default=20)
        if self.orientation == "bottom":
            self.setHeight(self.extent + 8)
        else:
            self.setWidth(self.extent + 10)
        self.picture = None  # redraw the labels
        self.update()

    def tickValues(self, minVal, maxVal, size):
        lo, hi = sorted((minVal, maxVal))
        first = max(0, math.ceil(lo - 0.5))
        last = min(len(self.tokens) - 1, math.floor(hi - 0.5))
        if last < first or size <= 0:
            return []
        need = self.metrics.height() + 1  # rotated or not, a label is a line high
        step = max(1, math.ceil(need * (hi - lo) / size))  # tokens per label
        self._values = [i + 0.5 for i in range(first, last + 1, step)]
        return [(step, self._values)]

    def tickStrings(self, values, scale, spacing):
        return [self.tokens[int(v)] if 0 <= int(v) < len(self.tokens) else "" for v in values]

    def generateDrawSpecs(self, p):
        specs = super().generateDrawSpecs(p)
        if specs is None or self.orientation != "bottom":
            return specs
        axis, ticks, _ = specs
        if len(ticks) != len(self._values):  # a tick fell outside the view: no labels
            return axis, ticks, []
        strings = self.tickStrings(self._values, 1, 1)
        return axis, ticks, [(tick[1].x(), text) for tick, text in zip(ticks, strings)]

    def drawPicture(self, p, axisSpec, tickSpecs, textSpecs):
        if self.orientation != "bottom":
            return super().drawPicture(p, axisSpec, tickSpecs, textSpecs)
        super().drawPicture(p, axisSpec, tickSpecs, [])
        p.setFont(self.style["tickFont"])
        p.setPen(self.textPen())
        h = self.metrics.height()
        for x, text in textSpecs:  # upwards, ending just below the axis line
            p.save()
            p.translate(x, 4)
            p.rotate(-90)
            p.drawText(QRectF(-self.extent - 2, -h / 2, self.extent, h),
                       int(Qt.AlignRight | Qt.AlignVCenter), text)
            p.restore()


class AttentionView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.attentions = None  # (layers, heads, seq, seq)
        self.tokens = []
        self.layer_spin = QSpinBox()
        self.layer_spin.setRange(1, 1)
        self.head_combo = QComboBox()
        self.head_combo.addItem(AVERAGE)
        self.caption = QLabel()
        self.caption.setTextFormat(Qt.PlainText)
        self.caption.setWordWrap(True)

        self.bottom_axis, self.left_axis = _TokenAxis("bottom"), _TokenAxis("left")
        self.plot = pg.PlotWidget(background="w",
                                  axisItems={"bottom": self.bottom_axis, "left": self.left_axis})
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setMinimumSize(220, 220)
        box = self.plot.getViewBox()
        box.invertY(True)  # the first token at the top, as in a table
        box.setMouseEnabled(x=True, y=True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.bar = pg.ColorBarItem(values=(0, 1), colorMap="viridis", interactive=False, width=12)
        self.bar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        self.bar.axis.setPen("k")
        self.bar.axis.setTextPen("k")
        self.plot.scene().sigMouseMoved.connect(self._hover)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Layer:"))
        controls.addWidget(self.layer_spin)
        controls.addWidget(QLabel("Head:"))
        controls.addWidget(self.head_combo)
        controls.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(controls)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.caption)
        self.layer_spin.valueChanged.connect(self._draw)
        self.head_combo.currentIndexChanged.connect(self._draw)
        self.show_message("")

    def show_message(self, text):
        """No map (yet): an empty plot and `text` below it."""
        self.attentions, self.tokens = None, []
        self.image.clear()
        for axis in (self.bottom_axis, self.left_axis):
            axis.set_tokens([])
        self.caption.setText(text)
        for w in (self.layer_spin, self.head_combo):
            w.setEnabled(False)

    def set_attentions(self, attentions, tokens):
        """`attentions` (layers, heads, seq, seq) of `tokens`; the layer and head
        chosen stay chosen where the new maps have them."""
        self.attentions = np.asarray(attentions, np.float32)
        self.tokens = [str(t) for t in tokens]
        layers, heads = self.attentions.shape[:2]
        head = self.head_combo.currentIndex()
        for w in (self.layer_spin, self.head_combo):
            w.blockSignals(True)
            w.setEnabled(True)
        self.layer_spin.setRange(1, layers)
        self.head_combo.clear()
        self.head_combo.addItems([AVERAGE] + [f"head {h + 1}" for h in range(heads)])
        self.head_combo.setCurrentIndex(head if 0 <= head <= heads else 0)
        for w in (self.layer_spin, self.head_combo):
            w.blockSignals(False)
        for axis in (self.bottom_axis, self.left_axis):
            axis.set_tokens(self.tokens)
        self._draw()

    def current_map(self):
        layer = self.layer_spin.value() - 1
        head = self.head_combo.currentIndex() - 1
        return attention_map(self.attentions, layer, None if head < 0 else head)

    def _draw(self, *_):
        if self.attentions is None:
            return
        matrix = self.current_map()
        self.image.setImage(matrix, autoLevels=False)
        self.bar.setLevels((0.0, max(float(matrix.max()), 1e-6)))
        n = len(self.tokens)
        self.plot.getViewBox().setRange(xRange=(0, n), yRange=(0, n), padding=0)
        self.caption.setText("Row: the token attending; column: the token attended to. "
                             "Point at a cell for its weight.")

    def _hover(self, pos):
        if self.attentions is None:
            return
        point = self.plot.getViewBox().mapSceneToView(pos)
        i, j, n = int(math.floor(point.y())), int(math.floor(point.x())), len(self.tokens)
        if 0 <= i < n and 0 <= j < n:
            self.caption.setText(f"{self.tokens[i]} → {self.tokens[j]}: "
                                 f"{self.current_map()[i, j]:.3f}")
