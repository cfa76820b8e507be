"""Pretraining from scratch: WordPiece vocabulary training (more to come:
masked-LM/NSP data and the pretraining loop)."""
