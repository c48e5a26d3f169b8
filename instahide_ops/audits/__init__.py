"""Leakage audits, one subpackage per kind; ``progress`` is the stage, progress and cancel contract they share."""
