"""Task models wrapping `BertBackbone`, their losses, and saving/loading
fine-tuned folders. Importing this package registers every class a saved
run's checkpoint names (a resumed run's compiled loss among them)."""

from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer, SpanLoss
from bertdesk.tasks.bert_text_classifier import BertTextClassifier
from bertdesk.tasks.bert_token_classifier import BertTokenClassifier
from bertdesk.tasks.class_weighted_crossentropy import (ClassWeightedCrossentropy,
                                                        PositiveWeightedBinaryCrossentropy)

__all__ = ["BertQuestionAnswerer", "BertTextClassifier", "BertTokenClassifier",
           "ClassWeightedCrossentropy", "PositiveWeightedBinaryCrossentropy", "SpanLoss"]
