"""Keras' own saving refused for a quantized bertdesk model."""


class SavesFloatOnly:
    """Mixin for bertdesk's `keras.Model` subclasses: `save` and
    `save_weights` refuse a model quantized to int8 (`quantize_int8`,
    Keras' `quantize`), with the message bertdesk's own writers give.

    The file would be written but never read back: the embeddings and
    encoder blocks build their sublayers from their own float dtype policy,
    so loading one makes float layers that the saved int8 variables do not
    fit (`ValueError: ... Layer 'position_embedding' expected 1 variables,
    but received 0`). A quantized model is for prediction: save the float
    model and quantize it after loading."""

    def save(self, *args, **kwargs):
        from bertdesk.io.mapping import refuse_quantized

        refuse_quantized(self)
        return super().save(*args, **kwargs)

    def save_weights(self, *args, **kwargs):
        from bertdesk.io.mapping import refuse_quantized

        refuse_quantized(self)
        return super().save_weights(*args, **kwargs)
