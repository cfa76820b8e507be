"""Task models wrapping `BertBackbone`, and saving/loading fine-tuned folders."""

from bertdesk.tasks.bert_text_classifier import BertTextClassifier

__all__ = ["BertTextClassifier"]
