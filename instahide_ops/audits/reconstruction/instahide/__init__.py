"""Reconstruction attacks on InstaHide encodings, stage by stage."""
