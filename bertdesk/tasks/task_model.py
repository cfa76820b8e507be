"""What every task model (backbone + `classifier` head) shares: config
round trip with a nested backbone, and the head's weights under
transformers' names."""

import keras
import numpy as np
from keras import ops

from bertdesk.models.builds_optimizer_first import BuildsOptimizerFirst
from bertdesk.models.releases_gradients import ReleasesGradients
from bertdesk.models.saves_float_only import SavesFloatOnly


class BackboneTaskModel(SavesFloatOnly, BuildsOptimizerFirst, ReleasesGradients):
    """Mixin for functional task models that hold `self.backbone` and a
    dense `self.classifier`; subclasses list their own config keys. Their
    training steps free the gradients after use (`ReleasesGradients`), and
    on TensorFlow the optimizer is built before the first trace
    (`BuildsOptimizerFirst`)."""

    config_keys = ()

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "backbone": keras.layers.serialize(self.backbone),
                **{key: getattr(self, key) for key in self.config_keys}}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)

    def head_tensors(self):
        """Classifier weights as transformers names them: `(classes, hidden)`."""
        return {"classifier.weight": np.asarray(ops.convert_to_numpy(self.classifier.kernel)).T,
                "classifier.bias": np.asarray(ops.convert_to_numpy(self.classifier.bias))}
